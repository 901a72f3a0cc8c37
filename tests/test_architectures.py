"""Rerankers that are not BERT: other tokenizers (byte-level BPE, SentencePiece-style Unigram) and a model
whose attention has no SDPA (DeBERTa-v2's, as mxbai's rerankers), scored and trained as CrossEncoder does."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ce_ray import ScoreConfig, run_score

from conftest import wikiqa_pairs
from test_score import read_results, run_cli

SIGMOID = "torch.nn.modules.activation.Sigmoid"


def trained_tokenizer(kind: str, texts):
    """A small tokenizer of the kind's family, trained on `texts`, as transformers loads it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, RobertaTokenizerFast

    if kind == "roberta":  # byte-level BPE, <s> q </s></s> d </s>, no token types
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        return RobertaTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                    cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    # deberta-v2: a SentencePiece-style Unigram, [CLS] q [SEP] d [SEP] with token types
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizers.NFKC(), pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=600, special_tokens=specials,
                                                                 unk_token="[UNK]"))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")


def build_reranker(kind: str, path, texts):
    """A random 2-layer reranker of `kind`, saved as a CrossEncoder folder. Weights drawn wider than usual
    (initializer_range 0.5) spread its scores over (0, 1), so that parity at 1e-5 says something."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tokenizer = trained_tokenizer(kind, texts)
    tokenizer.model_max_length = 128
    extra = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, max_position_embeddings=130) if kind == "roberta" \
        else dict(pad_token_id=0, max_position_embeddings=128)
    config = AutoConfig.for_model(kind, vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, num_labels=1, initializer_range=0.5,
                                  **extra)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.config.sentence_transformers = {"activation_fn": SIGMOID}
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pairs() -> pd.DataFrame:
    return wikiqa_pairs("test", 200)[["query_id", "query", "document", "label"]].reset_index(drop=True)


@pytest.fixture(scope="module")
def rerankers(pairs, tmp_path_factory) -> dict:
    texts = list(pairs["query"].unique()) + list(pairs["document"])
    return {kind: build_reranker(kind, tmp_path_factory.mktemp(kind), texts) for kind in ("roberta", "deberta-v2")}


def predict(path, frame: pd.DataFrame) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(path), device="cpu").predict(list(zip(frame["query"], frame["document"])),
                                                         show_progress_bar=False)


@pytest.mark.parametrize("kind", ["roberta", "deberta-v2"])
def test_other_architectures_and_tokenizers_score_as_cross_encoder_predict(ray_local, tmp_path, pairs, rerankers,
                                                                           kind):
    pairs.assign(pair_id=np.arange(len(pairs))).to_parquet(tmp_path / "pairs.parquet")
    summary = run_score(ScoreConfig(model=str(rerankers[kind]), input=str(tmp_path / "pairs.parquet"),
                                    output=str(tmp_path / "out"), rows_per_block=64))
    assert (summary.rows_scored, summary.rows_rejected) == (len(pairs), 0)
    scores = read_results(tmp_path / "out").sort_values("pair_id")["score"].to_numpy()
    expected = predict(rerankers[kind], pairs)
    assert expected.std() > 0.1, "the random model's scores must spread for parity to mean something"
    assert np.abs(scores - expected).max() <= 1e-5


def test_training_from_the_command_line_with_its_own_ray(tmp_path, pairs, rerankers):
    """`ce-ray train` of a DeBERTa-v2 reranker (attention without SDPA), in a process that starts its own local
    Ray: with the dashboard, whose state API Ray Train queries every second (without it, Ray Train warns each
    time). The saved folder loads in CrossEncoder, and its scores moved."""
    pairs.to_parquet(tmp_path / "train.parquet")
    result = run_cli("train", "--model", str(rerankers["deberta-v2"]), "--train-data", str(tmp_path / "train.parquet"),
                     "--output", str(tmp_path / "model"), "--num-workers", "1", "--max-steps", "4", "--lr", "1e-3",
                     "--log-every", "2", timeout=420)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "steps         4" in result.stdout
    assert "View the dashboard" in result.stderr
    assert "Failed to query Ray Train Controller" not in result.stderr
    before, after = predict(rerankers["deberta-v2"], pairs), predict(tmp_path / "model", pairs)
    assert np.isfinite(after).all() and np.abs(after - before).max() > 1e-3


def test_a_config_whose_values_disagree_is_refused_in_one_line(tmp_path, pairs):
    """A Qwen2's config.json with num_hidden_layers edited and its layer_types not: transformers refuses it with an
    error that is no ValueError, whose first line names its check alone, and a job failed with a traceback."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from ce_ray import ModelError

    tokenizer = trained_tokenizer("roberta", list(pairs["query"].unique()) + list(pairs["document"]))
    config = AutoConfig.for_model("qwen2", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, intermediate_size=64, num_labels=1,
                                  pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "qwen2")
    tokenizer.save_pretrained(tmp_path / "qwen2")
    saved = json.loads((tmp_path / "qwen2" / "config.json").read_text())
    (tmp_path / "qwen2" / "config.json").write_text(json.dumps(saved | {"num_hidden_layers": 2}))
    pairs.to_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(ModelError) as refused:
        run_score(ScoreConfig(model=str(tmp_path / "qwen2"), input=str(tmp_path / "pairs.parquet"),
                              output=str(tmp_path / "out")))
    assert str(refused.value) == (f"{tmp_path / 'qwen2'}/config.json does not hold together: `num_hidden_layers` (2) "
                                  "must be equal to the number of `layer_types` (1)")
    assert not (tmp_path / "out").exists()


def test_a_decoder_classifier_without_a_pad_token_id_is_refused_before_any_work(tmp_path, pairs):
    """A decoder's classifier (a Qwen2's, its head `score`) scores each pair at its last token that is not padding,
    and with no pad_token_id in its config transformers fails every batch of more than one pair: a score job failed
    in its replicas with a worker's traceback, its output begun, and training in its workers. Both refuse it now
    in one line, before Ray starts."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from ce_ray import ModelError, TrainConfig, train

    tokenizer = trained_tokenizer("roberta", list(pairs["query"].unique()) + list(pairs["document"]))
    config = AutoConfig.for_model("qwen2", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, intermediate_size=64, num_labels=1,
                                  pad_token_id=None)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "qwen2")
    tokenizer.save_pretrained(tmp_path / "qwen2")
    model = str(tmp_path / "qwen2")
    expected = (f"{model} is a decoder's classifier without a pad_token_id in its config.json: it cannot score a "
                "batch of pairs; set pad_token_id there (its tokenizer's pad token's id)")
    pairs.to_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(ModelError) as refused:
        run_score(ScoreConfig(model=model, input=str(tmp_path / "pairs.parquet"), output=str(tmp_path / "out")))
    assert str(refused.value) == expected
    with pytest.raises(ModelError) as refused:
        train(TrainConfig(model=model, train_data=str(tmp_path / "pairs.parquet"), output=str(tmp_path / "model")))
    assert str(refused.value) == expected



def test_a_language_model_reranker_is_refused_saying_what_it_is(tmp_path, pairs):
    """A causal language model (Qwen3-Reranker's kind, which CrossEncoder scores by its answer tokens' logits) was
    refused as a base model whose scores `would be random`, told to fine-tune it first: it is said what it is."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ce_ray import ModelError

    tokenizer = trained_tokenizer("roberta", list(pairs["query"].unique()) + list(pairs["document"]))
    config = AutoConfig.for_model("qwen2", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, intermediate_size=64, pad_token_id=1)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    pairs.to_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(ModelError) as refused:
        run_score(ScoreConfig(model=str(tmp_path / "lm"), input=str(tmp_path / "pairs.parquet"),
                              output=str(tmp_path / "out")))
    assert str(refused.value) == (
        f"{tmp_path}/lm is a Qwen2ForCausalLM, a language model: CrossEncoder scores it by the logits of its answer "
        "tokens (a LogitScore module, as Qwen3-Reranker is scored), which ce-ray does not; score a conversion of it "
        "to a sequence classifier (one logit: the answer tokens' difference), or fine-tune one from it (ce-ray train)")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "model").exists()


def test_a_decoder_classifier_pads_with_its_own_pad_token_id(ray_local, tmp_path, pairs):
    """A decoder's classifier scores each pair at its last token that is not its config's pad_token_id, which its
    tokenizer may not pad with (Llama 3's fine-tunes: eos in the config, another pad token or none in the
    tokenizer). Pairs were padded with the tokenizer's id (0 without one): each pair shorter than the longest of
    its batch was scored at its padding, 0.71 off its own score, without a word. They pad with the model's id now."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tokenizer = trained_tokenizer("roberta", list(pairs["query"].unique()) + list(pairs["document"]))
    tokenizer.model_max_length = 128
    config = AutoConfig.for_model("qwen2", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, intermediate_size=64, num_labels=1,
                                  initializer_range=0.5, pad_token_id=tokenizer.eos_token_id)
    assert tokenizer.pad_token_id != config.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.config.sentence_transformers = {"activation_fn": SIGMOID}
    model.save_pretrained(tmp_path / "qwen2")
    tokenizer.save_pretrained(tmp_path / "qwen2")
    few = pairs.iloc[:48].assign(pair_id=np.arange(48))
    few.to_parquet(tmp_path / "pairs.parquet")
    run_score(ScoreConfig(model=str(tmp_path / "qwen2"), input=str(tmp_path / "pairs.parquet"),
                          output=str(tmp_path / "out")))
    scores = read_results(tmp_path / "out").sort_values("pair_id")["score"].to_numpy()
    from sentence_transformers import CrossEncoder

    alone = CrossEncoder(str(tmp_path / "qwen2"), device="cpu").predict(  # a pair a batch: no padding
        list(zip(few["query"], few["document"])), batch_size=1, show_progress_bar=False)
    assert alone.std() > 0.05, "the random model's scores must spread for parity to mean something"
    assert np.abs(scores - alone).max() <= 1e-5
