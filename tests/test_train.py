"""Training on Ray Train (DDP on CPU, gloo): data parallelism, resume after a killed worker, the saved
model against CrossEncoder, training pairs from BEIR with BM25 hard negatives, bad labels."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DURATION, SCIFACT, build_tiny_model, spread_model, wikiqa_pairs

from ce_ray import checkpoints, train_data
from ce_ray.batching import IDS, pair_encoder

pytestmark = pytest.mark.timeout(600)


def _train_module():
    import ce_ray.train  # noqa: F401  (the package exports the function under the same name)

    return sys.modules["ce_ray.train"]


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def still_model(tmp_path_factory):
    """A tiny reranker without dropout, so that runs can be compared weight for weight."""
    path = build_tiny_model(tmp_path_factory.mktemp("still"), seed=1)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    frame = wikiqa_pairs("train", 400)[["query", "document", "label"]]
    frame = pd.concat([frame[frame.label == 1].head(24), frame[frame.label == 0].head(40)])
    frame = frame.sample(frac=1.0, random_state=0).astype({"label": "float32"})
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    frame.to_parquet(path)
    return path


def _sixteen_pairs_for_three_epochs(still_model, pairs_file, folder) -> dict:
    """The data-parallel runs' settings: the same 16 pairs for 3 epochs."""
    sixteen = folder / "pairs.parquet"
    pd.read_parquet(pairs_file).head(16).to_parquet(sixteen)
    return dict(model=str(still_model), train_data=str(sixteen), epochs=3, lr=1e-3, log_every=1)


@pytest.fixture(scope="module")
def data_parallel_runs(ray_local, still_model, pairs_file, tmp_path_factory):
    """The same 16 pairs for 3 epochs: 2 workers x 8 per device, and 1 worker x 16. Every epoch is one
    optimizer step over all 16 pairs, so averaged gradients make both runs take the same steps."""
    from ce_ray.config import TrainConfig

    common = _sixteen_pairs_for_three_epochs(still_model, pairs_file, tmp_path_factory.mktemp("sixteen"))
    out = tmp_path_factory.mktemp("dp")
    started = time.perf_counter()
    two = _train_module().train(TrainConfig(**common, output=str(out / "two"), num_workers=2, batch_size=8))
    one = _train_module().train(TrainConfig(**common, output=str(out / "one"), num_workers=1, batch_size=16))
    # Forward passes of at most 160 padded tokens: 1 to 3 pairs each, a different number on each worker.
    passes = _train_module().train(TrainConfig(**common, output=str(out / "passes"), num_workers=2, batch_size=8,
                                               batch_tokens=160))
    print(f"three data-parallel runs: {time.perf_counter() - started:.1f}s")
    return two, one, passes


def test_replicas_stay_identical_and_match_one_worker_with_twice_the_batch(data_parallel_runs, still_model):
    two, one, _ = data_parallel_runs
    assert two.steps == one.steps == 3
    assert two.replica_divergence == 0.0  # both replicas hold the same weights after 3 steps
    start, w2, w1 = _weights(still_model), _weights(two.model_path), _weights(one.model_path)
    moved = _max_diff(start, w2)
    assert moved > 1e-3  # training changed the weights...
    assert _max_diff(w2, w1) < 1e-5  # ...and both runs changed them the same way
    losses = [entry["loss"] for entry in two.log]
    assert losses == pytest.approx([entry["loss"] for entry in one.log], abs=1e-5)
    # The learning rate falls linearly to 0 at the last step (no warmup), as each step's log line says it.
    assert [entry["lr"] for entry in one.log if "lr" in entry] == pytest.approx([1e-3 * 2 / 3, 1e-3 / 3, 0.0])
    # A checkpoint at each epoch's end (save_every unset), the latest two kept (keep_checkpoints).
    kept = sorted(p.name for p in (Path(one.model_path) / "checkpoints" / "one").glob("checkpoint_*") if p.is_dir())
    assert kept == ["checkpoint_0000002", "checkpoint_0000003"]
    # Each log line says what share of its time the worker waited for data.
    assert all(0.0 <= entry["data_wait"] < 1.0 for entry in two.log + one.log if "samples_per_second" in entry)
    # The summary says where the run's seconds went: its phases add up to them, and Ray Train's part holds the
    # workers' start (their processes' within it), the model's setup, the steps and the checkpoints' saves.
    for run in (two, one):
        phases = run.phases
        assert min(phases.values()) >= 0 and 0 < phases["steps"] < phases["fit"]
        assert phases["start"] + phases["data"] + phases["fit"] + phases["output"] == pytest.approx(run.seconds,
                                                                                                   abs=0.05)
        assert phases["workers"] > 0 and phases["model"] > 0 and phases["checkpoints"] > 0
        assert phases["worker_process"] <= phases["workers"] and phases["eval"] == 0.0  # no eval data
        inside = phases["workers"] + phases["model"] + phases["steps"] + phases["checkpoints"]
        assert inside <= phases["fit"] + 0.05  # the worker's clock and the driver's: one node's
        summary = "\n".join(run.lines())
        assert (f"Ray Train {phases['fit']:.1f}: workers' start {phases['workers']:.1f}, model {phases['model']:.1f}, "
                f"steps {phases['steps']:.1f}, saves {phases['checkpoints']:.1f}; output") in summary


def test_a_step_clips_its_gradients_and_the_learning_rate_follows_transformers_linear_schedule():
    """The recipe's step, as CrossEncoderTrainer takes it: the gradients clipped to max_grad_norm as a whole, then
    the update, then the schedule: transformers' linear one, rising over the warmup and falling to 0 at the end."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    train = _train_module()
    for warmup, total in ((0, 4), (2, 7), (3, 3)):
        rates = []
        for schedule in (lambda o: torch.optim.lr_scheduler.LambdaLR(o, train.linear_schedule(warmup, total)),
                         lambda o: get_linear_schedule_with_warmup(o, warmup, total)):
            optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            scheduler = schedule(optimizer)
            rates.append([scheduler.get_last_lr()[0]] + [(optimizer.step(), scheduler.step(),
                                                          scheduler.get_last_lr()[0])[-1] for _ in range(total)])
        assert rates[0] == pytest.approx(rates[1]) and rates[0][-1] == 0.0

    for max_grad_norm, moved in ((1.0, [0.06, 0.08]), (0.0, [0.3, 0.4])):  # a gradient of norm 5; 0: no clipping
        layer = torch.nn.Linear(2, 1, bias=False)
        layer.weight.data.zero_()
        layer.weight.grad = torch.tensor([[3.0, 4.0]])
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        train.optimizer_step(layer, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                             max_grad_norm)
        assert (-layer.weight.data[0]).tolist() == pytest.approx(moved) and layer.weight.grad is None


def test_ray_trains_part_is_told_from_the_workers_marks_and_without_them_as_its_steps():
    """The worker's wall clock against the driver's: a worker on another node, its clock behind or ahead, gives no
    negative phase; a process Ray started before the run counts as there at fit's call. Without the worker's marks
    the summary says Ray Train's seconds and its steps'."""
    train = _train_module()
    fit_called = 1000.0
    marks = {"process": 990.0, "function": 1005.0, "loop": 1006.5, "eval": 0.0, "checkpoints": 0.25}
    assert train.fit_phases(marks, fit_called) == {"workers": 5.0, "worker_process": 0.0, "model": 1.5, "eval": 0.0,
                                                    "checkpoints": 0.25}
    behind = train.fit_phases(marks | {"process": 995.0, "function": 998.0, "loop": 999.0}, fit_called)
    assert behind["workers"] == behind["worker_process"] == 0.0 and behind["model"] == 1.0
    assert train.fit_phases(marks | {"process": 1002.0}, fit_called)["worker_process"] == 2.0
    assert train.fit_phases(None, fit_called) == {} == train.fit_phases(marks | {"loop": None}, fit_called)
    phases = {"start": 0.6, "data": 4.4, "fit": 34.1, "steps": 8.9, "output": 0.2}
    assert train.phases_text(phases) == "start 0.6, data 4.4, Ray Train 34.1 of which steps 8.9, output 0.2"
    phases |= train.fit_phases(marks, fit_called)
    assert train.phases_text(phases) == ("start 0.6, data 4.4, Ray Train 34.1: workers' start 5.0, model 1.5, "
                                         "steps 8.9, saves 0.2; output 0.2")
    assert "eval 2.0, saves" in train.phases_text(phases | {"eval": 2.0})


def test_batches_cut_into_token_budget_passes_train_the_same_weights(data_parallel_runs):
    two, _, passes = data_parallel_runs
    assert passes.steps == two.steps == 3 and passes.replica_divergence == 0.0
    assert _max_diff(_weights(two.model_path), _weights(passes.model_path)) < 1e-5
    assert [e["loss"] for e in passes.log] == pytest.approx([e["loss"] for e in two.log], abs=1e-5)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_passes_train_the_same_weights_as_eager_ones(data_parallel_runs, still_model, pairs_file, tmp_path,
                                                              mode):
    """`compile`: the passes of 1 to 3 pairs (with padding, without, of one row) compiled forward and backward,
    under DDP with the workers skipping the gradient sync on all but their last pass, take the eager steps.
    reduce-overhead's CUDA graphs need a GPU; here it runs its wider, bucketed passes (padding masked)."""
    from ce_ray.config import TrainConfig

    _, _, passes = data_parallel_runs
    settings = _sixteen_pairs_for_three_epochs(still_model, pairs_file, tmp_path)
    compiled = _train_module().train(TrainConfig(**settings, output=str(tmp_path / "compiled"), num_workers=2,
                                                 batch_size=8, batch_tokens=160, compile=True, compile_mode=mode))
    assert compiled.steps == 3 and compiled.replica_divergence == 0.0
    assert compiled.compiled_graphs >= 2 and passes.compiled_graphs is None  # passes with a mask and without
    # No CUDA graphs on a CPU: every compiled graph runs without, and the summary says so.
    assert (compiled.cuda_graph_skips >= 2) if mode == "reduce-overhead" else compiled.cuda_graph_skips is None
    assert ("CUDA graphs skipped" in "\n".join(compiled.lines())) == (mode == "reduce-overhead")
    assert _max_diff(_weights(passes.model_path), _weights(compiled.model_path)) < 1e-6  # fused sums may round
    assert [e["loss"] for e in compiled.log] == pytest.approx([e["loss"] for e in passes.log], abs=1e-6)


def test_gradients_copied_out_of_graphs_keep_their_values_and_leave_the_first_pass_tensors_alone():
    """Between a step's passes under CUDA graphs the gradients become copies: the next pass accumulates into them,
    not into the tensors the first pass's backward gave (in a GPU's graph memory, which its replay writes over)."""
    import torch

    train = _train_module()
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    train.gradients_out_of_graphs(model)  # before any backward: nothing to copy
    model(torch.tensor([[1.0, -2.0, 0.5]])).sum().backward()
    first = {name: p.grad for name, p in model.named_parameters()}
    values = {name: grad.clone() for name, grad in first.items()}
    train.gradients_out_of_graphs(model)
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, values[name]) and p.grad.data_ptr() != first[name].data_ptr()
    model(torch.tensor([[1.0, -2.0, 0.5]])).sum().backward()  # the second pass: the same gradient again
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, 2 * values[name]) and torch.equal(first[name], values[name])


def test_cuda_graph_passes_come_in_a_few_widths_and_compile_settings_are_checked():
    from ce_ray.config import ConfigError, DeepSpeedConfig, TrainConfig

    lengths = np.array([40, 33, 31, 7, 500, 512])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = pa.ListArray.from_arrays(offsets.astype(np.int32), np.arange(1, offsets[-1] + 1, dtype=np.int32))
    table = pa.table({train_data.IDS: ids, train_data.LABEL: pa.array(np.ones(len(lengths), np.float32))})
    graphs = TrainConfig(batch_size=2, compile=True, compile_mode="reduce-overhead", group_by_length=True)
    widths = {}
    for config in (graphs, dataclasses.replace(graphs, compile_mode="default")):
        batches = list(train_data.micro_batches(iter([table]), config, 0, 0, 0, pad_id=0, max_width=512))
        widths[config.compile_mode] = sorted(inputs["input_ids"].shape[1] for [(inputs, _)] in batches)
        for [(inputs, _)] in batches:  # the real tokens are the same whatever the width
            assert sorted(inputs["attention_mask"].sum(axis=1)) in ([7, 31], [33, 40], [500, 512])
    assert widths == {"reduce-overhead": [32, 64, 512], "default": [31, 40, 512]}
    # Never past the model's max length, never below a row's length.
    assert list(train_data.bucketed_widths(np.array([500, 7, 64]), 32, 500)) == [500, 32, 64]
    assert list(train_data.bucketed_widths(np.array([510]), 32, 500)) == [510]
    # The token budget counts the bucketed widths: 3 rows of 40 tokens fit 128 tokens, 3 of width 64 do not.
    tight = dataclasses.replace(graphs, batch_size=3, batch_tokens=128)
    three = pa.table({train_data.IDS: pa.ListArray.from_arrays(np.arange(0, 121, 40, dtype=np.int32),
                                                          np.arange(1, 121, dtype=np.int32)),
                      train_data.LABEL: pa.array(np.ones(3, np.float32))})
    eager_widths = dataclasses.replace(tight, compile_mode="default")
    for config, shapes in ((tight, [(2, 64), (1, 64)]), (eager_widths, [(3, 40)])):
        [passes] = train_data.micro_batches(iter([three]), config, 0, 0, 0, pad_id=0, max_width=512)
        assert [inputs["input_ids"].shape for inputs, _ in passes] == shapes
    with pytest.raises(ConfigError, match=r"^compile \(--compile\) works with DDP only"):
        TrainConfig(compile=True, deepspeed=DeepSpeedConfig()).validate()
    # It said `needs compile: true`, YAML's words, to a user of --compile-mode.
    with pytest.raises(ConfigError, match=r"^compile_mode \(--compile-mode\) 'reduce-overhead' needs compile "
                                          r"\(--compile\)$"):
        TrainConfig(compile_mode="reduce-overhead").validate()


def test_offloading_the_parameters_is_refused_below_zero_stage_3():
    """DeepSpeed reads offload_param at ZeRO stage 3 alone: at the default stage 2 a run of offload_params: true
    kept every parameter on each device, and said nothing."""
    from ce_ray.config import ConfigError, DeepSpeedConfig, TrainConfig

    for stage in (1, 2):
        with pytest.raises(ConfigError, match=rf"^deepspeed.offload_params works with ZeRO stage 3 alone, which "
                                              rf"partitions the parameters: set deepspeed.stage 3 \(it is {stage}\)$"):
            TrainConfig(deepspeed=DeepSpeedConfig(stage=stage, offload_params=True)).validate()
    TrainConfig(deepspeed=DeepSpeedConfig(stage=3, offload_params=True)).validate()


def test_bf16_and_deepspeeds_bf16_that_disagree_are_refused():
    """Under DeepSpeed its section's `bf16` decides: a run's `bf16: false` beside `deepspeed: {bf16: true}` trained in
    bf16, the run's setting taken and unused, without a word. Both set, they must agree. The messages name a setting
    by its flag too (they named bf16 and batch_tokens by their YAML keys alone); a key of the deepspeed section,
    which has no flag, by its key alone."""
    from ce_ray.config import ConfigError, DeepSpeedConfig, TrainConfig, load_config

    with pytest.raises(ConfigError, match=r"^bf16 \(--bf16\) False and deepspeed.bf16 True disagree: set one of "
                                          r"them$"):
        TrainConfig(bf16=False, deepspeed=DeepSpeedConfig(bf16=True)).validate()
    with pytest.raises(ConfigError, match=r"^batch_tokens \(--batch-tokens\) works with DDP only: DeepSpeed steps "
                                          r"after a fixed number of passes; use grad_accum \(--grad-accum\) with a "
                                          r"smaller batch_size \(--batch-size\) instead$"):
        TrainConfig(batch_tokens=4096, deepspeed=DeepSpeedConfig()).validate()
    with pytest.raises(ConfigError, match=r"^deepspeed\.stage: 4 is not one of 1, 2, 3$"):
        load_config(TrainConfig, None, {"deepspeed": {"stage": 4}})
    with pytest.raises(ConfigError, match=r"^deepspeed: expected a mapping, got int 3$"):
        load_config(TrainConfig, None, {"deepspeed": 3})
    for bf16, section in ((True, True), (None, False), (False, None)):
        TrainConfig(bf16=bf16, deepspeed=DeepSpeedConfig(bf16=section)).validate()


def test_a_label_column_beside_negative_columns_is_refused():
    """Rows of a query, a positive and negatives have no label column: a `label_column` given with
    `negative_columns` was taken and read nothing, without a word. Refused, naming both by their flags too."""
    from ce_ray.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match=r"^label_column \(--label-column\) names no column of rows of "
                                          r"negative_columns \(--negative-columns\), whose positive is labelled 1 "
                                          r"and each negative 0: leave it out$"):
        TrainConfig(negative_columns="neg", label_column="grade").validate()
    TrainConfig(negative_columns="neg").validate()


def test_passes_hold_the_batch_rows_under_the_token_budget(ray_local, tiny_model, pairs_file):
    import ray.data

    from ce_ray.config import TrainConfig

    table = train_data._tokenize_train_block(pa.table(pd.read_parquet(pairs_file)), pair_encoder(str(tiny_model)),
                                        "query", "document", "label", 128)
    shard = ray.data.from_arrow(train_data._kept_rows(table))
    config = TrainConfig(batch_size=8, length_window=4)
    part = train_data.worker_spans(shard, config, shard.count(), 1)[0][0]
    whole = list(train_data.micro_batches(train_data.shard_spans(part, config, 0, 0), config, epoch=0, rank=0, skip=0,
                                          pad_id=0))
    cut_config = dataclasses.replace(config, batch_tokens=200)
    windows = train_data.prefetched(train_data.shard_spans(part, cut_config, 0, 0))
    cut = list(train_data.micro_batches(windows, cut_config, 0, 0, 0, 0))
    assert len(whole) == len(cut) == 8 and all(len(batch) == 1 for batch in whole)
    assert sum(len(batch) for batch in cut) > len(cut)  # the budget did cut batches

    def rows(ids, mask):  # each pair as its unpadded token ids
        return sorted(tuple(r[m.astype(bool)]) for r, m in zip(ids, mask))

    for [(inputs, labels)], passes in zip(whole, cut):
        assert all(p["input_ids"].size <= 200 for p, _ in passes)
        # The same pairs and labels, only in other passes.
        assert rows(inputs["input_ids"], inputs["attention_mask"]) == sorted(
            r for p, _ in passes for r in rows(p["input_ids"], p["attention_mask"]))
        assert sorted(labels) == sorted(np.concatenate([l for _, l in passes]))


def _numbered_rows(rows: int, seed: int):
    """A Dataset of `rows` tokenized rows of random lengths, each row's first token its number."""
    import ray.data

    lengths = np.random.default_rng(seed).integers(2, 60, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    tokens = np.ones(offsets[-1], np.int32)
    tokens[offsets[:-1]] = np.arange(rows)
    return ray.data.from_arrow(pa.table({IDS: pa.ListArray.from_arrays(offsets, tokens),
                                         train_data.LABEL: np.zeros(rows, np.float32)}))


def _batches_of_rows(shard, config, epoch: int, skip: int = 0, rank: int = 0, workers: int = 1) -> list:
    """An epoch of a worker's batches as the sets of their rows (each row's first token is its number)."""
    parts, left_out = train_data.worker_spans(shard, config, shard.count() // workers, workers)
    spans = train_data.shard_spans(parts[rank], config, epoch, rank, left_out)
    return [frozenset(int(i) for p, _ in passes for i in p["input_ids"][:, 0])
            for passes in train_data.micro_batches(spans, config, epoch, rank, skip, pad_id=0)]


def test_each_epoch_deals_a_workers_rows_into_other_batches(ray_local, monkeypatch):
    """The set is shuffled once, so a worker's shard comes in the same order every epoch. Each epoch deals the
    rows of a span into windows afresh: dealt into the same windows, whose rows are grouped by length, the
    same rows met in a batch again (of the pairs of rows that shared a batch, 52% on WikiQA train, 87% here,
    shared one in the next epoch). The order is the seed's, the epoch's and the worker's alone, so a resumed
    run finds the batches it had not seen."""
    from ce_ray.config import TrainConfig

    rows = 2400
    shard = _numbered_rows(rows, seed=0)
    config = TrainConfig(batch_size=8, length_window=10)  # windows of 80 rows, as the default's of 800

    def met(batches) -> set:  # the pairs of rows that shared a batch
        return {(a, b) for batch in batches for a in batch for b in batch if a < b}

    epochs = [_batches_of_rows(shard, config, epoch) for epoch in range(3)]
    for batches in epochs:
        assert len(batches) == rows // 8 and sorted(r for batch in batches for r in batch) == list(range(rows))
    for before, after in zip(epochs, epochs[1:]):
        again = len(met(before) & met(after)) / len(met(before))
        assert again < 0.05, again  # dealt into the same windows: 0.87
    assert _batches_of_rows(shard, config, 1) == epochs[1]
    assert _batches_of_rows(shard, config, 1, skip=100) == epochs[1][100:]
    # A part of more rows than a span: each batch holds rows of one span, every row once an epoch.
    monkeypatch.setattr(train_data, "SPAN_ROWS", 1000)  # 12 windows of 80 rows
    batches = _batches_of_rows(shard, config, 0)
    assert sorted(r for batch in batches for r in batch) == list(range(rows))
    assert all(len({r // 960 for r in batch}) == 1 for batch in batches)


def _span_order(batches) -> list:
    """The spans (of 960 rows) in the order an epoch's batches took them."""
    return list(dict.fromkeys(min(batch) // 960 for batch in batches))


def test_each_epoch_takes_a_workers_spans_in_an_order_of_its_own(ray_local, monkeypatch):
    """A part of more rows than a span (65,536) came span by span in the same order every epoch: its first span's
    rows always trained first, its last span's last. The spans now come in an order of the seed, the epoch and
    the worker, a span's token ids at a time, and a resumed run still skips exactly the batches it trained."""
    from ce_ray.config import TrainConfig

    rows = 4800
    shard = _numbered_rows(rows, seed=1)
    config = TrainConfig(batch_size=8, length_window=10)
    monkeypatch.setattr(train_data, "SPAN_ROWS", 1000)  # spans of 960 rows: 5 in all, or 3 of each of 2 workers
    epochs = [_batches_of_rows(shard, config, epoch) for epoch in range(4)]
    orders = [_span_order(batches) for batches in epochs]
    for batches, order in zip(epochs, orders):
        assert sorted(r for batch in batches for r in batch) == list(range(rows))
        assert sorted(order) == list(range(5)) and len(order) == 5  # one span after the other
    assert len({tuple(order) for order in orders}) > 1, orders  # the same order every epoch: [0, 1, 2, 3, 4]
    assert _batches_of_rows(shard, config, 2) == epochs[2]
    assert _batches_of_rows(shard, config, 2, skip=250) == epochs[2][250:]
    # Two workers: each its own contiguous half, every row of it once an epoch.
    for rank in (0, 1):
        batches = _batches_of_rows(shard, config, 1, rank=rank, workers=2)
        assert sorted(r for batch in batches for r in batch) == list(range(rank * 2400, (rank + 1) * 2400))


def test_each_epoch_leaves_out_other_rows_than_the_last_past_the_workers_equal_parts(ray_local):
    """Of 302 rows, 3 workers take 100 each: the 2 rows past their parts were left out of every epoch (the set is
    shuffled once), never trained. Each epoch now trains them in place of 2 rows of the parts drawn from the seed
    and the epoch, other ones each epoch, and a resumed run still skips exactly the batches it trained."""
    from ce_ray.config import TrainConfig

    shard = _numbered_rows(302, seed=2)
    config = TrainConfig(batch_size=8, length_window=10)
    epochs = [[_batches_of_rows(shard, config, epoch, rank=rank, workers=3) for rank in range(3)]
              for epoch in range(4)]
    left_out = []
    for workers in epochs:
        assert [sum(map(len, batches)) for batches in workers] == [100, 100, 100]
        rows = [r for batches in workers for batch in batches for r in batch]
        assert len(set(rows)) == 300 and {300, 301} <= set(rows)
        left_out.append(frozenset(range(302)) - set(rows))
    assert len(set(left_out)) == 4, left_out  # {300, 301} in every epoch
    for rank in range(3):
        assert _batches_of_rows(shard, config, 2, skip=5, rank=rank, workers=3) == epochs[2][rank][5:]


def test_a_parts_short_batch_comes_last_on_every_worker(ray_local, monkeypatch):
    """A worker's part that is no whole number of batches has one short batch, which came wherever its window's
    shuffle put it, at another step on each worker: a step of 8 rows on one worker and 5 on another, whose
    gradients DDP averages as if each were the mean over as many rows, and a count of pairs (rank 0's rows times
    the workers) that was wrong until the epoch's end. It now comes last, on every worker, every epoch."""
    from ce_ray.config import TrainConfig

    config = TrainConfig(batch_size=8, length_window=10)
    shard = _numbered_rows(302, seed=3)  # 3 workers of 100 rows: 12 batches of 8, then 4
    for epoch in range(3):
        for rank in range(3):
            assert [len(b) for b in _batches_of_rows(shard, config, epoch, rank=rank, workers=3)] == [8] * 12 + [4]
    monkeypatch.setattr(train_data, "SPAN_ROWS", 1000)  # spans of 960 rows, and one of 45 each worker
    shard = _numbered_rows(2010, seed=4)
    for epoch in range(3):
        for rank in range(2):
            batches = _batches_of_rows(shard, config, epoch, rank=rank, workers=2)
            assert [len(b) for b in batches] == [8] * 125 + [5]
            assert sorted(r for batch in batches for r in batch) == list(range(rank * 1005, (rank + 1) * 1005))
            assert _batches_of_rows(shard, config, epoch, skip=124, rank=rank, workers=2) == batches[124:]
            # resumed after the last whole batch: the short one is still to come
            assert _batches_of_rows(shard, config, epoch, skip=125, rank=rank, workers=2) == batches[125:]


def test_training_passes_have_a_token_budget_unless_deepspeed_and_the_seeds_batch_stays_whole():
    from ce_ray.config import DeepSpeedConfig, TrainConfig

    train = _train_module()
    seeds = TrainConfig()
    cpu, gpu = (train_data.training_batch_tokens(seeds, use_gpu=use_gpu) for use_gpu in (False, True))
    assert seeds.batch_size * 512 <= cpu <= gpu  # 16 pairs at BERT's longest: one pass, as the trainer runs it
    assert train_data.training_batch_tokens(TrainConfig(batch_tokens=300), use_gpu=True) == 300
    assert train_data.training_batch_tokens(TrainConfig(deepspeed=DeepSpeedConfig()), use_gpu=True) is None
    # What a run that ran out of memory prints before Ray's error (the messages of Ray's monitor and torch).
    ray_monitor = "Training failed due to worker errors: 5 worker(s) were killed due to the node running low on memory."
    assert "--batch-tokens" in train.memory_hint(ray_monitor, 256, cpu)
    assert "grad_accum" in train.memory_hint("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate", 256, None)
    assert train.memory_hint("Training failed due to worker errors: ValueError: bad label", 16, cpu) == ""
    # Ray's monitor stops the latest task, not the largest: where another process filled the node (a test suite of
    # 19 GB beside a worker of 0.29), the run was told to set a smaller batch_tokens. Its last line, `failed: …`,
    # held Ray's whole report (the node's largest users, its advice): 5.7 KB.
    from ce_ray.runtime import failure_cause

    filled = ("1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 10.0.0.2, ID: "
              "ab12) was 22.45GB used / 23.54GB limit (0.953658)\nSelected to kill: (task name=RayTrainWorker.__init__,"
              " pid=13054, actual memory used=0.29GB, worker ID=cd34)\nTop 10 memory users:\nPID\tMEM(GB)\tCOMMAND\n"
              "11725\t19.18\tpython -m pytest\n13054\t0.29\tray::RayTrainWorker\n"
              + "Refer to the documentation. " * 40)
    assert train.memory_hint(filled, 16, cpu) == (
        "the node ran low on memory (22.45 GB used of 23.54 GB) where the training worker(s) it stopped held 0.29 GB: "
        "other processes held the rest (Ray's report above lists the largest); give the run a node with room")
    assert "--batch-tokens" in train.memory_hint(filled.replace("used=0.29GB", "used=20.10GB"), 16, cpu)
    said = failure_cause(MemoryError(filled))
    assert said.endswith("(0.953658) Selected to kill: (task name=RayTrainWorker.__init__, pid=13054, actual memory "
                         "used=0.29GB, worker ID=cd34)") and len(said) < 400


def test_a_pass_without_padding_goes_to_the_model_without_a_mask():
    import torch

    train = _train_module()
    lengths = np.array([5, 5, 3])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.arange(1, offsets[-1] + 1, dtype=np.int32)
    types = np.zeros(offsets[-1], dtype=np.int8)
    uniform = train._on_device(train_data.padded_inputs(ids, types, offsets, np.array([0, 1]), 0), "cpu", "bert")
    assert set(uniform) == {"input_ids", "token_type_ids"} and uniform["input_ids"].shape == (2, 5)
    padded = train._on_device(train_data.padded_inputs(ids, types, offsets, np.array([0, 2]), 0), "cpu", "bert")
    assert padded["attention_mask"].dtype == torch.bool and padded["attention_mask"].shape == (2, 1, 1, 5)
    assert padded["attention_mask"][1, 0, 0].tolist() == [True, True, True, False, False]


def test_training_eval_ranks_equal_scores_in_the_candidates_order_as_ce_ray_eval(ray_local, tiny_model):
    """A model that scores every pair alike: the only relevant candidate, last of its query, ranks last, as
    `ce-ray eval` ranks equal scores (it ranked first, by document id)."""
    import ray
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model)
    with torch.no_grad():
        model.classifier.weight.zero_()
    docs = ["d3", "d2", "d1", "d0"]
    ids = pa.array([[101, 2000 + i, 102] for i in range(4)], pa.list_(pa.int32()))
    shard = ray.data.from_arrow(pa.table({IDS: ids, "query_id": ["q"] * 4, "doc_id": docs}))
    qrels = {"q": {"d0": 1}}
    train = _train_module()
    alone = train.evaluate(model, shard, qrels, "cpu", 0, 2048, "bert")
    assert alone["eval_mrr@10"] == pytest.approx(1 / 4) and alone["eval_map"] == pytest.approx(1 / 4)
    # A relevant document that is no candidate of its query counts, as `ce-ray eval --qrels` and trec_eval count
    # it: MAP over both relevant ones, and the ideal ranking holds both.
    missed = train.evaluate(model, shard, {"q": {"d0": 1, "dX": 1}}, "cpu", 0, 2048, "bert")
    assert missed["eval_map"] == pytest.approx(1 / 8)
    assert missed["eval_ndcg@10"] == pytest.approx((1 / np.log2(5)) / (1 + 1 / np.log2(3)))


def test_training_eval_ranks_by_the_saved_models_scores_where_its_sigmoid_rounds_logits_to_one(ray_local,
                                                                                               tiny_model):
    """Logits above about 17 all give a sigmoid score of 1.0 in fp32: `ce-ray rerank` and CrossEncoder then
    rank those candidates in their input order, and so must training's eval, which ranked them by the logits
    (MRR 1 reported, 1/4 for the saved model's scores)."""
    import ray
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model)
    with torch.no_grad():
        model.classifier.weight.mul_(300)
        model.classifier.bias.add_(60)
        inputs = [[101, 2000 + i, 102] for i in range(4)]
        logits = model(input_ids=torch.tensor(inputs)).logits.view(-1)
    assert logits.min() > 20 and len(set(logits.tolist())) == 4 and torch.sigmoid(logits).eq(1).all()
    order = torch.argsort(logits).tolist()  # the highest logit, the relevant candidate, last
    ids = pa.array([inputs[i] for i in order], pa.list_(pa.int32()))
    shard = ray.data.from_arrow(pa.table({IDS: ids, "query_id": ["q"] * 4, "doc_id": [f"d{i}" for i in order]}))
    qrels = {"q": {f"d{order[-1]}": 1}}
    train = _train_module()
    sigmoid = train.evaluate(model, shard, qrels, "cpu", 0, 2048, "bert", activation="torch.nn.Sigmoid")
    assert sigmoid["eval_mrr@10"] == pytest.approx(1 / 4)
    logits_kept = train.evaluate(model, shard, qrels, "cpu", 0, 2048, "bert", activation="torch.nn.Identity")
    assert logits_kept["eval_mrr@10"] == pytest.approx(1.0)


def test_the_deepspeed_sections_bf16_sets_the_runs_precision():
    from ce_ray.config import DeepSpeedConfig, TrainConfig

    train = _train_module()
    assert train.uses_bf16(TrainConfig(deepspeed=DeepSpeedConfig(bf16=False)), use_gpu=True) is False
    assert train.uses_bf16(TrainConfig(deepspeed=DeepSpeedConfig(bf16=True)), use_gpu=False) is True
    assert train.uses_bf16(TrainConfig(deepspeed=DeepSpeedConfig()), use_gpu=True) is True
    assert train.uses_bf16(TrainConfig(bf16=False), use_gpu=True) is False
    assert train.uses_bf16(TrainConfig(), use_gpu=False) is False


def test_saved_model_is_a_crossencoder_that_scores_like_ce_ray(data_parallel_runs, pairs_file):
    import ray.data
    from sentence_transformers import CrossEncoder

    import ce_ray

    path = data_parallel_runs[1].model_path
    frame = pd.read_parquet(pairs_file)[["query", "document"]]
    expected = CrossEncoder(path, device="cpu").predict(list(zip(frame["query"], frame["document"])),
                                                         batch_size=16)
    scored = ce_ray.score(ray.data.from_pandas(frame), model=path).to_pandas()
    merged = frame.merge(scored, on=["query", "document"])
    assert len(merged) == len(frame)
    assert np.abs(merged["score"].to_numpy() - expected).max() <= 1e-5


def _moving_file_text(path: Path, moved: Path) -> str:
    """A Ray log file's text: Ray's log monitor moves the files of processes that ended into logs/old, maybe
    while this reads (from `path` to `moved`, never back)."""
    for file in (path, moved):
        try:
            return file.read_text(errors="replace")
        except FileNotFoundError:
            continue
    return ""


def test_a_workers_lines_come_once_and_say_how_long_is_left(data_parallel_runs, ray_local):
    """Rank 0's step lines, as Ray keeps each worker's output (stdout and stderr files per process): once each.
    Ray Train's print patch logged every `print` and printed it again (Ray wraps a worker's sys.stdout). Each
    but the last says how long the steps left should take."""
    from collections import Counter

    logs = Path(ray_local._private.worker._global_node.get_session_dir_path()) / "logs"
    lines = Counter()
    for name in {file.name for file in logs.rglob("worker-*") if file.suffix in (".out", ".err")}:
        for line in _moving_file_text(logs / name, logs / "old" / name).splitlines():
            if "ce-ray train: step " in line:
                lines[(name.rsplit(".", 1)[0], line)] += 1
    # The three data-parallel runs: 3 steps each, every one logged (log_every 1).
    assert len(lines) >= 9 and set(lines.values()) == {1}, lines.most_common(3)
    for _, line in lines:
        left = re.search(rf"\(waiting for data \d+%\), ~{DURATION} left$", line)
        assert (left is None) == (" step 3/3 " in line), line
    assert [_train_module().duration(s) for s in (0.4, 42, 185, 7620)] == ["0s", "42s", "3m05s", "2h07m"]


def test_model_card_reports_what_the_run_saw(data_parallel_runs):
    two = data_parallel_runs[0]
    card = open(os.path.join(two.model_path, "README.md")).read()
    assert "# CrossEncoder based on" in card and "BinaryCrossEntropyLoss" in card
    assert "- Size: 16 training pairs" in card
    assert "- `num_workers`: 2" in card and "- `lr`: 0.001" in card and "- `batch_size`: 8" in card
    table = [line for line in card.splitlines() if line.startswith("| 3.0000 | 3 |")]
    assert table and f"{two.log[-1]['loss']:.4f}" in table[0]
    assert "Sentence Transformers:" in card and "Ray:" in card and "CrossEncoder(" in card
    # The hub reads the header's base_model as a hub id: a local folder is named in the text only.
    header = card.split("---")[1]
    assert "base_model:" not in header and "pipeline_tag: text-ranking" in header
    from ce_ray.card import _is_hub_id

    assert _is_hub_id("cross-encoder/ms-marco-MiniLM-L6-v2") and not _is_hub_id("s3://bucket/models/reranker")


def test_a_run_that_would_write_into_its_data_or_reads_a_split_not_there_fails_before_ray_starts(
        tiny_model, tmp_path, monkeypatch):
    """An output or checkpoints inside the training or eval data: the first run trained, and the next (a resume,
    the same command again) read the model's files as data, refused as `mixes formats ['jsonl', 'parquet']`; a BEIR
    folder's training split that is not there, and training or eval rows without the columns read, failed once Ray
    had started, 20-30 s in."""
    import ce_ray.readers
    import ce_ray.runtime
    from ce_ray.config import TrainConfig
    from ce_ray.messages import InputError

    def ray_started(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr(ce_ray.runtime, "ensure_ray", ray_started)
    monkeypatch.setattr(ce_ray.readers, "ensure_ray", ray_started)
    (tmp_path / "data").mkdir()
    pd.DataFrame({"query": ["q", "q"], "document": ["d", "e"], "label": [1, 0]}).to_parquet(
        tmp_path / "data" / "pairs.parquet")
    settings = dict(model=str(tiny_model), train_data=str(tmp_path / "data"), max_steps=1)
    for extra, said in (
            (dict(output=str(tmp_path / "data" / "reranker")),
             rf"the output {tmp_path}/data/reranker is inside the train_data \(--train-data\) {tmp_path}/data: "),
            (dict(output=str(tmp_path / "out"), eval_data=str(tmp_path / "data"), storage_path=str(tmp_path / "data")),
             rf"the run's checkpoints \(storage_path\) {tmp_path}/data/out is inside the train_data "),
            (dict(output=str(tmp_path / "out"), train_data=str(tmp_path / "data" / "pairs.parquet"),
                  eval_data=str(tmp_path / "data"), storage_path=str(tmp_path / "data")),
             rf"the run's checkpoints \(storage_path\) {tmp_path}/data/out is inside the eval_data \(--eval-data\) ")):
        with pytest.raises(InputError, match=f"^{said}"):
            _train_module().train(TrainConfig(**settings | extra))
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "text": "a document"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(InputError, match=rf"^train_data \(--train-data\) {beir}: {beir}/qrels/dev.tsv does not exist "
                                         r"\(its qrels' splits: train; train_split \(--train-split\) names one\)$"):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(beir), train_split="dev",
                                          output=str(tmp_path / "out")))
    with pytest.raises(InputError, match=rf"^eval_data \(--eval-data\) {beir}: {beir}/qrels/test.tsv does not exist "
                                         r"\(its qrels' splits: train; eval_split \(--eval-split\) names one\)$"):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(beir), eval_data=str(beir),
                                          output=str(tmp_path / "out")))
    pd.DataFrame({"question": ["q"], "passage": ["d"], "label": [1]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(InputError, match=rf"^{tmp_path}/other.parquet: missing column\(s\) 'query', 'document' "
                                         r"\(columns: question, passage, label\); name the columns with query_column "
                                         r"\(--query-column\) and document_column \(--document-column\)$"):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(tmp_path / "other.parquet"),
                                          output=str(tmp_path / "out")))
    with pytest.raises(InputError, match=rf"^eval_data \(--eval-data\) {tmp_path}/other.parquet: missing column\(s\) "
                                         r"'query', 'document' \(columns: question, passage, label\) \(eval rows are "
                                         r"read in the training data's columns: 'query', 'document', 'label'\)$"):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(tmp_path / "data" / "pairs.parquet"),
                                          eval_data=str(tmp_path / "other.parquet"), output=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path / "data") == ["pairs.parquet"]


def test_missing_data_fails_before_ray_starts_and_csv_booleans_are_labels(ray_local, tiny_model, tmp_path, capsys):
    """A training or eval data path that is not there fails naming which (it failed after Ray's start, ~15 s in,
    as `input ... does not exist`); a CSV's True and False (pandas' booleans) are labels 1 and 0, as parquet's
    and JSON's booleans are (they failed the run as `label column 'label' is text, not a number`). Pairs all
    of one label train with a warning (silently, before)."""
    from ce_ray.config import TrainConfig
    from ce_ray.messages import InputError

    settings = dict(model=str(tiny_model), output=str(tmp_path / "out"), max_steps=1)
    pd.DataFrame({"query": ["q"], "document": ["d"], "label": [1]}).to_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(InputError, match=r"^train_data \(--train-data\) .*nope\.parquet does not exist"):
        _train_module().train(TrainConfig(train_data=str(tmp_path / "nope.parquet"), **settings))
    with pytest.raises(InputError, match=r"^eval_data \(--eval-data\) .*nope/\*\.parquet does not exist"):
        _train_module().train(TrainConfig(train_data=str(tmp_path / "pairs.parquet"),
                                          eval_data=str(tmp_path / "nope" / "*.parquet"), **settings))
    table = pa.table({"label": ["True", "false", "1", "0.5", "NA", None]})
    assert train_data.numeric_labels(table, "label").to_pylist() == [1.0, 0.0, 1.0, 0.5, None, None]
    pd.DataFrame({"query": ["q", "q"], "document": ["d", "e"], "label": ["True", "true"]}).to_csv(
        tmp_path / "pairs.csv", index=False)
    assert _train_module().train(TrainConfig(train_data=str(tmp_path / "pairs.csv"), **settings)).steps == 1
    assert "warning: every one of the 2 pairs is labelled relevant" in capsys.readouterr().err
    # Soft labels (a teacher's scores) all below 0.5 rank the pairs all the same: they were warned of as one class.
    warning = _train_module().one_label_warning
    stats = {"pairs": 2_000, "label_min": 0.05, "label_max": 0.45}
    assert warning(stats) is None and warning(stats | {"label_min": 0.5, "label_max": 0.9}) is None
    assert warning(stats | {"label_min": 0.0, "label_max": 0.0}) == (
        "none of the 2,000 pairs is labelled relevant: the model learns no ranking from them")
    assert warning(stats | {"label_min": 0.3, "label_max": 0.3}) == (
        "every one of the 2,000 pairs is labelled 0.3: the model learns no ranking from them")
    # The same command again finds the run finished: it saves the model again, and took no step's seconds (the
    # summary counted the earlier command's, past its own Ray Train's).
    again = _train_module().train(TrainConfig(train_data=str(tmp_path / "pairs.csv"), **settings))
    assert again.resumed_from == [1] and again.phases["steps"] == 0.0
    assert again.phases["checkpoints"] == 0.0 and "workers' start" in "\n".join(again.lines())  # nothing saved


def test_a_run_that_fails_mid_way_says_why_and_that_the_same_command_resumes_it(ray_local, tiny_model, tmp_path,
                                                                               capsys):
    """Training data with a page that cannot be decoded, found as Ray Data reads it: Ray's error, a usage
    error's line and exit 2 (pyarrow's ArrowInvalid is a ValueError, and so is Ray's error of it), naming no
    file. The last line says what failed and how to go on: the same command, which starts the run over where it
    has no checkpoint (the line said that it resumed it from its last checkpoint, of which there was none), and
    resumes it from the step of its last one where Ray Train recorded one."""
    from ce_ray.cli import build_parser, finishing_hint, main
    from conftest import undecodable_parquet

    pairs = pd.DataFrame({"query": [f"query {i % 4}" for i in range(40)],
                          "document": [f"document {i % 9}" for i in range(40)], "label": [i % 2 for i in range(40)]})
    undecodable_parquet(tmp_path / "pairs.parquet", pairs)
    command = ["train", "--model", str(tiny_model), "--train-data", str(tmp_path / "pairs.parquet"),
               "--output", str(tmp_path / "out"), "--max-steps", "1", "--batch-size", "20"]
    assert main(command) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ce-ray train: failed: ArrowInvalid: Index not in dictionary bounds (reading {tmp_path}/pairs.parquet); "
        "it has no checkpoint yet: the same command starts it over")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    # The data mended, the run ends with a checkpoint at its step 1, which a run of the same name resumes from.
    pairs.to_parquet(tmp_path / "pairs.parquet", index=False)
    assert main(command) == 0
    assert finishing_hint("train", args=build_parser().parse_args(command)) == (
        "; the same command resumes it from its last checkpoint, step 1")
    # Stopped by SIGTERM, a run goes on until Ray shuts down, and may record a later checkpoint meanwhile.
    assert finishing_hint("train", args=build_parser().parse_args(command), running=True) == (
        "; the same command resumes it from its last checkpoint, step 1 or later")
    # Checkpoint folders without Ray Train's record of them (written after a Ctrl-C's abort): the run starts over,
    # as Ray Train starts it. The lines said that it resumed from the last checkpoint Ray Train recorded.
    (tmp_path / "out" / "checkpoints" / "out" / "checkpoint_manager_snapshot.json").unlink()
    assert finishing_hint("train", args=build_parser().parse_args(command)) == (
        "; it has no checkpoint yet: the same command starts it over")
    capsys.readouterr()
    assert main(command) == 0
    said = capsys.readouterr().out
    assert "resumes the run" not in said and "  steps         1 (" in said and "resumed at" not in said, said
    # Ray Train writes its record in place: a disk that filled as it wrote left it empty, which failed every later
    # try once Ray Train read it, each failure saying that the same command resumes the run.
    record = tmp_path / "out" / "checkpoints" / "out" / "checkpoint_manager_snapshot.json"
    record.write_text("")
    refusal = (f"Ray Train's record of the run's checkpoints, {record}, does not read (Expecting value: line 1 column "
               "1 (char 0)): it was cut short as it was written (a disk that filled). The run cannot resume from it: "
               "delete it to start the run over")
    assert finishing_hint("train", args=build_parser().parse_args(command)) == f"; {refusal}"
    assert main(command) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"ce-ray train: error: {refusal}"
    # A whole record of a checkpoint since deleted: Ray Train's words, not a record cut short.
    record.write_text(ray_train_record(7))
    assert finishing_hint("train", args=build_parser().parse_args(command)).startswith(
        f"; Ray Train cannot resume the run from its record of checkpoints, {record}: The run snapshot contains a "
        "reference to a checkpoint that does not exist")


def _ray_train_workers():
    """This test process's own Ray Train worker processes (other Ray clusters on the machine are left alone)."""
    import psutil

    found = []
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if child.cmdline() and child.cmdline()[0].startswith("ray::RayTrainWorker"):
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_the_settings_of_a_beir_folder_are_refused_for_files_of_pairs(tiny_model, pairs_file, tmp_path):
    """`hard_negatives` and `train_split` given for a file of pairs, `eval_split` and `eval_top_k` for eval rows: the
    run trained on the pairs as they are and evaluated every candidate of each query, and said nothing. Each is
    refused before any work, naming it and the data; for a BEIR folder they pass. The refusals (and that of
    training data not there, or of negative_columns for a BEIR folder, refused once Ray had started) left the output
    created, an empty folder: nothing is created."""
    from ce_ray.config import ConfigError, TrainConfig
    from ce_ray.messages import InputError
    from ce_ray.train_data import refuse_settings_of_beir

    settings = dict(model=str(tiny_model), train_data=str(pairs_file), output=str(tmp_path / "out"), max_steps=1)
    for name, value in (("hard_negatives", 8), ("train_split", "dev")):
        flag = name.replace("_", "-")  # named by its flag too: it named the YAML key alone
        with pytest.raises(ConfigError, match=rf"^{name} \(--{flag}\) is a setting of a BEIR folder's training "
                                              rf"pairs \(its qrels' positives and BM25's negatives\): train_data "
                                              rf"\(--train-data\) {pairs_file} is files of pairs$"):
            _train_module().train(TrainConfig(**settings, **{name: value}))
    for name, value in (("eval_split", "dev"), ("eval_top_k", 10)):
        flag = name.replace("_", "-")
        with pytest.raises(ConfigError, match=rf"^{name} \(--{flag}\) is a setting of a BEIR folder's eval "
                                              rf"candidates \(its qrels and BM25's top k\): eval_data \(--eval-data\) "
                                              rf"{pairs_file} is rows, each query's its candidates$"):
            _train_module().train(TrainConfig(**settings, eval_data=str(pairs_file), **{name: value}))
    with pytest.raises(InputError, match=rf"^train_data \(--train-data\) {tmp_path}/nowhere.jsonl does not exist$"):
        _train_module().train(TrainConfig(**settings | {"train_data": str(tmp_path / "nowhere.jsonl")}))
    with pytest.raises(ConfigError, match=r"^negative_columns \(--negative-columns\) is for rows of a query, a "
                                          r"positive and negatives; a BEIR folder's negatives are BM25's "
                                          r"\(hard_negatives \(--hard-negatives\)\)$"):
        _train_module().train(TrainConfig(**settings | {"train_data": str(SCIFACT)}, negative_columns="neg"))
    assert not (tmp_path / "out").exists()
    refuse_settings_of_beir(TrainConfig(**settings, eval_data=str(SCIFACT), eval_top_k=10), beir=False)
    refuse_settings_of_beir(TrainConfig(**settings | {"train_data": str(SCIFACT)}, hard_negatives=8), beir=True)


def test_the_runs_first_line_comes_before_ray_datas_lines_for_its_data(ray_local, tiny_model, pairs_file, tmp_path,
                                                                       monkeypatch, capsys):
    """Where the output is a file, Ray Data's lines for the data's six passes (67 lines) came before the run's
    first line of its own: the run says what it is doing first."""
    from ce_ray.config import TrainConfig

    class Stop(Exception):
        pass

    def read(*args):
        said_before_reading.append(capsys.readouterr().out)
        raise Stop

    said_before_reading = []
    monkeypatch.setattr(_train_module(), "prepare_data", read)
    with pytest.raises(Stop):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(pairs_file),
                                          output=str(tmp_path / "out"), max_steps=1))
    assert f"ce-ray train: reading, checking and tokenizing {pairs_file} on Ray Data" in said_before_reading[0]


def ray_train_record(step: int) -> str:
    """Ray Train's record of a run's checkpoints (`checkpoints.RECORD`), the last of them `step`'s, as its checkpoint
    manager writes it."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (_CheckpointManagerState,
                                                                               _TrainingResultState)

    result = _TrainingResultState(checkpoint_dir_name=f"checkpoint_{step:07d}", metrics={"step": step})
    return _CheckpointManagerState(
        checkpoint_results=[result], checkpoint_report_indices=[0], latest_checkpoint_result=result,
        pending_training_results=[], pending_validation_specs=[], current_report_index=1,
        validated_checkpoint_dir_names=[], timed_out_validation_checkpoint_dir_names=[],
        failed_validation_checkpoint_dir_names=[]).json()


def test_a_run_whose_workers_ran_out_of_memory_says_what_to_lower(ray_local, tiny_model, pairs_file, tmp_path,
                                                                   monkeypatch, capsys):
    """Ray Train's fit raises a failed run's error itself, where the run read it from the result that fit returns:
    a run whose workers Ray's memory monitor killed (the README's SciFact run with 2 workers on a 2-core, 23 GB
    machine) ended with Ray's page alone, not the line that says to lower batch_tokens."""
    import ray.train.torch

    from ce_ray.config import TrainConfig

    class Killed(Exception):
        pass

    class Trainer:  # as Ray's TorchTrainer, whose fit raises result.error
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            raise Killed("Training failed due to worker errors: 2 worker(s) were killed due to the node running low "
                         "on memory.")

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", Trainer)
    with pytest.raises(Killed):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(pairs_file),
                                          output=str(tmp_path / "out"), max_steps=1))
    assert ("ce-ray train: a training worker ran out of memory in forward passes of at most 8,192 padded tokens "
            "(batches of 16 pairs): set a smaller batch_tokens (--batch-tokens)") in capsys.readouterr().err
    # Under DeepSpeed it says to lower batch_size, a setting of the run's record: where the run has a checkpoint (an
    # earlier try's), the same command with it is refused, and the hint says to give the new run another name.
    # batch_tokens is none: the same command with a smaller one resumes, and its hint says nothing more.
    from ce_ray.config import DeepSpeedConfig

    for run in ("out", "ds"):  # a checkpoint and Ray Train's record of it
        (tmp_path / run / "checkpoints" / run / "checkpoint_0000001").mkdir(parents=True)
        (tmp_path / run / "checkpoints" / run / checkpoints.RECORD).write_text(ray_train_record(1))
    with pytest.raises(Killed):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(pairs_file),
                                          output=str(tmp_path / "out"), max_steps=1))
    assert capsys.readouterr().err.endswith("set a smaller batch_tokens (--batch-tokens); a pass's memory grows with "
                                            "its tokens and, on a CPU, with their length\n")
    with pytest.raises(Killed):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(pairs_file),
                                          output=str(tmp_path / "ds"), max_steps=1, deepspeed=DeepSpeedConfig()))
    assert capsys.readouterr().err.endswith(
        "ce-ray train: a training worker ran out of memory with whole batches of 16 pairs: set a smaller batch_size "
        "(--batch-size) and a grad_accum (--grad-accum) that keeps batch_size x grad_accum; with other settings it is "
        "a new run: give another run_name (--run-name) or output (--output), as "
        f"{tmp_path / 'ds' / 'checkpoints' / 'ds'} holds checkpoints that a run of the same name resumes from with "
        "the same settings only\n")


def test_ray_trains_health_checks_are_quick_during_a_run_unless_the_user_chose(monkeypatch):
    """Ray Train's controller sees a finished run at its next health check: ce-ray sets their interval for
    the run (Ray Train passes it from the driver's environment to its controller), then leaves it as it was."""
    train = _train_module()
    name = train.HEALTH_CHECK_INTERVAL_VAR
    monkeypatch.delenv(name, raising=False)
    with train.quick_health_checks():
        assert os.environ[name] == train.HEALTH_CHECK_INTERVAL_S == "0.5"
    assert name not in os.environ
    monkeypatch.setenv(name, "3")
    with train.quick_health_checks():
        assert os.environ[name] == "3"
    assert os.environ[name] == "3"


def test_killed_worker_resumes_from_the_last_checkpoint(ray_local, tiny_model, pairs_file, tmp_path):
    """The restarted workers go on from the last checkpoint and end with the model of the run never stopped, bit
    for bit, with its losses: each rank's checkpoint holds its random state, so the dropout of the steps after the
    checkpoint (the tiny model's, 0.1) draws the same masks (reseeded, the losses after it differed, and the
    weights)."""
    from ce_ray.config import TrainConfig

    settings = dict(model=str(tiny_model), train_data=str(pairs_file), num_workers=2, batch_size=2, epochs=1,
                    save_every=4, log_every=4)
    uninterrupted = _train_module().train(TrainConfig(**settings, output=str(tmp_path / "uninterrupted")))
    out = tmp_path / "resumed"
    runs = out / "checkpoints" / "resumed"
    killed = []

    def kill_after_first_checkpoint():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            snapshot = runs / "checkpoint_manager_snapshot.json"
            # Registered with the controller (not only written), so that a restart finds it.
            if snapshot.exists() and "checkpoint_0" in snapshot.read_text():
                workers = _ray_train_workers()
                if workers:
                    os.kill(workers[-1].pid, signal.SIGKILL)
                    killed.append(workers[-1].pid)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    # One failure more than the test causes is allowed: on a small shared machine a worker of the restarted
    # group can die too (seen once in CI, during the restart). Every restart must still resume from a checkpoint.
    outcome = _train_module().train(TrainConfig(**settings, output=str(out), max_failures=2))
    killer.join(timeout=5)
    assert killed, "no training worker was running once the first checkpoint appeared"
    total = outcome.stats["pairs"] // 2 // 2  # one epoch of 2 workers x 2 pairs
    assert outcome.steps == total
    assert 1 <= len(outcome.resumed_from) <= 2
    for resumed_at in outcome.resumed_from:
        assert 4 <= resumed_at < total and resumed_at % 4 == 0  # from a checkpoint, not from zero
    steps = [entry["step"] for entry in outcome.log]
    assert steps == sorted(set(steps)) and steps[-1] == total  # the counter went on; no step was redone
    resumed_at = outcome.resumed_from[0]
    assert resumed_at in steps and steps.index(resumed_at) + 1 < len(steps)
    # The steps' seconds are this command's, its restarted workers' too: within the seconds of Ray Train (a
    # resumed run counted those of the runs before it, past Ray Train's own).
    assert 0 < outcome.phases["steps"] <= outcome.phases["fit"]
    assert [(e["step"], e["loss"], e["lr"]) for e in outcome.log] == [
        (e["step"], e["loss"], e["lr"]) for e in uninterrupted.log]
    assert _max_diff(_weights(out), _weights(tmp_path / "uninterrupted")) == 0.0
    # A run of the same name with other settings would resume from these checkpoints: another model's weights
    # loaded partly, silently, or a crash mid-way on its optimizer's state. It is refused before any work.
    from ce_ray.config import ConfigError

    trained = shutil.copytree(out, tmp_path / "trained", ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(ConfigError, match=r"checkpoints/resumed holds the checkpoints of a run with other settings "
                                          r"\(lr, model\), which a run of the same name resumes from"):
        _train_module().train(TrainConfig(model=str(trained), train_data=str(pairs_file), output=str(out),
                                          num_workers=2, batch_size=2, save_every=4, lr=1e-4))


def test_a_run_that_max_steps_ends_says_the_epochs_and_pairs_its_steps_trained(ray_local, tiny_model, pairs_file,
                                                                              tmp_path):
    """The card listed `epochs: 1` beside `max_steps` whatever the steps covered (here one and a half epochs), and
    neither it nor the summary said what was trained. Both now say the steps, the epochs they covered and the pairs
    they took; `epochs`, which max_steps overrides, is no longer listed."""
    from ce_ray.config import TrainConfig

    # 57 pairs, 2 workers of 28 in batches of 7: 4 steps an epoch, 14 pairs a step.
    run = _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(pairs_file),
                                            output=str(tmp_path / "out"), num_workers=2, batch_size=7, max_steps=6))
    assert run.steps == 6 and run.log[-1]["epoch"] == 1.5
    assert "  steps         6 (1.5 epochs, 84 pairs)" in run.lines()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Steps: 6 (1.5 epochs, 84 pairs); throughput: " in card
    assert "- `max_steps`: 6\n" in card and "`epochs`" not in card
    from ce_ray.card import trained_text

    assert trained_text(4, 1.0, 1) == "4 (1 epoch, 1 pair)"  # it said "1 epochs"


def test_a_resumed_run_says_the_steps_it_resumed_at_beside_what_its_steps_trained():
    """The summary read `steps 2 (0.5 epochs, 16 pairs) (resumed at [1])`: two groups in parentheses, and the steps
    the run resumed at from checkpoints as a Python list. They are one group, the card's too."""
    from ce_ray.card import trained_text
    from ce_ray.train import TrainOutcome

    assert trained_text(2, 0.5, 16, [1]) == "2 (0.5 epochs, 16 pairs; resumed at step 1)"
    assert trained_text(9, 1.0, 1_200, [1, 5, 1_000]) == "9 (1 epoch, 1,200 pairs; resumed at steps 1, 5 and 1,000)"
    outcome = TrainOutcome(result=None, model_path="out", stats={"pairs": 32, "rejected": 0}, log=[],
                           final_metrics={}, steps=2, epochs_trained=0.5, pairs_trained=16, samples_per_second=1.0,
                           seconds=1.0, resumed_from=[1, 2], replica_divergence=None)
    assert "  steps         2 (0.5 epochs, 16 pairs; resumed at steps 1 and 2)" in outcome.lines()


def _random_states(output: Path) -> list:
    """Each rank's torch random state at the run's last checkpoint."""
    import torch

    last = sorted((output / "checkpoints" / output.name).glob("checkpoint_0*"))[-1]
    return [torch.load(last / f"ce-ray-random-{rank}.pt", weights_only=True)["torch"] for rank in (0, 1)]


def test_workers_drop_units_of_their_own_and_a_run_repeats_itself(ray_local, tiny_model, tmp_path, capsys):
    """Every rank seeded torch alike, so each drew the same dropout masks as the others for its other rows. Each
    worker now draws from a seed of its own (the run's seed on rank 0), and a run of the same seed and data
    still ends with the same weights, bit for bit, and the same random states. The pairs are one text (ranks'
    batches of one shape, so ranks seeded alike draw alike), labelled 0 and 1.
    Of 17 pairs the 2 workers take 8 each: one is left out of the epoch, where the run's line, its summary and the
    card said 17 pairs trained."""
    import torch

    from ce_ray.config import TrainConfig

    pairs = tmp_path / "pairs.parquet"
    pd.DataFrame({"query": ["what is a reranker"] * 17, "document": ["a model that orders the candidates"] * 17,
                  "label": np.arange(17, dtype=np.float32) % 2}).to_parquet(pairs)
    settings = dict(model=str(tiny_model), train_data=str(pairs), num_workers=2, batch_size=4, epochs=1, lr=1e-3)
    runs = [_train_module().train(TrainConfig(**settings, output=str(tmp_path / name))) for name in ("a", "b")]
    out = capsys.readouterr().out
    never = "1 pair(s) left out of each epoch (others each epoch), so that the workers take equal parts"
    assert (f"ce-ray train: 17 pairs (0 rejected), 2 worker(s) taking 8 each ({never}), 2 batch(es) of 4 per worker "
            "and epoch, 2 step(s)") in out
    assert f"  pairs         17 (0 rejected; {never})" in runs[0].lines() and runs[0].stats["left_out"] == 1
    card = (tmp_path / "a" / "README.md").read_text()
    assert ("- Size: 17 training pairs; 16 trained each epoch: 1 left out of each (others each epoch), so that the 2 "
            "workers take equal parts\n") in card
    assert runs[0].steps == 2 and runs[0].log[-1]["epoch"] == 1.0
    assert _max_diff(_weights(tmp_path / "a"), _weights(tmp_path / "b")) == 0.0
    assert [e["loss"] for e in runs[0].log] == [e["loss"] for e in runs[1].log]
    first, second = _random_states(tmp_path / "a"), _random_states(tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(*first)  # the same state on both ranks: the same masks


def test_ctrl_c_ends_a_training_run_with_a_line_that_says_how_to_resume_it(tiny_model, tmp_path):
    """Ray Train's fit takes Ctrl-C for its own: it aborted the run and failed with Ray's error of the aborted
    controller, exit 1, without ce-ray's line. Stopped before its first checkpoint, the line says that the same
    command starts it over (it said that it resumed it from its last checkpoint, of which there was none)."""
    from conftest import interrupted_as_in_a_terminal

    wikiqa_pairs("train", 3000)[["query", "document", "label"]].to_parquet(tmp_path / "pairs.parquet")
    command = ["train", "--model", str(tiny_model), "--train-data", str(tmp_path / "pairs.parquet"),
               "--output", str(tmp_path / "out"), "--batch-size", "2", "--log-every", "5", "--epochs", "5"]
    returncode, errors = interrupted_as_in_a_terminal(command, after="ce-ray train: step 5/", wait=1.0)
    assert returncode == 130, errors[-3000:]
    assert "\nce-ray train: interrupted; it has no checkpoint yet: the same command starts it over\n" in errors
    # The driver's own: Ray's actors may log theirs (`(PlacementGroupCleaner pid=...)`, where several local Rays run)
    assert "KeyboardInterrupt" not in errors
    assert not [line for line in errors.splitlines() if "Traceback" in line and "pid=" not in line]
    # SIGTERM, a scheduler's stop: one line too, and 143 (128 + 15). The run ended with no word, and since Ray's
    # shutdown of a training run takes more than 3 s, its failure signal handler's alarm aborted it (SIGABRT).
    returncode, errors = interrupted_as_in_a_terminal(command, after="ce-ray train: step ", wait=1.0, sent="SIGTERM")
    assert returncode == 143, errors[-3000:]
    assert "\nce-ray train: stopped (SIGTERM); it has no checkpoint yet: the same command starts it over\n" in errors


def test_beir_pairs_with_bm25_hard_negatives_train_and_evaluate(ray_local, tiny_model, tmp_path):
    from ce_ray.candidates import read_qrels
    from ce_ray.config import TrainConfig

    train = _train_module()
    table = train_data.beir_training_pairs(str(SCIFACT), "train", hard_negatives=2)[0].to_pandas()
    qrels = read_qrels(str(SCIFACT / "qrels" / "train.tsv"))
    positives = sum(sum(g > 0 for g in judged.values()) for judged in qrels.values())
    assert (table.label == 1.0).sum() == positives
    assert (table.label == 0.0).sum() == 2 * positives
    outcome = train.train(TrainConfig(
        model=str(tiny_model), train_data=str(SCIFACT), hard_negatives=2, output=str(tmp_path / "scifact"),
        eval_data=str(SCIFACT), eval_split="test", eval_top_k=10, eval_max_queries=8,
        max_steps=3, batch_size=4, log_every=1))
    assert outcome.steps == 3 and outcome.stats["pairs"] == 3 * positives
    assert outcome.log[0]["step"] == 0 and "eval_ndcg@10" in outcome.log[0]  # the base model, before training
    assert set(outcome.final_metrics) == {"eval_ndcg@10", "eval_mrr@10", "eval_map"}
    assert all(0.0 <= v <= 1.0 for v in outcome.final_metrics.values())
    card = open(tmp_path / "scifact" / "README.md").read()
    assert "## Evaluation" in card and "BM25 hard negatives" in card


def test_rows_of_a_query_a_positive_and_negatives_train_as_their_labelled_pairs(ray_local, tiny_model, tmp_path):
    """`negative_columns`: rows of two negatives, some missing, and MS MARCO's triples (a TSV without a header
    line: query, positive, negative) give the training set of the same pairs written out with labels: one
    labelled 1 per row, one labelled 0 per negative that is given. So do rows whose positives and negatives
    are lists of texts (JSON Lines), and rows of a list of documents with a list of labels (parquet)."""
    from ce_ray.batching import IDS
    from ce_ray.config import ConfigError, TrainConfig
    from ce_ray.messages import InputError

    frame = wikiqa_pairs("train", 300)
    rows = []
    for _, group in frame.groupby("query_id", sort=False):
        positives, negatives = group[group.label == 1].document, group[group.label == 0].document.tolist()
        if len(positives) and negatives:
            rows.append({"query": group["query"].iloc[0], "positive": positives.iloc[0],
                         "negative_1": negatives[0], "negative_2": negatives[1] if len(negatives) > 1 else None})
    rows = pd.DataFrame(rows)
    assert len(rows) >= 5 and rows.negative_2.isna().any() and rows.negative_2.notna().any()
    rows.to_parquet(tmp_path / "rows.parquet")
    (tmp_path / "triples.train.tsv").write_text(
        "".join(f"{q}\t{p}\t{n}\n" for q, p, n in rows[["query", "positive", "negative_1"]].values))

    def written_out(negatives: list, name: str) -> str:
        """The same rows as pairs with labels, in a parquet file."""
        pairs = pd.concat([rows.assign(document=rows[column], label=np.float32(column == "positive"))
                           .dropna(subset="document") for column in ["positive", *negatives]])
        pairs[["query", "document", "label"]].to_parquet(tmp_path / name)
        return str(tmp_path / name)

    def training_set(**settings):
        """(token ids, label) of every pair of the training set, sorted; and its statistics."""
        config = TrainConfig(model=str(tiny_model), output=str(tmp_path / "o"), **settings)
        data, stats, _, _ = train_data.prepare_data(config, pair_encoder(str(tiny_model)), 128)
        # Ray Data's actor that hands out each epoch to the workers draws no progress bars for it (the tests'
        # Ray has them off everywhere, so only the set's own setting can be checked here).
        assert not data.context.enable_progress_bars
        return sorted((tuple(row[IDS]), float(row[train_data.LABEL])) for row in data.take_all()), stats

    expected, expected_stats = training_set(train_data=written_out(["negative_1", "negative_2"], "pairs.parquet"))
    got, stats = training_set(train_data=str(tmp_path / "rows.parquet"), document_column="positive",
                              negative_columns="negative_1, negative_2")
    assert got == expected and len(got) == 2 * len(rows) + rows.negative_2.notna().sum()
    assert (stats["pairs"], stats["rejected"], stats["positives"]) == (expected_stats["pairs"], 0, len(rows))
    assert stats["columns"] == ["query", "positive", "negative_1", "negative_2"]
    got, _ = training_set(train_data=str(tmp_path / "triples.train.tsv"), column_names="query,positive,negative",
                          document_column="positive", negative_columns="negative")
    assert got == training_set(train_data=written_out(["negative_1"], "triple-pairs.parquet"))[0]
    assert sum(label for _, label in got) == len(got) / 2 == len(rows)
    with pytest.raises(ConfigError, match="other columns than the query and the positive"):
        training_set(train_data=str(tmp_path / "rows.parquet"), document_column="positive",
                     negative_columns="negative_1,positive")

    # Lists of texts: rows of a query, its positives and its negatives, and sentence-transformers' labeled-list.
    negatives = [[n for n in pair if isinstance(n, str)] for pair in rows[["negative_1", "negative_2"]].values]
    lists = pd.DataFrame({"query": rows["query"], "pos": [[p] for p in rows.positive], "neg": negatives})
    lists.to_json(tmp_path / "lists.jsonl", orient="records", lines=True)
    got, stats = training_set(train_data=str(tmp_path / "lists.jsonl"), document_column="pos", negative_columns="neg")
    assert got == expected and stats["rejected"] == 0
    labelled = pd.DataFrame({"query": rows["query"], "documents": [[p, *n] for p, n in zip(rows.positive, negatives)],
                             "labels": [[1] + [0] * len(n) for n in negatives]})
    labelled.to_parquet(tmp_path / "labeled-list.parquet")
    got, stats = training_set(train_data=str(tmp_path / "labeled-list.parquet"), document_column="documents",
                              label_column="labels")
    assert got == expected and stats["rejected"] == 0
    # Odd rows are rejected, each with its reason, and the rest trained on: a text where the others have lists
    # (a list of one), labels that do not match the documents, texts that are not text, no text, not JSON.
    odd = [{"query": "q1", "documents": "a text", "labels": [1]},
           {"query": "q2", "documents": ["a", "b"], "labels": [1]},
           {"query": "q3", "documents": [1, 2], "labels": [1, 0]},
           {"query": "q4", "documents": [], "labels": []},
           {"query": "q5", "documents": ["c", "d"], "labels": [0, 1]}]
    (tmp_path / "odd.jsonl").write_text("".join(json.dumps(row) + "\n" for row in odd) + "{not json\n")
    got, stats = training_set(train_data=str(tmp_path / "odd.jsonl"), document_column="documents",
                              label_column="labels")
    assert sorted(label for _, label in got) == [0.0, 1.0, 1.0] and stats["pairs"] == 3
    reasons = stats["reject_reasons"]
    not_json = [r for r in reasons if r.startswith(f"{tmp_path / 'odd.jsonl'} line 6: not valid JSON")]
    assert len(not_json) == 1 and reasons == {
        "labels holds 1 label(s) for 2 document(s)": 1, "documents is list, not text or a list of texts": 1,
        "documents holds no text": 1, not_json[0]: 1}
    (tmp_path / "numbers.jsonl").write_text('{"query": "q", "pos": "p", "neg": 5}\n')  # read as a number column
    _, stats = training_set(train_data=str(tmp_path / "numbers.jsonl"), document_column="pos", negative_columns="neg")
    assert stats["pairs"] == 1 and stats["reject_reasons"] == {"neg is int, not text": 1}
    pq.write_table(pa.table({"query": ["q"], "documents": [[1]], "labels": [[1]]}), tmp_path / "numbers.parquet")
    with pytest.raises(InputError, match=r"column 'documents' is list<.*int64>, not text or a list of texts"):
        training_set(train_data=str(tmp_path / "numbers.parquet"), document_column="documents",
                     label_column="labels")


def test_the_training_set_is_shuffled_once_with_the_runs_seed(ray_local, tiny_model, tmp_path):
    """Triples give each block's positives, then its negatives (a BEIR split all its positives, then all its
    negatives), and each worker reads a contiguous part of the set: unshuffled, one of two workers trained on
    negatives alone. The set is shuffled over all its rows with the run's seed: the same order in every run
    of that seed (a resumed run finds its place), both halves and every window of rows mixing the labels."""
    from ce_ray.config import TrainConfig

    (tmp_path / "triples").mkdir()
    for part in range(2):
        pd.DataFrame({"query": [f"query {part} {i}" for i in range(100)],
                      "positive": [f"the passage that answers {part} {i}" for i in range(100)],
                      "negative": [f"another passage {part} {i}" for i in range(100)]}).to_parquet(
            tmp_path / "triples" / f"part-{part}.parquet")

    def labels(seed: int) -> list:
        config = TrainConfig(model=str(tiny_model), output=str(tmp_path / "o"), train_data=str(tmp_path / "triples"),
                             document_column="positive", negative_columns="negative", seed=seed)
        data, stats, _, _ = train_data.prepare_data(config, pair_encoder(str(tiny_model)), 64)
        assert stats["pairs"] == 400
        return [float(row[train_data.LABEL]) for row in data.take_all()]

    first = labels(42)
    assert first == labels(42) and first != labels(7) and sum(first) == 200
    for part in (first[:200], first[200:], *(first[i : i + 80] for i in range(0, 400, 80))):
        assert 0.25 < np.mean(part) < 0.75, part


def test_a_publish_cut_short_leaves_the_earlier_model_whole_and_the_next_one_replaces_it(tmp_path, monkeypatch):
    """The driver killed as it copied the model into the output left the new card beside weights cut short and no
    config.json (an earlier model's, where there was one): a folder that looked finished and loaded as no model. A
    local output keeps its files until every new one is copied beside them; on S3 an earlier model's card and
    config.json are deleted first, and the new ones go last."""
    import pyarrow.fs as pafs

    from ce_ray.train import _publish

    model = tmp_path / "model"
    model.mkdir()
    for name, data in (("config.json", b'{"new": 1}'), ("model.safetensors", os.urandom(1 << 20)),
                       ("vocab.txt", b"[PAD]\n")):
        (model / name).write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"config.json": b'{"old": 1}', "model.safetensors": b"old weights", "README.md": b"old card"}
    for name, data in earlier.items():
        (out / name).write_bytes(data)

    def killed_mid_copy(source, target, **_):
        os.makedirs(target)
        shutil.copyfile(os.path.join(source, "config.json"), os.path.join(target, "config.json"))
        with open(os.path.join(target, "model.safetensors"), "wb") as f:
            f.write((model / "model.safetensors").read_bytes()[:1000])
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(shutil, "copytree", killed_mid_copy)
        with pytest.raises(KeyboardInterrupt):
            _publish(str(model), str(out), "new card")
    assert {name: (out / name).read_bytes() for name in earlier} == earlier and not (out / "vocab.txt").exists()
    _publish(str(model), str(out), "new card")
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors", "vocab.txt"]
    assert (out / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    assert (out / "README.md").read_text() == "new card"

    class Recorded(pafs.LocalFileSystem):  # an upload's order, as a store takes its objects
        written: list = []
        killed = False  # the driver killed as the first object is uploaded

        def open_output_stream(self, path, *args, **kwargs):
            if self.killed:
                raise KeyboardInterrupt
            self.written.append(os.path.basename(path))
            return super().open_output_stream(path, *args, **kwargs)

    uploaded = tmp_path / "uploaded"
    uploaded.mkdir()
    for name, data in earlier.items():
        (uploaded / name).write_bytes(data)
    monkeypatch.setattr(_train_module(), "filesystem", lambda output: (Recorded(), str(uploaded)))
    monkeypatch.setattr(_train_module(), "is_remote", lambda output: True)
    Recorded.killed = True
    with pytest.raises(KeyboardInterrupt):
        _publish(str(model), "s3://bucket/model", "new card")
    # No config.json beside the earlier weights: no model loads from the folder, none of two models' files
    assert sorted(os.listdir(uploaded)) == ["model.safetensors"]
    Recorded.killed = False
    _publish(str(model), "s3://bucket/model", "new card")
    assert Recorded.written[-2:] == ["config.json", "README.md"] and len(Recorded.written) == 4
    assert (uploaded / "README.md").read_text() == "new card"


def test_a_run_resumed_without_its_eval_data_publishes_its_model(ray_local, tiny_model, pairs_file, tmp_path):
    """A run resumed (or a finished one run again) without its `eval_data` (which measures nothing, and is not
    refused as other eval data is) took the last measures of its log for its card, which then failed naming the
    eval data it lacked (`KeyError: 'eval'`) after every step, the model never published, each time. Its record
    keeps the eval data its checkpoints were measured on: the run with it again resumes."""
    from ce_ray.config import TrainConfig

    settings = dict(model=str(tiny_model), train_data=str(pairs_file), output=str(tmp_path / "model"),
                    num_workers=1, batch_size=16, max_steps=4, save_every=2, log_every=2)
    frame = pd.read_parquet(pairs_file)
    frame.assign(query_id=frame["query"]).to_parquet(tmp_path / "eval.parquet")
    _train_module().train(TrainConfig(**settings, eval_data=str(tmp_path / "eval.parquet"), eval_every=2))
    assert "## Evaluation" in (tmp_path / "model" / "README.md").read_text()
    outcome = _train_module().train(TrainConfig(**settings))
    card_text = (tmp_path / "model" / "README.md").read_text()
    assert outcome.final_metrics == {} and outcome.resumed_from == [4] and outcome.steps == 4
    assert "## Evaluation" not in card_text
    again = _train_module().train(TrainConfig(**settings, eval_data=str(tmp_path / "eval.parquet"), eval_every=2))
    assert again.resumed_from == [4] and again.final_metrics
    # Its checkpoints as a GPU run writes them, the optimizer's state on rank 0's GPU (torch records each tensor's
    # device), resumed on CPUs: every worker failed, "Attempting to deserialize object on a CUDA device".
    from unittest import mock

    import torch.serialization

    states = list((tmp_path / "model" / "checkpoints").rglob("state.pt"))
    assert states
    for path in states:
        state = torch.load(path, weights_only=True)
        with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
            torch.save(state, path)
    with pytest.raises(RuntimeError, match="on a CUDA device"):
        torch.load(states[0], weights_only=True)
    from_gpu = _train_module().train(TrainConfig(**settings))
    assert from_gpu.resumed_from == [4] and from_gpu.steps == 4


def test_columns_the_run_does_not_read_may_differ_from_file_to_file(ray_local, tiny_model, tmp_path):
    """Files whose columns differ only in columns the run does not read (a `source` of text in one file, of
    numbers in another, absent from a third; a label column beside negative columns) make one training set, and
    one eval set: they were refused as `column 'source' is int64, but in ... it is large_string`."""
    from ce_ray.config import TrainConfig

    for name in ("train", "eval", "triples"):
        (tmp_path / name).mkdir()
    pairs = pd.DataFrame({"query": ["q1", "q1", "q2", "q2"], "document": ["a", "b", "c", "d"], "label": [1, 0, 1, 0]})
    for name, source in (("text", ["wiki"] * 4), ("numbers", [1, 2, 3, 4]), ("none", None)):
        rows = pairs if source is None else pairs.assign(source=source)
        rows.to_parquet(tmp_path / "train" / f"{name}.parquet")
        rows.to_json(tmp_path / "eval" / f"{name}.jsonl", orient="records", lines=True)
    triples = pd.DataFrame({"query": ["q1", "q2"], "pos": ["a", "c"], "neg": ["b", "d"]})
    triples.assign(label=[1, 1]).to_parquet(tmp_path / "triples" / "numbers.parquet")
    triples.assign(label=["yes", "yes"]).to_parquet(tmp_path / "triples" / "text.parquet")
    encoder = pair_encoder(str(tiny_model))
    config = TrainConfig(model=str(tiny_model), output=str(tmp_path / "o"), train_data=str(tmp_path / "train"),
                         eval_data=str(tmp_path / "eval"))
    _, stats, eval_set, qrels = train_data.prepare_data(config, encoder, 32)
    assert (stats["pairs"], stats["positives"], stats["rejected"]) == (12, 6, 0)
    assert eval_set.count() == 4 and set(qrels) == {"q1", "q2"}  # each query's two documents, given thrice
    config = TrainConfig(model=str(tiny_model), output=str(tmp_path / "o"), train_data=str(tmp_path / "triples"),
                         document_column="pos", negative_columns="neg")
    _, stats, _, _ = train_data.prepare_data(config, encoder, 32)
    assert (stats["pairs"], stats["positives"], stats["rejected"]) == (8, 4, 0)


def test_every_batch_trains_under_grad_accum_and_eval_every_evaluates_between_log_lines(ray_local, tiny_model,
                                                                                         pairs_file, tmp_path, capsys):
    """64 pairs in batches of 16: 4 an epoch. With grad_accum 3 an epoch is 2 steps, the second on its last
    batch alone, as transformers' Trainer takes them (it was 1 step, and a batch was never trained on);
    eval_every 1 evaluates every step although log_every is 10. An output folder that held an earlier model
    keeps no file of it that would be read with the new one; other files stay. Workers the local Ray cannot
    hold, and settings training does not take, are refused before any work. A reranker whose scores are its
    logits (its saved activation Identity) keeps them so, as CrossEncoderTrainer keeps its activation."""
    from sentence_transformers import CrossEncoder

    from ce_ray.config import ConfigError, TrainConfig, load_config

    out = shutil.copytree(tiny_model, tmp_path / "o")  # an earlier model's folder
    identity = '{"activation_fn": "torch.nn.modules.linear.Identity"}'
    (out / "config_sentence_transformers.json").write_text(identity)
    (out / "notes.txt").write_text("mine")
    (out / "onnx").mkdir()  # its export, which CrossEncoder(backend="onnx") loads where it finds one
    (out / "onnx" / "model.onnx").write_text("the earlier model")
    logits = shutil.copytree(tiny_model, tmp_path / "logits")
    # Where CrossEncoder reads a folder's activation without its own layout (modules.json): config.json's
    config = json.loads((logits / "config.json").read_text())
    (logits / "config.json").write_text(json.dumps(config | {"sentence_transformers": json.loads(identity)}))
    assert type(CrossEncoder(str(logits), device="cpu").activation_fn).__name__ == "Identity"
    settings = dict(model=str(logits), train_data=str(pairs_file), output=str(out))
    outcome = _train_module().train(TrainConfig(**settings, eval_data=str(pairs_file), grad_accum=3, eval_every=1,
                                                log_every=10))
    trained = [entry for entry in outcome.log if entry["step"] > 0]
    assert outcome.steps == 2 and [(e["step"], e["epoch"]) for e in trained] == [(1, 0.75), (2, 1.0)]
    assert all("eval_ndcg@10" in entry for entry in trained)
    # The evaluations (before the steps and at each of them) have their own seconds in the summary.
    assert outcome.phases["eval"] > 0 and f"eval {outcome.phases['eval']:.1f}, saves" in "\n".join(outcome.lines())
    assert not (out / "config_sentence_transformers.json").exists() and (out / "notes.txt").read_text() == "mine"
    assert "what an earlier model left there: config_sentence_transformers.json, onnx/" in capsys.readouterr().out
    assert not (out / "onnx").exists()
    assert type(CrossEncoder(str(out), device="cpu").activation_fn).__name__ == "Identity"

    with pytest.raises(ConfigError, match=r"64 worker\(s\) need 64 CPU\(s\) \(the cluster has \d+\): lower"):
        _train_module().train(TrainConfig(**{**settings, "output": str(tmp_path / "wide")}, num_workers=64))
    with pytest.raises(ConfigError, match=r"^dtype \(--dtype\): 'bfloat16' is not one of 'auto'$"):  # as YAML gives it
        load_config(TrainConfig, None, {"dtype": "bfloat16"})
    for bad, match in (({"seed": -1}, r"^seed \(--seed\) must be"),
                       ({"cpus_per_worker": 0.0}, r"cpus_per_worker \(--cpus-per-worker\) > 0"),
                       ({"eval_max_queries": 0}, r"^eval_max_queries \(--eval-max-queries\) must be >= 1"),
                       ({"max_length": 0}, r"^max_length \(--max-length\) must be >= 8")):
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**settings, **bad).validate()
    assert _train_module().MODEL_FILES.fullmatch("sentencepiece.bpe.model")  # XLM-R's tokenizer, removed too
    (tmp_path / "lr.yaml").write_text("lr: 1e-4\nwarmup_ratio: .1\n")  # YAML reads these as text
    loaded = load_config(TrainConfig, str(tmp_path / "lr.yaml"))
    assert (loaded.lr, loaded.warmup_ratio) == (1e-4, 0.1)


def test_eval_data_in_the_training_datas_shape_ranks_each_querys_rows(ray_local, tiny_model, tmp_path):
    """eval_data given as rows like the training data's (a query, its positives and its negatives, as lists):
    each query's rows are its candidates, and the base model's metrics (step 0) are those of
    CrossEncoderRerankingEvaluator on the same samples, positives ranked among negatives. A query without a
    positive is left out, as from a BEIR split, and said; triples (a row per negative, the positives repeated on
    each) give the same candidates, where each repeat was another (MAP doubled). Soft labels are refused."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    from ce_ray.config import TrainConfig
    from ce_ray.messages import InputError

    model_path = spread_model(tiny_model, tmp_path / "spread")
    model = CrossEncoder(str(model_path), device="cpu")
    samples = []
    for _, group in wikiqa_pairs("test").groupby("query_id", sort=False):
        documents = group.document.drop_duplicates().tolist()
        scores = np.sort(model.predict([(group["query"].iloc[0], d) for d in documents]))
        # Both sides must see the same order: scores of two sentences closer than fp32 parity could swap.
        if len(documents) == len(group) and (len(scores) < 2 or np.diff(scores).min() > 2e-6):
            samples.append({"query": group["query"].iloc[0], "positive": group[group.label == 1].document.tolist(),
                            "negative": group[group.label == 0].document.tolist()})
        if len(samples) == 30:
            break
    assert sum(not s["positive"] for s in samples) >= 3
    pd.DataFrame({"query": [s["query"] for s in samples], "pos": [s["positive"] for s in samples],
                  "neg": [s["negative"] for s in samples]}).to_json(tmp_path / "eval.jsonl", orient="records",
                                                                       lines=True)
    pd.DataFrame([{"query": s["query"], "pos": s["positive"], "neg": [negative]} for s in samples
                  for negative in s["negative"]]).to_json(tmp_path / "triples.jsonl", orient="records", lines=True)
    with_positive = [s for s in samples if s["positive"]]
    expected = CrossEncoderRerankingEvaluator(with_positive, at_k=10, write_csv=False)(model)

    # Two workers each score half of the candidates and share their scores: the same metrics.
    evaluated = {2: tmp_path / "eval.jsonl", 1: tmp_path / "triples.jsonl"}
    for workers in (2, 1):
        outcome = _train_module().train(TrainConfig(
            model=str(model_path), train_data=str(tmp_path / "eval.jsonl"), eval_data=str(evaluated[workers]),
            document_column="pos", negative_columns="neg", output=str(tmp_path / f"o{workers}"), max_steps=1,
            batch_size=4, num_workers=workers))
        base = outcome.log[0]
        assert base["step"] == 0
        for name in ("map", "mrr@10", "ndcg@10"):
            assert base[f"eval_{name}"] == pytest.approx(expected[name], abs=1e-6), (workers, name)
    candidates = sum(len(s["positive"]) + len(s["negative"]) for s in with_positive)
    card = open(tmp_path / "o1" / "README.md").read()
    without = len({s["query"] for s in samples if s["negative"]}) - len(with_positive)
    # The card names a local path by its name alone (`card.shown`): it is meant for the hub.
    assert f"Reranking each query's rows of `triples.jsonl` ({len(with_positive)} queries, " \
           f"{candidates} candidates; {without} queries without a row labelled above 0 left out)." in card
    soft = pd.DataFrame({"query": ["q", "q"], "document": ["a", "b"], "label": [0.9, 0.1]})
    soft.to_parquet(tmp_path / "soft.parquet")
    with pytest.raises(InputError, match=r"soft\.parquet: evaluation takes labels as grades.* and 0\.9 is none"):
        _train_module().train(TrainConfig(model=str(model_path), train_data=str(tmp_path / "soft.parquet"),
                                          eval_data=str(tmp_path / "soft.parquet"), output=str(tmp_path / "soft"),
                                          max_steps=1))


def test_eval_rows_without_a_label_are_candidates_of_grade_0_as_eval_counts_them(ray_local, tmp_path):
    """An eval row whose label is null was left out as a row that "cannot be scored", and the run's figures rose
    above those of `ce-ray eval` of the same rows, which counts it at grade 0."""
    from ce_ray.config import TrainConfig

    pd.DataFrame({"query": ["q"] * 4 + ["r"], "document": ["a", "b", "c", "d", None],
                  "label": [1.0, None, 0.0, None, 1.0]}).to_parquet(tmp_path / "eval.parquet")
    config = TrainConfig(eval_data=str(tmp_path / "eval.parquet"))
    table, qrels, said = train_data._eval_candidates(config, [])
    assert table.column("document").to_pylist() == ["a", "b", "c", "d"]
    assert qrels == {"q": {"0": 1.0, "1": 0.0, "2": 0.0, "3": 0.0}}
    assert said.endswith("(1 query, 4 candidates; 1 row(s) that cannot be scored left out; 2 row(s) without a label "
                         "taken as not relevant)")


def test_eval_rows_of_several_files_come_in_the_files_order_in_every_run(ray_local, tmp_path):
    """The eval rows make the eval set in their order: the first eval_max_queries queries are evaluated, and
    the candidates' ids are their rows. Read as their tasks ended, rows of a later file came first where its
    task ended first (a fresh Ray's first read, a busy cluster): other queries evaluated, other metrics, from
    run to run of the same settings."""
    from ce_ray.config import TrainConfig

    pairs = wikiqa_pairs("test")[["query", "document", "label"]]
    (tmp_path / "eval").mkdir()
    files = [pd.concat([pairs.assign(query=pairs["query"] + f" ({part}.{copy})") for copy in range(3)])
             for part in range(4)]  # each file's own queries
    for part, rows in enumerate(files):
        rows.to_parquet(tmp_path / "eval" / f"part-{part}.parquet", row_group_size=1024)
    in_order = pd.concat(files, ignore_index=True)
    config = TrainConfig(model="m", output=str(tmp_path / "o"), train_data="t", eval_data=str(tmp_path / "eval"),
                         eval_max_queries=2000)
    reads = [train_data._eval_candidates(config, []) for _ in range(3)]
    for candidates, qrels, _ in reads:
        # Each candidate's id is its row in the files' order; the queries are the files' first 2,000.
        rows = in_order.iloc[[int(d) for d in candidates.column("doc_id").to_pylist()]]
        assert rows["query"].tolist() == candidates.column("query").to_pylist()
        assert rows["document"].tolist() == candidates.column("document").to_pylist()
        assert list(qrels) == list(dict.fromkeys(in_order[in_order.label > 0]["query"]))[:2000]
    assert all(candidates.equals(reads[0][0]) and qrels == reads[0][1] for candidates, qrels, _ in reads)
    # What the run says of them adds up to the files' queries: those past the first 2,000 are said too.
    with_relevant = in_order[in_order.label > 0]["query"].nunique()
    without = in_order["query"].nunique() - with_relevant
    said = reads[0][2]
    assert f"(2,000 queries, {reads[0][0].num_rows:,} candidates; {with_relevant - 2000:,} queries past the first " \
        f"2,000 left out (eval_max_queries); {without:,} queries without a row labelled above 0 left out)" in said


def write_beir_folder(folder, documents: list, queries: list, qrels: dict) -> None:
    """A BEIR folder of documents d0, d1, ... and queries q0, q1, ...; `qrels`: split -> its tsv's lines."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{n}", "title": "", "text": text}) + "\n"
                                                 for n, text in enumerate(documents)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{n}", "text": text}) + "\n"
                                                  for n, text in enumerate(queries)))
    for split, lines in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
            f"{line}\n" for line in lines))


def test_a_beir_eval_splits_queries_left_out_are_counted(tmp_path):
    """A BEIR eval split's line (and the card's) said `(test split, 1 queries)` of a split of 3: the queries past
    eval_max_queries and those without a relevant document were left out unsaid, where eval rows count them."""
    from ce_ray.config import TrainConfig

    write_beir_folder(tmp_path, ["red apples", "blue sea", "green tea"], ["apples", "sea", "tea"],
                      {"test": ["q0\td0\t1", "q1\td1\t1", "q2\td2\t0"]})
    table, qrels, said = train_data._eval_candidates(TrainConfig(eval_data=str(tmp_path), eval_max_queries=1), [])
    assert list(qrels) == ["q0"] and table.column("doc_id").to_pylist() == ["d0"]
    assert said == (f"the BM25 top 100 of `{tmp_path}` (test split, 1 query, 1 candidate; 1 query past the first "
                    "1 left out (eval_max_queries); 1 query without a relevant document left out)")


def test_a_beir_eval_query_without_a_bm25_candidate_is_left_out_as_ce_ray_eval_leaves_it(tmp_path):
    """A query that shares no term with any document has no BM25 candidate. The run's evaluation counted it as 0
    (NDCG, MRR and MAP 0.5 where its one other query ranked its relevant document first), where `ce-ray eval` of the
    same candidates, as trec_eval, leaves it out (1.0): the run's figures were not ce-ray eval's of them."""
    from ce_ray.config import TrainConfig
    from ce_ray.messages import InputError

    write_beir_folder(tmp_path, ["apples grow on apple trees", "the apple harvest", "cars drive on roads"],
                      ["apple trees", "zebra"], {"test": ["q0\td0\t1", "q1\td2\t1"]})
    table, qrels, said = train_data._eval_candidates(TrainConfig(eval_data=str(tmp_path)), [])
    assert list(qrels) == ["q0"] and set(table.column("query_id").to_pylist()) == {"q0"}
    assert said == (f"the BM25 top 100 of `{tmp_path}` (test split, 1 query, 2 candidates; 1 query without a BM25 "
                    "candidate left out)")
    write_beir_folder(tmp_path / "none", ["cars drive on roads"], ["zebra"], {"test": ["q0\td0\t1"]})
    with pytest.raises(InputError, match=r"BM25 finds no candidate for any eval query of qrels/test.tsv"):
        train_data._eval_candidates(TrainConfig(eval_data=str(tmp_path / "none")), [])


def test_beir_hard_negatives_are_documents_bm25_retrieved_for_the_query(tmp_path):
    """Where fewer documents than asked share a term with the query, bm25s fills its top k with ones that share
    none, in arbitrary order: they were taken as the query's hard negatives (3 of 6 here). Only retrieved ones are."""
    write_beir_folder(tmp_path, ["cats purr softly", "cats chase mice", "dogs chase cats", "cats sleep a lot",
                                 "mountains are tall", "music has rhythm", "oceans are deep"],
                      ["why do cats purr"], {"train": ["q0\td0\t1", "q7\td1\t1", "q0\td99\t1"]})
    pairs, dropped = train_data.beir_training_pairs(str(tmp_path), "train", hard_negatives=6)
    negatives = sorted(row["document"] for row in pairs.to_pylist() if row["label"] == 0)
    assert negatives == ["cats chase mice", "cats sleep a lot", "dogs chase cats"]
    # The judged positives that give no pair are counted (they were left out without a word); as eval data, a
    # query without its text was said to have no relevant document.
    assert dropped == {"query not in queries.jsonl": 1, "document not in corpus.jsonl": 1}
    from ce_ray.config import TrainConfig

    said = train_data._eval_candidates(TrainConfig(eval_data=str(tmp_path), eval_split="train", eval_top_k=2), [])[2]
    assert said.endswith("; 1 query not in queries.jsonl left out)") and "without a relevant" not in said


def test_a_gzipped_beir_folder_trains_and_evaluates_as_its_plain_copy(tmp_path):
    """A BEIR folder kept gzipped (`corpus.jsonl.gz`, `queries.jsonl.gz`, `qrels/<split>.tsv.gz`) was no BEIR folder
    to train: it was read as files of pairs (`input <folder> mixes formats ['jsonl', 'tsv']: pass input_format`), and
    as eval_data too. It is one now, its pairs, eval candidates and recorded files those it reads."""
    import gzip

    from ce_ray.config import TrainConfig

    plain, gzipped = tmp_path / "beir", tmp_path / "beir-gz"
    files = {"corpus.jsonl": "".join(json.dumps({"_id": f"d{n}", "title": "", "text": text}) + "\n" for n, text in
                                     enumerate(["red apples", "blue sea", "green tea", "red sea", "apples and tea"])),
             "queries.jsonl": "".join(json.dumps({"_id": f"q{n}", "text": text}) + "\n"
                                      for n, text in enumerate(["red apples", "the sea", "green tea"])),
             "qrels/train.tsv": "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\n",
             "qrels/test.tsv": "query-id\tcorpus-id\tscore\nq2\td2\t1\n"}
    for name, text in files.items():
        for folder, data, suffix in ((plain, text.encode(), ""), (gzipped, gzip.compress(text.encode()), ".gz")):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / (name + suffix)).write_bytes(data)
    found = train_data.training_input(TrainConfig(train_data=str(gzipped)))
    assert found.beir and sorted(found.files) == [f"{gzipped}/{name}" for name in (
        "corpus.jsonl.gz", "qrels/train.tsv.gz", "queries.jsonl.gz")]
    pairs = [train_data.beir_training_pairs(str(folder), "train", hard_negatives=1)[0].to_pylist()
             for folder in (plain, gzipped)]
    assert pairs[1] == pairs[0] and len(pairs[0]) == 4
    table, qrels, said = train_data._eval_candidates(TrainConfig(eval_data=str(gzipped), eval_top_k=2), [])
    assert qrels == {"q2": {"d2": 1}} and table.column("doc_id").to_pylist() == ["d2", "d4"]
    assert said == f"the BM25 top 2 of `{gzipped}` (test split, 1 query, 2 candidates)"


def test_eval_data_in_other_columns_fails_before_the_training_data_is_tokenized(ray_local, tiny_model, tmp_path):
    """eval_data is read in the training data's columns: eval rows written with names of their own fail naming
    the file, what it lacks and the columns it is read in (the training data's were not named), and before the
    training data's tokenizing (here failing on a label that is no number), which came first."""
    from ce_ray.config import TrainConfig
    from ce_ray.messages import InputError

    pd.DataFrame({"query": ["q", "q"], "document": ["a", "b"], "label": ["yes", "no"]}).to_parquet(
        tmp_path / "train.parquet")
    pd.DataFrame({"question": ["q", "q"], "passage": ["a", "b"], "score": [1, 0]}).to_parquet(tmp_path / "eval.parquet")
    config = TrainConfig(model=str(tiny_model), output=str(tmp_path / "o"), train_data=str(tmp_path / "train.parquet"),
                         eval_data=str(tmp_path / "eval.parquet"))
    with pytest.raises(InputError, match=r"^eval_data \(--eval-data\) .*eval\.parquet: missing column\(s\) 'query', "
                                         r"'document', 'label' \(columns: question, passage, score\) \(eval rows are "
                                         r"read in the training data's columns: 'query', 'document', 'label'\)$"):
        train_data.prepare_data(config, pair_encoder(str(tiny_model)), 32)


def test_best_metric_makes_the_best_evaluated_checkpoint_the_model(ray_local, tiny_model, tmp_path):
    """With best_metric every checkpoint is evaluated, and each evaluation saves one (an evaluation between
    checkpoints, unsaved, could beat the model chosen, which the summary called the best), Ray Train keeps the best
    ones and the latest (which a restart resumes from), and the output is the best one's model, as
    CrossEncoderTrainer's load_best_model_at_end makes it. The run again with other eval data is refused: it kept
    the former's figures under the latter's name."""
    from safetensors.numpy import load_file

    from ce_ray.config import ConfigError, TrainConfig

    model_path = spread_model(tiny_model, tmp_path / "spread")
    wikiqa_pairs("train", 400)[["query", "document", "label"]].to_parquet(tmp_path / "train.parquet")
    wikiqa_pairs("test", 300)[["query", "document", "label"]].to_parquet(tmp_path / "eval.parquet")
    settings = dict(model=str(model_path), train_data=str(tmp_path / "train.parquet"), output=str(tmp_path / "o"),
                    best_metric="ndcg@10", save_every=4, eval_every=1, max_steps=6, batch_size=16, lr=5e-2,
                    log_every=1)
    with pytest.raises(ConfigError, match=r"^best_metric \(--best-metric\) ndcg@10 needs eval_data \(--eval-data\)"):
        _train_module().train(TrainConfig(**settings))
    for name, value in (("eval_every", 5), ("eval_max_queries", 50)):  # ignored without a word, where they were
        flag = name.replace("_", "-")
        with pytest.raises(ConfigError, match=rf"^{name} \(--{flag}\) {value} needs eval_data \(--eval-data\), which "
                                              r"it is measured on$"):
            TrainConfig(**{**settings, "best_metric": "", "eval_every": 0, name: value}).validate()
    outcome = _train_module().train(TrainConfig(**settings, eval_data=str(tmp_path / "eval.parquet")))

    evaluated = [entry for entry in outcome.log if entry["step"] > 0]
    assert [entry["step"] for entry in evaluated] == [1, 2, 3, 4, 5, 6]
    best = max(evaluated, key=lambda entry: (entry["eval_ndcg@10"], entry["step"]))
    assert outcome.best_step == best["step"] < 6, [e["eval_ndcg@10"] for e in evaluated]  # the choice is seen
    assert outcome.final_metrics == {k: v for k, v in best.items() if k.startswith("eval_")}
    by_score = sorted(evaluated, key=lambda entry: (entry["eval_ndcg@10"], entry["step"]))
    kept = {entry["step"] for entry in by_score[-2:]} | {6}
    folder = tmp_path / "o" / "checkpoints" / "o"
    checkpoints = sorted(p.name for p in folder.glob("checkpoint_*") if p.is_dir())
    assert checkpoints == [f"checkpoint_{step:07d}" for step in sorted(kept)]
    chosen = load_file(folder / f"checkpoint_{best['step']:07d}" / "model" / "model.safetensors")
    published = load_file(tmp_path / "o" / "model.safetensors")
    assert chosen.keys() == published.keys() and all(np.array_equal(chosen[k], published[k]) for k in chosen)
    assert f"The model is the checkpoint of step {best['step']}, the best by ndcg@10" in (
        tmp_path / "o" / "README.md").read_text()
    assert f"(step {best['step']}, the best ndcg@10)" in outcome.lines()[-1]
    wikiqa_pairs("test", 300).iloc[150:][["query", "document", "label"]].to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ConfigError, match=r"holds the checkpoints of a run with other settings \(eval_data\)"):
        _train_module().train(TrainConfig(**settings, eval_data=str(tmp_path / "other.parquet")))
    # Without eval_every, each checkpoint is still evaluated: one saved unevaluated could never be chosen.
    sparse = dict(settings, eval_every=0, save_every=2, max_steps=4, output=str(tmp_path / "o2"))
    outcome = _train_module().train(TrainConfig(**sparse, eval_data=str(tmp_path / "eval.parquet")))
    assert [entry["step"] for entry in outcome.log if entry["step"] > 0 and "eval_ndcg@10" in entry] == [2, 4]


def test_a_checkpoint_that_lacks_files_is_not_resumed_from_nor_made_the_model(ray_local, tiny_model, tmp_path,
                                                                              capsys):
    """A recorded checkpoint whose folder lacks a file (a store that dropped an upload, as Ray Train's own upload
    let it, or lost it since) is refused, naming the file, when the run resumes from it. A run of the same name
    after a finished one saved that checkpoint's model again: a model folder without its config.json. The line
    that ends the command says how to start afresh, and no more `the same command resumes it`, which meets the
    same checkpoint again."""
    from ce_ray.cli import report_failure
    from ce_ray.config import TrainConfig

    train = _train_module()
    wikiqa_pairs("train", 32)[["query", "document", "label"]].to_parquet(tmp_path / "pairs.parquet")
    settings = TrainConfig(model=str(tiny_model), train_data=str(tmp_path / "pairs.parquet"),
                           output=str(tmp_path / "o"), max_steps=1, batch_size=8)
    train.train(settings)
    checkpoint = tmp_path / "o" / "checkpoints" / "o" / "checkpoint_0000001"
    listed = json.loads((checkpoint / "ce-ray-files-0.json").read_text())
    assert listed["model/config.json"] > 0 and listed["ce-ray-random-0.pt"] > 0
    # A checkpoint of an earlier ce-ray holds no random state: the run resumes from it, reseeded.
    (checkpoint / "ce-ray-random-0.pt").unlink()
    del listed["ce-ray-random-0.pt"]
    (checkpoint / "ce-ray-files-0.json").write_text(json.dumps(listed))
    assert train.train(settings).resumed_from == [1]
    (checkpoint / "model" / "config.json").unlink()
    with pytest.raises(Exception, match=re.escape(f"the checkpoint {checkpoint} lacks model/config.json: it was not "
                                                  "written whole to the store and is not loaded")) as failed:
        train.train(settings)
    capsys.readouterr()
    report_failure("train", failed.value)
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ce-ray train: failed: IncompleteCheckpoint: the checkpoint {checkpoint} lacks model/config.json: it was not "
        f"written whole to the store and is not loaded. Delete the run's folder ({checkpoint.parent}) or give another "
        "run_name (--run-name) to start afresh")

    # What each case lacks: by the lists of the ranks' files, which progress.json counts, or (a checkpoint of an
    # earlier ce-ray, without them) the files the run reads.
    (checkpoint / "model" / "config.json").write_text("{}")
    assert checkpoints.missing_files(str(checkpoint), deepspeed=False) == ["model/config.json"]  # not its size
    (checkpoint / "state.pt").unlink()
    progress = json.loads((checkpoint / checkpoints.PROGRESS).read_text())
    (checkpoint / checkpoints.PROGRESS).write_text(json.dumps(progress | {"file_lists": 2}))
    assert sorted(checkpoints.missing_files(str(checkpoint), deepspeed=True)) == [
        "ce-ray-files-1.json", "model/config.json", "state.pt"]
    (checkpoint / checkpoints.PROGRESS).write_text(json.dumps({k: v for k, v in progress.items() if k != "file_lists"}))
    assert checkpoints.missing_files(str(checkpoint), deepspeed=False) == ["state.pt"]
    assert checkpoints.missing_files(str(checkpoint), deepspeed=True) == []
    (checkpoint / checkpoints.PROGRESS).unlink()
    assert checkpoints.missing_files(str(checkpoint), deepspeed=False) == ["progress.json"]


def test_a_nan_loss_stops_the_run_before_it_saves_a_model(ray_local, tiny_model, tmp_path):
    """A loss that went NaN (here from a base model of a NaN head) made the weights NaN: the run saved them, in its
    checkpoints and as the model, and said it was done. It now stops at the log line of that step, naming it,
    with neither a checkpoint nor a model written."""
    from safetensors.torch import load_file, save_file

    from ce_ray.config import TrainConfig

    model = shutil.copytree(tiny_model, tmp_path / "nan-head")
    weights = load_file(model / "model.safetensors")
    weights["classifier.bias"][:] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    wikiqa_pairs("train", 32)[["query", "document", "label"]].to_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(Exception, match=re.escape(
            "the training loss of step 1 is nan: the run stops without saving its weights (a lower lr (--lr) or a "
            "warmup_ratio (--warmup-ratio) keeps a diverging loss finite; a base model of NaN or infinite weights "
            "gives one from the first step)")):
        _train_module().train(TrainConfig(model=str(model), train_data=str(tmp_path / "pairs.parquet"),
                                          output=str(tmp_path / "o"), batch_size=8, max_steps=2, log_every=1))
    assert not (tmp_path / "o" / "model.safetensors").exists()
    assert not list((tmp_path / "o" / "checkpoints" / "o").glob("checkpoint_*"))


def test_weights_made_non_finite_behind_a_finite_loss_are_not_saved(ray_local, tiny_model, tmp_path):
    """Weights that are not all finite behind a finite loss (NaN or infinite gradients of the steps since the last log
    line: a step's loss is that of the weights before its update; here a NaN row of the word embeddings that no pair's
    tokens reach) were saved, in the checkpoints and as the model, and the run said it was done. It now stops before
    the save, naming the step, with neither a checkpoint nor a model written."""
    from safetensors.torch import load_file, save_file

    from ce_ray.config import TrainConfig

    model = shutil.copytree(tiny_model, tmp_path / "nan-row")
    weights = load_file(model / "model.safetensors")
    name = next(key for key in weights if key.endswith("word_embeddings.weight"))
    weights[name][5] = float("nan")  # [unused4]: no text is tokenized to it
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    wikiqa_pairs("train", 16)[["query", "document", "label"]].to_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(FloatingPointError, match=r"^the weights after step 2 are not all finite, though its loss "
                       r"is \(\d\.\d{4}\): the run stops without saving its weights \(a lower lr \(--lr\) or a "
                       r"warmup_ratio \(--warmup-ratio\) keeps a diverging run finite\)$"):
        _train_module().train(TrainConfig(model=str(model), train_data=str(tmp_path / "pairs.parquet"),
                                          output=str(tmp_path / "o"), batch_size=8, max_steps=2, log_every=1))
    assert not (tmp_path / "o" / "model.safetensors").exists()
    assert not list((tmp_path / "o" / "checkpoints" / "o").glob("checkpoint_*"))


def test_a_run_stopped_by_non_finite_weights_after_a_checkpoint_says_to_start_a_new_run(ray_local, tiny_model,
                                                                                       tmp_path):
    """A run stopped by a loss or weights not finite says that a lower lr or a warmup keeps it finite; where it had
    written a checkpoint before, the same command with either was refused as other settings. Its message now says to
    give the new run another run_name or output. (The first step's lr is 0, under a warmup of one step, and its
    checkpoint is written; the second's, 1e36, takes the weights to ~1e36, past float32's range in their sum.)"""
    from ce_ray.config import ConfigError, TrainConfig

    train = _train_module()
    wikiqa_pairs("train", 16)[["query", "document", "label"]].to_parquet(tmp_path / "pairs.parquet")
    settings = TrainConfig(model=str(tiny_model), train_data=str(tmp_path / "pairs.parquet"),
                           output=str(tmp_path / "o"), batch_size=8, max_steps=2, log_every=1, save_every=1,
                           warmup_ratio=0.5, lr=1e36)
    run_uri = tmp_path / "o" / "checkpoints" / "o"
    with pytest.raises(FloatingPointError, match=r"^the weights after step 2 are not all finite, though its loss is "
                       r"\(\d\.\d{4}\): the run stops without saving its weights \(a lower lr \(--lr\) or a "
                       r"warmup_ratio \(--warmup-ratio\) keeps a diverging run finite\)" + re.escape(
                           "; with other settings it is a new run: give another run_name (--run-name) or output "
                           f"(--output), as {run_uri} holds checkpoints that a run of the same name resumes from with "
                           "the same settings only") + "$"):
        train.train(settings)
    assert [p.name for p in run_uri.glob("checkpoint_0*")] == ["checkpoint_0000001"]
    with pytest.raises(ConfigError, match=r"holds the checkpoints of a run with other settings \(lr\)"):
        train.train(dataclasses.replace(settings, lr=1e-5))


def test_a_nan_loss_is_not_retried(tiny_model, tmp_path):
    """Ray Train retried a run that a NaN loss stopped (`max_failures`), which met the same NaN again, each try a
    start of the workers for nothing. The stop ends the run at its first try, exit 1. Its line said `the same
    command resumes it from its last checkpoint`, which met the same NaN again: it says what to change alone."""
    from safetensors.torch import load_file, save_file

    from test_score import run_cli

    model = shutil.copytree(tiny_model, tmp_path / "nan-head")
    weights = load_file(model / "model.safetensors")
    weights["classifier.bias"][:] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    wikiqa_pairs("train", 16)[["query", "document", "label"]].to_parquet(tmp_path / "pairs.parquet")
    result = run_cli("train", "--model", str(model), "--train-data", str(tmp_path / "pairs.parquet"), "--output",
                     str(tmp_path / "o"), "--batch-size", "8", "--max-steps", "2", "--log-every", "1",
                     "--max-failures", "2", timeout=420)
    assert result.returncode == 1, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count(f"ce-ray train: {model} on cpu") == 1  # the workers' start: once
    assert result.stderr.splitlines()[-1] == (
        "ce-ray train: failed: FloatingPointError: the training loss of step 1 is nan: the run stops without saving "
        "its weights (a lower lr (--lr) or a warmup_ratio (--warmup-ratio) keeps a diverging loss finite; a base model "
        "of NaN or infinite weights gives one from the first step)")
    # The line alone, as ce-ray's own errors: the driver's traceback of its raise said the message twice (Ray's own
    # actors may print theirs, prefixed by the actor's name).
    assert not [line for line in result.stderr.splitlines() if line.startswith("Traceback")]
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_bf16_on_cpus_is_noted_before_the_run(ray_local, tiny_model, tmp_path, capsys):
    """A configuration written for GPUs (bf16: true) tried on CPUs trains, with a note that bf16 is fast only on
    CPUs with instructions for it."""
    from ce_ray.config import TrainConfig

    wikiqa_pairs("train", 16)[["query", "document", "label"]].to_parquet(tmp_path / "pairs.parquet")
    _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(tmp_path / "pairs.parquet"),
                                      output=str(tmp_path / "o"), max_steps=1, batch_size=8, bf16=True))
    assert ("ce-ray: note: bf16 on CPUs is fast only where they have bfloat16 instructions (AMX, AVX-512 BF16); "
            "without them a forward pass ran 9x slower than in float32 (bf16 unset: float32 on CPUs)\n"
            ) in capsys.readouterr().err


def test_eval_data_that_is_the_training_data_is_said_to_measure_fit(ray_local, tiny_model, tmp_path, capsys):
    """eval_data given the training file (or a BEIR folder's training split) ran silently, its figures passing for
    those of a held-out set. The run now says so before it starts; another split of the same folder is held out."""
    from ce_ray.config import TrainConfig

    wikiqa_pairs("train", 16)[["query", "document", "label"]].to_parquet(tmp_path / "pairs.parquet")
    _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(tmp_path / "pairs.parquet"),
                                      eval_data=str(tmp_path / ".." / tmp_path.name / "pairs.parquet"),
                                      output=str(tmp_path / "o"), max_steps=1, batch_size=8))
    assert ("ce-ray train: warning: eval_data (--eval-data) is the training data: its metrics say how the model fits "
            "the pairs it trains on, not how it ranks unseen queries\n") in capsys.readouterr().err
    from ce_ray.train_data import training_input

    def check(config):
        _train_module()._warn_of_eval_on_training_data(config, training_input(config).beir)

    check(TrainConfig(train_data=str(SCIFACT), eval_data=str(SCIFACT) + "/", eval_split="train"))
    assert "eval_data (--eval-data) is the training data (the train split of both): " in capsys.readouterr().err
    check(TrainConfig(train_data=str(SCIFACT), eval_data=str(SCIFACT)))  # the test split: held out
    assert "warning" not in capsys.readouterr().err
    # S3 in two spellings of one object (s3a:// is s3://): no look-up of the store is made to say so.
    _train_module()._warn_of_eval_on_training_data(
        TrainConfig(train_data="s3a://bucket/pairs.parquet", eval_data="s3://bucket/pairs.parquet/"), beir=False)
    assert "eval_data (--eval-data) is the training data: " in capsys.readouterr().err


def test_a_checkpoint_that_lacks_many_files_names_the_first_five_and_counts_the_rest(tmp_path):
    """Many missing files are said as every list of many is (`messages.briefly`): the first five, then how many more."""
    listed = {f"model/part-{n}.bin": 1 for n in range(7)}
    (tmp_path / checkpoints.PROGRESS).write_text(json.dumps({"file_lists": 1}))
    (tmp_path / "ce-ray-files-0.json").write_text(json.dumps(listed))
    with pytest.raises(checkpoints.IncompleteCheckpoint,
                       match=re.escape("lacks model/part-0.bin; model/part-1.bin; model/part-2.bin; model/part-3.bin; "
                                       "model/part-4.bin; and 2 more: it was not written whole")):
        checkpoints.check_whole(str(tmp_path), deepspeed=False, shown="s3://bucket/run/checkpoint_0000001")


def test_a_run_whose_training_files_changed_since_its_checkpoints_is_not_resumed(ray_local, tiny_model, tmp_path,
                                                                                 capsys):
    """A resumed run skips the batches its checkpoint trained by their place in the data: under the same train_data
    with a file rewritten, added or removed since, it skipped other rows than it had trained, silently. The run's
    record holds each file's stamp, and such a run is refused before any work, naming the file; a record of an
    earlier ce-ray, without them, still resumes, and gets them. The refusal names run_name and output by their flags
    too (it named the YAML keys alone). A file only touched or copied again (another modification time, the same
    bytes) was refused as rewritten: the record holds each local file's sha256 too, and the run resumes, saying so;
    a record without them compares the stamps alone. A resume whose passes train in another precision is refused."""
    from ce_ray.config import ConfigError, TrainConfig
    from ce_ray.model_folder import model_source

    train = _train_module()
    data = tmp_path / "pairs"
    data.mkdir()
    pairs = wikiqa_pairs("train", 48)[["query", "document", "label"]]
    pairs.iloc[:16].to_parquet(data / "a.parquet")
    pairs.iloc[16:32].to_parquet(data / "b.parquet")
    settings = TrainConfig(model=str(tiny_model), train_data=str(data), output=str(tmp_path / "o"), max_steps=1,
                           batch_size=8)
    train.train(settings)
    record = tmp_path / "o" / "checkpoints" / "o" / "ce-ray-run.json"
    assert sorted(json.loads(record.read_text())["train_files"]) == [str(data / "a.parquet"), str(data / "b.parquet")]
    a_bytes, a_stat = (data / "a.parquet").read_bytes(), (data / "a.parquet").stat()

    def refused(change: str):
        return pytest.raises(ConfigError, match=re.escape(
            f"checkpoints/o holds the checkpoints of a run whose training data changed since ({data / change}): a "
            "run of the same name resumes from them") + r".* give another run_name \(--run-name\) or output "
                                                        r"\(--output\), or delete .* to start afresh$")

    pairs.iloc[32:48].to_parquet(data / "a.parquet")  # other rows under the same name
    with refused("a.parquet rewritten"):
        train.train(settings)
    (data / "a.parquet").write_bytes(a_bytes)
    os.utime(data / "a.parquet", ns=(a_stat.st_atime_ns, a_stat.st_mtime_ns))
    digests = json.loads(record.read_text())["train_digests"]
    assert digests[str(data / "a.parquet")] == hashlib.sha256(a_bytes).hexdigest()

    # Touched: the same bytes at another modification time. The run resumes from its checkpoint, and says why.
    os.utime(data / "a.parquet", ns=(a_stat.st_atime_ns, a_stat.st_mtime_ns + 10**9))
    capsys.readouterr()
    assert train.train(settings).resumed_from == [1]
    assert (f"ce-ray train: {data / 'a.parquet'}: another modification time than the run's record holds, the same "
            "bytes (sha256): the same training data as its checkpoints'") in capsys.readouterr().out
    touched = json.loads(record.read_text())["train_files"][str(data / "a.parquet")]
    assert touched.endswith(str(a_stat.st_mtime_ns + 10**9))  # the record holds the new stamp
    # Copied again from a copy of it: resumes too.
    shutil.copyfile(data / "a.parquet", tmp_path / "a-copy.parquet")
    shutil.copyfile(tmp_path / "a-copy.parquet", data / "a.parquet")
    assert (data / "a.parquet").stat().st_mtime_ns != a_stat.st_mtime_ns + 10**9
    assert checkpoints.claim_run(settings, model_source(settings.model), *checkpoints.run_storage(settings))
    # A record without digests (an earlier ce-ray's) compares stamps alone: touched is rewritten, as then.
    full = record.read_text()
    record.write_text(json.dumps({k: v for k, v in json.loads(full).items() if k != "train_digests"}))
    os.utime(data / "a.parquet", ns=(a_stat.st_atime_ns, a_stat.st_mtime_ns))
    with refused("a.parquet rewritten"):
        checkpoints.claim_run(settings, model_source(settings.model), *checkpoints.run_storage(settings))
    record.write_text(full)

    pairs.iloc[32:48].to_parquet(data / "c.parquet")
    with refused("c.parquet added"):
        train.train(settings)
    (data / "c.parquet").unlink()
    (data / "b.parquet").unlink()
    with refused("b.parquet removed"):
        train.train(settings)
    # A record without the files (an earlier ce-ray's) resumes as then, and records them from now on.
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "train_files"}))
    assert checkpoints.claim_run(settings, model_source(settings.model), *checkpoints.run_storage(settings))
    assert list(json.loads(record.read_text())["train_files"]) == [str(data / "a.parquet")]
    # The step it resumes from, said in one line: Ray Train's reader of the record logged a page before it (to the
    # terminal's stderr, through Ray's own handler, which capsys does not see: a handler of the test's sees it).
    logged = logging.Handler()
    logged.emit = lambda record: pytest.fail(f"logged: {record.getMessage()[:80]}")
    reader = logging.getLogger("ray.train.v2._internal.execution.checkpoint.checkpoint_manager")
    reader.addHandler(logged)
    try:
        assert checkpoints.resumed_step(settings) == 1
    finally:
        reader.removeHandler(logged)
    # Its precision too: a resume whose passes train in another (bf16 set, or unset on GPUs) trained the steps after
    # the checkpoint so, without a word. The same command keeps the record's; one without it (an earlier ce-ray's)
    # resumes as then, and gets it.
    assert json.loads(record.read_text())[checkpoints.PRECISION] is False  # on CPUs, bf16 unset
    assert checkpoints.claim_run(settings, model_source(settings.model), *checkpoints.run_storage(settings))
    assert json.loads(record.read_text())[checkpoints.PRECISION] is False
    with pytest.raises(ConfigError, match=r"^\S+checkpoints/o holds the checkpoints of a run with other settings "
                                         r"\(bf16: its passes trained in float32, this run's in bf16\), which a run "):
        checkpoints.claim_precision(settings, *checkpoints.run_storage(settings), bf16=True, resumes=True)
    checkpoints.claim_precision(settings, *checkpoints.run_storage(settings), bf16=False, resumes=True)
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items()
                                  if k != checkpoints.PRECISION}))
    checkpoints.claim_precision(settings, *checkpoints.run_storage(settings), bf16=True, resumes=True)
    assert json.loads(record.read_text())[checkpoints.PRECISION] is True


def test_labels_outside_zero_one_fail_before_training(ray_local, tiny_model, tmp_path):
    """A run refused once Ray has started (labels outside [0, 1], workers the cluster cannot hold) left the output
    folder it created, with the record of its settings in `checkpoints/`; it now leaves nothing it created, and a
    folder that was there stays as it was."""
    from ce_ray.config import ConfigError, TrainConfig
    from ce_ray.messages import InputError

    path = tmp_path / "graded.parquet"
    pd.DataFrame({"query": ["q"] * 4, "document": ["a", "b", "c", "d"], "label": [0.0, 1.0, 2.0, 3.0]}).to_parquet(path)
    with pytest.raises(InputError, match=r"2 label\(s\) of column 'label' outside \[0, 1\] \(e\.g\. 2\.0\): "
                                         r".* \(give graded labels divided by the highest grade\)$"):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(path),
                                          output=str(tmp_path / "new" / "o")))
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine" / "checkpoints").mkdir(parents=True)
    (tmp_path / "mine" / "checkpoints" / "notes.txt").write_text("kept")
    with pytest.raises(InputError, match=r"outside \[0, 1\]"):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(path), output=str(tmp_path / "mine")))
    assert [p.relative_to(tmp_path).as_posix() for p in sorted((tmp_path / "mine").rglob("*"))] == [
        "mine/checkpoints", "mine/checkpoints/notes.txt"]
    # Another run's output beside the refused one's, begun meanwhile in a folder the refused run created, stays:
    # it was removed with that folder.
    import pyarrow.fs as pafs

    experiments = tmp_path / "experiments"
    with pytest.raises(RuntimeError, match="refused"):
        with _train_module().removed_unless_trained([(pafs.LocalFileSystem(), str(experiments),
                                                      str(experiments / "run1"))]):
            (experiments / "run1").mkdir(parents=True)
            (experiments / "run2").mkdir()
            (experiments / "run2" / "model.safetensors").write_text("theirs")
            raise RuntimeError("refused")
    assert [p.name for p in experiments.iterdir()] == ["run2"]
    # labels in [0, 1]: the run is refused for its workers, which the local Ray cannot hold
    pd.DataFrame({"query": ["q"] * 4, "document": ["a", "b", "c", "d"], "label": [0.0, 1.0, 0.0, 1.0]}).to_parquet(path)
    with pytest.raises(ConfigError, match=r"^3 worker\(s\) need 3 CPU\(s\) \(the cluster has 2\): lower num_workers"):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(path), output=str(tmp_path / "o"),
                                          num_workers=3))
    assert not (tmp_path / "o").exists()
    # A label that is not a number fails in a tokenize task: the error comes back as itself, not in Ray's report,
    # naming the file of the folder whose label column it is.
    (tmp_path / "words").mkdir()
    pd.DataFrame({"query": ["q"] * 2, "document": ["a", "b"], "label": ["yes", "no"]}).to_parquet(
        tmp_path / "words" / "words.parquet")
    with pytest.raises(InputError, match=rf"^{tmp_path / 'words' / 'words.parquet'}: label column 'label' is text, "
                                         "not a number$"):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(tmp_path / "words"),
                                          output=str(tmp_path / "o")))
    # So does one of rows of a list of documents and their one label (it named no file: their pairs, made from
    # the rows, had lost which file each came from).
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "lists.jsonl").write_text(json.dumps({"query": "q", "document": ["a", "b"],
                                                                "label": "yes"}) + "\n")
    with pytest.raises(InputError, match=rf"^{tmp_path / 'lists' / 'lists.jsonl'}: label column 'label' is text, "
                                         "not a number$"):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(tmp_path / "lists"),
                                          output=str(tmp_path / "o")))


def test_fewer_trainable_pairs_than_workers_are_refused_naming_why(ray_local, tiny_model, tmp_path):
    """A worker without a pair of its own would train no step (a division by zero in each worker, as Ray Train
    tried them again): refused before training, with the reasons of the rows left out."""
    from ce_ray.config import TrainConfig
    from ce_ray.messages import InputError

    data = tmp_path / "one.parquet"
    pd.DataFrame({"query": ["q", "q"], "document": ["a", None], "label": [1.0, 0.0]}).to_parquet(data)
    config = TrainConfig(model=str(tiny_model), train_data=str(data), output=str(tmp_path / "o"), num_workers=2)
    with pytest.raises(InputError) as refused:
        train_data.prepare_data(config, pair_encoder(str(tiny_model)), 128)
    assert str(refused.value) == f"{data}: 1 trainable pair(s) for 2 worker(s); rejected: document is null (1)"


def test_labels_that_come_as_text_are_read_as_numbers_and_a_word_rejects_its_row(tiny_model):
    """A CSV's labels come as text: `1` and `0.5` are numbers, and a row labelled `NA` is rejected with the
    reason; a column where no value is a number fails the job naming it, as a column of another kind does."""
    from ce_ray.messages import InputError

    rows = pa.table({"query": ["q"] * 6, "document": list("abcdef"), "label": ["1", "0.5", "NA", None, "2", "-1"]})
    out = train_data._tokenize_train_block(rows, pair_encoder(str(tiny_model)), "query", "document", "label", 64)
    assert out.column(train_data.LABEL).to_pylist() == [1.0, 0.5, None, None, 2.0, -1.0]
    assert out.column("reject_reason").to_pylist() == [None, None, "label is not a number", "label is null",
                                                       "label outside [0, 1]: 2.0", "label outside [0, 1]: -1.0"]
    with pytest.raises(InputError, match=r"^label column 'label' is text, not a number$"):
        train_data.numeric_labels(pa.table({"label": ["yes", "no"]}), "label")


def test_a_word_in_a_jsonl_list_of_labels_rejects_its_pair_not_the_job(tiny_model):
    """Lines of a list of documents and their labels, one label a word (`["1", "x"]` among lines of `[1, 0]`):
    Arrow's reader refuses the chunk, and the line reader made the whole column JSON text (`"[1, 0]"`), which
    failed the job as `label column 'label' is text, not a number`. Lists of texts now, read as numbers: only the
    pair of the word is rejected, as a CSV's `NA` is."""
    from ce_ray.readers import as_checked_types, read_json_lines
    from ce_ray.training_pairs import training_pairs

    lines = [json.dumps({"query": "q1", "document": ["a", "b"], "label": [1, 0]}).encode(),
             json.dumps({"query": "q2", "document": ["c", "d"], "label": ["1", "x"]}).encode(),
             json.dumps({"query": "q3", "document": ["e"], "label": [True]}).encode()]
    rows = read_json_lines(lines, [1, 2, 3], "f.jsonl", ["query", "document"], ["document"])
    assert rows.column("label").to_pylist() == [["1", "0"], ["1", "x"], ["true"]]
    pairs = training_pairs(rows, "query", "document", [], "label")
    out = train_data._tokenize_train_block(pairs, pair_encoder(str(tiny_model)), "query", "document", "label", 64)
    assert out.column(train_data.LABEL).to_pylist() == [1.0, 0.0, 1.0, None, 1.0]
    assert out.column("reject_reason").to_pylist() == [None, None, None, "label is not a number", None]
    # A later chunk of numbers alone, where the file's first lines made the column lists of texts, joins them.
    later = read_json_lines(lines[:1], [4], "f.jsonl", ["query", "document"], ["document"])
    assert as_checked_types(later, rows.schema, [4], "f.jsonl", ["query", "document"]).column(
        "label").to_pylist() == [["1", "0"]]


def test_jsonl_lists_of_labels_beside_single_labels_train_every_pair(tiny_model):
    """Lines of a list of documents with a list of labels beside lines whose label is one number for all (as the
    docs allow), or whose document is one text: the reader made the label column JSON text, and every pair of a
    list of labels was rejected as `label is not a number` while the run went on. Each takes its labels now."""
    from ce_ray.readers import read_json_lines
    from ce_ray.training_pairs import training_pairs

    lines = [json.dumps({"query": "q1", "document": ["a", "b"], "label": [1, 0]}).encode(),
             json.dumps({"query": "q2", "document": ["c", "d"], "label": [0.7, "x"]}).encode(),
             json.dumps({"query": "q3", "document": ["e", "f"], "label": 1}).encode(),
             json.dumps({"query": "q4", "document": "g", "label": 0}).encode(),
             json.dumps({"query": "q5", "document": ["h"], "label": None}).encode()]
    rows = read_json_lines(lines, [1, 2, 3, 4, 5], "f.jsonl", ["query", "document"], ["document"])
    pairs = training_pairs(rows, "query", "document", [], "label")
    out = train_data._tokenize_train_block(pairs, pair_encoder(str(tiny_model)), "query", "document", "label", 64)
    assert pairs.column("document").to_pylist() == list("abcdefgh")
    assert out.column(train_data.LABEL).to_pylist() == pytest.approx([1, 0, 0.7, None, 1, 1, 0, None])
    assert out.column("reject_reason").to_pylist() == [None, None, None, "label is not a number", None, None,
                                                        None, "label is null"]


def test_an_output_that_cannot_be_written_fails_before_training(tiny_model, pairs_file, tmp_path):
    """The model is written after the training: a place it cannot go fails before any data is read (the data's
    settings checked first, so that a run refused for them creates no output)."""
    from ce_ray.config import TrainConfig
    from ce_ray.sink import OutputError

    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(OutputError, match=r"cannot write the output \S+/a-file/model: .*Not a directory"):
        _train_module().train(TrainConfig(model=str(tiny_model), train_data=str(pairs_file),
                                          output=str(tmp_path / "a-file" / "model")))


def test_a_model_that_transformers_cannot_load_fails_the_run_in_one_line_and_leaves_nothing(ray_local, tiny_model,
                                                                                         pairs_file, tmp_path):
    """As a score job says it (`model_folder.model_loading`): transformers' first line, not its advice on upgrading it
    over two more."""
    from ce_ray.config import TrainConfig
    from ce_ray.model_folder import ModelError

    model = tmp_path / "unknown-type"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"model_type": "no-such-type"}))
    with pytest.raises(ModelError, match=r"^cannot load model \S+unknown-type: ValueError: .*model type `no-such-type` "
                                         r"but Transformers does not recognize this architecture[^\n]*$"):
        _train_module().train(TrainConfig(model=str(model), train_data=str(pairs_file), output=str(tmp_path / "out"),
                                          storage_path=str(tmp_path / "runs")))
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_a_base_model_is_refused_for_scoring_and_fine_tuned_with_a_new_head(ray_local, tiny_model, pairs_file,
                                                                              tmp_path, capsys):
    """A base model (a MaskedLM, no classifier, no labels in its config), as CrossEncoder takes one to fine-tune:
    ce-ray train gives it a one-logit head (it failed on the config's 2 labels), drawn from the run's seed;
    scoring it before is refused (its head would be random), and after, it scores as CrossEncoder does."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForMaskedLM

    from ce_ray import ScoreConfig, run_score
    from ce_ray.config import TrainConfig
    from ce_ray.model_folder import ModelError

    config = json.loads((tiny_model / "config.json").read_text())
    for key in ("architectures", "id2label", "label2id", "sentence_transformers"):
        config.pop(key, None)
    torch.manual_seed(0)
    base = tmp_path / "base"
    BertForMaskedLM(BertConfig(**config)).save_pretrained(base)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_model / name).exists():
            (base / name).write_bytes((tiny_model / name).read_bytes())
    with pytest.raises(ModelError, match=r"base is a BertForMaskedLM, not a sequence classifier: .*\(ce-ray train\)"):
        run_score(ScoreConfig(model=str(base), input=str(pairs_file), output=str(tmp_path / "scored-base")))
    # Where config.json names no architecture, the weights tell; a bi-encoder's folder (sentence-transformers'
    # SentenceTransformer, here with a classifier's weights even) says what it is.
    shutil.copytree(base, tmp_path / "bare")
    bare_config = json.loads((tmp_path / "bare" / "config.json").read_text())
    del bare_config["architectures"]
    (tmp_path / "bare" / "config.json").write_text(json.dumps(bare_config))
    shutil.copytree(tiny_model, tmp_path / "bi")
    (tmp_path / "bi" / "config_sentence_transformers.json").write_text(
        json.dumps({"model_type": "SentenceTransformer"}))
    for name, what in (("bare", "a model whose weights hold no classifier"),
                       ("bi", r"a sentence-transformers bi-encoder \(it embeds each text alone\)")):
        with pytest.raises(ModelError, match=f"{name} is {what}, not a sequence classifier"):
            run_score(ScoreConfig(model=str(tmp_path / name), input=str(pairs_file),
                                  output=str(tmp_path / "scored-base")))
    assert not (tmp_path / "scored-base").exists()

    _train_module().train(TrainConfig(model=str(base), train_data=str(pairs_file), output=str(tmp_path / "model"),
                                      num_workers=2, batch_size=8, max_steps=3, lr=1e-3))
    assert "has no classifier (BertForMaskedLM): it gets a new one-logit head" in capsys.readouterr().out
    model = str(tmp_path / "model")
    assert CrossEncoder(model, device="cpu").num_labels == 1
    run_score(ScoreConfig(model=model, input=str(pairs_file), output=str(tmp_path / "scored")))
    frame = pd.read_parquet(pairs_file)
    scored = pd.read_parquet(tmp_path / "scored" / "results")  # one input file: its rows in order
    expected = CrossEncoder(model, device="cpu").predict(list(zip(frame["query"], frame["document"])))
    assert np.abs(scored["score"].to_numpy() - expected).max() <= 1e-5


def test_workers_that_do_not_fit_say_what_makes_them_fit(monkeypatch):
    """use_gpu on a cluster without GPUs said to lower num_workers (or cpus_per_worker), which cannot help: it
    now says to leave use_gpu out; too few CPUs, or GPUs, still say to lower num_workers, and a worker larger than
    every node to lower cpus_per_worker. Each names the setting by its flag too (they named cpus_per_worker and
    num_workers by their YAML keys alone)."""
    from ce_ray import runtime
    from ce_ray.config import ConfigError, TrainConfig

    monkeypatch.setattr(runtime, "started_here", lambda: True)  # a local Ray, which cannot grow: refused
    check_room = _train_module()._check_room
    config = TrainConfig(model="m", train_data="d", output="o", num_workers=2)
    with pytest.raises(ConfigError) as refused:
        check_room(config, True, {"CPU": 2.0})
    assert str(refused.value) == ("2 worker(s) need 2 GPU(s) (the cluster has 0): the cluster has no GPU: train on "
                                  "its CPUs with use_gpu false (--no-use-gpu)")
    with pytest.raises(ConfigError, match=r"need 2 GPU\(s\) \(the cluster has 1\): lower num_workers "
                                          r"\(--num-workers\)$"):
        check_room(config, True, {"CPU": 8.0, "GPU": 1.0})
    with pytest.raises(ConfigError, match=r"need 2 CPU\(s\) \(the cluster has 1\): lower num_workers \(--num-workers\) "
                                          r"\(or cpus_per_worker \(--cpus-per-worker\)\)$"):
        check_room(config, False, {"CPU": 1.0})
    check_room(config, False, {"CPU": 2.0})  # room enough: nothing said
    # A worker runs on one node: 3 CPUs each fit no node of 2, though the cluster has 4 (the run waited forever).
    wide = dataclasses.replace(config, num_workers=1, cpus_per_worker=3.0)
    with pytest.raises(ConfigError, match=r"need 3 CPUs each \(cpus_per_worker \(--cpus-per-worker\); the cluster's "
                                          r"largest node has 2\): lower cpus_per_worker \(--cpus-per-worker\)$"):
        check_room(wide, False, {"CPU": 4.0}, node_cpus=2.0)
    # Where the run has checkpoints, fewer workers are a new run (num_workers is in the run's record: the same command
    # with fewer was refused as other settings); use_gpu and cpus_per_worker are not, and their hints go alone.
    new_run = checkpoints.as_a_new_run(config, "o/checkpoints/o")
    with pytest.raises(ConfigError) as refused:
        check_room(config, False, {"CPU": 1.0}, new_run=new_run)
    assert str(refused.value) == (
        "2 worker(s) need 2 CPU(s) (the cluster has 1): lower num_workers (--num-workers) (or cpus_per_worker "
        "(--cpus-per-worker)); with other settings it is a new run: give another run_name (--run-name) or output "
        "(--output), as o/checkpoints/o holds checkpoints that a run of the same name resumes from with the same "
        "settings only")
    with pytest.raises(ConfigError, match=r"train on its CPUs with use_gpu false \(--no-use-gpu\)$"):
        check_room(config, True, {"CPU": 2.0}, new_run=new_run)
    with pytest.raises(ConfigError, match=r"lower cpus_per_worker \(--cpus-per-worker\)$"):
        check_room(wide, False, {"CPU": 4.0}, node_cpus=2.0, new_run=new_run)


def test_a_hint_to_change_a_runs_settings_says_to_start_a_new_run_where_it_has_checkpoints(tmp_path):
    """A hint after a stop (a NaN loss: a lower lr; out of memory: a smaller batch_size) said to change settings that
    the run's record holds; where the run had checkpoints, the same command with them was refused as other settings.
    The hint says to give the new run another name where the run's folder holds checkpoints, and nothing more where
    it does not; with a storage_path, run_name alone (another output of the same folder name is the same run)."""
    from ce_ray.config import ConfigError, TrainConfig

    config = TrainConfig(model="m", train_data="d", output=str(tmp_path / "o"))
    fs, storage_path, name, run_uri = checkpoints.run_storage(config)
    run_dir = tmp_path / "o" / "checkpoints" / "o"
    assert checkpoints.new_run_hint(config, fs, str(run_dir), run_uri) == ""  # no folder yet
    run_dir.mkdir(parents=True)
    (run_dir / checkpoints.RUN_FILE).write_text("{}")
    assert checkpoints.new_run_hint(config, fs, str(run_dir), run_uri) == ""
    (run_dir / "checkpoint_0000001").mkdir()
    # A checkpoint's folder that Ray Train never recorded (Ctrl-C as it was written): no run resumes from it
    assert checkpoints.new_run_hint(config, fs, str(run_dir), run_uri) == ""
    (run_dir / checkpoints.RECORD).write_text(ray_train_record(1))
    assert checkpoints.new_run_hint(config, fs, str(run_dir), run_uri) == (
        f"; with other settings it is a new run: give another run_name (--run-name) or output (--output), as {run_uri} "
        "holds checkpoints that a run of the same name resumes from with the same settings only")
    stored = dataclasses.replace(config, storage_path=str(tmp_path / "runs"))
    assert checkpoints.as_a_new_run(stored, "runs/o").startswith(
        "; with other settings it is a new run: give another run_name (--run-name), as runs/o holds")
    # The refusals of claim_run name the same: run_name alone where a storage_path is set.
    (tmp_path / "runs" / "o" / "checkpoint_0000001").mkdir(parents=True)
    (tmp_path / "runs" / "o" / checkpoints.RUN_FILE).write_text(json.dumps({"lr": 1.0}))
    assert not checkpoints.claim_run(stored, "m", *checkpoints.run_storage(stored)[:2], "o",
                                     str(tmp_path / "runs" / "o"), train_files={})  # unrecorded: a new run
    (tmp_path / "runs" / "o" / checkpoints.RUN_FILE).write_text(json.dumps({"lr": 1.0}))
    (tmp_path / "runs" / "o" / checkpoints.RECORD).write_text(ray_train_record(1))
    with pytest.raises(ConfigError, match=r"other settings \(.*\), which a run of the same name resumes from: give "
                                          r"another run_name \(--run-name\), or delete .*runs/o to start afresh$"):
        checkpoints.claim_run(stored, "m", *checkpoints.run_storage(stored)[:2], "o", str(tmp_path / "runs" / "o"),
                              train_files={})


def test_a_run_resumes_with_its_s3_data_spelled_otherwise(tmp_path):
    """The same S3 objects as training or eval data, spelled with a trailing `/` once and without it, or `s3a://`:
    the resume was refused as a run of other settings (train_data), saying to delete its checkpoints. A record of an
    earlier ce-ray, which holds the spelling it was given, resumes too; other data is still refused, and so is
    another implementation."""
    from ce_ray.config import ConfigError, TrainConfig

    def claim(train_data, eval_data="s3://bucket/eval/", **settings):
        config = TrainConfig(model="m", train_data=train_data, eval_data=eval_data, output="o",
                             storage_path=str(tmp_path / "runs"), **settings)
        return checkpoints.claim_run(config, "m", *checkpoints.run_storage(config)[:2], "o",
                                     str(tmp_path / "runs" / "o"), train_files={})

    run = tmp_path / "runs" / "o"
    (run / "checkpoint_0000001").mkdir(parents=True)
    (run / checkpoints.RECORD).write_text(ray_train_record(1))
    assert claim("s3://bucket/train/")  # the first run's record, written as it resumes a checkpoint
    record = json.loads((run / checkpoints.RUN_FILE).read_text())
    assert (record["train_data"], record["eval_data"]) == ("s3://bucket/train", "s3://bucket/eval")
    assert claim("s3://bucket/train") and claim("s3a://bucket/train/", "s3a://bucket/eval")
    (run / checkpoints.RUN_FILE).write_text(json.dumps(record | {"train_data": "s3a://bucket/train/"}))
    assert claim("s3://bucket/train")
    with pytest.raises(ConfigError, match=r"other settings \(train_data\)"):
        claim("s3://bucket/train2")
    # The implementation too: ce-ray's BERT's optimizer state does not load into transformers' (every worker failed,
    # each retry, and the last line said the same command resumes the run). A record without it (an earlier
    # ce-ray's) resumes as then.
    with pytest.raises(ConfigError, match=r"other settings \(implementation\)"):
        claim("s3://bucket/train", implementation="transformers")
    assert record["implementation"] == "auto"
    (run / checkpoints.RUN_FILE).write_text(json.dumps({k: v for k, v in record.items() if k != "implementation"}))
    assert claim("s3://bucket/train", implementation="transformers")


def test_a_run_says_so_before_it_reads_the_digests_of_large_training_files(tmp_path, monkeypatch, capsys):
    """A new run reads every local training file for its sha256 (`train_digests`), ~1 s a GiB: 100 GiB of pairs made
    a pause of a minute or more before its first line, unexplained. From `SAY_DIGESTS_BYTES` on, it says so first;
    a resume of files as they were reads none, and says nothing."""
    import hashlib

    from ce_ray.config import TrainConfig

    data = tmp_path / "pairs"
    data.mkdir()
    for name in ("a.parquet", "b.parquet"):
        (data / name).write_bytes(name.encode() * 1000)
    config = TrainConfig(model="m", train_data=str(data), output=str(tmp_path / "o"))
    files = {str(data / name): f"stamp of {name}" for name in ("a.parquet", "b.parquet")}
    monkeypatch.setattr(checkpoints, "SAY_DIGESTS_BYTES", 18_000)
    digests = checkpoints.train_digests(config, files, {})
    assert digests == {path: hashlib.sha256(open(path, "rb").read()).hexdigest() for path in files}
    assert capsys.readouterr().out == (
        "ce-ray train: reads the sha256 of 2 training files (0.0 GiB) for the run's record, by which a resume tells a "
        "file only touched or copied again\n")
    earlier = {checkpoints.TRAIN_FILES: files, checkpoints.TRAIN_DIGESTS: digests}
    assert checkpoints.train_digests(config, files, earlier) == digests and capsys.readouterr().out == ""
    (data / "a.parquet").write_bytes(b"other bytes")  # its stamp too: read again, under the size said from
    assert checkpoints.train_digests(config, files | {str(data / "a.parquet"): "another stamp"}, earlier)[
        str(data / "a.parquet")] == hashlib.sha256(b"other bytes").hexdigest()
    assert capsys.readouterr().out == ""


def test_the_trained_model_keeps_the_prompts_and_activation_of_the_model_it_started_from(ray_local, tiny_model,
                                                                                        pairs_file, tmp_path):
    """A reranker saved with prompts and a default prompt (sentence-transformers' `prompts`,
    `default_prompt_name`), as CrossEncoder.save writes them, keeps them through training, as it keeps them
    through CrossEncoderTrainer: the trained model lost them, so its queries went without the prompt. The
    run's evaluation scores as the saved model will, the prompt before each query, as
    CrossEncoderRerankingEvaluator scores with predict (it scored without)."""
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    from ce_ray.config import TrainConfig
    from ce_ray.model_folder import query_prompt

    prompts = {"rerank": "Judge the relevance: ", "short": "q: "}
    base = CrossEncoder(str(spread_model(tiny_model, tmp_path / "spread")), device="cpu", prompts=prompts,
                        default_prompt_name="rerank", activation_fn=torch.nn.Identity())
    base.save(str(tmp_path / "prompted"))
    samples, rows = [], []
    for _, group in wikiqa_pairs("test").groupby("query_id", sort=False):
        documents = group.document.tolist()
        scores = np.sort(base.predict([(group["query"].iloc[0], d) for d in documents]))
        # Both sides must see the same order: scores of two sentences closer than fp32 parity could swap.
        if group.label.any() and len(set(documents)) == len(documents) and np.diff(scores).min(initial=1) > 2e-5:
            samples.append({"query": group["query"].iloc[0], "positive": group[group.label == 1].document.tolist(),
                            "negative": group[group.label == 0].document.tolist()})
            rows.append(group[["query", "document", "label"]])
        if len(samples) == 12:
            break
    pd.concat(rows).astype({"label": "float32"}).to_parquet(tmp_path / "eval.parquet")
    expected = CrossEncoderRerankingEvaluator(samples, at_k=10, write_csv=False)(base)
    without = CrossEncoderRerankingEvaluator(samples, at_k=10, write_csv=False)(
        CrossEncoder(str(tmp_path / "spread"), device="cpu", activation_fn=torch.nn.Identity()))
    assert without["map"] != pytest.approx(expected["map"], abs=1e-6)  # the prompt changes the order
    outcome = _train_module().train(TrainConfig(model=str(tmp_path / "prompted"), train_data=str(pairs_file),
                                                eval_data=str(tmp_path / "eval.parquet"),
                                                output=str(tmp_path / "model"), batch_size=16, max_steps=1))
    assert outcome.log[0]["step"] == 0
    for name in ("map", "mrr@10", "ndcg@10"):
        assert outcome.log[0][f"eval_{name}"] == pytest.approx(expected[name], abs=1e-6), name
    trained = CrossEncoder(str(tmp_path / "model"), device="cpu")
    assert trained.prompts == prompts and trained.default_prompt_name == "rerank"
    assert isinstance(trained.activation_fn, torch.nn.Identity)  # a logits reranker stays one
    assert query_prompt(str(tmp_path / "model")) == "Judge the relevance: "  # as ce-ray scores it


def test_a_reranker_that_lowercases_by_its_layout_and_names_no_architecture_trains_as_it_is(
        ray_local, tiny_model, pairs_file, tmp_path, capsys):
    """A base in CrossEncoder's layout without prompts, whose module config lowercases (`do_lower_case`) over a
    cased tokenizer, trained lowercased and gave a model without its layout, which read every capitalised word as
    [UNK]; a reranker whose config.json names no architecture (its weights hold the classifier, as for scoring)
    was said to get a new head, which it did not, and its logits activation became the sigmoid."""
    import torch
    from sentence_transformers import CrossEncoder

    import ce_ray
    from ce_ray.config import TrainConfig

    base = tmp_path / "base"
    CrossEncoder(str(spread_model(tiny_model, tmp_path / "spread")), device="cpu",
                 activation_fn=torch.nn.Identity()).save(str(base))
    tokenizer = json.loads((base / "tokenizer.json").read_text())
    tokenizer["normalizer"]["lowercase"] = False
    (base / "tokenizer.json").write_text(json.dumps(tokenizer))
    for name, changes in (("tokenizer_config.json", {"do_lower_case": False}),
                          ("sentence_bert_config.json", {"do_lower_case": True})):
        (base / name).write_text(json.dumps(json.loads((base / name).read_text()) | changes))
    config = json.loads((base / "config.json").read_text())
    del config["architectures"]
    (base / "config.json").write_text(json.dumps(config))
    pairs = [("WHAT IS A CAT", "A CAT IS AN ANIMAL"), ("what is a cat", "a cat is an animal")]
    upper, lower = CrossEncoder(str(base), device="cpu").predict(pairs)
    assert upper == pytest.approx(lower, abs=1e-6)  # the base lowercases
    _train_module().train(TrainConfig(model=str(base), train_data=str(pairs_file), output=str(tmp_path / "model"),
                                      batch_size=8, max_steps=1))
    assert "new one-logit head" not in capsys.readouterr().out
    trained = CrossEncoder(str(tmp_path / "model"), device="cpu")
    assert isinstance(trained.activation_fn, torch.nn.Identity)
    upper, lower = trained.predict(pairs)
    assert upper == pytest.approx(lower, abs=1e-6)
    assert np.abs(np.asarray(ce_ray.predict(str(tmp_path / "model"), pairs)) - [upper, lower]).max() <= 1e-5


def test_a_trained_models_kept_layout_gives_its_trained_max_length_wherever_the_base_named_one(tiny_model, tmp_path):
    """The layout files a trained model keeps from its base (`keep_layout`) gave the trained max length as
    max_seq_length alone; a length in the base's tokenizer arguments or processing (`text` or `common`), which
    CrossEncoder reads before it, still cut the trained model's pairs at the base's."""
    from sentence_transformers import CrossEncoder

    from ce_ray.model_folder import keep_layout

    CrossEncoder(str(tiny_model), device="cpu", prompts={"q": "q: "}, default_prompt_name="q").save(
        str(tmp_path / "base"))
    module = json.loads((tmp_path / "base" / "sentence_bert_config.json").read_text())
    (tmp_path / "base" / "sentence_bert_config.json").write_text(json.dumps(module | {
        "max_seq_length": 24, "processor_kwargs": {"model_max_length": 24},
        "processing_kwargs": {"text": {"max_length": 24}, "common": {"max_length": 24}}}))
    (tmp_path / "trained").mkdir()
    keep_layout(str(tmp_path / "base"), str(tmp_path / "trained"), "torch.nn.modules.activation.Sigmoid", 64)
    kept = json.loads((tmp_path / "trained" / "sentence_bert_config.json").read_text())
    assert (kept["max_seq_length"], kept["processor_kwargs"], kept["processing_kwargs"]) == (
        64, {"model_max_length": 64}, {"text": {"max_length": 64}, "common": {"max_length": 64}})
    # A bi-encoder's layout is not kept: its pooling modules made the trained reranker one, which scoring refused.
    shutil.copytree(tmp_path / "base", tmp_path / "bi")
    (tmp_path / "bi" / "config_sentence_transformers.json").write_text(
        json.dumps({"model_type": "SentenceTransformer"}))
    (tmp_path / "from-bi").mkdir()
    keep_layout(str(tmp_path / "bi"), str(tmp_path / "from-bi"), "torch.nn.modules.activation.Sigmoid", 64)
    assert not list((tmp_path / "from-bi").iterdir())


def test_the_card_of_a_model_written_to_s3_loads_a_copy_of_its_folder():
    """The card of a model written to S3 said `CrossEncoder("s3://bucket/models/m")`, which sentence-transformers
    looks up on the hub and fails: CrossEncoder reads a local folder or a hub id. It now says to copy the folder
    (without the checkpoints) and loads the copy; a local output is loaded where it is."""
    from ce_ray.card import CardFacts, model_card
    from ce_ray.config import TrainConfig

    stats = dict.fromkeys(["pairs", "rejected", "positives", "label_mean", "label_min", "label_max", "query_chars_min",
                           "query_chars_mean", "query_chars_max", "document_chars_min", "document_chars_mean",
                           "document_chars_max", "tokens_min", "tokens_mean", "tokens_max"], 0)
    stats["columns"] = ["query", "document", "label"]

    def card(output, **settings):
        config = TrainConfig(model="/models/base", train_data="/data/pairs.parquet", output=output, **settings)
        return model_card(CardFacts(base_model="/models/base", config=config, defaults=TrainConfig(), stats=stats,
                                    log=[], final_metrics={}, max_length=512, num_workers=1, steps=1,
                                    samples_per_second=1.0, output=output))

    assert ("# CrossEncoder reads a local folder or a hub id: copy the folder first, e.g.\n"
            '# aws s3 cp --recursive s3://bucket/models/m m --exclude "checkpoints/*"\n'
            'model = CrossEncoder("m")\n') in card("s3://bucket/models/m/")
    # A local path by its folder's name alone, as the base model's and the data's: a card meant for the hub showed
    # whose machine it was (`/home/alice/...`), and a path no reader of the hub has.
    local = card("/home/alice/models/trained")
    assert 'model = CrossEncoder("trained")  # this folder, or its hub id once uploaded\n' in local
    assert "/home/alice" not in local and "/models/base" not in local and "/data/pairs.parquet" not in local
    assert "- **Base model:** `base`" in local and "- **Training Dataset:** pairs.parquet" in local
    # The versions of what the run used: DeepSpeed's was on every card where it was installed.
    from ce_ray.config import DeepSpeedConfig

    assert "- DeepSpeed: " not in local and "- DeepSpeed: " in card("/m", deepspeed=DeepSpeedConfig())
    # The other URIs an output may be: s3a:// (Hadoop's name, which the AWS CLI refuses: `aws s3 cp s3a://...` was
    # said), copied as s3://; file://, which CrossEncoder looked up on the hub, loaded from its path.
    assert '# aws s3 cp --recursive s3://bucket/models/m m --exclude "checkpoints/*"\n' in card("s3a://bucket/models/m")
    assert 'model = CrossEncoder("trained")  # this folder, or its hub id once uploaded\n' in card(
        "file:///models/trained")


def test_the_card_lists_the_settings_the_run_used():
    """The card of a model trained on a file of pairs, without eval_data, listed among its hyperparameters a BEIR
    folder's settings (`hard_negatives: 4`, `train_split`) and the evaluation's (`eval_top_k: 100`, `eval_split`),
    which the run did not use: it lists only those that the run used."""
    from ce_ray.card import CardFacts, model_card
    from ce_ray.config import TrainConfig
    from ce_ray.train_data import unused_settings

    stats = dict.fromkeys(["pairs", "rejected", "positives", "label_mean", "label_min", "label_max", "query_chars_min",
                           "query_chars_mean", "query_chars_max", "document_chars_min", "document_chars_mean",
                           "document_chars_max", "tokens_min", "tokens_mean", "tokens_max"], 0)
    stats["columns"] = ["query", "document", "label"]

    def listed(train_data, eval_data=""):
        config = TrainConfig(model="/models/base", train_data=train_data, eval_data=eval_data, output="/models/m")
        card = model_card(CardFacts(base_model="/models/base", config=config, defaults=TrainConfig(), stats=stats,
                                    log=[], final_metrics={}, max_length=512, num_workers=1, steps=1,
                                    samples_per_second=1.0, output="/models/m",
                                    unused=unused_settings(config, train_data == str(SCIFACT))))
        return {line.split("`")[1] for line in card.split("All Hyperparameters")[1].splitlines() if line[:3] == "- `"}

    beir = {"train_split", "hard_negatives"}
    evaluation = {"eval_split", "eval_top_k", "eval_max_queries", "eval_every", "best_metric"}
    pairs = listed("/data/pairs.parquet")
    assert not pairs & (beir | evaluation) and {"lr", "batch_size", "query_column", "label_column"} <= pairs
    assert listed("/data/pairs.parquet", "/data/eval.parquet") & (beir | evaluation) == {
        "eval_max_queries", "eval_every", "best_metric"}  # eval rows: not a BEIR folder's candidates
    assert listed(str(SCIFACT), str(SCIFACT)) >= beir | evaluation
    # A BEIR folder's pairs read no rows' columns, but eval rows are read in them
    rows = {"input_format", "column_names", "query_column", "document_column", "label_column", "negative_columns"}
    assert not listed(str(SCIFACT)) & rows and not listed(str(SCIFACT), str(SCIFACT)) & rows
    assert listed(str(SCIFACT), "/data/eval.parquet") >= rows
    # A setting changed to a value that is false (no clipping, no grouping by length, seed 0) is changed too.
    config = TrainConfig(model="/models/base", train_data="/data/pairs.parquet", output="/models/m",
                         max_grad_norm=0.0, group_by_length=False, seed=0, bf16=False)
    card = model_card(CardFacts(base_model="/models/base", config=config, defaults=TrainConfig(), stats=stats, log=[],
                                final_metrics={}, max_length=512, num_workers=1, steps=1, samples_per_second=1.0,
                                output="/models/m", unused=[]))
    changed = card.split("#### Non-Default Hyperparameters")[1].split("All Hyperparameters")[0]
    assert [line for line in changed.splitlines() if line.startswith("- ")] == [
        "- `max_grad_norm`: 0.0", "- `seed`: 0", "- `bf16`: false", "- `group_by_length`: false"]


def test_the_card_counts_one_pair_and_one_row_in_the_singular():
    """The card's size line said `1 training pairs` and `1 rows left out`, and escaped a column's name in another
    script."""
    from ce_ray.card import CardFacts, model_card
    from ce_ray.config import TrainConfig

    stats = dict.fromkeys(["pairs", "rejected", "positives", "label_mean", "label_min", "label_max", "query_chars_min",
                           "query_chars_mean", "query_chars_max", "document_chars_min", "document_chars_mean",
                           "document_chars_max", "tokens_min", "tokens_mean", "tokens_max"], 0)
    stats |= {"columns": ["query", "document", "label"], "pairs": 1, "rejected": 1,
              "reject_reasons": {"document is null": 1}}
    config = TrainConfig(model="/models/base", train_data="/data/pairs.parquet", output="/models/m")
    card = model_card(CardFacts(base_model="/models/base", config=config, defaults=TrainConfig(), stats=stats, log=[],
                                final_metrics={}, max_length=512, num_workers=1, steps=1, samples_per_second=1.0,
                                output="/models/m"))
    assert '- Size: 1 training pair (1 pair rejected: {"document is null": 1})\n' in card
    stats |= {"pairs": 2, "rejected": 2, "reject_reasons": {"document is null": 2}}
    card = model_card(CardFacts(base_model="/models/base", config=config, defaults=TrainConfig(), stats=stats, log=[],
                                final_metrics={}, max_length=512, num_workers=1, steps=1, samples_per_second=1.0,
                                output="/models/m"))
    assert '- Size: 2 training pairs (2 pairs rejected: {"document is null": 2})\n' in card
    # A column named in another script is written as it is, not escaped (`{"requ\\u00eate is null": 1}`).
    stats |= {"reject_reasons": {"requête is null": 2}}
    card = model_card(CardFacts(base_model="/models/base", config=config, defaults=TrainConfig(), stats=stats, log=[],
                                final_metrics={}, max_length=512, num_workers=1, steps=1, samples_per_second=1.0,
                                output="/models/m"))
    assert '- Size: 2 training pairs (2 pairs rejected: {"requête is null": 2})\n' in card
    # The evaluation's metrics by their names, and a value of 0 in the log as the others are written (it said `0`).
    stats |= {"eval": "the BM25 top 10 of `/data/beir`"}
    log = [{"epoch": 1.0, "step": 4, "loss": 0.5, "eval_ndcg@10": 0.0}, {"epoch": 2.0, "step": 8, "loss": 0.25,
                                                                        "eval_ndcg@10": 0.75}]
    card = model_card(CardFacts(base_model="/models/base", config=config, defaults=TrainConfig(), stats=stats, log=log,
                                final_metrics={"eval_ndcg@10": 0.75, "eval_mrr@10": 0.5}, max_length=512,
                                num_workers=1, steps=8, samples_per_second=1.0, output="/models/m"))
    assert "| Metric | Value |\n|:--|:--|\n| ndcg@10 | 0.7500 |\n| mrr@10 | 0.5000 |\n" in card
    assert "| 1.0000 | 4 | 0.5000 | 0.0000 |\n| 2.0000 | 8 | 0.2500 | 0.7500 |" in card


def test_the_reasons_of_rejected_rows_say_those_left_unnamed():
    """Three reasons were named and a fourth dropped without a word: their counts did not add up to the rows
    rejected that the same line gave."""
    stats = {"reject_reasons": {"label is not a number": 3, "query is null": 1, "document holds no text": 2,
                                "label is null": 1}}
    assert train_data.top_reasons(stats) == ("label is not a number (3), document holds no text (2), query is null "
                                             "(1), and 1 reason(s) more (1)")
    assert train_data.top_reasons({"reject_reasons": {"query is null": 2}}) == "query is null (2)"


def test_the_cards_figures_are_those_of_the_kept_pairs_over_every_block(tiny_model):
    """_block_stats/_combine_stats: the card's counts, means, minima and maxima are over the pairs kept (a rejected
    row counts in none of them), each column's own, and over all blocks (the maximum in a later block)."""
    encoder = pair_encoder(str(tiny_model))
    first = pa.table({"query": ["q", "qq"], "document": ["short", "a longer document"], "label": [1.0, 0.0]})
    second = pa.table({"query": ["a much longer query", "q", "q"],
                       "document": ["d", "the longest document of them all", "rejected"],
                       "label": pa.array([0.5, 1.0, None], pa.float64())})
    blocks = [train_data._tokenize_train_block(t, encoder, "query", "document", "label", 64) for t in (first, second)]
    stats = train_data._combine_stats([train_data._block_stats(b).to_pylist()[0] for b in blocks])
    kept = pd.concat([first.to_pandas(), second.to_pandas().iloc[:2]])
    tokens = [len(ids) for b in blocks for ids, why in zip(b.column(IDS).to_pylist(),
                                                           b.column("reject_reason").to_pylist()) if why is None]
    assert (stats["rows"], stats["pairs"], stats["rejected"]) == (5, 4, 1)
    assert stats["reject_reasons"] == {"label is null": 1}
    assert stats["positives"] == 3  # 1.0, 0.5, 1.0
    assert stats["label_mean"] == pytest.approx(kept.label.mean())  # 0.625, not over the rejected row
    assert (stats["label_min"], stats["label_max"]) == (0.0, 1.0)
    lengths = {"query_chars": kept["query"].str.len(), "document_chars": kept.document.str.len()}
    for name, values in lengths.items():
        assert (stats[f"{name}_min"], stats[f"{name}_max"]) == (values.min(), values.max()), name
        assert stats[f"{name}_mean"] == pytest.approx(values.mean()), name
    assert (stats["tokens_min"], stats["tokens_max"]) == (min(tokens), max(tokens))
    assert stats["tokens_mean"] == pytest.approx(np.mean(tokens))


def test_every_pass_carries_the_labels_of_its_own_rows():
    """micro_batches: each pass's labels are its rows' labels, row for row (a label beside another row's tokens
    trains the model on the wrong target), with and without a token budget."""
    from ce_ray.config import TrainConfig

    rows = 64
    lengths = np.random.default_rng(0).integers(2, 40, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    tokens = np.ones(offsets[-1], np.int32)
    tokens[offsets[:-1]] = np.arange(rows) + 2  # each row's first token: its number + 2
    table = pa.table({IDS: pa.ListArray.from_arrays(offsets, tokens),
                      train_data.LABEL: pa.array(np.arange(rows) / rows, pa.float32())})
    config = TrainConfig(batch_size=8, length_window=4)
    for settings in (config, dataclasses.replace(config, batch_tokens=100)):
        seen = []
        for passes in train_data.micro_batches(iter([table]), settings, 0, 0, 0, pad_id=0):
            for inputs, labels in passes:
                numbers = inputs["input_ids"][:, 0] - 2
                assert labels.tolist() == pytest.approx((numbers / rows).tolist())
                seen += numbers.tolist()
        assert sorted(seen) == list(range(rows))


def test_a_document_given_twice_for_a_query_is_one_candidate_of_its_highest_grade(ray_local, tmp_path):
    """_eval_rows: a (query, document) given on two rows with other grades (a document listed as a negative of one
    row and a positive of another, or graded 1 and 2) is one candidate of the higher grade, as the docstring says."""
    from ce_ray.config import TrainConfig

    pd.DataFrame({"query": ["q"] * 4, "document": ["a", "b", "a", "c"],
                  "label": [0.0, 1.0, 2.0, 0.0]}).to_parquet(tmp_path / "eval.parquet")
    table, qrels, said = train_data._eval_candidates(TrainConfig(eval_data=str(tmp_path / "eval.parquet")), [])
    assert table.column("document").to_pylist() == ["a", "b", "c"]
    assert qrels == {"q": {"0": 2.0, "1": 1.0, "3": 0.0}}
    pd.DataFrame({"query": ["q", "q", "q"], "document": ["a", "a", "b"],
                  "label": [1.0, 0.0, 0.0]}).to_parquet(tmp_path / "eval.parquet")
    table, qrels, said = train_data._eval_candidates(TrainConfig(eval_data=str(tmp_path / "eval.parquet")), [])
    assert qrels == {"q": {"0": 1.0, "2": 0.0}}


def test_unlabelled_eval_rows_that_cannot_be_scored_are_counted_once(ray_local, tmp_path):
    """_eval_rows' line: a row without a label and without a document is one row left out, not also one taken as
    not relevant (the line's counts add up to the rows)."""
    from ce_ray.config import TrainConfig

    pd.DataFrame({"query": ["q"] * 4, "document": ["a", "b", None, "d"],
                  "label": [1.0, None, None, 0.0]}).to_parquet(tmp_path / "eval.parquet")
    _, _, said = train_data._eval_candidates(TrainConfig(eval_data=str(tmp_path / "eval.parquet")), [])
    assert said.endswith("(1 query, 3 candidates; 1 row(s) that cannot be scored left out; 1 row(s) without a label "
                         "taken as not relevant)")


def test_the_best_checkpoint_is_the_later_of_equals():
    """best_checkpoint: by best_metric, the later of equal scores (its docstring), a checkpoint without the metric
    never."""
    from ce_ray.config import TrainConfig

    config = TrainConfig(best_metric="ndcg@10")
    from types import SimpleNamespace

    result = SimpleNamespace(best_checkpoints=[("c4", {"eval_ndcg@10": 0.5, "step": 4}),
                                               ("c8", {"eval_ndcg@10": 0.5, "step": 8}),
                                               ("c12", {"eval_ndcg@10": 0.25, "step": 12}),
                                               ("c16", {"step": 16})])
    assert checkpoints.best_checkpoint(result, config)[0] == "c8"
    assert checkpoints.best_checkpoint(result, TrainConfig()) is None


def test_checkpoint_folders_that_ray_train_never_recorded_are_not_resumed_from(tmp_path):
    """has_checkpoints: a checkpoint's folder without Ray Train's record (written as Ctrl-C stopped the run) is
    resumed from by no run, so it does not make a run of other settings refused."""
    import pyarrow.fs as pafs

    fs = pafs.LocalFileSystem()
    (tmp_path / "run" / "checkpoint_0000001").mkdir(parents=True)
    assert not checkpoints.has_checkpoints(fs, str(tmp_path / "run"))
    (tmp_path / "run" / checkpoints.RECORD).write_text("{}")
    assert checkpoints.has_checkpoints(fs, str(tmp_path / "run"))


def test_a_file_of_another_stamp_and_other_bytes_is_rewritten_not_touched(tmp_path):
    """changed_files/train_digests: a file whose stamp changed is `touched` only where its sha256 is the same;
    with other bytes it is `rewritten`, which refuses a resume."""
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"query": "q", "document": "d", "label": 1}\n')
    from ce_ray.config import TrainConfig

    config = TrainConfig(train_data=str(data))
    first = {str(data): "1-a"}
    earlier = {checkpoints.TRAIN_FILES: first,
               checkpoints.TRAIN_DIGESTS: checkpoints.train_digests(config, first, {})}
    touched = {str(data): "1-b"}
    now = {checkpoints.TRAIN_FILES: touched,
           checkpoints.TRAIN_DIGESTS: checkpoints.train_digests(config, touched, earlier)}
    assert checkpoints.changed_files(earlier, now) == ([], [str(data)])
    data.write_text('{"query": "q", "document": "d", "label": 0}\n')
    rewritten = {str(data): "1-c"}
    now = {checkpoints.TRAIN_FILES: rewritten,
           checkpoints.TRAIN_DIGESTS: checkpoints.train_digests(config, rewritten, earlier)}
    assert checkpoints.changed_files(earlier, now) == ([f"{data} rewritten"], [])
