"""`ce-ray score`: parity with CrossEncoder.predict, every input format, row accounting, errors, S3."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ce_ray import RerankConfig, ScoreConfig, run_score, score
from ce_ray.config import ConfigError, load_config
from ce_ray.messages import InputError
from ce_ray.model import MASK_4D_MODEL_TYPES, attention_mask_for, use_shape_free_attention
from ce_ray.model_folder import ModelError
from ce_ray.sink import OutputExistsError

from conftest import DURATION, L12, ROOT, build_tiny_model, scifact_pairs, spread_model, wikiqa_pairs


def read_results(out) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(out, "results"))


def read_rejects(out) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(out, "rejects"))


def predict(model_path, df: pd.DataFrame) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(model_path), device="cpu")
    return model.predict(list(zip(df["query"], df["document"])), batch_size=32, show_progress_bar=False)


def test_scores_match_cross_encoder_predict(ray_local, tmp_path):
    wikiqa = wikiqa_pairs("test", 300)[["query", "document"]]
    scifact = scifact_pairs(30)
    pairs = pd.concat([wikiqa, scifact], ignore_index=True)
    pairs["pair_id"] = np.arange(len(pairs))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(L12)
    lengths = [len(tokenizer(q, d)["input_ids"]) for q, d in zip(scifact["query"], scifact["document"])]
    assert max(lengths) > 512, "the SciFact pairs must be long enough to be truncated"

    pairs.to_parquet(tmp_path / "pairs.parquet")
    summary = run_score(ScoreConfig(model=str(L12), input=str(tmp_path / "pairs.parquet"),
                                    output=str(tmp_path / "out"), rows_per_block=64))
    assert (summary.rows_in, summary.rows_scored, summary.rows_rejected) == (330, 330, 0)
    out = read_results(tmp_path / "out").sort_values("pair_id")
    assert out["score"].dtype == np.float32
    assert list(out.columns) == ["query", "document", "pair_id", "score"]
    expected = predict(L12, pairs)
    np.testing.assert_array_equal(out["query"].values, pairs["query"].values)
    assert np.abs(out["score"].values - expected).max() <= 1e-5


def write_formats(df: pd.DataFrame, folder) -> dict:
    """The same pairs as parquet (2 files), JSONL and CSV."""
    (folder / "parquet").mkdir(parents=True)
    half = len(df) // 2
    df.iloc[:half].to_parquet(folder / "parquet" / "a.parquet")
    df.iloc[half:].to_parquet(folder / "parquet" / "b.parquet")
    jsonl = folder / "pairs.jsonl"
    df.to_json(jsonl, orient="records", lines=True)
    csv = folder / "pairs.csv"
    df.to_csv(csv, index=False)
    tsv = folder / "pairs.tsv"  # no quoting: the texts hold no tabs or line breaks
    tsv.write_text("".join("\t".join(map(str, row)) + "\n" for row in [df.columns, *df.itertuples(index=False)]))
    return {"folder": folder / "parquet", "jsonl": jsonl, "csv": csv, "tsv": tsv}


@pytest.fixture(scope="module")
def pairs_df() -> pd.DataFrame:
    df = wikiqa_pairs("test", 120)[["query_id", "query", "document", "label"]].copy()
    df["pair_id"] = np.arange(len(df))
    return df


@pytest.fixture(scope="module")
def spread(tiny_model, tmp_path_factory):
    """The tiny reranker whose scores spread: the tiny model's own lie within 4e-5 of each other, where scores
    compared at 1e-5 passed pairs cut at 32 tokens rather than 512, or scored in another order."""
    return spread_model(tiny_model, tmp_path_factory.mktemp("spread") / "model")


def expected_scores(model, df) -> np.ndarray:
    """Scores of the tiny model straight from ce-ray's loader, without Ray, for comparison."""
    import torch

    from ce_ray.model import load_reranker

    reranker = load_reranker(str(model), device="cpu")
    enc = reranker.tokenizer(list(df["query"]), list(df["document"]), truncation="longest_first",
                             max_length=reranker.max_length, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return reranker.scores(reranker.model(**enc).logits).numpy()


def test_scorer_pads_each_batch_on_the_device_as_batching_pad(tiny_model):
    import torch

    from ce_ray.batching import pad
    from ce_ray.replica import Scorer

    scorer = Scorer(ScoreConfig(model=str(tiny_model)), device="cpu")
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 20, size=50)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(1, 1000, size=offsets[-1]).astype(np.int32)
    types = rng.integers(0, 2, size=offsets[-1]).astype(np.int8)
    rows = rng.permutation(50)[:30]
    rows = rows[np.argsort(-lengths[rows], kind="stable")]
    to = scorer._to_device
    inputs = scorer._padded_inputs(to(ids), to(types), to(offsets[rows]), to(lengths[rows]), int(lengths[rows].max()))
    expected_ids, mask = pad(ids, offsets, rows, scorer.pad_id)
    np.testing.assert_array_equal(inputs["input_ids"].numpy(), expected_ids)
    assert inputs["attention_mask"].shape == (len(rows), 1, 1, mask.shape[1])  # BERT takes the 4D mask
    np.testing.assert_array_equal(inputs["attention_mask"][:, 0, 0].numpy(), mask)
    np.testing.assert_array_equal(inputs["token_type_ids"].numpy(), pad(types, offsets, rows)[0])
    # Rows of one length: no mask (SDPA's unmasked kernels), and the same scores as with the all-true mask.
    same = np.flatnonzero(lengths == np.bincount(lengths).argmax())
    inputs = scorer._padded_inputs(to(ids), to(types), to(offsets[same]), to(lengths[same]), int(lengths[same[0]]),
                                   padded=False)
    assert "attention_mask" not in inputs and inputs["input_ids"].shape == (len(same), lengths[same[0]])
    with torch.inference_mode():
        unmasked = scorer.reranker.logits(scorer.reranker.model(**inputs))
        ones = torch.ones_like(inputs["input_ids"])
        masked = scorer.reranker.logits(scorer.reranker.model(**inputs, attention_mask=ones))
    assert len(same) > 1 and torch.allclose(unmasked, masked, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_type", sorted(MASK_4D_MODEL_TYPES))
def test_models_given_the_4d_mask_score_as_with_the_usual_mask(model_type):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(model_type, vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, num_labels=1,
                                  max_position_embeddings=64, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    lengths = torch.tensor([9, 7, 7, 4, 2])
    mask = torch.arange(9)[None, :] < lengths[:, None]
    ids = torch.randint(5, 100, (5, 9)).masked_fill(~mask, config.pad_token_id or 0)
    given = attention_mask_for(model_type, mask)
    assert given.shape == (5, 1, 1, 9) and given.dtype == torch.bool
    with torch.inference_mode():
        outputs = {name: model(input_ids=ids, attention_mask=attention, output_hidden_states=True)
                   for name, attention in (("usual", mask.long()), ("given", given), ("none", None))}
    hidden = {name: out.hidden_states[-1][mask] for name, out in outputs.items()}  # real tokens only
    assert torch.allclose(outputs["usual"].logits, outputs["given"].logits, atol=1e-6, rtol=0)
    assert torch.allclose(hidden["usual"], hidden["given"], atol=1e-5, rtol=0)
    assert (hidden["usual"] - hidden["none"]).abs().max() > 1e-2  # the mask matters: padded rows change without it


def test_cuda_replicas_keep_attention_off_cudnn_and_cpu_ones_leave_it():
    import torch

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        use_shape_free_attention("cpu")
        assert torch.backends.cuda.cudnn_sdp_enabled()
        use_shape_free_attention(torch.device("cuda", 0))  # the switch alone: no GPU is needed to set it
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_scorer_keeps_row_order_across_batches_and_rejects(spread, pairs_df):
    from ce_ray.batching import pair_encoder, tokenize_table
    from ce_ray.replica import Scorer

    df = pairs_df.copy()
    df.loc[[3, 50], "document"] = None
    table = tokenize_table(pa.Table.from_pandas(df, preserve_index=False), pair_encoder(str(spread)),
                           "query", "document", 512)
    scorer = Scorer(ScoreConfig(model=str(spread), batch_tokens=300), device="cpu")  # many small batches
    out = scorer(table)
    scores = out.column("score").to_numpy(zero_copy_only=False)
    valid = df["document"].notna().values
    assert np.isnan(scores[~valid]).all() and out.column("score").null_count == 2
    np.testing.assert_allclose(scores[valid], expected_scores(spread, df[valid]), atol=1e-5)


def test_gpu_replicas_run_two_calls_at_once_and_each_call_scores_its_own_block(tiny_model, pairs_df):
    """On a GPU, Ray Data runs two calls of a replica at once in two threads (score.replica_pool), so that
    one call queues its batches while the other waits for its scores: no call may see another's rows."""
    from concurrent.futures import ThreadPoolExecutor

    from ce_ray.batching import pair_encoder, tokenize_table
    from ce_ray.replica import Scorer
    from ce_ray.score import replica_pool

    def pool(use_gpu: bool, **settings):
        return replica_pool(ScoreConfig(model="m", **settings), use_gpu=use_gpu, min_replicas=1, max_replicas=1)

    gpu = pool(True)
    assert gpu.enable_true_multi_threading and gpu.max_concurrent_calls_per_actor == 2
    assert not pool(True, compile=True).enable_true_multi_threading
    assert not pool(False).enable_true_multi_threading

    encoder = pair_encoder(str(tiny_model))
    blocks = [tokenize_table(pa.Table.from_pandas(pairs_df.iloc[i::4], preserve_index=False), encoder,
                             "query", "document", 512) for i in range(4)]
    scorer = Scorer(ScoreConfig(model=str(tiny_model), batch_tokens=300), device="cpu")  # many batches a call
    alone = [scorer(block).column("score").to_numpy() for block in blocks]
    model = scorer.forward

    def waiting_forward(**inputs):  # as a GPU call waits: the other thread runs meanwhile
        time.sleep(0.002)
        return model(**inputs)

    scorer.forward = waiting_forward
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(scorer, blocks * 3))
    for out, expected in zip(together, alone * 3):
        np.testing.assert_allclose(out.column("score").to_numpy(), expected, atol=1e-6)


def test_half_precision_is_float16_on_gpu_and_keeps_the_real_rerankers_scores_close_to_predict():
    import torch

    from ce_ray.batching import pair_encoder, tokenize_table
    from ce_ray.model import pick_dtype
    from ce_ray.replica import Scorer

    assert pick_dtype("auto", torch.device("cuda")) == torch.float16
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    df = pd.concat([wikiqa_pairs("test", 400)[["query", "document"]], scifact_pairs(10)], ignore_index=True)
    table = tokenize_table(pa.Table.from_pandas(df, preserve_index=False), pair_encoder(str(L12)),
                           "query", "document", 512)
    scores = Scorer(ScoreConfig(model=str(L12), dtype="float16"), device="cpu")(table).column("score").to_numpy()
    # The design's bound in half precision is 1e-2. float16 stays far inside it (2.0e-3 over all 6,165 WikiQA
    # test pairs); bfloat16 does not (1.55e-2 there, 9.2e-3 on the first 200 pairs).
    assert np.abs(scores - predict(L12, df)).max() <= 5e-3


def test_a_float16_overflow_fails_naming_the_wider_dtypes(tmp_path, pairs_df):
    from safetensors.torch import load_file, save_file

    from ce_ray.batching import pair_encoder, tokenize_table
    from ce_ray.model import ModelError
    from ce_ray.replica import Scorer

    from conftest import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    weights = load_file(model / "model.safetensors")
    name = next(key for key in weights if key.endswith("word_embeddings.weight"))
    weights[name] = weights[name] * 1e6  # past float16's largest value, 65,504
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    table = tokenize_table(pa.Table.from_pandas(pairs_df, preserve_index=False), pair_encoder(str(model)),
                           "query", "document", 512)
    # The settings by their Python names too: a caller of ce_ray.score or predict has no flags.
    with pytest.raises(ModelError, match=r"non-finite score.*score with dtype bfloat16 or float32 \(--dtype\)"):
        Scorer(ScoreConfig(model=str(model), dtype="float16"), device="cpu")(table)
    scores = Scorer(ScoreConfig(model=str(model), dtype="float32"), device="cpu")(table).column("score")
    assert scores.null_count == 0 and np.isfinite(scores.to_numpy()).all()  # the same model scores in float32
    # A job: the replica's error reaches the command line as its message, not inside Ray's report of it, as a
    # failure during the work (it ended `error:`, exit 2, the status of an error found before any work).
    pairs_df.to_parquet(tmp_path / "pairs.parquet")
    failed = run_cli("score", "--model", str(model), "--input", str(tmp_path / "pairs.parquet"), "--output",
                     str(tmp_path / "out"), "--dtype", "float16")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert re.fullmatch(r"ce-ray score: failed: ModelError: \S+ gave \d+ non-finite score\(s\) in float16: float16's "
                        r"range overflowed; score with dtype bfloat16 or float32 \(--dtype\), a job's output with "
                        r"mode overwrite \(--mode overwrite\): resuming would mix their scores with float16's",
                        failed.stderr.splitlines()[-1])
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_batch_past_the_gpus_memory_fails_naming_the_setting_to_lower(tiny_model, pairs_df):
    """The replica's forward pass raises what CUDA's allocator raises when a batch does not fit (no GPU here
    to fill): the job's error is one line, naming the batches' budget and the setting."""
    import torch

    from ce_ray.batching import pair_encoder, tokenize_table
    from ce_ray.model import ModelError
    from ce_ray.replica import Scorer

    table = tokenize_table(pa.Table.from_pandas(pairs_df, preserve_index=False), pair_encoder(str(tiny_model)),
                           "query", "document", 512)
    scorer = Scorer(ScoreConfig(model=str(tiny_model), batch_tokens=4096), device="cpu")

    def forward(**inputs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                     "capacity of 79.19 GiB of which 1.06 GiB is free.\nOf the allocated memory ...")

    scorer.forward = forward
    with pytest.raises(ModelError) as failed:
        scorer(table)
    assert re.fullmatch(r"\S+ ran out of GPU memory scoring batches of up to 4,096 padded tokens, "
                        rf"{table.num_rows:,} rows a call \(CUDA out of memory\. Tried to allocate 2\.00 GiB\. .* "
                        r"free\.\): set a smaller batch_tokens \(--batch-tokens\), or rows_per_call "
                        r"\(--rows-per-call\)", str(failed.value))


def test_a_compiled_replica_compiles_before_its_first_call_and_scores_as_eager(tiny_model, pairs_df):
    import torch

    from ce_ray.batching import IDS, pair_encoder, tokenize_table
    from ce_ray.replica import Scorer

    table = tokenize_table(pa.Table.from_pandas(pairs_df, preserve_index=False), pair_encoder(str(tiny_model)),
                           "query", "document", 512)
    eager = Scorer(ScoreConfig(model=str(tiny_model), batch_tokens=300), device="cpu")
    compiled = Scorer(ScoreConfig(model=str(tiny_model), batch_tokens=300, compile=True), device="cpu")
    shortest = int(np.argmin([len(ids) for ids in table.column(IDS).to_pylist()]))
    # Batches with padding, a batch of rows of one length (no mask), a batch of one row.
    blocks = (table, table.take([shortest] * 4), table.slice(0, 1))
    padded = [[("attention_mask" in inputs, len(rows)) for rows, inputs in eager.device_batches(block)]
              for block in blocks]
    assert all(p for p, _ in padded[0]) and padded[1:] == [[(False, 4)], [(False, 1)]]
    with torch._dynamo.config.patch(error_on_recompile=True):  # a graph compiled after the constructor fails
        for block in blocks:
            np.testing.assert_allclose(compiled(block).column("score").to_numpy(),
                                       eager(block).column("score").to_numpy(), atol=1e-5, rtol=0)


def test_a_large_file_reaches_the_replicas_in_blocks_of_rows_per_block_and_is_written_in_one_part(
        ray_local, tmp_path, tiny_model):
    """A file's rows reach tokenizing and scoring in blocks of `rows_per_block`, each a replica call of its own
    (Ray Data's stats): they came merged into Ray Data's blocks of 128 MiB, one block for this file, scored in one
    call by one replica while the others waited. Its written parts stay one per 128 MiB of rows: one here."""
    rows = 40_000
    pq.write_table(pa.table({"query": [f"q{i % 97}" for i in range(rows)],
                             "document": [f"document {i}" for i in range(rows)]}), tmp_path / "large.parquet")
    scored = []

    def keep_scored(ds):  # the Dataset the job writes, for Ray Data's stats of its run
        scored.append(ds)
        return ds

    summary = run_score(ScoreConfig(model=str(tiny_model), input=str(tmp_path / "large.parquet"),
                                    output=str(tmp_path / "out"), rows_per_block=4096), transform=keep_scored)
    assert summary.rows_scored == rows
    stats = scored[0].stats()
    scoring = re.search(r"Operator \d+ \S*MapBatches\(ScoringReplica\): (\d+) tasks executed", stats)
    assert scoring and int(scoring.group(1)) == -(-rows // 4096), stats
    assert re.search(r"StreamingRepartition\[num_rows_per_block=4096", stats), stats
    assert len(os.listdir(tmp_path / "out" / "results")) == 1


def test_the_progress_line_says_pairs_done_of_the_total_the_rate_and_the_time_left():
    from ce_ray.progress import progress_line

    assert progress_line("ce-ray score", 250_000, 1_000_000, 130, 50_000.4) == (
        "ce-ray score: 250,000 of 1,000,000 pairs scored (25.0%) in 2m10s, 50,000 pairs/s, ~15s left")
    # the first line, whose rows came while the replicas started, has no rate; a text file's rows, no total
    assert progress_line("ce-ray rerank", 4_096, 10_000, 30, 0.0) == (
        "ce-ray rerank: 4,096 of 10,000 pairs scored (41.0%) in 30s")
    assert progress_line("ce-ray score", 8_192, None, 60, 136.5) == (
        "ce-ray score: 8,192 pairs scored in 1m00s, 136 pairs/s")
    # rows scored again by a replica restarted after a failure are never said as more than the total
    assert progress_line("ce-ray score", 10_500, 10_000, 90, 100.0) == (
        "ce-ray score: 10,000 of 10,000 pairs scored (100.0%) in 1m30s, 100 pairs/s")


def test_a_job_prints_its_progress_against_the_pairs_to_score_and_leaves_no_counter(
        ray_local, tmp_path, tiny_model, capsys, monkeypatch):
    """Where its output is no terminal (a file, a Ray Job's log), a job's only progress was Ray Data's, once a
    minute, each stage's rows against Ray Data's own estimate of the total, with no rate or time left. The job
    prints its own line (every 30 s; `CE_RAY_PROGRESS_SECONDS`): the pairs its replicas scored of the pairs it has
    to score, the rate between two lines and the time left; its counter ends with it."""
    import ray

    rows = 24_000
    # Wider than the tiny model, so that its one call lasts seconds: a CPU replica tells its rows within a call
    # every `Progress.tell_every` seconds (half a line's), not every forward pass.
    model = build_tiny_model(tmp_path / "model", layers=4, hidden=128)
    pq.write_table(pa.table({"query": [f"q{i % 97}" for i in range(rows)],
                             "document": [f"document {i} of some words" for i in range(rows)]}),
                   tmp_path / "pairs.parquet")
    monkeypatch.setenv("CE_RAY_PROGRESS_SECONDS", "0.5")
    # One replica call for all the rows: a CPU replica tells its finished batches within a call (a call of 4,096
    # pairs of the real reranker runs over a minute on 2 cores, and the demo's line said 0 pairs scored until it ended).
    summary = run_score(ScoreConfig(model=str(model), input=str(tmp_path / "pairs.parquet"),
                                    output=str(tmp_path / "out"), rows_per_block=rows))
    assert summary.rows_scored == rows
    lines = re.findall(rf"^ce-ray score: ([\d,]+) of 24,000 pairs scored \([\d.]+%\) in {DURATION}(.*)$",
                       capsys.readouterr().out, re.MULTILINE)
    assert lines, "no progress line"
    done = [int(n.replace(",", "")) for n, _ in lines]
    assert done == sorted(done) and done[-1] <= rows
    assert any(0 < n < rows for n in done), done  # within the call
    assert all(re.fullmatch(rf"(, [\d,]+ pairs/s(, ~{DURATION} left)?)?", rest) for _, rest in lines), lines
    deadline = time.monotonic() + 10
    while any(name.startswith("ce-ray-progress-") for name in ray.util.list_named_actors()):
        assert time.monotonic() < deadline, ray.util.list_named_actors()
        time.sleep(0.2)

    for never in ("0", "inf"):  # none; inf failed the job as its work ended (OverflowError: the wait's timeout)
        monkeypatch.setenv("CE_RAY_PROGRESS_SECONDS", never)
        run_score(ScoreConfig(model=str(tiny_model), input=str(tmp_path / "pairs.parquet"),
                              output=str(tmp_path / "out"), rows_per_block=512, mode="overwrite"))
        assert "pairs scored" not in capsys.readouterr().out


def scoring_calls(ds) -> int:
    """The scoring stage's tasks in Ray Data's stats of a Dataset that has run: one per replica call."""
    calls = re.search(r"Operator \d+ \S*MapBatches\(ScoringReplica\): (\d+) tasks executed", ds.stats())
    assert calls, ds.stats()
    return int(calls.group(1))


def test_a_callers_dataset_of_one_block_reaches_the_replicas_in_blocks_of_rows_per_block(ray_local, tiny_model):
    """A caller's own Dataset is cut into blocks of `rows_per_block` rows too, as a job's files are: a DataFrame
    given as `ray.data.from_pandas(frame)` is one block, which reached tokenizing and scoring whole, one replica
    call for all its rows (on a node of 8 GPUs, one replica scored everything). So does one that ends in the caller's
    own `map_batches(..., udf_modifying_row_count=False)`, where Ray Data fused a streaming repartition alone into
    that stage and then the tokenize and scoring stages into it: one call again. Rerank's ranks stay whole."""
    import ray.data

    import ce_ray

    rows, block = 6_000, 1024
    frame = pd.DataFrame({"query_id": [i % 7 for i in range(rows)], "query": [f"q{i % 7}" for i in range(rows)],
                          "document": [f"document {i}" for i in range(rows)]})
    ds = ray.data.from_pandas(frame)
    assert ds.num_blocks() == 1
    for pairs in (ds, ds.map_batches(lambda batch: batch, udf_modifying_row_count=False)):
        scored = ce_ray.score(pairs, model=str(tiny_model), rows_per_block=block).materialize()
        assert scored.count() == rows and scoring_calls(scored) == -(-rows // block)
    ranked = ce_ray.rerank(ds, model=str(tiny_model), rows_per_block=block).materialize()
    assert scoring_calls(ranked) == -(-rows // block)
    out = ranked.to_pandas().sort_values(["query_id", "rank"])
    assert len(out) == rows and out.groupby("query_id")["rank"].apply(list).map(
        lambda ranks: ranks == list(range(1, len(ranks) + 1))).all()
    assert out.groupby("query_id")["score"].apply(lambda scores: scores.is_monotonic_decreasing).all()


def test_a_callers_text_columns_come_back_in_their_types(ray_local, tiny_model):
    """`ce_ray.score` and `rerank` gave a caller's large strings back as strings (pandas' and Ray Data's text is
    large strings): the values the same, the types not the caller's, and a block past 2 GiB of text would not hold
    in them. The query and document come back as they were given."""
    import ray.data

    import ce_ray

    texts = pa.table({"query_id": [1, 1, 2], "query": pa.array(["q1", "q1", "q2"], pa.large_string()),
                      "document": pa.array(["a", "b", "c"], pa.large_string())})
    for scored in (ce_ray.score(ray.data.from_arrow(texts), model=str(tiny_model)),
                   ce_ray.rerank(ray.data.from_arrow(texts), model=str(tiny_model))):
        out = pa.concat_tables(ray.get(scored.to_arrow_refs()))
        assert out.schema.field("query").type == out.schema.field("document").type == pa.large_string()
        assert sorted(out.column("document").to_pylist()) == ["a", "b", "c"]


@pytest.mark.parametrize("fmt", ["folder", "glob", "jsonl", "csv", "tsv"])
def test_each_input_format(ray_local, tmp_path, spread, pairs_df, fmt, capsys):
    paths = write_formats(pairs_df, tmp_path / "in")
    source = {"folder": str(paths["folder"]), "glob": str(paths["folder"] / "*.parquet"),
              "jsonl": str(paths["jsonl"]), "csv": str(paths["csv"]), "tsv": str(paths["tsv"])}[fmt]
    summary = run_score(ScoreConfig(model=str(spread), input=source, output=str(tmp_path / "out"),
                                    rows_per_block=32))
    # The job says how it scores before it does: here on the CPU, nanotoken, the CPU's token budget; and how many
    # pairs, where the files say (parquet's footers), against which Ray Data's estimate of the total may be far.
    out = capsys.readouterr().out
    assert (f"ce-ray score: {spread} on CPU, up to 1 replica(s) on 1 node(s), each on its node's cores and "
            "tokenizing its own rows, tokenizer nanotoken, forward passes in float32 of at most 2,048 tokens, "
            "activation Sigmoid") in out
    assert (f"ce-ray score: {len(pairs_df):,} pairs in 2 file(s) to score" if fmt in ("folder", "glob")
            else "ce-ray score: 1 file(s) to score") in out
    assert summary.rows_in == summary.rows_scored == len(pairs_df)
    assert summary.files_in == (2 if fmt in ("folder", "glob") else 1)
    out = read_results(tmp_path / "out")
    if fmt in ("csv", "tsv"):  # a CSV's columns come back as the text they were
        assert out["pair_id"].map(type).eq(str).all()
        out = out.astype({"pair_id": pairs_df["pair_id"].dtype})
    out = out.sort_values("pair_id").reset_index(drop=True)
    assert sorted(out.columns) == sorted(list(pairs_df.columns) + ["score"])
    np.testing.assert_array_equal(out["pair_id"].values, pairs_df["pair_id"].values)
    np.testing.assert_allclose(out["score"].values, expected_scores(spread, pairs_df), atol=1e-5)


def test_the_announce_line_says_the_dtype_and_activation_and_half_precision_on_cpus_is_noted(
        ray_local, tiny_model, tmp_path, capsys):
    """What a user comparing with CrossEncoder.predict needs, said before any row is scored (score() only plans the
    run): the dtype the replicas compute in and the activation they apply, the model's own (Identity where its
    config.json saved it) or the one asked for; half precision on CPUs is noted on stderr."""
    import ray

    pairs = ray.data.from_items([{"query": "q", "document": "d"}])
    model = shutil.copytree(tiny_model, tmp_path / "logits")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(
        config | {"sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}}))
    score(pairs, model=str(model), announce="ce-ray score")
    said = capsys.readouterr()
    assert "forward passes in float32 of at most 2,048 tokens, activation Identity\n" in said.out
    assert "ce-ray: note:" not in said.err
    score(pairs, model=str(model), activation="torch.nn.Sigmoid", dtype="float16", announce="ce-ray score")
    said = capsys.readouterr()
    assert "forward passes in float16 of at most 2,048 tokens, activation Sigmoid\n" in said.out
    assert ("ce-ray: note: dtype float16 on CPUs is fast only where they have float16 instructions (AMX, AVX-512 "
            "FP16); without them a forward pass ran 12x slower than in float32 (dtype auto: float32 on CPUs)\n"
            ) in said.err
    score(pairs, model=str(model), dtype="bfloat16")
    assert "ce-ray: note: dtype bfloat16 on CPUs is fast only" in capsys.readouterr().err


def test_nulls_and_non_text_rows_are_rejected_with_a_reason(ray_local, tmp_path, tiny_model):
    lines = [
        {"query": "what is ray", "document": "a distributed engine", "id": 0},
        {"query": None, "document": "no query", "id": 1},
        {"query": "no document", "document": None, "id": 2},
        {"query": 42, "document": "a number as query", "id": 3},
        {"query": "a list as document", "document": ["x", "y"], "id": 4},
        {"query": "", "document": "an empty query is still text", "id": 5},
        {"query": "second good row", "document": "fine", "id": 6},
    ]
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "mixed.jsonl", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    summary = run_score(ScoreConfig(model=str(tiny_model), input=str(tmp_path / "in"),
                                    output=str(tmp_path / "out")))
    assert (summary.rows_in, summary.rows_scored, summary.rows_rejected) == (7, 3, 4)
    good = read_results(tmp_path / "out")
    assert sorted(good["id"]) == [0, 5, 6]
    assert good["score"].notna().all()
    bad = read_rejects(tmp_path / "out").sort_values("id")
    assert list(bad["id"]) == [1, 2, 3, 4]
    assert list(bad["reason"]) == ["query is null", "document is null", "query is int, not text",
                                   "document is list, not text"]
    assert "score" not in bad.columns
    success = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert success["rows_in"] == 7 and success["rows_rejected"] == 4


@pytest.mark.timeout(240)
def test_on_invalid_fail_stops_the_job_and_frees_its_replica(ray_local, tmp_path, tiny_model, capsys):
    from ce_ray.cli import main

    pd.DataFrame({"query": ["q", None], "document": ["d", "e"]}).to_parquet(tmp_path / "p.parquet")
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "good.parquet")
    gc.disable()  # the worst case: the garbage collector does not happen to run between the two jobs
    try:
        # The row and the file to fix: the rows carry their file's key, which the user never sees.
        unscorable = (f"1 row(s) cannot be scored, e.g. query is null, in row 2 of {tmp_path}/p.parquet "
                      "(on_invalid fail (--on-invalid fail))")
        with pytest.raises(InputError, match=f"^{re.escape(unscorable)}$") as failed:
            run_score(ScoreConfig(model=str(tiny_model), input=str(tmp_path / "p.parquet"),
                                  output=str(tmp_path / "out"), on_invalid="fail"))
        assert not (tmp_path / "out" / "_SUCCESS").exists()
        # The failed job's scoring actor must not keep its CPU, though its error is kept (here, as a notebook keeps
        # the last one): on this 2-CPU Ray the next job's replica and its write task need both, and waited forever.
        assert all_cpus_free(ray_local), failed.value
        summary = run_score(ScoreConfig(model=str(tiny_model), input=str(tmp_path / "good.parquet"),
                                        output=str(tmp_path / "good")))
    finally:
        gc.enable()
    assert summary.rows_scored == 1
    # On the command line a failure during the work, with the way to finish: the files completed are kept (it
    # ended `error:`, exit 2, the status of an error found before any work, and said no way to finish), once the
    # rows are mended or set aside (it said `--mode resume finishes it` alone, which stopped at the same row).
    (tmp_path / "in").mkdir()
    for name in ("p.parquet", "good.parquet"):
        (tmp_path / "in" / name).write_bytes((tmp_path / name).read_bytes())
    command = ["score", "--model", str(tiny_model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert main([*command, "--on-invalid", "fail", "--mode", "overwrite"]) == 1
    errors = capsys.readouterr().err
    assert errors.splitlines()[-1] == ("ce-ray score: failed: InputError: 1 row(s) cannot be scored, e.g. query is "
                                       f"null, in row 2 of {tmp_path}/in/p.parquet (on_invalid fail (--on-invalid "
                                       "fail)); mend those rows, or pass --on-invalid reject to set them aside in "
                                       "rejects/; then --mode resume finishes it (the input files completed are "
                                       "kept, and the rows written of parquet files)")
    assert "Traceback" not in errors
    # The resume it names: rows that on_invalid=fail wrote are those reject writes (it was refused, `written with
    # other settings (on_invalid)`, so that the job was done again from its start).
    assert main([*command, "--on-invalid", "reject", "--mode", "resume"]) == 0
    assert sorted(pd.read_parquet(tmp_path / "out" / "results")["query"]) == ["q", "q"]
    assert pd.read_parquet(tmp_path / "out" / "rejects")["document"].tolist() == ["e"]
    # Not the other way: an output holding rejects is no output of on_invalid=fail.
    assert main([*command, "--on-invalid", "fail", "--mode", "resume"]) == 2
    assert "written with other settings (on_invalid)" in capsys.readouterr().err


def test_a_jsonl_row_that_on_invalid_fail_stops_at_is_counted_without_blank_lines(ray_local, tmp_path, tiny_model):
    """A JSON Lines file's rows are its lines that are not blank: the row named is not its line where blank lines
    come before it, and the message says so (a user who opened the file at "row 2" found another row)."""
    (tmp_path / "p.jsonl").write_text('{"query": "q", "document": "d"}\n\n{"query": null, "document": "e"}\n')
    unscorable = (f"1 row(s) cannot be scored, e.g. query is null, in row 2 of {tmp_path}/p.jsonl (blank lines not "
                  "counted) (on_invalid fail (--on-invalid fail))")
    with pytest.raises(InputError, match=f"^{re.escape(unscorable)}$"):
        run_score(ScoreConfig(model=str(tiny_model), input=str(tmp_path / "p.jsonl"), output=str(tmp_path / "out"),
                              on_invalid="fail"))


def test_a_csv_row_that_on_invalid_fail_stops_at_is_named_by_its_texts(ray_local, tmp_path, tiny_model):
    """A CSV file's "row N" was no line a user could open the file at: the header, blank lines and a quoted line
    break come between, and a row of the wrong field count is put after its chunk (here "row 3" was the line
    `bad,row,extra`, the row stopped at being line 7). The row is named by its texts, as a Dataset's is."""
    (tmp_path / "p.csv").write_text('query,document\nq1,d1\n\nq2,"two\nlines"\nbad,row,extra\nq3,\nq4,d4\n')
    unscorable = (f"2 row(s) cannot be scored, e.g. document is null, in the row of query 'q3', document None of "
                  f"{tmp_path}/p.csv (on_invalid fail (--on-invalid fail))")
    with pytest.raises(InputError, match=f"^{re.escape(unscorable)}$"):
        run_score(ScoreConfig(model=str(tiny_model), input=str(tmp_path / "p.csv"), output=str(tmp_path / "out"),
                              on_invalid="fail"))


def test_an_error_in_a_lazy_datasets_rows_is_raised_as_ce_rays_own_where_it_is_consumed(ray_local, tiny_model,
                                                                                         monkeypatch):
    """`score` and `rerank` are lazy: an error in the rows stops the Dataset where the caller consumes it, and Ray
    raises a RayTaskError of its own UserCodeException, the message among Ray's lines, which no `except
    ce_ray.InputError` catches. Around the consuming call, `ce_ray.surfaced_errors()` raises ce-ray's error as
    itself, its message alone, which names a row of a Dataset (no file, no line to name) by its texts."""
    import ray.data

    import ce_ray

    assert (ce_ray.InputError, ce_ray.ConfigError, ce_ray.ModelError) == (InputError, ConfigError, ModelError)
    rows = ray.data.from_items([{"query": "a query", "document": "a document"},
                                {"query": "another query", "document": None}]).map(lambda row: row)
    assert rows.schema(fetch_if_missing=False) is None  # its columns are known once it runs
    scored = ce_ray.score(rows, model=str(tiny_model), on_invalid="fail")
    unscorable = ("1 row(s) cannot be scored, e.g. document is null, in the row of query 'another query', document "
                  "None (on_invalid=\"fail\")")
    with pytest.raises(ce_ray.InputError, match=f"^{re.escape(unscorable)}$") as failed:
        with ce_ray.surfaced_errors():
            scored.take_all()
    assert all_cpus_free(ray_local), failed.value  # the error kept holds no actor of the failed execution
    # Consumed without it, Ray's error holds them (Ray Data's own way) while kept: a notebook's or the REPL's last
    # error is let go as the next job starts (that job waited for them forever).
    from ce_ray.runtime import free_failed_actors

    with pytest.raises(Exception, match="cannot be scored") as raw:
        scored.take_all()
    assert not isinstance(raw.value, InputError)
    monkeypatch.setattr(sys, "last_value", raw.value, raising=False)
    free_failed_actors()
    assert all_cpus_free(ray_local), raw.value


def test_surfaced_errors_leaves_the_generators_of_the_errors_it_lets_through_as_they_are():
    """The frames that an error let through went through keep no variables (a kept error held a failed job's
    actors), but a paused generator's frame among them is not cleared: that would close the generator, whose
    next values were lost."""
    import ce_ray

    def helper():
        raise ValueError("first")

    def steps():
        try:
            helper()
        except ValueError as e:
            error = e
        yield error
        yield "second step"

    generator = steps()
    first = next(generator)
    with pytest.raises(RuntimeError, match="job failed") as failed:
        with ce_ray.surfaced_errors():
            raise RuntimeError("job failed") from first
    assert failed.value.__cause__ is first and next(generator) == "second step"


def all_cpus_free(ray, within_s: float = 60.0) -> bool:
    """Whether every CPU of the (in-process) Ray is free again within `within_s` seconds: Ray frees an ended
    job's actors a moment after it ends."""
    gc.collect()  # as `free_failed_actors` does before a job (which also lets a session's last error go)
    deadline = time.monotonic() + within_s
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources()["CPU"]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_surfaced_errors_claims_a_clash_of_column_types_in_ce_rays_stages_alone(ray_local, tiny_model):
    """Blocks whose column types Ray Data cannot put together in one batch: where ce-ray's stage puts them together
    (score of a Dataset made of parts that disagree), `surfaced_errors` raises an InputError naming the column and
    the stage; in a caller's own stage (their union, consumed in their own map_batches) it is no error of ce-ray's,
    and goes through as Ray raised it, where it was an InputError that said to fix ce-ray's input files."""
    import importlib

    import ray.data
    from ray.exceptions import RayTaskError

    import ce_ray
    from ce_ray.runtime import CE_RAY_STAGES

    # the stages it claims are ce-ray's own, by the names Ray gives their tasks
    modules = [importlib.import_module(f"ce_ray.{name}") for name in ("score", "rerank", "train_data")]
    assert {name for name in CE_RAY_STAGES if any(hasattr(module, name) for module in modules)} == set(CE_RAY_STAGES)

    def parts():
        return ray.data.from_arrow(pa.table({"id": [1], "query": ["q"], "document": ["d"]})).union(
            ray.data.from_arrow(pa.table({"id": ["x2"], "query": ["q"], "document": ["e"]})))

    with pytest.raises(RayTaskError, match="Unable to merge: Field id has incompatible types"):
        with ce_ray.surfaced_errors():
            parts().map_batches(lambda batch: batch, batch_size=8, batch_format="pyarrow").take_all()
    scored = ce_ray.score(parts(), model=str(tiny_model))
    with pytest.raises(InputError, match=r"^the rows' column 'id' is (int64|string) in some blocks of the Dataset and "
                                         r"(string|int64) in others, which Ray Data cannot put together in one batch "
                                         r"\(in \S*MapBatches\(_cut_into_blocks\)\S*\): make it one type in every row, "
                                         r"file and part of the Dataset"):
        with ce_ray.surfaced_errors():
            scored.take_all()

    # A task of the caller's that gives blocks of both types: they meet where ce-ray cuts the rows into blocks, a
    # stage of its own (a streaming repartition alone met them in a stage named as a caller's own is, and Ray's
    # error went through).
    def both_types(batch):
        yield pa.table({"id": [1], "query": ["q"], "document": ["d"]})
        yield pa.table({"id": ["x2"], "query": ["q"], "document": ["e"]})

    scored = ce_ray.score(ray.data.range(1).map_batches(both_types), model=str(tiny_model))
    with pytest.raises(InputError, match=r"^the rows' column 'id' is int64 in some blocks of the Dataset and string in "
                                         r"others, which Ray Data cannot put together in one batch \(in \S*MapBatches"
                                         r"\(_cut_into_blocks\)\S*\): make it one type"):
        with ce_ray.surfaced_errors():
            scored.take_all()


def test_a_dataset_that_knows_its_columns_fails_at_the_call_on_a_column_that_is_not_text(ray_local, tiny_model):
    """Where a Dataset knows its columns' types without running (from pandas, read from parquet), a query or
    document column of numbers or lists fails at `score` and `rerank`, naming it, before any work: it had every row
    rejected (`document is int, not text`), or stopped at the first block with on_invalid=fail. A column of no
    values (all null) is taken: its rows are rejected as null. So does a query id of several values (a list)."""
    import ray.data

    import ce_ray

    frame = pd.DataFrame({"query_id": [1, 1], "query": ["q", "q"], "document": [1, 2], "tags": [["a"], ["b"]]})
    for rows in (ray.data.from_pandas(frame), ray.data.from_arrow(pa.Table.from_pandas(frame))):
        with pytest.raises(InputError, match=r"^the rows' column 'document' is int64, not text: name the column of "
                                             r"texts with document_column, or make it text$"):
            ce_ray.score(rows, model=str(tiny_model))
        with pytest.raises(InputError, match=r"^the rows' column 'tags' is list<(item|element): string>, not text"):
            ce_ray.rerank(rows, model=str(tiny_model), document_column="tags")
    ce_ray.score(ray.data.from_arrow(pa.table({"query": ["q"], "document": pa.nulls(1)})), model=str(tiny_model))
    # a query id of several values, which the group-by cannot take, as rerank's tasks refuse it
    with pytest.raises(InputError, match=r"^tags is list<(item|element): string>: a query id is one value"):
        ce_ray.rerank(ray.data.from_arrow(pa.Table.from_pandas(frame)), model=str(tiny_model), query_id_column="tags")


def test_a_dataset_that_knows_its_columns_fails_at_the_call_on_a_column_the_job_writes(ray_local, tiny_model):
    """A first stage's `score` in a caller's Dataset (or a rerank's `rank`) that knows its columns without running
    failed only where it was consumed, in a task, as Ray's RayTaskError, once the model was loaded and the replicas
    started. It fails at `score` and `rerank`, naming the setting that names the scores otherwise, as a job's file
    does before any work; named otherwise, it is kept."""
    import ray.data

    import ce_ray

    frame = pd.DataFrame({"query_id": [1, 1], "query": ["q", "q"], "document": ["d", "e"], "score": [9.5, 7.0]})
    for rows in (ray.data.from_pandas(frame), ray.data.from_arrow(pa.Table.from_pandas(frame))):
        for call in (ce_ray.score, ce_ray.rerank):
            with pytest.raises(InputError, match=r"^the Dataset has a column 'score', which the job writes: name the "
                                                 r"scores otherwise with score_column \(--score-column\)$"):
                call(rows, model=str(tiny_model))
    ranked = ray.data.from_pandas(frame.assign(rank=[1, 2]))
    with pytest.raises(InputError, match=r"^the Dataset has a column 'rank', which the job writes: name the ranks "
                                         r"otherwise with rank_column"):
        ce_ray.rerank(ranked, model=str(tiny_model), score_column="ce_score")
    ce_ray.score(ranked, model=str(tiny_model), score_column="ce_score")  # a rank is no column that score writes
    kept = ce_ray.rerank(ray.data.from_pandas(frame), model=str(tiny_model), score_column="ce_score").to_pandas()
    assert kept.sort_values("document")["score"].tolist() == [9.5, 7.0] and kept["ce_score"].notna().all()


def test_a_dataset_whose_blocks_disagree_on_a_columns_type_fails_at_the_call_naming_it(ray_local, tiny_model):
    """`ray.data.from_items` gives each block the types of its own rows: a column that holds a number in one row and
    text in another made `score` and `rerank` raise pyarrow's `ArrowTypeError: Unable to merge: Field query has
    incompatible types`, from the Dataset's schema, at the call. It is ce-ray's InputError naming the column, before
    any work, as for a column that is no text."""
    import ray.data

    import ce_ray

    for column in ("query", "query_id"):
        rows = ray.data.from_items([{"query_id": 1, "query": "q", "document": "d"},
                                    {"query_id": 2, "query": "q", "document": "e"} | {column: "x2" if column ==
                                                                                      "query_id" else 7}])
        clash = rf"^the rows' column '{column}' is (string|int64) in some blocks of the Dataset and (int64|string) in "
        with pytest.raises(InputError, match=clash):
            ce_ray.score(rows, model=str(tiny_model))
        with pytest.raises(InputError, match=clash):
            ce_ray.rerank(rows, model=str(tiny_model))


def test_a_tokenizer_that_gives_ids_past_its_models_embeddings_is_refused_before_any_work(ray_local, tmp_path,
                                                                                            tiny_model, pairs_df):
    """Tokens added to a tokenizer without resizing its model (a common slip), or token types that the model has no
    row for: a job failed mid-way, at the first batch with one, with a traceback and `--mode resume finishes it`,
    which failed again. Refused now, before the output is begun."""
    from transformers import AutoTokenizer

    pairs_df.to_parquet(tmp_path / "pairs.parquet")
    added, one_type = tmp_path / "added", tmp_path / "one-type"
    for folder in (added, one_type):
        shutil.copytree(tiny_model, folder)
    tokenizer = AutoTokenizer.from_pretrained(added)
    tokenizer.add_tokens(["<product>", "<brand>"])
    tokenizer.save_pretrained(added)
    config = json.loads((one_type / "config.json").read_text())
    (one_type / "config.json").write_text(json.dumps(config | {"type_vocab_size": 1}))
    for folder, said in ((added, "its tokenizer has 30,524 tokens, its model's embeddings 30,522 (vocab_size in "
                                 "config.json): a text with one of the others fails the model; resize the model's "
                                 "embeddings to the tokenizer (resize_token_embeddings) and save both"),
                         (one_type, "its tokenizer gives a pair's second text token type 1, its model has 1 "
                                    "(type_vocab_size in config.json): every pair fails the model; give it its own "
                                    "model's tokenizer")):
        with pytest.raises(ModelError) as refused:
            run_score(ScoreConfig(model=str(folder), input=str(tmp_path / "pairs.parquet"),
                                  output=str(tmp_path / "out")))
        assert str(refused.value) == f"{folder}: {said}"
        assert not (tmp_path / "out").exists()


def test_weights_of_another_model_than_its_config_describes_are_refused_before_any_work(ray_local, tmp_path,
                                                                                          tiny_model, pairs_df):
    """A config.json edited, or copied from another size of the model: each replica failed as transformers loaded
    the weights, and Ray started it again, for 40 s and hundreds of lines of tracebacks, then said `--mode resume
    finishes it`. Refused now, before the output is begun, from the weights' headers."""
    pairs_df.to_parquet(tmp_path / "pairs.parquet")
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"intermediate_size": 48}))
    with pytest.raises(ModelError) as refused:
        run_score(ScoreConfig(model=str(other), input=str(tmp_path / "pairs.parquet"), output=str(tmp_path / "out")))
    assert str(refused.value) == (
        f"{other}: its weights are not the model its config.json describes: 6 weights' shapes differ, the first "
        "bert.encoder.layer.0.intermediate.dense.weight [64, 32] (config.json: [48, 32]); give the folder the "
        "config.json saved with them")
    assert not (tmp_path / "out").exists()
    # Another number of layers (MiniLM-L12's config.json over L6's weights): the same shapes, and the layers the
    # weights lack were drawn at random, those past the config's left out, without a word.
    for layers, said in ((3, "3 layers by config.json, 2"), (1, "1 layer by config.json, 2")):
        (other / "config.json").write_text(json.dumps(config | {"num_hidden_layers": layers}))
        with pytest.raises(ModelError) as refused:
            run_score(ScoreConfig(model=str(other), input=str(tmp_path / "pairs.parquet"),
                                  output=str(tmp_path / "out")))
        assert str(refused.value) == (f"{other}: its weights are not the model its config.json describes: "
                                      f"encoder.layer has {said} in the weights; give the folder the config.json "
                                      "saved with them")
    assert not (tmp_path / "out").exists()
    # A config.json that names no architecture nor labels (2 by default) is loaded with a head of one logit, as
    # its weights hold it: not refused.
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model, bare)
    (bare / "config.json").write_text(json.dumps({key: value for key, value in config.items()
                                                  if key not in ("architectures", "id2label", "label2id")}))
    run_score(ScoreConfig(model=str(bare), input=str(tmp_path / "pairs.parquet"), output=str(tmp_path / "out")))
    assert len(read_results(tmp_path / "out")) == len(pairs_df)


def test_a_token_classifiers_head_is_said_to_be_no_rerankers_not_its_config_wrong(tmp_path, tiny_model):
    """A model that is no sequence classifier is given a new one-logit head to be fine-tuned, and transformers
    fails on a saved head of other shapes (a token classifier's of 9 labels): the refusal says so, and does not
    blame its config.json, the one saved with it."""
    from transformers import AutoConfig, BertForTokenClassification

    from ce_ray.model_folder import check_weight_shapes

    config = AutoConfig.from_pretrained(tiny_model)
    config.architectures, config.num_labels = None, 9
    BertForTokenClassification(config).save_pretrained(tmp_path / "tagger")
    with pytest.raises(ModelError) as refused:
        check_weight_shapes(str(tmp_path / "tagger"), AutoConfig.from_pretrained(tmp_path / "tagger"))
    assert str(refused.value) == (
        f"{tmp_path / 'tagger'}: its weights hold a head that is no reranker's one-logit classifier (classifier.weight "
        "[9, 32]); a BertForTokenClassification is given a new one to be fine-tuned: start from its base model, "
        "saved without that head")


def test_the_weights_check_counts_t5s_blocks_and_leaves_quantized_weights_alone(tmp_path, tiny_model):
    """T5's layers are numbered blocks (`encoder.block.1.layer.0.`), which a check of stacks named `layer(s)` left
    out; quantized weights (bitsandbytes' 4 bits) are stored packed, in shapes other than the model's."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from ce_ray.model_folder import check_weight_shapes

    config = AutoConfig.for_model("t5", vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                                  num_labels=1)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "t5")
    check_weight_shapes(str(tmp_path / "t5"), AutoConfig.from_pretrained(tmp_path / "t5"))
    saved = json.loads((tmp_path / "t5" / "config.json").read_text())
    (tmp_path / "t5" / "config.json").write_text(json.dumps(saved | {"num_layers": 3}))
    with pytest.raises(ModelError, match=r"encoder\.block has 3 layers by config\.json, 2 in the weights; give"):
        check_weight_shapes(str(tmp_path / "t5"), AutoConfig.from_pretrained(tmp_path / "t5"))
    shutil.copytree(tiny_model, tmp_path / "packed")
    packed = json.loads((tmp_path / "packed" / "config.json").read_text()) | {"intermediate_size": 48}
    (tmp_path / "packed" / "config.json").write_text(json.dumps(packed))
    with pytest.raises(ModelError, match="6 weights' shapes differ"):
        check_weight_shapes(str(tmp_path / "packed"), AutoConfig.from_pretrained(tmp_path / "packed"))
    quantized = packed | {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}
    (tmp_path / "packed" / "config.json").write_text(json.dumps(quantized))
    check_weight_shapes(str(tmp_path / "packed"), AutoConfig.from_pretrained(tmp_path / "packed"))


def test_predict_refuses_what_cross_encoder_would_not_score_as_pairs(tiny_model):
    """A text given as the pairs was iterated into its characters: "qd" was scored as the pair ("q", "d"), where
    CrossEncoder.predict scores the text itself; a set's pairs come in no order the scores could follow; bytes were
    taken as text, which predict refuses. Each fails before Ray starts, naming what to give; a value that is not
    text names its place in the pair and its type. One pair given alone, as predict takes it, with a missing or
    non-text member was read as two pairs (`pair 0 is 'q'`): it is named as the one pair it is."""
    import ce_ray

    for bad in ("qd", b"qd", {("a query", "a document")}):
        with pytest.raises(InputError, match=rf"^pairs must be \(query, document\) pairs, not a {type(bad).__name__}: "
                                             r"one pair is \(query, document\), several a list of them$"):
            ce_ray.predict(tiny_model, bad)
    with pytest.raises(InputError, match=r"pair 1 is \"\(b'q', 'd'\)\": its query is bytes, not text: decode it"):
        ce_ray.predict(tiny_model, [("q", "d"), (b"q", "d")])
    for pairs in ([("q", 42)], ("q", 42)):
        with pytest.raises(InputError, match=r"^pairs must be \(query, document\) texts: pair 0 is \"\('q', 42\)\": "
                                             r"its document is int, not text$"):
            ce_ray.predict(tiny_model, pairs)
    with pytest.raises(InputError, match=r"^pair 0 has no document: \"\('q', None\)\"$"):
        ce_ray.predict(tiny_model, ("q", None))
    with pytest.raises(InputError, match=r"^pair 0 has no query: \"\[None, 'd'\]\"$"):
        ce_ray.predict(tiny_model, [None, "d"])
    with pytest.raises(InputError, match=r"pair 0 is \"\('q', b'd'\)\": its document is bytes, not text"):
        ce_ray.predict(tiny_model, ("q", b"d"))


def test_predict_refuses_the_settings_of_a_jobs_files(tiny_model):
    """ScoreConfig's settings of a job's files were taken by predict: `output` wrote no file, `mode` and
    `input_format` changed nothing, without a word, and `query_column` failed on a column the pairs do not have.
    Each is refused before Ray starts, naming it; rank takes predict's settings and refuses them too."""
    import ce_ray

    for name, value in (("output", "scored/"), ("input", "pairs.parquet"), ("input_format", "csv"),
                        ("column_names", "query,document"), ("mode", "overwrite"), ("query_column", "question"),
                        ("document_column", "passage"), ("score_column", "l12")):
        with pytest.raises(ConfigError, match=rf"^{name} is a setting of a job's files \(ce_ray.run_score reads and "
                                              r"writes them\): predict takes \(query, document\) pairs and returns "
                                              r"their scores$"):
            ce_ray.predict(str(tiny_model), [("q", "d")], **{name: value})
    with pytest.raises(ConfigError, match=r"^output is a setting of a job's files"):
        ce_ray.rank(str(tiny_model), "q", ["d"], output="ranked/")


def test_rank_refuses_documents_and_top_k_that_cross_encoder_rank_would_not_take_as_such(tiny_model):
    """A text given as the documents was ranked as its characters ("abc": three documents), a dict as its keys, a set
    in no order that corpus_id could name; a top_k of 1.5 or "3" failed in Python's words once every document was
    scored; pairs that are a number failed as "'int' object is not iterable". Each fails before Ray starts."""
    import ce_ray

    for bad in ("abc", b"abc", {"a document": 1}, {"a document"}, None, 5):
        with pytest.raises(InputError, match=rf"^documents must be a list of texts, not a {type(bad).__name__}: one "
                                             r"document is \[document\]$"):
            ce_ray.rank(tiny_model, "a query", bad)
    for bad in (1.5, "3", -1):
        with pytest.raises(ConfigError, match=rf"^top_k must be a whole number >= 0 \(None: all the documents\), got "
                                              rf"{re.escape(repr(bad))}$"):
            ce_ray.rank(tiny_model, "a query", ["a document"], top_k=bad)
    with pytest.raises(InputError, match=r"^pairs must be \(query, document\) pairs, not a int: one pair is"):
        ce_ray.predict(tiny_model, 5)
    # A document that cannot be scored after a copy of another was named by its place among the documents scored
    # (each text once): `pair 2`, where the caller's documents[2] is "b".
    with pytest.raises(InputError, match=r"^pair 3 has no document: \"\('a query', None\)\"$"):
        ce_ray.rank(tiny_model, "a query", ["a", "a", "b", None])
    with pytest.raises(InputError, match=r"^pairs must be \(query, document\) texts: pair 3 is \"\('a query', 7\)\": "
                                         r"its document is int, not text$"):
        ce_ray.rank(tiny_model, "a query", ["a", "a", "b", 7])


def test_a_config_of_another_kind_is_refused_naming_the_one_to_give(ray_local, tiny_model):
    """`score(ds, config={...})` failed in dataclasses' words (`must be called with a dataclass type or instance`),
    `rerank(ds, config=ScoreConfig(...))` as an AttributeError on its query id column."""
    import ray.data

    import ce_ray

    rows = ray.data.from_items([{"query_id": 1, "query": "q", "document": "d"}])
    with pytest.raises(ConfigError, match=r"^config: a ce_ray\.config\.ScoreConfig, not a dict: give the settings as "
                                          r"keywords, or as ScoreConfig\(\*\*settings\)$"):
        ce_ray.score(rows, config={"model": str(tiny_model)})
    with pytest.raises(ConfigError, match=r"^config: a ce_ray\.config\.RerankConfig, not a ScoreConfig"):
        ce_ray.rerank(rows, config=ScoreConfig(model=str(tiny_model)))
    assert ce_ray.rerank(rows, config=ce_ray.RerankConfig(model=str(tiny_model)), top_k=1) is not None


def test_score_and_rerank_of_a_dataset_refuse_the_settings_they_do_not_use(ray_local, tiny_model):
    """`score(ds, config=RerankConfig(top_k=5))` scored every row and `score(ds, output="scored/")` wrote nothing,
    without a word; `rerank(ds, mode="overwrite")` and `input_format="csv"` changed nothing either. Each is refused
    before any work, naming it, from a config as from a keyword; a RerankConfig's unset ranking settings pass."""
    import ray.data

    import ce_ray

    rows = ray.data.from_items([{"query_id": 1, "query": "q", "document": "d"}])
    files = r" is a setting of a job's files \(ce_ray.run_{0} reads and writes them\): {0} takes a Dataset and returns "
    for name, value in (("output", "scored/"), ("input", "pairs.parquet"), ("input_format", "csv"),
                        ("column_names", "query,document"), ("mode", "overwrite")):
        with pytest.raises(ConfigError, match=rf"^{name}{files.format('score')}it scored$"):
            ce_ray.score(rows, model=str(tiny_model), **{name: value})
        with pytest.raises(ConfigError, match=rf"^{name}{files.format('rerank')}it ranked$"):
            ce_ray.rerank(rows, config=RerankConfig(model=str(tiny_model), **{name: value}))
    with pytest.raises(ConfigError, match=r"^mode is a setting of a job's files"):  # not "use mode overwrite"
        ce_ray.rerank(rows, model=str(tiny_model), mode="resume")
    for name, value in (("top_k", 5), ("query_id_column", "qid"), ("rank_column", "r"), ("rank_partitions", 2)):
        with pytest.raises(ConfigError, match=rf"^{name} is a setting of ranking \(ce_ray.rerank\): score adds the "
                                              r"scores alone$"):
            ce_ray.score(rows, config=RerankConfig(model=str(tiny_model), **{name: value}))
        # as a keyword too: it was refused as an `unknown setting`, of the commands that take it
        with pytest.raises(ConfigError, match=rf"^{name} is a setting of ranking \(ce_ray.rerank\): score adds the "
                                              r"scores alone$"):
            ce_ray.score(rows, model=str(tiny_model), **{name: value})
    assert ce_ray.score(rows, config=RerankConfig(model=str(tiny_model), score_column="s")) is not None


def test_a_datasets_reject_reason_of_numbers_is_refused_at_the_call(ray_local, tiny_model, pairs_df):
    """A job refuses an input's `reject_reason` that is no text before any work (it is read as an earlier job's
    reasons for rejecting rows); a caller's Dataset with one was taken, and failed in a replica's tokenize task,
    in pyarrow's traceback. Refused at the call now, where the Dataset knows its columns."""
    import ray.data

    import ce_ray

    for rows in (ray.data.from_pandas(pairs_df.assign(reject_reason=0)),
                 ray.data.from_items([{"query": "q", "document": "d", "reject_reason": 0}])):
        with pytest.raises(InputError, match=r"^the Dataset has a column 'reject_reason' of int64, where a job reads "
                                             r"an earlier job's reasons for rejecting rows \(text\), and rejects the "
                                             r"rows that have one: rename it$"):
            ce_ray.score(rows, model=str(tiny_model))


def test_missing_column_names_file_and_column(tmp_path, tiny_model):
    (tmp_path / "in").mkdir()
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "in" / "a.parquet")
    pd.DataFrame({"query": ["q"], "passage": ["d"]}).to_parquet(tmp_path / "in" / "b.parquet")
    with pytest.raises(InputError, match=r"b\.parquet: missing column\(s\) 'document'"):
        run_score(ScoreConfig(model=str(tiny_model), input=str(tmp_path / "in"), output=str(tmp_path / "out")))
    with pytest.raises(InputError, match=r"a\.parquet: missing column\(s\) 'text'"):
        run_score(ScoreConfig(model=str(tiny_model), input=str(tmp_path / "in" / "a.parquet"),
                              output=str(tmp_path / "out"), document_column="text"))


def test_an_output_inside_the_input_or_around_it_is_refused(tmp_path, tiny_model):
    """A later run would read the results as pairs (and delete them while reading them, overwriting), or an
    overwrite would delete the input: refused before any work. A sibling folder, or a glob beside it, is fine."""
    from ce_ray.storage import check_apart, filesystem

    assert filesystem("s3://bucket/out/")[1] == filesystem("s3://bucket/out")[1] == "bucket/out"  # one folder

    for source, target in [("data", "data/scored"), ("data/*.parquet", "data/scored"), ("data", "data"),
                           ("out/results", "out"), ("s3://bucket/in/out", "s3://bucket/in")]:
        with pytest.raises(InputError, match="inside the"):
            check_apart(str(tmp_path / source) if "://" not in source else source,
                        str(tmp_path / target) if "://" not in target else target)
    for source, target in [("data", "data-scored"), ("data/a.parquet", "data/scored"), ("data/x*", "scored"),
                           ("s3://bucket/in", "s3://bucket/inside")]:
        check_apart(str(tmp_path / source) if "://" not in source else source,
                    str(tmp_path / target) if "://" not in target else target)
    (tmp_path / "data").mkdir()
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "data" / "a.parquet")
    with pytest.raises(InputError, match=r"the output \S+scored is inside the input"):
        run_score(ScoreConfig(model=str(tiny_model), input=str(tmp_path / "data"),
                              output=str(tmp_path / "data" / "scored")))
    assert not (tmp_path / "data" / "scored").exists()
    # An input reached by a link into the output's results/: an overwrite deleted it, then failed reading it.
    (tmp_path / "proj" / "results").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "proj" / "results")
    with pytest.raises(InputError, match=r"the input \S+link/a\.parquet is inside the output \S+proj"):
        check_apart(str(tmp_path / "link" / "a.parquet"), str(tmp_path / "proj"))


def test_unreadable_and_empty_inputs_fail_before_scoring(tmp_path, tiny_model):
    def job(source):
        return run_score(ScoreConfig(model=str(tiny_model), input=str(source), output=str(tmp_path / "out")))

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(InputError, match=r"cannot read .*x\.parquet"):
        job(tmp_path / "bad")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no parquet files"):
        job(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        job(tmp_path / "nowhere")
    pq.write_table(pa.table({"query": pa.array([], pa.string()), "document": pa.array([], pa.string())}),
                   tmp_path / "zero.parquet")
    with pytest.raises(InputError, match="no rows"):
        job(tmp_path / "zero.parquet")
    (tmp_path / "header.csv").write_text("query,document\n")
    with pytest.raises(InputError, match="no rows"):
        job(tmp_path / "header.csv")
    # A JSON array (pandas' to_json(orient="records"), on one line or indented) is no JSON Lines: said so, where
    # an indented one was `line 1 is not valid JSON (Expecting value ...)` of a valid JSON file.
    records = pd.DataFrame({"query": ["q1", "q2"], "document": ["d1", "d2"]})
    for indent in (None, 2):
        records.to_json(tmp_path / "records.json", orient="records", indent=indent)
        with pytest.raises(InputError, match=r"records\.json: a JSON array, where JSON Lines .*lines=True"):
            job(tmp_path / "records.json")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_unless_overwrite(ray_local, tmp_path, tiny_model, pairs_df):
    """--mode overwrite replaces the results, and `ce-ray eval`'s measures of them beside them (they stood beside
    the new results as theirs); a user's own files there stay."""
    from ce_ray.config import EvalConfig
    from ce_ray.evaluate import run_eval

    pairs_df.head(10).to_parquet(tmp_path / "p.parquet")
    config = ScoreConfig(model=str(tiny_model), input=str(tmp_path / "p.parquet"), output=str(tmp_path / "out"))
    run_score(config)
    with pytest.raises(OutputExistsError, match="already has results"):
        run_score(config)
    run_eval(EvalConfig(input=str(tmp_path / "out")))
    (tmp_path / "out" / "notes.txt").write_text("the user's")
    assert (tmp_path / "out" / "eval.json").exists()
    run_score(ScoreConfig(**{**config.__dict__, "mode": "overwrite"}))
    assert len(read_results(tmp_path / "out")) == 10
    assert not (tmp_path / "out" / "eval.json").exists() and (tmp_path / "out" / "notes.txt").exists()
    # A job that failed before its first write left its settings alone: nothing to refuse for.
    failed = dataclasses.replace(config, output=str(tmp_path / "failed"))
    (tmp_path / "failed" / "_ce_ray").mkdir(parents=True)
    (tmp_path / "failed" / "_ce_ray" / "job.json").write_text("{}")
    assert run_score(failed).rows_scored == 10


def test_min_replicas_leave_a_cpu_to_read_on_a_cpu_cluster(ray_local, tiny_model, pairs_df, capsys):
    """CPU replicas hold a CPU each for the whole job: as many as the cluster's CPUs left none to read the rows
    they waited for, and the job never started. The pool starts one fewer and says so."""
    import ray.data

    cpus = int(ray_local.cluster_resources()["CPU"])
    ds = ray.data.from_pandas(pairs_df.head(20))
    scored = score(ds, model=str(tiny_model), replicas=cpus, min_replicas=cpus).to_pandas()
    assert len(scored) == 20 and scored["score"].notna().all()
    assert (f"min_replicas {cpus} (--min-replicas {cpus}) would hold all {cpus} CPUs of the cluster"
            in capsys.readouterr().err)
    score(ds, model=str(tiny_model), min_replicas=2)  # said as the Dataset is planned: nothing to run
    assert ("min_replicas 2 (--min-replicas 2) is more than the 1 replica(s) the job may start (replicas (--replicas); "
            "by default") in capsys.readouterr().err
    # What a local Ray does not have, it never will: the job would wait forever.
    with pytest.raises(ConfigError, match=r"needs a GPU \(use_gpu true \(--use-gpu\); the cluster has none\), which "
                                          r"the local Ray"):
        score(ds, model=str(tiny_model), use_gpu=True)
    with pytest.raises(ConfigError, match=f"needs {cpus + 1} CPUs a tokenize task \\(tokenize_cpus "
                                          f"\\(--tokenize-cpus\\); the cluster's"):
        score(ds, model=str(tiny_model), tokenize_cpus=cpus + 1)


def test_a_cluster_without_cpus_yet_is_said_to_have_none(ray_local, tiny_model, pairs_df, monkeypatch):
    """A cluster whose head runs drivers alone (`--num-cpus 0`, as the KubeRay manifest's) and whose workers are yet
    to come has no CPU in Ray's resources: the job's line said the cluster had 1."""
    import importlib

    import ray.data

    from ce_ray import runtime

    score_module = importlib.import_module("ce_ray.score")  # the module: ce_ray.score is its function too
    monkeypatch.setattr(score_module, "cluster_resources", lambda: {"memory": 1e9})  # Ray's, with no node of CPUs
    monkeypatch.setattr(score_module, "cpu_nodes", lambda: [])
    monkeypatch.setattr(runtime, "started_here", lambda: True)  # refused, not waited for: the test can read it
    with pytest.raises(ConfigError, match=r"the job needs 2 CPUs \(a replica holds 1 for the whole job, and reading "
                                          r"the rows takes another; the cluster has 0\) and 1 CPU a tokenize task"):
        score(ray.data.from_pandas(pairs_df.head(2)), model=str(tiny_model))


def test_a_local_ray_of_one_cpu_is_refused_where_the_job_waited_forever(tiny_model, tmp_path):
    """A replica holds a CPU for the whole job: on a Ray of one CPU (`ray.init(num_cpus=1)`, a 1-core machine's)
    none was left to read the rows, and `predict` of two pairs waited until it was killed, saying nothing."""
    code = ("import sys, ray, ce_ray\n"
            "ray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
            "try:\n"
            "    ce_ray.predict(sys.argv[1], [('q', 'd'), ('q2', 'd2')])\n"
            "except ce_ray.ConfigError as e:\n"
            "    print(e)\n")
    run = _python_run(code, tiny_model)
    assert run.stdout.splitlines()[-1] == (
        "the job needs 2 CPUs (a replica holds 1 for the whole job, and reading the rows takes another; the cluster "
        "has 1), which the local Ray it started cannot give")


def test_predict_from_threads_at_once_starts_one_ray_and_each_call_scores(tiny_model):
    """A service's first requests at once each started a local Ray, and one failed (`Perhaps you called ray.init
    twice by accident?`); the Ray a request's thread started died as the thread ended (Linux's parent-death
    signal), and the process with it at its next call, exit status 0. On a Ray of 2 CPUs, calls at once each held
    a replica's CPU and waited for the other's, for ever: they run one at a time."""
    code = ("import sys, threading, ce_ray\n"
            "pairs = [('q%d' % n, 'document %d' % n) for n in range(5)]\n"
            "results = {}\n"
            "def call(n):\n"
            "    try:\n"
            "        results[n] = ce_ray.predict(sys.argv[1], pairs[n:]).tolist()\n"
            "    except Exception as e:\n"
            "        results[n] = repr(e)\n"
            "threads = [threading.Thread(target=call, args=(n,)) for n in range(3)]\n"
            "[t.start() for t in threads]\n"
            "[t.join() for t in threads]\n"
            "alone = ce_ray.predict(sys.argv[1], pairs).tolist()\n"
            "print([results[n] == alone[n:] for n in range(3)])\n")
    run = _python_run(code, tiny_model, timeout=240, RAY_ADDRESS="local")
    assert run.stdout.splitlines()[-1] == "[True, True, True]", run.stdout[-2000:]


def test_a_local_ray_started_on_a_machine_of_one_core_scores_on_two_cpus_of_it(tiny_model):
    """On a machine of one core (a 1-CPU VM, a pod limited to one CPU: what ce-ray and Ray count its cores as,
    set so in the process) the local Ray a job starts has 2 CPUs, which share the core: with Ray's count, 1, the
    replica held the only one and the job was refused. A Ray the user starts with one CPU is still refused (above)."""
    code = ("import sys, ray, ray._private.utils, ce_ray, ce_ray.runtime\n"
            "ray._private.utils.get_num_cpus = lambda *args, **kwargs: 1\n"
            "ce_ray.runtime.usable_cpus = lambda *args, **kwargs: 1\n"
            "scores = ce_ray.predict(sys.argv[1], [('q', 'd'), ('q2', 'd2')])\n"
            "print(ray.cluster_resources()['CPU'], len(scores))\n")
    run = _python_run(code, tiny_model, RAY_ADDRESS="local")
    assert run.stdout.splitlines()[-1] == "2.0 2"


def _python_run(code: str, tiny_model, timeout: int = 180, **env) -> subprocess.CompletedProcess:
    """`code` run by a new Python in the project, the model's path its argument, `env` over this one's; its exit
    status checked to be 0."""
    run = subprocess.run([sys.executable, "-c", code, str(tiny_model)], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_a_cpu_replicas_threads_stay_within_its_containers_cpu_limit(ray_local, tmp_path):
    """A pod's CPU limit (its cgroup's quota) bounds a CPU replica's threads: the cores it may run on
    (os.sched_getaffinity) are all the machine's, 64 for a pod of 4 CPUs, whose threads the quota then throttled."""
    import ray

    from ce_ray.runtime import cgroup_cpu_limit, usable_cpus

    limits = {"v2-4": ("cpu.max", "400000 100000\n"), "v2-none": ("cpu.max", "max 100000\n"),
              "v1-1.5": ("cpu/cpu.cfs_quota_us", "150000\n"), "v1-none": ("cpu/cpu.cfs_quota_us", "-1\n")}
    for name, (path, text) in limits.items():
        (tmp_path / name / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name / path).write_text(text)
        if name.startswith("v1"):
            (tmp_path / name / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    found = {name: cgroup_cpu_limit(str(tmp_path / name)) for name in [*limits, "no-cgroup"]}
    assert found == {"v2-4": 4.0, "v2-none": None, "v1-1.5": 1.5, "v1-none": None, "no-cgroup": None}
    cores = len(os.sched_getaffinity(0))
    assert usable_cpus(str(tmp_path / "v1-1.5")) == 1  # half a core more would only be throttled
    assert usable_cpus(str(tmp_path / "v2-4")) == min(cores, 4, int(ray.cluster_resources()["CPU"]))


def test_cpu_replicas_start_at_once_and_share_their_nodes_cores(capsys):
    """On CPUs every replica starts at once (a pool started with one did not grow on two nodes); replicas past the
    nodes share each node's cores rather than each running on all of them, and one is left a CPU to read."""
    from ce_ray.score import _replica_counts

    config = ScoreConfig(model="m")
    assert _replica_counts(config, use_gpu=False, gpus=0, cpus=16, nodes=4) == (4, 4, 1)  # one a node
    assert _replica_counts(config, use_gpu=True, gpus=4, cpus=16, nodes=0) == (1, 4, 1)  # GPUs may come later
    assert capsys.readouterr().err == ""
    assert _replica_counts(dataclasses.replace(config, replicas=4), False, 0, cpus=8, nodes=1) == (4, 4, 4)
    assert "4 replicas on 1 node(s) with CPUs: the replicas of a node share its cores (1/4 each)" in (
        capsys.readouterr().err)
    # Replicas that do not fill the nodes evenly: as many a node as the fullest one holds.
    assert _replica_counts(dataclasses.replace(config, replicas=3), False, 0, cpus=8, nodes=2) == (3, 3, 2)
    assert "the replicas of a node share its cores (1/2 each)" in capsys.readouterr().err
    assert _replica_counts(dataclasses.replace(config, replicas=1), False, 0, cpus=8, nodes=2) == (1, 1, 1)
    # Two replicas of a 2-CPU machine hold both CPUs: one starts, on both cores, and the pool stays at one (it
    # could grow to two, each on both cores, holding every CPU again).
    assert _replica_counts(dataclasses.replace(config, replicas=2), False, 0, cpus=2, nodes=1) == (1, 1, 1)
    assert "replicas 2 (--replicas 2) would hold all 2 CPUs of the cluster" in capsys.readouterr().err


def test_python_api_takes_and_returns_a_dataset(ray_local, spread, pairs_df):
    import ray.data

    ds = ray.data.from_pandas(pairs_df.rename(columns={"query": "q", "document": "d"}))
    scored = score(ds, model=str(spread), query_column="q", document_column="d").to_pandas()
    scored = scored.sort_values("pair_id")
    assert scored["reject_reason"].isna().all()
    np.testing.assert_allclose(scored["score"].values, expected_scores(spread, pairs_df), atol=1e-5)


def test_yaml_config_and_flags_give_the_same_settings(tmp_path):
    (tmp_path / "c.yaml").write_text("model: m\ninput: in\noutput: out\nbatch_tokens: 4096\nquery_column: q\n")
    config = load_config(ScoreConfig, str(tmp_path / "c.yaml"), {"batch_tokens": 1024})
    assert (config.model, config.batch_tokens, config.query_column) == ("m", 1024, "q")
    (tmp_path / "typo.yaml").write_text("batch_token: 4096\n")
    with pytest.raises(ConfigError, match="unknown setting 'batch_token' \\(did you mean 'batch_tokens'\\?\\)"):
        load_config(ScoreConfig, str(tmp_path / "typo.yaml"))
    (tmp_path / "type.yaml").write_text("batch_tokens: many\n")
    # A value of the wrong type names the setting's flag too (it named the YAML key alone)
    with pytest.raises(ConfigError, match=r"type\.yaml: batch_tokens \(--batch-tokens\): expected int, got str "
                                          r"'many'$"):
        load_config(ScoreConfig, str(tmp_path / "type.yaml"))
    for setting, value in (("rows_per_call", 0), ("batch_tokens", -1), ("tokenize_cpus", 0.0), ("max_length", 2)):
        flag = setting.replace("_", "-")  # named by the flag too: it named the YAML key alone
        with pytest.raises(ConfigError, match=rf"^{setting} \(--{flag}\) must be"):
            load_config(ScoreConfig, None, {setting: value})
    for name in ("reject_reason", "_ce_cut"):  # columns ce-ray adds itself
        with pytest.raises(ConfigError, match=rf"^score_column \(--score-column\) '{name}' is a column ce-ray uses "
                                              "itself: name another$"):
            load_config(ScoreConfig, None, {"score_column": name})


def run_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "ce_ray.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def test_a_cluster_address_where_nothing_listens_is_an_error_before_any_work(tmp_path, tiny_model, pairs_df):
    """RAY_ADDRESS naming a port where no cluster is: Ray retried it for over 5 minutes, and its error would have
    ended `failed: ...; --mode resume finishes it`, exit 1, though the job did no work."""
    import socket

    with socket.socket() as free:  # a loopback port that nothing listens on once closed
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    pairs_df.head(4).to_parquet(tmp_path / "pairs.parquet")
    started = time.perf_counter()
    result = run_cli("score", "--model", str(tiny_model), "--input", str(tmp_path / "pairs.parquet"), "--output",
                     str(tmp_path / "out"), env={"RAY_ADDRESS": f"127.0.0.1:{port}"}, timeout=120)
    assert result.returncode == 2 and time.perf_counter() - started < 60, result.stderr[-3000:]
    assert re.fullmatch(rf"ce-ray score: error: cannot join the Ray cluster at \S+:{port} \(RAY_ADDRESS=127\.0\.0\.1:"
                        rf"{port}\): nothing answers there \(.*\); start it \(`ray start --head`\), or set "
                        r"RAY_ADDRESS=local to start a local Ray for the job", result.stderr.splitlines()[-1])
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_an_address_that_names_no_cluster_to_join_is_said_at_once(tmp_path, tiny_model, pairs_df):
    """RAY_ADDRESS as a dashboard's `HOST:8265` (an HTTP server stands for it): Ray waited minutes for a GCS there,
    its warnings the only lines; as `http://HOST:8265` (submit's address), and as a Ray Client address where nothing
    answers (32 s): `cannot start a local Ray` with Ray's words. Each said at once, exit 2, before any work."""
    import http.server
    import socket
    import threading

    # On 127.0.0.2, a loopback address that Ray keeps as it is (127.0.0.1 it takes for the machine's own address, on
    # which nothing answers: said at once already), as a cluster's dashboard on its host's address is joined.
    server = http.server.HTTPServer(("127.0.0.2", 0), http.server.BaseHTTPRequestHandler)  # answers 501
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dashboard = server.server_address[1]
    # And on 127.0.0.1, where `ray start --head` serves its dashboard: Ray's rewrite of the address reaches nothing,
    # and the job was told to start the cluster.
    local = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=local.serve_forever, daemon=True).start()
    local_at = f"127.0.0.1:{local.server_address[1]}"
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    pairs_df.head(4).to_parquet(tmp_path / "pairs.parquet")
    at, http_at, client_at = f"127.0.0.2:{dashboard}", f"http://127.0.0.2:{dashboard}", f"ray://127.0.0.1:{port}"
    said = {
        at: (f"cannot join the Ray cluster at {at} (RAY_ADDRESS={at}): it answers HTTP, as a dashboard does, where a "
             "cluster's GCS address is asked (`ray start --port`, 6379 by default); to send the job to the cluster "
             f"through its dashboard: `ce-ray submit` with `--address http://{at}`"),
        http_at: (f"cannot join a Ray cluster (RAY_ADDRESS={http_at}): that is a dashboard's address, which `ce-ray "
                  f"submit --address {http_at}` sends the job to; a job run here joins a cluster by its GCS address "
                  "(`host:6379`) or through Ray Client (`ray://host:10001`)"),
        client_at: f"cannot join the Ray cluster at 127.0.0.1:{port} (RAY_ADDRESS={client_at}): nothing answers ",
        local_at: f"cannot join the Ray cluster at {local_at} (RAY_ADDRESS={local_at}): it answers HTTP, as a "}
    try:
        for address, line in said.items():
            started = time.perf_counter()
            result = run_cli("score", "--model", str(tiny_model), "--input", str(tmp_path / "pairs.parquet"),
                             "--output", str(tmp_path / "out"), env={"RAY_ADDRESS": address}, timeout=120)
            assert result.returncode == 2 and time.perf_counter() - started < 30, result.stderr[-3000:]
            assert result.stderr.splitlines()[-1].startswith(f"ce-ray score: error: {line}"), result.stderr[-3000:]
            assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    finally:
        server.shutdown()
        local.shutdown()


def test_a_package_the_job_lacks_is_said_before_any_work(tmp_path, tiny_model, pairs_df):
    """A cluster's image without ce-ray's dependencies (Ray's own images hold none of them): the job failed with
    a traceback, exit 1 and `--mode resume finishes it`, which would fail the same way. One line, exit 2, naming
    the package and how to install it, before Ray starts."""
    pairs_df.head(4).to_parquet(tmp_path / "pairs.parquet")
    lacking = ("import sys; sys.modules['safetensors'] = None; from ce_ray.cli import main; "
               "sys.exit(main(sys.argv[1:]))")  # `import safetensors` raises ModuleNotFoundError, as where it lacks
    result = subprocess.run([sys.executable, "-c", lacking, "score", "--model", str(tiny_model), "--input",
                             str(tmp_path / "pairs.parquet"), "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1].startswith("ce-ray score: error: import of safetensors halted"), result.stderr
    assert "ce-ray's dependencies are not all installed where the command runs" in result.stderr
    assert "Traceback" not in result.stderr and "resume" not in result.stderr and not (tmp_path / "out").exists()
    # An import error of another kind (a package a model's own code needs, a name that cannot be imported) is no
    # missing dependency: it fails as any other error, with its traceback.
    from ce_ray.cli import missing_dependency

    assert missing_dependency(ModuleNotFoundError("No module named 'torch.cuda'", name="torch.cuda"))
    assert not missing_dependency(ModuleNotFoundError("No module named 'einops'", name="einops"))
    assert not missing_dependency(ImportError("cannot import name 'lists_metrics' from 'ce_ray.metrics'"))


def test_cli_with_config_file_prints_a_summary(tmp_path, tiny_model, pairs_df):
    pairs_df.head(40).to_csv(tmp_path / "pairs.csv", index=False)
    (tmp_path / "job.yaml").write_text(
        f"model: {tiny_model}\ninput: {tmp_path / 'pairs.csv'}\noutput: {tmp_path / 'wrong'}\nbatch_tokens: 2048\n")
    result = run_cli("score", "--config", str(tmp_path / "job.yaml"), "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("rows in       40", "rows scored   40", "rows rejected 0", "pairs/s", str(tmp_path / "out")):
        assert line in result.stdout
    assert len(read_results(tmp_path / "out")) == 40 and not (tmp_path / "wrong").exists()
    # Its own local Ray, for the one job: without the dashboard, whose start the job would wait for.
    assert "Started a local Ray instance" in result.stderr and "View the dashboard" not in result.stderr
    bad = run_cli("score", "--model", str(tiny_model), "--input", str(tmp_path / "pairs.csv"), "--output",
                  str(tmp_path / "o2"), "--query-column", "question")
    assert bad.returncode == 2 and "pairs.csv: missing column(s) 'question'" in bad.stderr


def test_predict_scores_pairs_in_order_as_cross_encoder_does(ray_local, spread, pairs_df):
    """`ce_ray.predict(model, pairs)`: CrossEncoder.predict's call on the cluster, the scores in the pairs'
    order although blocks of 16 come back in any order; a pair that cannot be scored fails the call."""
    import ce_ray
    from ce_ray.messages import InputError

    pairs = list(zip(pairs_df["query"], pairs_df["document"]))
    scores = ce_ray.predict(str(spread), pairs, rows_per_block=16)
    assert scores.dtype == np.float32 and scores.shape == (len(pairs),)
    np.testing.assert_allclose(scores, expected_scores(spread, pairs_df), atol=1e-5)
    assert ce_ray.predict(str(spread), []).shape == (0,)
    # No pairs are checked as any: a wrong model or setting passed where there were none to score.
    with pytest.raises(ConfigError, match=r"unknown setting 'batch_tokns' \(did you mean 'batch_tokens'\?\)"):
        ce_ray.predict(str(spread), [], batch_tokns=5)
    with pytest.raises(ModelError, match="model folder /no/such/model does not exist"):
        ce_ray.rank("/no/such/model", "q", [])
    with pytest.raises(InputError, match=r"pair 1 has no query: \"\(None, 'a document'\)\""):
        ce_ray.predict(str(spread), [("a query", "a document"), (None, "a document")])
    with pytest.raises(InputError, match="pairs must be \\(query, document\\) texts: pair 1 is \"\\('q', 42\\)\""):
        ce_ray.predict(str(spread), [("a query", "a document"), ("q", 42)])
    with pytest.raises(InputError, match="texts: pair 0 is "):  # a lone surrogate, which UTF-8 cannot write
        ce_ray.predict(str(spread), [("q\ud800", "d")])
    # Iterated, a DataFrame or a dict gives its keys, a dict row passes as two texts, a set has no order.
    frame = pairs_df[["query", "document"]].head(2)
    for bad, shown in ((frame, "not a DataFrame"), (dict(pairs[:2]), "not a dict"),
                       (frame.to_dict("records"), "pair 0 is \"{'query'"), ([{"alpha", "beta"}], "pair 0 is ")):
        with pytest.raises(InputError, match=f"pairs must be \\(query, document\\) pairs(,|:) {shown}"):
            ce_ray.predict(str(spread), bad)
    # CrossEncoder.predict's batch_size, device, pool, chunk_size and processing_kwargs are refused, naming what
    # does their work here, as is a loaded model. Its activation_fn (also by its old name, activation_fct),
    # convert_to_tensor and convert_to_numpy are taken (Identity: the logits), and its arguments without effect
    # here are taken.
    import torch
    from sentence_transformers import CrossEncoder

    for name, value, instead in (("batch_size", 32, "predict's batches here are of tokens.*give batch_tokens"),
                                 ("device", "cuda:0", "use_gpu=False keeps them on CPUs, replicas sets how many"),
                                 ("pool", {}, "replicas sets how many"), ("chunk_size", 8, "rows_per_block"),
                                 ("processing_kwargs", {}, "max_length sets the truncation")):
        with pytest.raises(ConfigError, match=f"^{name}: .*{instead}"):
            ce_ray.predict(str(spread), pairs, **{name: value})
    anchor_model = CrossEncoder(str(spread), device="cpu")
    with pytest.raises(ConfigError, match=r"^model: .* not a loaded CrossEncoder: save it \(model.save\(path\)\)"):
        ce_ray.predict(anchor_model, pairs)
    # A function the replicas would not build as given (by its class, with no argument) is refused, not replaced
    # by another: Hardtanh(-2, 2) ran as Hardtanh(), clipping the logits at 1.
    for function in (lambda logits: logits * 2, torch.nn.Hardtanh(-2.0, 2.0), torch.nn.Softmax(dim=0)):
        with pytest.raises(ConfigError, match=r"activation_fn .*: each replica builds its activation from a class, "
                                              r"with no argument .* apply it to them"):
            ce_ray.predict(str(spread), pairs, activation_fn=function)
    logits = ce_ray.predict(str(spread), pairs, activation_fct=torch.nn.Identity(), convert_to_tensor=True,
                            show_progress_bar=False, convert_to_numpy=True, apply_softmax=False, num_workers=2)
    anchor = anchor_model.predict(pairs, activation_fn=torch.nn.Identity())
    # on the CPU, wherever the model runs: the replicas that scored the pairs are elsewhere on the cluster
    assert isinstance(logits, torch.Tensor) and logits.device.type == "cpu" and (logits.numpy() != scores).all()
    np.testing.assert_allclose(logits.numpy(), anchor, atol=1e-5)
    np.testing.assert_allclose(logits.sigmoid().numpy(), scores, atol=1e-6)
    with pytest.raises(ConfigError, match=r"^activation \(--activation\) 'os\.system' is not torch's \(.*\): code from "
                                          r"elsewhere runs only with trust_remote_code \(--trust-remote-code\)$"):
        ce_ray.predict(str(spread), pairs, activation="os.system")
    with pytest.raises(ConfigError, match=r"^activation \(--activation\) 'torch\.nn\.Nothing' is no class"):
        ce_ray.predict(str(spread), pairs, activation="torch.nn.Nothing")
    # One pair gives its score alone, as predict does (the model a pathlib.Path, as CrossEncoder takes one);
    # what is not a pair fails naming it.
    one = ce_ray.predict(spread, pairs[0])
    assert np.ndim(one) == 0 and one == pytest.approx(scores[0], abs=1e-6)
    # convert_to_numpy=False: predict's list of one tensor a pair, and of one pair its tensor
    assert ce_ray.predict(spread, [], convert_to_numpy=False) == []
    one = ce_ray.predict(spread, pairs[0], convert_to_numpy=False)
    assert isinstance(one, torch.Tensor) and one.ndim == 0 and float(one) == pytest.approx(scores[0], abs=1e-6)
    for bad, shown in (([("q", "d", "x")], "pair 0 is \"\\('q', 'd', 'x'\\)\""), ([("q", "d"), ("q2",)], "pair 1"),
                       (["ab", "cd", "ef"], "pair 0 is 'ab'")):
        with pytest.raises(InputError, match=f"pairs must be \\(query, document\\) pairs: {shown}"):
            ce_ray.predict(str(spread), bad)
    # A Dataset without the columns fails naming them, from score and from rerank: at the call where the Dataset
    # knows its columns (the error came from a task's traceback once the rows were scored), else in the task.
    import ray.data

    rows = ray.data.from_items([{"q": "a query", "document": "a document"}])
    with pytest.raises(InputError, match=r"the rows have no column 'query' \(columns: q, document"):
        score(rows, model=str(spread))
    with pytest.raises(InputError, match=r"the rows have no column 'query_id' \(columns: q, document"):
        ce_ray.rerank(rows, model=str(spread), query_column="q")
    with pytest.raises(InputError, match=r"^the rows have no column 'query' \(columns: q, document"):
        with ce_ray.surfaced_errors():  # where the Dataset is consumed: Ray's RayTaskError, else
            score(rows.map(lambda row: row), model=str(spread)).materialize()
    with pytest.raises(InputError, match=r"come as a Ray Dataset \(ray.data.from_pandas\(frame\), .*not a DataFrame"):
        ce_ray.rerank(pairs_df, model=str(spread))


def test_a_models_saved_prompt_goes_before_each_query_as_predict_puts_it(ray_local, pairs_df, tmp_path):
    """A CrossEncoder saved with prompts and a default prompt (sentence-transformers' `prompts`,
    `default_prompt_name`): predict puts the default before each query, and so does ce-ray, unless a prompt
    (empty for none) or another saved prompt's name is given. Without it the scores differed by up to 0.74."""
    import ce_ray
    from sentence_transformers import CrossEncoder

    from conftest import build_tiny_model

    CrossEncoder(str(build_tiny_model(tmp_path / "tiny", init_range=0.5)), device="cpu",
                 prompts={"rerank": "Judge the relevance: ", "short": "q: "},
                 default_prompt_name="rerank").save(str(tmp_path / "prompted"))
    model = str(tmp_path / "prompted")
    cross_encoder = CrossEncoder(model, device="cpu")
    pairs = list(zip(pairs_df["query"], pairs_df["document"]))[:60]
    scores = {}
    for name, settings in (("default", {}), ("none", {"prompt": ""}), ("short", {"prompt_name": "short"})):
        scores[name] = ce_ray.predict(model, pairs, **settings)
        expected = cross_encoder.predict(pairs, show_progress_bar=False, **settings)
        assert np.abs(scores[name] - expected).max() <= 1e-5, name
    assert np.abs(scores["default"] - scores["none"]).max() > 0.1  # the prompt changes the scores
    with pytest.raises(ConfigError, match=r"^prompt_name \(--prompt-name\) 'long': the model's prompts are "
                                          r"\['rerank', 'short'\]$"):
        ce_ray.predict(model, pairs, prompt_name="long")
    with pytest.raises(ConfigError, match=r"^set prompt \(--prompt\) or prompt_name \(--prompt-name\), not both$"):
        ce_ray.predict(model, pairs, prompt="q: ", prompt_name="short")
    # Without modules.json, CrossEncoder builds a folder from its transformers files alone and reads neither the
    # prompts nor an activation of config_sentence_transformers.json: ce-ray gave the prompt and the identity.
    settings_file = tmp_path / "prompted" / "config_sentence_transformers.json"
    settings = json.loads(settings_file.read_text()) | {"activation_fn": "torch.nn.modules.linear.Identity"}
    settings_file.write_text(json.dumps(settings))
    (tmp_path / "prompted" / "modules.json").unlink()
    expected = CrossEncoder(model, device="cpu").predict(pairs, show_progress_bar=False)
    assert np.abs(ce_ray.predict(model, pairs) - expected).max() <= 1e-5


def test_the_max_length_is_read_as_cross_encoder_reads_it(tmp_path):
    """sentence_bert_config.json's max_seq_length counts in CrossEncoder's layout alone, modules.json beside it, as
    its config_sentence_transformers.json does: a folder without builds from its transformers files, and its pairs
    are cut at the tokenizer's length. ce-ray cut them at the file's, other scores than predict's."""
    from sentence_transformers import CrossEncoder

    from ce_ray.score import scoring_model

    from conftest import build_tiny_model

    model = tmp_path / "saved"
    CrossEncoder(str(build_tiny_model(tmp_path / "tiny")), device="cpu", max_length=24).save(str(model))
    module = json.loads((model / "sentence_bert_config.json").read_text())
    (model / "sentence_bert_config.json").write_text(json.dumps(module | {"max_seq_length": 16}))
    for layout in ("CrossEncoder's", "transformers'"):
        expected = CrossEncoder(str(model), device="cpu").max_length
        assert scoring_model(ScoreConfig(model=str(model))).config.max_length == expected, layout
        (model / "modules.json").unlink(missing_ok=True)
    assert expected == 24  # the tokenizer's, not the file's 16


def test_the_tokenizer_settings_of_cross_encoders_layout_are_read_as_it_reads_them(tmp_path):
    """In CrossEncoder's layout, sentence_bert_config.json's do_lower_case puts a lowercasing before a tokenizer that
    does not lowercase, and its processor_kwargs (or tokenizer_args, their older name) and processing_kwargs give
    the max length. ce-ray read its max_seq_length alone: a cased tokenizer over a lowercase vocabulary made every
    word of `What Is PARIS` [UNK], and pairs were cut at 512 tokens, not 24: other scores than predict's. So were they
    where processing_kwargs' `common` settings gave it (sentence-transformers 6 gives a tokenizer those over the
    `text` ones). Settings that cut or build the pairs otherwise than ce-ray (`truncation: only_second`, which keeps
    the query whole) are refused before any work: their pairs were scored cut otherwise than predict's."""
    import pyarrow as pa
    from sentence_transformers import CrossEncoder

    from ce_ray.batching import pair_encoder
    from ce_ray.model_folder import ModelError
    from ce_ray.score import scoring_model

    from conftest import build_tiny_model

    model = tmp_path / "saved"
    CrossEncoder(str(build_tiny_model(tmp_path / "tiny")), device="cpu").save(str(model))
    # A cased tokenizer over the uncased vocabulary: transformers reads the casing from both files.
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["normalizer"] |= {"lowercase": False, "strip_accents": False}
    (model / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps(config | {"do_lower_case": False, "strip_accents": False}))
    module = json.loads((model / "sentence_bert_config.json").read_text())
    pair = ("What Is PARIS " + "Word " * 30, "Paris Is The Capital " + "City " * 30)
    for settings in ({"do_lower_case": True}, {"tokenizer_args": {"model_max_length": 24}},
                     {"processor_kwargs": {"model_max_length": 24}}, {"processing_kwargs": {"text": {"max_length": 24}}},
                     {"processing_kwargs": {"common": {"max_length": 24}}},
                     {"processing_kwargs": {"text": {"max_length": 40}, "common": {"max_length": 24}}},
                     {"do_lower_case": True, "max_seq_length": 24}):
        (model / "sentence_bert_config.json").write_text(json.dumps(module | settings))
        expected = CrossEncoder(str(model), device="cpu")[0].preprocess([list(pair)])["input_ids"][0].tolist()
        max_length = scoring_model(ScoreConfig(model=str(model))).config.max_length
        ids, _ = pair_encoder(str(model)).encode(pa.array(pair[:1]), pa.array(pair[1:]), max_length)
        assert ids.to_pylist() == [expected], settings
        assert len(expected) == (24 if "do_lower_case" not in settings or "max_seq_length" in settings else 70)
        assert (100 in expected) == ("do_lower_case" not in settings), settings  # [UNK]: the cased words
    for processing, said in (({"common": {"truncation": "only_second"}}, "with truncation 'only_second'"),
                             ({"text": {"truncation": False}}, "with truncation False"),
                             ({"text": {"add_special_tokens": False}}, "without special tokens")):
        (model / "sentence_bert_config.json").write_text(json.dumps(module | {"processing_kwargs": processing}))
        with pytest.raises(ModelError, match=f"{model} (cuts|builds) its pairs {said} "):
            scoring_model(ScoreConfig(model=str(model)))


def test_the_activation_is_read_as_cross_encoder_reads_it(tmp_path):
    """config.json's `sentence_transformers` activation, and sentence-transformers 3's key only where that names
    none: an activation there that CrossEncoder does not trust (not torch's) gives its default, sigmoid, and ce-ray
    took the old key's identity instead, logits where predict gives probabilities."""
    from sentence_transformers import CrossEncoder

    from ce_ray.score import scoring_model

    from conftest import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    config = json.loads((model / "config.json").read_text())
    identity = "torch.nn.modules.linear.Identity"
    for block, expected in (({"activation_fn": "mypackage.Scaled"}, "Sigmoid"), ({}, "Identity")):
        (model / "config.json").write_text(json.dumps(
            config | {"sentence_transformers": block, "sbert_ce_default_activation_function": identity}))
        assert type(CrossEncoder(str(model), device="cpu").activation_fn).__name__ == expected
        assert scoring_model(ScoreConfig(model=str(model))).activation.endswith(f".{expected}"), block


def test_a_hub_id_is_read_from_its_snapshot_as_a_local_folder(pairs_df, tmp_path):
    """`--model org/name`: the repository's snapshot in the hub's cache (here made by hand, offline), read as a
    local folder is: CrossEncoder's activation (Identity), max length and default prompt from its files, and
    ce-ray's BERT in the replicas. A hub id was passed to transformers as it was: sigmoid scores, the prompt
    and the max length left out, transformers' BERT."""
    from sentence_transformers import CrossEncoder

    from conftest import build_tiny_model

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--ce-ray-test--tiny-reranker"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    CrossEncoder(str(build_tiny_model(tmp_path / "tiny", init_range=0.5)), device="cpu", max_length=24,
                 activation_fn=__import__("torch").nn.Identity(), prompts={"rerank": "Judge: "},
                 default_prompt_name="rerank").save(str(repo / "snapshots" / commit))
    pairs_df.head(40).to_parquet(tmp_path / "pairs.parquet")
    hub = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = run_cli("score", "--model", "ce-ray-test/tiny-reranker", "--input", str(tmp_path / "pairs.parquet"),
                     "--output", str(tmp_path / "out"), env=hub)
    assert result.returncode == 0, result.stderr[-3000:]
    import huggingface_hub.constants

    from ce_ray.model import load_scoring_model

    cache, offline = huggingface_hub.constants.HF_HUB_CACHE, huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_CACHE, huggingface_hub.constants.HF_HUB_OFFLINE = hub["HF_HUB_CACHE"], True
    try:
        cross_encoder = CrossEncoder("ce-ray-test/tiny-reranker", device="cpu")
        assert load_scoring_model("ce-ray-test/tiny-reranker", device="cpu").tokenizer is None  # ce-ray's BERT
    finally:
        huggingface_hub.constants.HF_HUB_CACHE, huggingface_hub.constants.HF_HUB_OFFLINE = cache, offline
    frame = pairs_df.head(40)
    expected = cross_encoder.predict(list(zip(frame["query"], frame["document"])), show_progress_bar=False)
    scores = read_results(tmp_path / "out").sort_values("pair_id")["score"].to_numpy()
    assert (expected < 0).any()  # logits: Identity, not sigmoid
    assert np.abs(scores - expected).max() <= 1e-5


def test_rank_orders_the_documents_as_cross_encoder_rank_does(ray_local, tiny_model):
    """`ce_ray.rank(model, query, documents)`: CrossEncoder.rank's list of `corpus_id`, `score` (and `text`) on the
    cluster, the same order and scores as rank's on the L12 reranker, a document given twice (equal scores) in the
    documents' order; its arguments as rank's and predict's (refused, or taken and changing nothing)."""
    import torch
    from sentence_transformers import CrossEncoder

    import ce_ray

    wikiqa = wikiqa_pairs("test", 60)
    question = wikiqa[wikiqa["query_id"] == "Q0"]
    query, documents = question["query"].iloc[0], list(question["document"])
    documents.insert(1, documents[4])  # a tie: rank's stable sort keeps the earlier first
    cross_encoder = CrossEncoder(str(L12), device="cpu")
    expected = cross_encoder.rank(query, documents, return_documents=True, show_progress_bar=False)
    ranked = ce_ray.rank(L12, query, documents, return_documents=True)
    assert [row["corpus_id"] for row in ranked] == [row["corpus_id"] for row in expected]
    assert [row["text"] for row in ranked] == [row["text"] for row in expected]
    assert all(type(row["score"]) is float for row in ranked)
    np.testing.assert_allclose([row["score"] for row in ranked], [row["score"] for row in expected], atol=1e-5)
    tied = [row["corpus_id"] for row in ranked if row["text"] == documents[1]]
    assert tied == [1, 5], "equal scores keep the documents' order"
    # Copies that the token budget's batches part (after 8 other documents): scored in batches of other widths,
    # they differed in the ninth digit, and the last copy came first.
    copies = list(wikiqa["document"].iloc[:8]) + [wikiqa["document"].iloc[1]] * 2
    expected = cross_encoder.rank(wikiqa["query"].iloc[0], copies, show_progress_bar=False)
    ranked = ce_ray.rank(L12, wikiqa["query"].iloc[0], copies)
    assert [row["corpus_id"] for row in ranked] == [row["corpus_id"] for row in expected]
    assert len({row["score"] for row in ranked if row["corpus_id"] in (1, 8, 9)}) == 1
    # top_k, by keyword as rank takes them all; the logits with activation_fn; rank's and predict's arguments without
    # effect taken
    logits = ce_ray.rank(model=L12, query=query, documents=iter(documents[:4]), top_k=2,
                         activation_fn=torch.nn.Identity(), convert_to_tensor=True, convert_to_numpy=False,
                         apply_softmax=True, num_workers=2)
    expected = cross_encoder.rank(query, documents[:4], top_k=2, activation_fn=torch.nn.Identity())
    assert [sorted(row) for row in logits] == [["corpus_id", "score"]] * 2
    assert [row["corpus_id"] for row in logits] == [row["corpus_id"] for row in expected]
    np.testing.assert_allclose([row["score"] for row in logits], [row["score"] for row in expected], atol=1e-4)
    assert ce_ray.rank(tiny_model, query, []) == cross_encoder.rank(query, []) == []
    assert ce_ray.rank(tiny_model, query, documents, top_k=0) == []
    with pytest.raises(ConfigError, match=r"top_k must be a whole number >= 0 \(None: all the documents\), got -1"):
        ce_ray.rank(tiny_model, query, documents, top_k=-1)
    with pytest.raises(ConfigError, match="^batch_size: predict's batches here are of tokens"):
        ce_ray.rank(tiny_model, query, documents, batch_size=32)


def test_rank_puts_the_documents_it_could_not_score_last(ray_local, tiny_model):
    """With `on_invalid="reject"`, a document that cannot be scored (None) has a NaN score, which compares neither
    above nor below any other: rank's sort left it where it fell and ordered the others around it wrongly (the best
    document third). It now comes last, the others in CrossEncoder.rank's order; predict gives it NaN."""
    from sentence_transformers import CrossEncoder

    import ce_ray

    query = "what is ray"
    documents = ["a fish", "ray is a framework for distributed python", None, "x", "another doc about ray", "the sea"]
    ranked = ce_ray.rank(tiny_model, query, documents, on_invalid="reject")
    scored = [number for number, document in enumerate(documents) if document is not None]
    expected = CrossEncoder(str(tiny_model), device="cpu").rank(query, [documents[n] for n in scored])
    assert [row["corpus_id"] for row in ranked] == [scored[row["corpus_id"]] for row in expected] + [2]
    assert np.isnan(ranked[-1]["score"])
    assert np.isnan(ce_ray.predict(tiny_model, [(query, documents[2]), (query, "x")], on_invalid="reject")).tolist() \
        == [True, False]


def test_predict_takes_the_pairs_by_cross_encoders_names_and_gives_its_types(ray_local, tiny_model):
    """CrossEncoder.predict's pairs by its names for them (`inputs`, `sentences` before) failed with Python's
    missing-argument error; and no pairs gave a float32 array where predict gives numpy's default, float64. The
    types and shapes of predict's answers, for no pairs and for one, as a numpy array, a tensor or a list."""
    from sentence_transformers import CrossEncoder

    import ce_ray

    cross_encoder = CrossEncoder(str(tiny_model), device="cpu")
    pair, other = ("what is a reranker", "a model that orders documents"), ("q", "d")

    def kind(answer):  # the type, dtype and shape of an answer (a list: of each item)
        if isinstance(answer, list):
            return ["list"] + [kind(item) for item in answer]
        return type(answer).__name__, str(answer.dtype), tuple(answer.shape)

    for returned in ({}, {"convert_to_tensor": True}, {"convert_to_numpy": False}):
        assert kind(ce_ray.predict(tiny_model, inputs=[], **returned)) == kind(cross_encoder.predict([], **returned))
    assert ce_ray.predict(tiny_model, []).dtype == np.float64
    one = ce_ray.predict(tiny_model, inputs=pair, convert_to_tensor=True)
    expected = kind(cross_encoder.predict(inputs=pair, convert_to_tensor=True))
    assert kind(one) == expected == ("Tensor", "torch.float32", ())
    both = ce_ray.predict(tiny_model, sentences=[pair, other])
    assert kind(both) == kind(cross_encoder.predict([pair, other])) == ("ndarray", "float32", (2,))
    assert float(one) == pytest.approx(both[0], abs=1e-6)
    with pytest.raises(TypeError, match=r"takes the pairs once, .* as pairs, inputs or sentences: got pairs, inputs"):
        ce_ray.predict(tiny_model, [pair], inputs=[pair])
    with pytest.raises(TypeError, match=r"takes the pairs once, .*: none given"):
        ce_ray.predict(tiny_model, convert_to_tensor=True)


def test_show_progress_bar_shows_ray_datas_progress_for_the_call(ray_local, tiny_model):
    """`show_progress_bar=True` was taken and changed nothing: it shows Ray Data's progress for the call (logged
    where the output is no terminal) where Ray Data's setting hides it, and leaves that setting as it was."""
    import logging

    import ray.data

    import ce_ray

    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("ray.data").addHandler(handler)
    context = ray.data.DataContext.get_current()
    before, context.enable_progress_bars = context.enable_progress_bars, False
    try:
        ce_ray.predict(tiny_model, [("a query", "a document")] * 3, show_progress_bar=True)
        assert any(line.startswith("Total Progress") for line in logged), logged
        assert context.enable_progress_bars is False
    finally:
        context.enable_progress_bars = before
        logging.getLogger("ray.data").removeHandler(handler)


def test_a_row_without_either_text_is_rejected_for_its_query_and_a_nan_has_no_text():
    """The reason names the query where both texts are null, the document where only it is; NaN, how pandas writes a
    missing value, is no text ("is null"), as a null is."""
    from ce_ray.batching import REJECT, pair_encoder, text_column, tokenize_table

    table = pa.table({"query": pa.array([None, None, "q", "q"], pa.string()),
                      "document": pa.array([None, "d", None, "d"], pa.string())})
    out = tokenize_table(table, pair_encoder(str(L12), "hf"), "query", "document", 32)
    assert out.column(REJECT).to_pylist() == ["query is null", "query is null", "document is null", None]
    text, reasons = text_column(pa.table({"query": pa.array([1.5, float("nan"), None])}), "query")
    assert reasons.tolist() == ["query is float, not text", "query is null", "query is null"]
    assert text.to_pylist() == ["1.5", None, None]


def test_token_budget_batches_hold_every_row_once_within_the_budget():
    """`batch_tokens` bounds a forward pass's padded tokens (what the out-of-memory message tells to lower): rows x
    the batch's longest row <= budget, unless one row alone is past it."""
    from ce_ray.batching import token_budget_batches

    lengths = np.random.default_rng(0).integers(1, 300, size=500)
    batches = list(token_budget_batches(lengths, 1000))
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for batch in batches:
        assert len(batch) * lengths[batch].max() <= 1000 or len(batch) == 1
        assert lengths[batch[0]] == lengths[batch].max()


def _tokenized_pairs(model, rows=40, rejected=(3, 7)) -> pa.Table:
    """`rows` WikiQA pairs tokenized for `model`, those at `rejected` without a document."""
    from ce_ray.batching import pair_encoder, tokenize_table

    frame = wikiqa_pairs("test", rows)[["query", "document"]].copy()
    frame.loc[list(rejected), "document"] = None
    return tokenize_table(pa.Table.from_pandas(frame, preserve_index=False), pair_encoder(str(model)),
                          "query", "document", 512)


def test_a_cpu_call_tells_its_progress_batch_by_batch_in_pairs(tiny_model):
    """`batch_done` (a CPU replica's progress within a call) gets each batch's rows, so that the progress line
    counts pairs, each valid one once."""
    from ce_ray.replica import Scorer

    told = []
    Scorer(ScoreConfig(model=str(tiny_model), batch_tokens=300), device="cpu")(_tokenized_pairs(tiny_model),
                                                                                told.append)
    assert len(told) > 1 and sum(told) == 38


def test_a_model_giving_non_finite_scores_says_how_many(tmp_path):
    """The count is of the valid rows whose score is not finite (here all 38; the 2 rejected rows, NaN in the
    scores too, are not counted)."""
    from safetensors.torch import load_file, save_file

    from ce_ray.replica import Scorer

    model = build_tiny_model(tmp_path / "model")
    weights = load_file(model / "model.safetensors")
    weights["classifier.bias"][:] = float("nan")  # a broken model: every score NaN
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r" gave 38 non-finite score\(s\) in float32$"):
        Scorer(ScoreConfig(model=str(model), dtype="float32", batch_tokens=300), device="cpu")(_tokenized_pairs(model))


def test_ids_written_as_whole_floats_are_their_integers_text_and_null_types_read_as_text():
    """A query id 7.00 or -3.0 (a float column written as text) is the query 7 or -3, as 7.0 is: a rerank took it
    for another query. A column of nulls reads as text, keeping its list kind."""
    from ce_ray.arrow_types import nulls_as_text, whole_number_text

    ids = pa.array(["7.0", "7.00", "-3.0", "-3", "0042", "7.5", "7", "1e3", "-0.50"])
    assert whole_number_text(ids).to_pylist() == ["7", "7", "-3", "-3", "0042", "7.5", "7", "1e3", "-0.50"]
    assert nulls_as_text(pa.null()) == pa.string()
    assert nulls_as_text(pa.large_list(pa.null())) == pa.large_list(pa.string())
    assert nulls_as_text(pa.list_(pa.null())) == pa.list_(pa.string())
    assert nulls_as_text(pa.struct([("a", pa.null()), ("b", pa.int64())])) == pa.struct(
        [("a", pa.string()), ("b", pa.int64())])
