"""ce-ray's own BERT forward pass (`ce_ray.bert`): the scores of transformers' model, a replica that starts
without transformers, and transformers for every model it does not reproduce."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ce_ray.batching import pair_encoder, tokenize_table
from ce_ray.config import ScoreConfig
from ce_ray.model import ModelError, attention_mask_for, load_reranker, load_scoring_model

from conftest import L12, ROOT, build_tiny_model, scifact_pairs, wikiqa_pairs


def both_scores(path, df: pd.DataFrame, dtype: str, mask: str) -> tuple:
    """Scores of transformers' model and of ce-ray's on the same padded batch, with the usual [rows, width]
    mask or the replica's [rows, 1, 1, width] one."""
    import torch

    ours, theirs = load_scoring_model(str(path), device="cpu", dtype=dtype), load_reranker(str(path), "cpu", dtype)
    assert type(ours.model).__name__ == "BertCrossEncoder" and ours.tokenizer is None
    enc = theirs.tokenizer(list(df["query"]), list(df["document"]), truncation="longest_first",
                           max_length=theirs.max_length, padding=True, return_tensors="pt")
    if mask == "4d":
        enc["attention_mask"] = attention_mask_for("bert", enc["attention_mask"])
    with torch.inference_mode():
        return (ours.scores(ours.logits(ours.model(**enc))).numpy(),
                theirs.scores(theirs.logits(theirs.model(**enc))).numpy())


def test_the_real_reranker_scores_as_in_transformers():
    """WikiQA pairs, and SciFact ones cut at 512 tokens (every position embedding), in every dtype. On this
    CPU the scores are transformers' bit for bit in half precision and within 6e-8 in fp32 (the last layer
    computes the first token's row alone); the bounds leave room for other kernels."""
    batches = (wikiqa_pairs("test", 60)[["query", "document"]], scifact_pairs(2))
    for dtype, mask, bound in (("float32", "2d", 1e-6), ("float32", "4d", 1e-6), ("float16", "4d", 1e-3),
                               ("bfloat16", "4d", 1e-3)):
        for df in batches:
            ours, theirs = both_scores(L12, df, dtype, mask)
            assert np.abs(ours - theirs).max() <= bound, (dtype, mask, len(df))


def test_a_replica_of_a_bert_reranker_loads_neither_transformers_nor_torch_dynamo(tiny_model, tmp_path):
    """A replica in a fresh process: its constructor and a call. transformers and what it pulls in
    (torch._dynamo among others) were 2.5 s of a replica's 4.5 s start on a 2-core CPU; without them 0.2 s."""
    df = wikiqa_pairs("test", 50)
    table = tokenize_table(pa.table({"query": df["query"].tolist(), "document": df["document"].tolist()}),
                           pair_encoder(str(tiny_model)), "query", "document", 128)
    code = (
        "import pickle, sys\n"
        "from ce_ray.replica import Scorer\n"
        "config, table = pickle.load(sys.stdin.buffer)\n"
        "out = Scorer(config, device='cpu')(table)\n"
        "loaded = [m for m in ('transformers', 'torch._dynamo', 'tokenizers') if m in sys.modules]\n"
        "pickle.dump((out.column('score').to_numpy(), loaded), open(sys.argv[1], 'wb'))\n"
    )
    job = pickle.dumps((ScoreConfig(model=str(tiny_model), batch_tokens=300), table))
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.pickle")], input=job, capture_output=True,
                         timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr.decode()
    assert re.fullmatch(r"ce-ray replica: \S+ on cpu \(\d+ threads?\) in float32 \(ce-ray's BERT\), ready in \d+\.\d s "
                        r"\(model \d+\.\d s; imports before that \d+\.\d s\)\n",
                        run.stderr.decode()), run.stderr.decode()
    assert run.stdout == b""  # a caller of predict writes its own output there
    scores, loaded = pickle.loads((tmp_path / "out.pickle").read_bytes())
    assert loaded == []
    ours, theirs = both_scores(tiny_model, df, "float32", "4d")
    np.testing.assert_allclose(np.sort(scores), np.sort(theirs), atol=1e-6)


def edit_config(path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | changes))


@pytest.mark.parametrize("change", ["gelu_new", "relative_key", "is_decoder", "two_labels", "no_pooler",
                                    "extra_weight", "transformers"])
def test_a_model_it_does_not_reproduce_is_loaded_with_transformers(tmp_path, change):
    from safetensors.torch import load_file, save_file

    model = build_tiny_model(tmp_path / "model")
    implementation = "auto"
    if change == "gelu_new":
        edit_config(model, hidden_act="gelu_new")
    elif change == "relative_key":
        edit_config(model, position_embedding_type="relative_key")
    elif change == "is_decoder":  # transformers' attention is causal then, as ce-ray's BERT's is not
        edit_config(model, is_decoder=True)
    elif change == "two_labels":
        edit_config(model, id2label={"0": "no", "1": "yes"}, label2id={"no": 0, "yes": 1})
        weights = load_file(model / "model.safetensors")
        weights["classifier.weight"] = weights["classifier.weight"].repeat(2, 1)
        weights["classifier.bias"] = weights["classifier.bias"].repeat(2)
        save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ModelError, match="2 labels"):  # transformers' loader names the problem
            load_scoring_model(str(model), device="cpu")
        return
    elif change in ("no_pooler", "extra_weight"):
        weights = load_file(model / "model.safetensors")
        if change == "no_pooler":  # transformers would initialise it at random: never silently here
            weights = {k: v for k, v in weights.items() if not k.startswith("bert.pooler.")}
        else:
            name = "bert.encoder.layer.0.attention.self.distance_embedding.weight"
            weights[name] = weights["classifier.weight"].clone()
        save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    else:
        implementation = "transformers"
    reranker = load_scoring_model(str(model), device="cpu", implementation=implementation)
    assert type(reranker.model).__name__ == "BertForSequenceClassification"
    assert reranker.tokenizer is not None and reranker.model_type == "bert"


def test_ce_rays_bert_drops_out_before_its_classifier_as_transformers_model(tmp_path):
    """A model's own `classifier_dropout` is the one before its classifier, as in transformers' model; the
    layers' dropout elsewhere."""
    from ce_ray import bert

    model = build_tiny_model(tmp_path / "model")
    edit_config(model, classifier_dropout=0.0)
    theirs = load_reranker(str(model), "cpu").model
    ours = bert.from_transformers(theirs)
    assert theirs.dropout.p == ours.classifier_dropout.p == 0.0 and ours.dropout.p == 0.1


def test_training_steps_with_ce_rays_bert_update_the_weights_as_transformers_model(tmp_path):
    """The same AdamW steps (dropout off: its random masks differ) on transformers' model and on ce-ray's BERT
    built from it: the same weights after, under transformers' names, the fused query, key and value
    projections included, and the pad token's embedding, which a [PAD] in a text moved in ce-ray's alone."""
    import torch

    from ce_ray import bert
    from ce_ray.train import _parameter_groups

    model = build_tiny_model(tmp_path / "model")
    edit_config(model, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    theirs = load_reranker(str(model), "cpu").model.train()
    ours = bert.from_transformers(theirs)
    assert ours is not None and ours.training
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (8, 12))
    ids[0, 3] = 0  # a [PAD] written in a text: transformers' embedding trains no row for it
    mask = torch.arange(12)[None, :] < torch.tensor([12, 12, 11, 9, 9, 7, 4, 2])[:, None]
    labels = torch.rand(8)
    optimizers = [torch.optim.AdamW(_parameter_groups(m, 0.01), lr=1e-2) for m in (theirs, ours)]
    for _ in range(5):
        for net, optimizer in zip((theirs, ours), optimizers):
            out = net(input_ids=ids, token_type_ids=(ids % 2), attention_mask=attention_mask_for("bert", mask))
            logits = out if isinstance(out, torch.Tensor) else out.logits
            torch.nn.functional.binary_cross_entropy_with_logits(logits.view(-1), labels).backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
    after = bert.transformers_state(ours.state_dict(), len(ours.layers))
    expected = {k: v for k, v in theirs.state_dict().items() if k in after}
    assert len(expected) == len(after) == len(list(theirs.parameters()))
    assert max((after[k] - v).abs().max().item() for k, v in expected.items()) < 1e-4  # float sums differ
    assert max((v - load_reranker(str(model), "cpu").model.state_dict()[k]).abs().max().item()
               for k, v in expected.items()) > 1e-3  # the steps did move the weights


def test_a_trained_bert_is_loaded_and_saved_without_transformers_as_transformers_saves_it(tiny_model, tmp_path):
    """A training worker's model in a fresh process: loaded, its weights moved, saved, with transformers never
    imported (2.7 s of a worker's start for the shared L12 here); against the same weights put into
    transformers' model and saved by its save_pretrained, the folder loads in CrossEncoder to the same weights,
    config, tokenizer, max length, activation and scores."""
    import torch
    from safetensors.torch import load_file
    from sentence_transformers import CrossEncoder
    from transformers import AutoConfig

    from ce_ray import bert
    from ce_ray.model import save_reranker

    code = (
        "import sys, torch\n"
        "from ce_ray import bert\n"
        "from ce_ray.model_folder import SIGMOID\n"
        "net = bert.trainable(sys.argv[1])\n"
        "assert net.training and all(p.requires_grad for p in net.parameters())\n"
        "torch.manual_seed(0)\n"
        "with torch.no_grad():\n"
        "    for p in net.parameters():\n"
        "        p.add_(0.05 * torch.randn_like(p))\n"
        "torch.save(net.state_dict(), sys.argv[2] + '.pt')\n"
        "bert.save(net.state_dict(), sys.argv[1], sys.argv[2], 100, SIGMOID)\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    ours = tmp_path / "ours"
    run = subprocess.run([sys.executable, "-c", code, str(tiny_model), str(ours)], capture_output=True, timeout=120,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr.decode()
    state = torch.load(str(ours) + ".pt")
    reranker = load_reranker(str(tiny_model), "cpu")
    reranker.model.load_state_dict(bert.transformers_state(state, len(reranker.model.bert.encoder.layer)))
    theirs = tmp_path / "theirs"
    save_reranker(reranker.model, reranker.tokenizer, str(theirs), 100)

    saved = [load_file(folder / "model.safetensors") for folder in (ours, theirs)]
    assert saved[0].keys() == saved[1].keys() and all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])
    start = load_file(tiny_model / "model.safetensors")
    assert not torch.equal(saved[0]["classifier.weight"], start["classifier.weight"])
    configs = [AutoConfig.from_pretrained(folder).to_dict() for folder in (ours, theirs)]
    for config in configs:  # where each was loaded from
        del config["_name_or_path"]
    assert configs[0] == configs[1] and configs[0]["sentence_transformers"]["activation_fn"].endswith("Sigmoid")
    pairs = list(wikiqa_pairs("test", 40)[["query", "document"]].itertuples(index=False, name=None))
    pairs.append(("a long query " * 40, "and a longer document " * 80))  # cut at the max length of 100
    models = [CrossEncoder(str(folder), device="cpu") for folder in (ours, theirs)]
    assert models[0].max_length == models[1].max_length == 100
    assert type(models[0].activation_fn) is type(models[1].activation_fn) is torch.nn.Sigmoid
    encoded = [m.tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=m.max_length)
               for m in models]
    assert encoded[0]["input_ids"] == encoded[1]["input_ids"] and max(map(len, encoded[0]["input_ids"])) == 100
    assert encoded[0]["token_type_ids"] == encoded[1]["token_type_ids"]
    assert np.array_equal(models[0].predict(pairs), models[1].predict(pairs))


def test_the_attention_bias_is_made_once_aligned_and_attends_as_the_boolean_mask():
    """The padded batches' mask becomes one additive bias for all layers, at a row stride SDPA's
    memory-efficient kernel takes without a copy (a multiple of 8 elements), with the attention of the mask."""
    import torch
    import torch.nn.functional as F

    from ce_ray.bert import attention_bias

    torch.manual_seed(0)
    lengths = torch.tensor([75, 60, 33, 1])
    mask = (torch.arange(75)[None, :] < lengths[:, None])[:, None, None, :]
    for dtype in (torch.float32, torch.bfloat16):
        bias = attention_bias(mask, dtype)
        assert bias.shape == mask.shape and bias.dtype == dtype and bias.stride(-1) == 1
        assert all(stride % 8 == 0 for stride in bias.stride()[:-1])
        q, k, v = (torch.randn(4, 2, 75, 16, dtype=dtype) for _ in range(3))
        assert torch.equal(F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
                           F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
