"""GPU training throughput: `ce-ray train` against sentence-transformers' CrossEncoderTrainer, in one run.

The same synthetic MS MARCO-like pairs (common.synthetic_pairs, ~72 tokens; a label of 1 on one pair in
five) and the same random MiniLM reranker (6 or 12 layers) for every system:
  (a) CrossEncoderTrainer, batch 16, fp32                       on the first --anchor-steps x 16 pairs
  (b) CrossEncoderTrainer, batch 16, bf16                       on the same pairs
  (c) ce-ray train, batch 16 per device (bf16 on GPU)           on the same pairs
  (d) ce-ray train, for each --large-batch B, B pairs per step in forward passes of at most --batch-tokens
      padded tokens                                              on all --pairs pairs
  (c4) on a GPU, right after (c), (c) in fp32 (`bf16=False`, no autocast): a step of 16 pairs is the host
      launching kernels, and autocast adds a cast of each weight and of its gradient (198 of a 6-layer model's 1,148
      operations a step), where fp32's slower matrix products are small at ~1,150 tokens a pass
  (c5) the step alone: (c)'s training step (ce-ray's BERT, its batches, the loop's own `training_pass` and
      `optimizer_step`: autocast on a GPU, clipping, AdamW, the schedule), in this process without Ray Train, as
      `train.train_loop` runs it on one worker; with the host's share of a step spent preparing its batch, and on a
      GPU the kernels a step launches and the share of the step's time they keep the GPU busy (torch.profiler).
      Against (c)'s steady rate it says what of a step is the step itself (and whether the GPU or the host
      launching it is its limit) and what is the worker around it; in fp32 too
With --compile, also (c2): (c) with `compile=True`, and (c3): with `compile_mode="reduce-overhead"` too (CUDA
graphs, the passes' widths bucketed). Their first log window includes the compiling; the steady rate is the
one between later log lines.
The quality of large batches is measured by train_quality.py (batch 256 and 512 keep the seeds' quality
with lr 2e-4 and a 10% warmup). Here every system trains with the seeds' lr 5e-5: these random weights and
labels diverge at 2e-4 (a loss of 3.3 to 15 in four steps of 256), and the rate is what is measured.
Rates are training samples/s of the training loop: the trainer's own `train_samples_per_second`, and
ce-ray's logged rate (Ray's start and the tokenizing before the first step are not in either). MFU =
3 x forward FLOPs of the unpadded tokens (forward and backward) / time / a measured matmul peak. Writes
bench/results/train_gpu.json (train_gpu_cpu.json on CPU; or --name's).

    python3 bench/train_gpu.py                        # GPU: L6, 200,000 pairs for (d), batches of 256 and 2,048
    .venv/bin/python bench/train_gpu.py --layers 2 --pairs 1024 --anchor-steps 16 --large-batch 64 \
        --batch-tokens 2048                            # CPU smoke
    python3 bench/train_gpu.py --anchor-steps 200 --large-batch --compile --name train_gpu_compile   # (c2), (c3)
        # and no (d); --skip fp32 alone leaves out (c4) and (c5) too
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

import common

BATCH = 16  # the seeds' batch per device, and CrossEncoderTrainer's default


def labelled_pairs(pairs: int, seed: int) -> pa.Table:
    table = common.synthetic_pairs(pairs, seed=seed)
    labels = (np.random.default_rng(seed + 7).random(pairs) < 0.2).astype(np.float32)
    return table.select(["query", "document"]).append_column("label", pa.array(labels))


def flops_per_pair(model_dir: str, table: pa.Table, sample: int = 5000) -> float:
    """Mean forward FLOPs of one pair, from the token lengths of a sample of the pairs."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = table.slice(0, sample)
    encoded = tokenizer(rows.column("query").to_pylist(), rows.column("document").to_pylist(),
                        truncation=True, max_length=512)
    lengths = np.array([len(ids) for ids in encoded["input_ids"]])
    return common.model_flops(AutoConfig.from_pretrained(model_dir), lengths) / len(lengths)


def trainer_rate(model_dir: str, table: pa.Table, device: str, bf16: bool, work: str, first_window: int) -> dict:
    """CrossEncoderTrainer's `train_samples_per_second` (the whole run), and its steady rate: the steps after the
    first `first_window`, as ce-ray's steady rate leaves out its first log window (the first steps' warm-up)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from sentence_transformers.cross_encoder import (CrossEncoder, CrossEncoderTrainer,
                                                     CrossEncoderTrainingArguments)
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    model = CrossEncoder(model_dir, device=device)
    args = CrossEncoderTrainingArguments(
        output_dir=os.path.join(work, "st"), num_train_epochs=1, per_device_train_batch_size=BATCH,
        learning_rate=5e-5, bf16=bf16, save_strategy="no", logging_steps=50, report_to="none",
        use_cpu=not device.startswith("cuda"), dataloader_num_workers=0, seed=42)
    dataset = Dataset.from_pandas(table.to_pandas(), preserve_index=False)
    class StepEnds(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    step_ends = StepEnds()
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=BinaryCrossEntropyLoss(model),
                                  callbacks=[step_ends])
    output = trainer.train()
    del trainer, model
    common.free(device)
    ends = step_ends.ends
    steady = (BATCH * (len(ends) - first_window) / (ends[-1] - ends[first_window - 1])
              if len(ends) > first_window else None)
    return {"samples_per_second": output.metrics["train_samples_per_second"], "steady_samples_per_second": steady,
            "steady_after_steps": first_window, "steps": output.global_step, "final_loss": output.training_loss}


def ce_ray_rate(model_dir: str, table: pa.Table, work: str, name: str, cpus: int, **settings) -> dict:
    import pyarrow.parquet as pq

    from ce_ray.config import TrainConfig
    import ce_ray.train  # noqa: F401

    path = os.path.join(work, f"{name}.parquet")
    pq.write_table(table, path)
    start = time.perf_counter()
    outcome = sys.modules["ce_ray.train"].train(TrainConfig(
        model=model_dir, train_data=path, output=os.path.join(work, name), num_workers=1,
        cpus_per_worker=float(cpus), lr=5e-5, seed=42, **settings))
    # Each log line's rate: the first includes the worker's first batches (its data stream starting).
    # With the share of each window the worker waited for its next batch (is the data the limit?).
    logged = [entry for entry in outcome.log if "samples_per_second" in entry]
    windows = [entry["samples_per_second"] for entry in logged]
    waits = [entry["data_wait"] for entry in logged]
    print(f"{name}: samples/s between log lines " + ", ".join(
        f"{rate:,.0f} ({wait:.0%} waiting for data)" for rate, wait in zip(windows, waits)), flush=True)
    # The rate after the first window, for the steady state: the later windows' steps over their seconds.
    steps = np.diff([0] + [entry["step"] for entry in logged])[1:]
    steady = steps.sum() / sum(n / rate for n, rate in zip(steps, windows[1:])) if len(windows) > 1 else None
    return {"samples_per_second": outcome.samples_per_second,
            "steady_samples_per_second": None if steady is None else float(steady),
            "steps": outcome.steps,
            "final_loss": outcome.log[-1]["loss"], "wall_seconds": time.perf_counter() - start,
            "phases_seconds": outcome.phases,
            "samples_per_second_between_logs": windows, "data_wait_between_logs": waits, "settings": settings,
            "compiled_graphs": outcome.compiled_graphs, "cuda_graph_skips": outcome.cuda_graph_skips}


def step_alone_rate(model_dir: str, table: pa.Table, device: str, bf16: bool, steps: int) -> dict:
    """(c5): `train.train_loop`'s step on one worker, outside Ray: the same model, batches and loss, and the loop's
    own `training_pass` and `optimizer_step` (its DDP and DeepSpeed branches aside), timed over `steps` steps after
    20 of warm-up."""
    import torch

    from ce_ray import bert
    from ce_ray.batching import IDS, TYPES, pair_encoder
    from ce_ray.config import TrainConfig
    from ce_ray.model import to_device, use_shape_free_attention
    from ce_ray.train import _on_device, adamw, linear_schedule, optimizer_step, training_pass
    from ce_ray.train_data import LABEL, micro_batches

    config = TrainConfig(model=model_dir, batch_size=BATCH, lr=5e-5, seed=42)
    ids, types = pair_encoder(model_dir).encode(table.column("query").combine_chunks(),
                                                table.column("document").combine_chunks(), 512)
    span = pa.table({IDS: ids, TYPES: types, LABEL: table.column("label")})
    dev = torch.device(device)
    use_shape_free_attention(dev)
    torch.manual_seed(42)
    net = bert.trainable(model_dir).to(dev)
    optimizer = adamw(net, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(0, 10 * steps))
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")

    def batches():  # the epoch's batches again and again: (c)'s data, as the worker's loop gets it
        for epoch in itertools.count():
            yield from micro_batches(iter([span]), config, epoch, 0, 0, net.pad_id, 512)

    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731

    def step(passes) -> None:  # the loop's step on one worker: one batch, no accumulation
        rows = sum(len(labels) for _, labels in passes)
        for inputs, labels in passes:
            training_pass(net, _on_device(inputs, dev, net.model_type), to_device(labels, dev), loss_fn, rows, 1,
                          autocast)
        optimizer_step(net, optimizer, scheduler, config.max_grad_norm)

    stream = batches()
    for _ in range(20):
        step(next(stream))
    common.sync(device)
    start, preparing = time.perf_counter(), 0.0
    for _ in range(steps):
        began = time.perf_counter()
        passes = next(stream)
        preparing += time.perf_counter() - began
        step(passes)
    common.sync(device)
    seconds = time.perf_counter() - start
    figures = {"samples_per_second": steps * BATCH / seconds, "ms_per_step": 1e3 * seconds / steps,
               "batch_preparing_share": preparing / seconds, "bf16": bf16}
    if dev.type == "cuda":  # what the GPU did in 20 steps: the kernels (and copies) launched, their time
        profiled = 20
        try:  # the timing above stands where the profiler fails
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
                began = time.perf_counter()
                for _ in range(profiled):
                    step(next(stream))
                common.sync(device)
                wall = time.perf_counter() - began
            kernels = [e for e in profile.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            figures |= {"kernels_per_step": len(kernels) / profiled,
                        "gpu_busy_share": sum(e.device_time_total for e in kernels) / 1e6 / wall}
        except Exception as e:  # noqa: BLE001 (recorded in the results)
            figures["profile_error"] = f"{type(e).__name__}: {e}"[:500]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=200_000, help="pairs of system (d)")
    parser.add_argument("--anchor-steps", type=int, default=400, help="batches of 16 for systems (a)-(c)")
    parser.add_argument("--large-batch", type=int, nargs="*", default=[256, 2048],
                        help="pairs per step of system (d), one run each")
    parser.add_argument("--batch-tokens", type=int, default=65536, help="padded tokens per forward pass of (d)")
    parser.add_argument("--compile", action="store_true",
                        help="also (c2) and (c3): ce-ray at batch 16 under torch.compile, without and with CUDA graphs")
    parser.add_argument("--skip", nargs="*", default=[], choices=["fp32", "alone"],
                        help="systems left out: (c4) fp32, (c5) the step alone (measured, say, and the budget short)")
    parser.add_argument("--name", default=None, help="results file name (default: train_gpu, train_gpu_cpu on CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = common.pick_device(args.device)
    gpu = device.startswith("cuda")
    result = common.header(device) | {"args": vars(args), "systems": {}}
    result["peak"] = common.matmul_peak(device)
    results_name = args.name or ("train_gpu" if gpu else "train_gpu_cpu")  # bench/results/<results_name>.json
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as work:
        model_dir = common.build_model(os.path.join(work, "model"), args.layers)
        # All --pairs only for the large batches, (d): 200,000 pairs took 3.7 s to make where none was asked.
        table = labelled_pairs(max(args.pairs if args.large_batch else 0, args.anchor_steps * BATCH), args.seed)
        anchor = table.slice(0, args.anchor_steps * BATCH)
        per_pair = flops_per_pair(model_dir, table)
        result["flops_per_pair_forward"] = per_pair
        systems = result["systems"]

        def record(name: str, figures: dict) -> None:
            figures["mfu"] = 3 * per_pair * figures["samples_per_second"] / result["peak"]["flops_per_s"]
            systems[name] = figures
            print(f"{name}: {figures['samples_per_second']:,.1f} samples/s, MFU {figures['mfu']:.3f}", flush=True)
            common.write_result(results_name, result)

        window = max(args.anchor_steps // 4, 1)  # ce-ray's log lines at batch 16: the steady rates after the first
        record("trainer_fp32_b16", trainer_rate(model_dir, anchor, device, bf16=False, work=work, first_window=window))
        if gpu:
            record("trainer_bf16_b16", trainer_rate(model_dir, anchor, device, bf16=True, work=work,
                                                    first_window=window))
        result["ray_start_seconds"] = common.init_ray(log_to_driver=True)
        record("ce_ray_b16", ce_ray_rate(model_dir, anchor, work, "b16", cpus, batch_size=BATCH, log_every=window))
        # The large batches (the 10,000 samples/s target) before the batch-16 variants below: a step cut short by
        # its time limit (240 s in the suite) lost them, the last systems, where (c4) and (c5) had taken ~70 s.
        for batch in args.large_batch:
            steps = max(args.pairs // batch, 1)
            record(f"ce_ray_b{batch}", ce_ray_rate(
                model_dir, table.slice(0, args.pairs), work, f"b{batch}", cpus, batch_size=batch,
                batch_tokens=args.batch_tokens, log_every=max(steps // 4, 1)))
        if gpu and "fp32" not in args.skip:  # beside (c): whether batch 16 runs faster without autocast's casts
            record("ce_ray_b16_fp32", ce_ray_rate(model_dir, anchor, work, "b16_fp32", cpus, batch_size=BATCH,
                                                  log_every=window, bf16=False))
        precisions = [True, False] if gpu else [False]  # (c5) in bf16, and in fp32
        for bf16 in [] if "alone" in args.skip else precisions:
            figures = step_alone_rate(model_dir, anchor, device, bf16, steps=max(args.anchor_steps, 50))
            common.free(device)  # the step's model and optimizer, gone with its frame
            on_gpu = (f"; {figures['kernels_per_step']:.0f} kernels a step, the GPU busy "
                      f"{figures['gpu_busy_share']:.0%} of the time" if "kernels_per_step" in figures else "")
            print(f"step alone{'' if bf16 else ', fp32'}: {figures['ms_per_step']:.2f} ms a step, "
                  f"{figures['batch_preparing_share']:.0%} of it preparing the batch{on_gpu}", flush=True)
            record("step_alone_b16" + ("" if bf16 or not gpu else "_fp32"), figures)
        if args.compile:
            for name, mode in (("compiled", "default"), ("graphs", "reduce-overhead")):
                try:  # a compiler that fails on this machine is recorded, and the other systems still run
                    record(f"ce_ray_b16_{name}", ce_ray_rate(
                        model_dir, anchor, work, f"b16_{name}", cpus, batch_size=BATCH,
                        log_every=window, compile=True, compile_mode=mode))
                except Exception as e:  # noqa: BLE001 (recorded in the results)
                    result.setdefault("compile_errors", {})[name] = f"{type(e).__name__}: {e}"[:2000]
                    print(f"ce_ray_b16_{name} failed: {result['compile_errors'][name]}", flush=True)
                    common.write_result(results_name, result)

    def ratio(figures: dict, anchor: str, key: str) -> str:
        ours, theirs = figures.get(key), systems.get(anchor, {}).get(key)
        return f"{ours / theirs:.2f}" if ours and theirs else "-"

    rows = [("system", "samples/s", "steady", "x trainer fp32", "x trainer bf16", "steady x fp32", "steady x bf16",
             "MFU")]
    for name, figures in systems.items():
        rows.append((name, common.fmt_rate(figures["samples_per_second"]),
                     common.fmt_rate(figures.get("steady_samples_per_second")),
                     *(ratio(figures, anchor, key) for key in ("samples_per_second", "steady_samples_per_second")
                       for anchor in ("trainer_fp32_b16", "trainer_bf16_b16")),
                     f"{figures['mfu']:.3f}"))
    print(f"\nL{args.layers} on {result['machine'].get('gpu', device)}, peak "
          f"{result['peak']['flops_per_s'] / 1e12:.1f} TFLOP/s ({result['peak']['dtype']})")
    print(common.table(rows, (22, 10, 10, 15, 15, 14, 14, 6)))
    print("steady: the rate after the first log window (which holds the data stream's start, and the compiling "
          "with compile=True), the trainer's after as many steps; x: whole runs' rates, steady x: steady rates")
    print(f"written to {common.write_result(results_name, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
