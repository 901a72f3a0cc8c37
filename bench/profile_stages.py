"""Where the time of `ce-ray score` goes: each stage alone, the GPU busy fraction, and three sweeps.

Stages, each timed alone in this process on the same synthetic MS MARCO-like pairs (one CPU thread for
the CPU stages, so their rates are per CPU):
  read            pyarrow.parquet.read_table of the input files
  tokenize_hf     ce_ray.batching.encode_pairs_hf per block (on the first --hf-pairs pairs)
  tokenize_fast   ce_ray.fast_tokenize.encode_pairs per block (nanotoken, one thread), cold and warm cache
  tokenize_table  ce_ray.batching.tokenize_table per block (fast, cold cache): what a tokenize task runs
  pad_copy        Scorer.device_batches: a block's int32 ids and int8 types copied once, each batch padded
                  on the device (what a replica does before the model)
  pad_copy_host   the former path, for comparison: numpy padding, int64, three pinned copies per batch
  model           per batch, the forward pass alone on inputs already on the device (CUDA events on GPU)
  scorer          ce_ray.replica.Scorer on the tokenized blocks: pad, copy and model, as a replica runs them
  write           pyarrow.parquet.write_table of the scored blocks
GPU busy fraction of a replica = model time / scorer time (the same batches). Then, end to end
(run_score, parquet to parquet, on local Ray): pairs/s against --batch-tokens, --rows-per-call, the CPUs left for
reading and tokenizing (Ray restarted with that many CPUs + 1 for the replica), and against --replicas
(where the devices allow), with GPU utilization sampled by nvidia-smi where there is one. The fixed cost
of a job (actor start, model load) is measured on a 1-file, --fixed-pairs input and reported apart.
Writes bench/results/profile_l<layers>[_cpu].json and .png (--cpu-stages-only: profile_cpu_stages[_cpu].json).

    python3 bench/profile_stages.py                      # GPU: 500k pairs, L6
    .venv/bin/python bench/profile_stages.py --pairs 4000 --layers 2 --hf-pairs 1000 \\
        --batch-tokens 4096 8192 --tokenize-cpus 1 --replicas 1 2           # CPU smoke
    .venv/bin/python bench/profile_stages.py --plot bench/results/profile_l6.json   # plot a GPU run here
"""

from __future__ import annotations

import os

# Per-CPU rates: Hugging Face on one thread too (set outright: the suite exports `true` for the other benches, and
# `tokenize_hf` measured 10,857 pairs/s "per CPU" on 2026-11-29, ~1,900 on one thread).
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import common


def blocks_of(table: pa.Table, rows: int):
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)]


def timed(fn, items) -> tuple:
    start = time.perf_counter()
    out = [fn(item) for item in items]
    return time.perf_counter() - start, out


def stage_rates(args, work: str, table: pa.Table, model_dir: str, device: str) -> dict:
    import torch

    from ce_ray import fast_tokenize
    from ce_ray.batching import (IDS, TYPES, encode_pairs_hf, list_parts, pad, pair_encoder, token_budget_batches,
                                 tokenize_table)
    from ce_ray.config import ScoreConfig
    from ce_ray.model_folder import load_tokenizer
    from ce_ray.replica import Scorer

    if device == "cpu":
        torch.set_num_threads(1)
    n, stages = table.num_rows, {}
    files = sorted(os.path.join(work, "pairs", f) for f in os.listdir(os.path.join(work, "pairs")))

    def record(name, pairs, seconds, **extra):
        stages[name] = {"pairs": pairs, "seconds": seconds, "pairs_per_s": pairs / seconds} | extra
        print(f"  {name:<15} {pairs:>9,} pairs {seconds:8.2f} s {pairs / seconds:>12,.0f} pairs/s", flush=True)

    seconds, _ = timed(lambda f: pq.read_table(f, use_threads=False), files)
    record("read", n, seconds, per="CPU")
    tokenizer = load_tokenizer(model_dir)
    encoder = pair_encoder(model_dir, "fast")
    blocks = blocks_of(table, args.rows_per_block)
    hf_blocks = blocks_of(table.slice(0, args.hf_pairs), args.rows_per_block)
    seconds, _ = timed(lambda b: encode_pairs_hf(tokenizer, b.column("query").to_pylist(),
                                                 b.column("document").to_pylist(), 512), hf_blocks)
    record("tokenize_hf", min(args.hf_pairs, n), seconds, per="CPU")
    # nanotoken caches the words it has seen: a tokenize worker starts cold and warms up over its blocks.
    clear_cache = fast_tokenize.pair_plan(tokenizer).encoder.clear_cache
    fast = lambda b: fast_tokenize.encode_pairs(tokenizer, b.column("query"), b.column("document"), 512, parallel=False)
    clear_cache()
    seconds, _ = timed(fast, blocks)
    record("tokenize_fast_cold", n, seconds, per="CPU")
    seconds, _ = timed(fast, blocks)
    record("tokenize_fast", n, seconds, per="CPU", cache="warm")
    clear_cache()
    # As a tokenize task on one CPU runs it: nanotoken on one thread (`_parallel` gives threads to a driver).
    fast_tokenize._parallel = lambda: False
    seconds, tokenized = timed(lambda b: tokenize_table(b, encoder, "query", "document", 512), blocks)
    record("tokenize_table", n, seconds, per="CPU", cache="cold")

    if args.cpu_stages_only:
        # What the scorer hands to the writer: the input columns and a float32 score.
        scored = [b.drop_columns([IDS, TYPES]).append_column("score", pa.array(np.zeros(b.num_rows, np.float32)))
                  for b in tokenized]
        seconds, _ = timed(lambda b: pq.write_table(b, os.path.join(work, "write.parquet")), scored)
        record("write", n, seconds, per="CPU")
        return stages
    cuda = device.startswith("cuda")
    budget = args.stage_batch_tokens
    scorer = Scorer(ScoreConfig(model=model_dir, batch_tokens=budget, max_length=512), device)
    if device == "cpu":
        torch.set_num_threads(1)  # the Scorer takes every core; every stage here runs on one

    def host_padded(ids, types, offsets, rows):
        """The replica's former path, for comparison: numpy padding, int64, three pinned copies a batch."""
        input_ids, mask = pad(ids, offsets, rows)
        return {"input_ids": scorer._to_device(input_ids.astype(np.int64)),
                "attention_mask": scorer._to_device(mask.astype(np.int64)),
                "token_type_ids": scorer._to_device(pad(types, offsets, rows)[0].astype(np.int64))}

    host_s, copy_s, model_s, batches, device_batches = 0.0, 0.0, 0.0, 0, []
    with torch.inference_mode():
        for block in tokenized:
            ids, offsets = list_parts(block.column(IDS))
            types = list_parts(block.column(TYPES))[0]
            start = time.perf_counter()
            for rows in token_budget_batches(np.diff(offsets), budget):
                host_padded(ids, types, offsets, rows)
            common.sync(device)
            host_s += time.perf_counter() - start
            start = time.perf_counter()
            device_batches += [inputs for _, inputs in scorer.device_batches(block)]
            common.sync(device)
            copy_s += time.perf_counter() - start
        batches = len(device_batches)
        model = scorer.reranker.model
        for inputs in device_batches[:3]:
            model(**inputs)
        common.sync(device)
        if cuda:
            events = []
            for inputs in device_batches:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                model(**inputs)
                end.record()
                events.append((begin, end))
            torch.cuda.synchronize()
            model_s = sum(b.elapsed_time(e) for b, e in events) / 1000
        else:
            model_s, _ = timed(lambda inputs: model(**inputs), device_batches)
    del device_batches
    common.free(device)
    record("pad_copy_host", n, host_s, batches=batches, batch_tokens=budget, per="replica thread")
    record("pad_copy", n, copy_s, batches=batches, batch_tokens=budget, per="replica thread")
    record("model", n, model_s, batches=batches, batch_tokens=budget, per="GPU" if cuda else "CPU")

    scorer(tokenized[0])  # warm-up
    common.sync(device)
    seconds, scored = timed(scorer, tokenized)
    common.sync(device)
    record("scorer", n, seconds, per="replica", gpu_busy_fraction=model_s / seconds)
    del scorer
    common.free(device)
    path = os.path.join(work, "write.parquet")
    seconds, _ = timed(lambda b: pq.write_table(b, path), scored)
    record("write", n, seconds, per="CPU")
    return stages


class GpuSampler:
    """GPU utilization (% of time a kernel ran) every 100 ms from nvidia-smi, while a run lasts."""

    def __init__(self, enabled: bool):
        self.process = None
        if enabled and shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self):
        if self.process is None:
            return None
        self.process.terminate()
        out, _ = self.process.communicate()
        values = [float(v) for v in out.split() if v.strip().replace(".", "").isdigit()]
        return {"mean_utilization": float(np.mean(values)) / 100 if values else None, "samples": len(values)}


def end_to_end(model_dir: str, folder: str, out: str, device: str, **settings) -> dict:
    from ce_ray import ScoreConfig, run_score

    config = ScoreConfig(model=model_dir, input=folder, output=out, tokenizer="fast", mode="overwrite",
                         use_gpu=device.startswith("cuda"), **settings)
    sampler = GpuSampler(device.startswith("cuda"))
    since = time.time()
    summary = run_score(config)
    gpu = sampler.stop()
    timeline = common.job_timeline(since)
    print(common.timeline_line(timeline), flush=True)
    return {"seconds": summary.seconds, "pairs": summary.rows_in, "pairs_per_s": summary.pairs_per_second,
            "gpu": gpu, "timeline": timeline} | settings


def sweeps(args, work: str, model_dir: str, device: str, n: int, result: dict, save) -> None:
    """Fills `result` with the sweeps' points, calling `save` after each: a run cut short keeps what it measured."""
    import torch

    folder, fixed_folder = os.path.join(work, "pairs"), os.path.join(work, "fixed")
    out = os.path.join(work, "out")
    cpus = os.cpu_count()
    # A GPU replica takes a GPU; a CPU replica takes a CPU, and one CPU must stay for the read/tokenize tasks.
    devices = torch.cuda.device_count() if device.startswith("cuda") else max(cpus - 1, 1)
    result.update({"batch_tokens": [], "rows_per_call": [], "tokenize_cpus": [], "replicas": [], "fixed": []})

    def run(kind, labels=None, **settings):
        point = end_to_end(model_dir, folder, out, device, rows_per_block=args.rows_per_block, **settings)
        # Steady rate: the job's time less the fixed cost of a tiny job on the same Ray (none when the
        # job is too small to tell them apart).
        rest = point["seconds"] - result["fixed"][-1]["seconds"]
        point["steady_pairs_per_s"] = n / rest if rest > 0.1 * point["seconds"] else None
        result[kind].append(point | (labels or {}))
        steady = point["steady_pairs_per_s"]
        print(f"  {kind} {labels or settings}: {point['pairs_per_s']:,.0f} pairs/s end to end, "
              f"{'-' if steady is None else f'{steady:,.0f}'} without the fixed cost", flush=True)
        save()

    def fixed_cost(label):
        point = end_to_end(model_dir, fixed_folder, out, device, batch_tokens=args.stage_batch_tokens)
        result["fixed"].append(point | {"ray": label})
        print(f"  fixed cost of a job ({args.fixed_pairs} pairs, {label}): {point['seconds']:.1f} s", flush=True)
        save()

    common.init_ray()
    fixed_cost(f"{cpus} CPUs")
    for budget in args.batch_tokens:
        run("batch_tokens", batch_tokens=budget)
    for rows in args.rows_per_call:
        run("rows_per_call", batch_tokens=args.stage_batch_tokens, rows_per_call=rows)
    for replicas in args.replicas:
        if replicas > devices:
            result["replicas"].append({"replicas": replicas, "skipped": f"room for {devices} replica(s) here"})
            save()
            continue
        run("replicas", batch_tokens=args.stage_batch_tokens, replicas=replicas, min_replicas=replicas)
    for k in args.tokenize_cpus:
        common.init_ray(num_cpus=k + 1)  # one CPU for the replica, k for reading, tokenizing, writing
        fixed_cost(f"{k + 1} CPUs")
        run("tokenize_cpus", {"cpus_for_tasks": k}, batch_tokens=args.stage_batch_tokens)
    import ray

    ray.shutdown()


def cost_model(stages: dict, cpus_for_tasks: int) -> dict:
    """pairs/s per replica = min(model ceiling, scorer, tokenize rate x CPUs, read and write rates x CPUs)."""
    per_cpu = 1 / sum(1 / stages[s]["pairs_per_s"] for s in ("read", "tokenize_table", "write"))
    bounds = {"model": stages["model"]["pairs_per_s"], "scorer": stages["scorer"]["pairs_per_s"],
              "cpu_stages": per_cpu * cpus_for_tasks}
    return {"cpus_for_tasks": cpus_for_tasks, "read_tokenize_write_per_cpu": per_cpu, "bounds": bounds,
            "predicted_pairs_per_s": min(bounds.values()), "bound_by": min(bounds, key=bounds.get),
            "cpus_to_feed_model": stages["model"]["pairs_per_s"] / per_cpu}


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages, sweep = result["stages"], result.get("sweeps") or {}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    names = list(stages)
    axes[0].barh(names, [stages[s]["pairs_per_s"] for s in names], color="tab:blue")
    axes[0].set_xscale("log")
    axes[0].invert_yaxis()
    axes[0].set_xlabel("pairs/s (CPU stages: one CPU)")
    axes[0].set_title(f"stages, MiniLM-L{result['layers']} on {result['machine'].get('gpu', 'CPU')}")
    for i, s in enumerate(names):
        axes[0].text(stages[s]["pairs_per_s"], i, f" {stages[s]['pairs_per_s']:,.0f}", va="center", fontsize=8)
    for key, ax, label in (("batch_tokens", axes[1], "--batch-tokens"), ("tokenize_cpus", axes[2], "CPUs for tasks")):
        points = [p for p in sweep.get(key, []) if "pairs_per_s" in p]
        x = [p["batch_tokens"] if key == "batch_tokens" else p["cpus_for_tasks"] for p in points]
        ax.plot(x, [p["pairs_per_s"] for p in points], "o-", label="end to end")
        steady = [(xi, p["steady_pairs_per_s"]) for xi, p in zip(x, points) if p["steady_pairs_per_s"]]
        if steady:
            ax.plot(*zip(*steady), "s--", label="without fixed cost")
        if key == "batch_tokens":
            ax.set_xscale("log", base=2)
        else:
            per_cpu = result["cost_model"]["read_tokenize_write_per_cpu"]
            ax.plot(x, [min(stages["scorer"]["pairs_per_s"], per_cpu * k) for k in x], "x:", label="cost model")
        ax.set_xlabel(label)
        ax.set_ylabel("pairs/s")
        ax.set_title(f"ce-ray score, {result['pairs']:,} pairs")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=500_000)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hf-pairs", type=int, default=20_000, help="pairs for the Hugging Face tokenizer stage")
    parser.add_argument("--rows-per-block", type=int, default=4096)
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=None,
                        help="sweep; default 16384..131072 on GPU, 2048..8192 on CPU")
    parser.add_argument("--stage-batch-tokens", type=int, default=None, help="for the stages and other sweeps")
    parser.add_argument("--tokenize-cpus", type=int, nargs="*", default=None,
                        help="CPUs left for read/tokenize/write tasks; default 1 2 4 8 and all but one")
    parser.add_argument("--replicas", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--rows-per-call", type=int, nargs="*", default=None,
                        help="sweep of rows a replica scores per call; default 4096 16384 32768 65536 on GPU, "
                             "none on CPU")
    parser.add_argument("--fixed-pairs", type=int, default=1000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--no-sweeps", action="store_true")
    parser.add_argument("--cpu-stages-only", action="store_true",
                        help="read, tokenize and write only (no model): per-CPU rates for the cost model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="JSON", help="only draw the PNG of an earlier run's JSON")
    args = parser.parse_args()
    if args.plot:
        import json

        with open(args.plot) as f:
            plot(json.load(f), args.plot[: -len(".json")] + ".png")
        print(f"wrote {args.plot[: -len('.json')]}.png")
        return

    device = common.pick_device(args.device)
    cuda = device.startswith("cuda")
    args.batch_tokens = args.batch_tokens or ([16384, 32768, 65536, 131072] if cuda else [2048, 4096, 8192])
    args.stage_batch_tokens = args.stage_batch_tokens or (65536 if cuda else 2048)
    if args.rows_per_call is None:
        args.rows_per_call = [4096, 16384, 32768, 65536] if cuda else []
    cpus = os.cpu_count()
    if args.tokenize_cpus is None:
        args.tokenize_cpus = sorted({k for k in (1, 2, 4, 8) if k < cpus} | {max(cpus - 1, 1)})
    work = tempfile.mkdtemp(prefix="ce-ray-profile-")
    table = common.synthetic_pairs(args.pairs, seed=args.seed)
    common.write_pairs(table, os.path.join(work, "pairs"), args.files)
    common.write_pairs(table.slice(0, args.fixed_pairs), os.path.join(work, "fixed"), 1)
    model_dir = common.build_model(os.path.join(work, "model"), 1 if args.cpu_stages_only else args.layers,
                                   seed=args.seed)
    model_name = "no model" if args.cpu_stages_only else f"MiniLM-L{args.layers} (random)"
    print(f"{model_name}, {args.pairs:,} pairs, {device}, {cpus} CPUs", flush=True)

    stages = stage_rates(args, work, table, model_dir, device)
    result = common.header(device) | {"bench": "profile_stages", "args": vars(args), "layers": args.layers,
                                      "pairs": args.pairs, "stages": stages}
    if args.cpu_stages_only:
        name = "profile_cpu_stages" + ("" if cuda else "_cpu")
        print(f"wrote {common.write_result(name, result)}")
        shutil.rmtree(work, ignore_errors=True)  # its inputs and model (68 MB at 50,000 pairs) were left behind
        return
    result["cost_model"] = cost_model(stages, max(cpus - 1, 1))
    cm = result["cost_model"]
    print(f"\ncost model: read+tokenize+write {cm['read_tokenize_write_per_cpu']:,.0f} pairs/s per CPU; "
          f"{cm['cpus_to_feed_model']:.2f} CPUs feed the model; with {cm['cpus_for_tasks']} CPUs: "
          f"{cm['predicted_pairs_per_s']:,.0f} pairs/s per replica, bound by {cm['bound_by']}", flush=True)
    name = f"profile_l{args.layers}" + ("" if cuda else "_cpu")

    def save() -> str:
        """The JSON and the PNG as they stand, written after the stages and after each point of the sweeps, so
        that a run cut short keeps what it measured. Returns what was written."""
        written = common.write_result(name, result)
        try:
            plot(result, os.path.join(common.RESULTS, f"{name}.png"))
        except ImportError:
            return f"{written} (matplotlib is missing: draw the PNG elsewhere with --plot {written})"
        return f"{written} and its PNG"

    save()
    if not args.no_sweeps:
        result["sweeps"] = {}
        sweeps(args, work, model_dir, device, args.pairs, result["sweeps"], save)
    print(f"wrote {save()}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
