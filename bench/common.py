"""Shared parts of the GPU benches: random MiniLM rerankers, MS MARCO-like pairs, FLOPs, device facts, results.

The GPU machine has no ../shared: `python3 bench/common.py assets` copies the shared reranker's config and
tokenizer files (~1 MB, no weights) into .cache/bench-assets/, a folder that travels with the working tree.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the GPU machine runs from a bare working tree, without `pip install -e`
SHARED_MODEL = os.path.join(ROOT, "..", "shared", "models", "ms-marco-MiniLM-L12-v2")
ASSETS = os.path.join(ROOT, ".cache", "bench-assets")
ASSET_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
RESULTS = os.path.join(ROOT, "bench", "results")

# Measured before on one H100 with 16 CPUs (the anchors and targets), in pairs/s.
ANCHORS = {
    6: {"predict_defaults": 3396, "predict_fp16_b256": 4126, "ray_data_recipe": 1567, "model_ceiling": 104000,
        "target": 100000},
    12: {"predict_defaults": 2363, "predict_fp16_b256": 5032, "ray_data_recipe": None, "model_ceiling": 53600,
         "target": 50000},
}
ANCHOR_RATES = {"hf_tokenizer_16_cores": 30800, "nanotoken_16_cores": 1760000}


def assets_dir() -> str:
    """The shared reranker's folder when it is here, else the carried copy of its config and tokenizer."""
    for path in (SHARED_MODEL, ASSETS):
        if all(os.path.exists(os.path.join(path, f)) for f in ASSET_FILES):
            return os.path.abspath(path)
    sys.exit("no model config/tokenizer: run `python3 bench/common.py assets` where ../shared exists and "
             "carry .cache/bench-assets")


def copy_assets() -> None:
    os.makedirs(ASSETS, exist_ok=True)
    for name in ASSET_FILES:
        shutil.copy(os.path.join(SHARED_MODEL, name), os.path.join(ASSETS, name))
    # The tree travels without .git: the commit it holds, for the results' `commit` there.
    with open(os.path.join(ASSETS, "commit"), "w") as f:
        f.write(f"{commit()}\n")
    print(f"copied {', '.join(ASSET_FILES)} to {ASSETS}, and the commit")


def build_model(dest: str, layers: int, seed: int = 0, logit_std: float = 2.0, hidden: Optional[int] = None) -> str:
    """A random BertForSequenceClassification of MiniLM shape (hidden 384) with `layers` layers; `hidden`
    makes it narrower (heads of 32 dimensions, FFN 4 x hidden), for CPU runs that measure the pipeline.

    A random BERT's pooled outputs barely differ between pairs, so its logits are all alike (std ~0.003,
    every score ~0.5) and any score check would pass. The classifier is set along the direction in which
    the pooled outputs of a sample of pairs vary most, scaled so that logits spread with `logit_std`
    around 0, as a trained reranker's do. Rounding still weighs more here than in a trained model: the
    bf16 check compares against this model's own bf16 noise (see score_gpu.py).
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    source = assets_dir()
    config = BertConfig.from_pretrained(source)
    config.num_hidden_layers = layers
    if hidden:
        config.hidden_size, config.intermediate_size = hidden, 4 * hidden
        config.num_attention_heads = max(hidden // 32, 1)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    queries, documents = synthetic_texts(256, seed=seed + 1)
    batch = tokenizer(queries, documents, truncation=True, max_length=512, padding=True, return_tensors="pt")
    with torch.inference_mode():
        pooled = model.bert(**batch).pooler_output
        centred = pooled - pooled.mean(0)
        direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        weight = direction * logit_std / (centred @ direction).std()
        model.classifier.weight.copy_(weight[None])
        model.classifier.bias.fill_(-float(pooled.mean(0) @ weight))
    os.makedirs(dest, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    for name in ASSET_FILES[1:]:
        shutil.copy(os.path.join(source, name), os.path.join(dest, name))
    return dest


def _words(vocab_file: str) -> np.ndarray:
    """Whole lowercase words of the vocabulary, in its order (roughly by frequency in BERT's)."""
    with open(vocab_file, encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f]
    return np.array([w for w in vocab if w.isalpha() and w.isascii() and w.islower() and (len(w) > 1 or w == "a")])


def _texts(rng: np.random.Generator, words: np.ndarray, lengths: np.ndarray, punctuation: float) -> pa.Array:
    """One text per length: Zipf-like word choice, a comma or full stop after some words. Built in Arrow."""
    rank = np.arange(len(words), dtype=np.float64)
    p = 1.0 / (rank + 20.0)
    p /= p.sum()
    total = int(lengths.sum())
    picks = pa.array(words).take(pa.array(rng.choice(len(words), size=total, p=p)))
    marks = np.where(rng.random(total) < punctuation, np.where(rng.random(total) < 0.6, ",", "."), "")
    picks = pc.binary_join_element_wise(picks, pa.array(marks), "")
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pc.binary_join(pa.LargeListArray.from_arrays(pa.array(offsets), picks), " ").cast(pa.string())


def synthetic_texts(pairs: int, seed: int = 0, per_query: int = 100):
    """(queries, documents) as Python lists; see `synthetic_pairs`."""
    table = synthetic_pairs(pairs, seed, per_query)
    return table.column("query").to_pylist(), table.column("document").to_pylist()


def synthetic_pairs(pairs: int, seed: int = 0, per_query: int = 100) -> pa.Table:
    """MS MARCO-like reranking input, deterministic by seed: `per_query` candidate passages per query.

    Queries ~8 words, passages ~55 words (log-normal, 8 to 250) with some punctuation: ~72 tokens per pair
    with a BERT uncased tokenizer. Words come from the tokenizer's vocabulary, so text tokenizes to real
    whole-word ids; every passage is distinct, every query repeats `per_query` times in a row.
    """
    rng = np.random.default_rng(seed)
    words = _words(os.path.join(assets_dir(), "vocab.txt"))
    n_queries = -(-pairs // per_query)
    query_lengths = np.clip(2 + rng.poisson(6, n_queries), 2, 30)
    sigma = 0.45
    doc_lengths = np.clip(rng.lognormal(np.log(55) - sigma**2 / 2, sigma, pairs), 8, 250).astype(np.int64)
    queries = _texts(rng, words, query_lengths, punctuation=0.0)
    documents = _texts(rng, words, doc_lengths, punctuation=0.1)
    query_id = np.arange(pairs, dtype=np.int64) // per_query
    return pa.table({
        "pair_id": np.arange(pairs, dtype=np.int64),
        "query_id": query_id,
        "doc_id": np.arange(pairs, dtype=np.int64),
        "query": queries.take(pa.array(query_id)),
        "document": documents,
    })


def write_pairs(table: pa.Table, folder: str, files: int) -> str:
    """The table as `files` parquet files of consecutive rows (ce-ray reads a file of under ~1M rows in one task)."""
    os.makedirs(folder, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i in range(files):
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]),
                       os.path.join(folder, f"pairs-{i:03d}.parquet"))
    return folder


def model_flops(config, lengths: np.ndarray, last_layer_one_row: bool = False) -> float:
    """Forward FLOPs of a BERT sequence classifier over sequences of these (unpadded) lengths.

    2 FLOPs per multiply-add: every token through each layer's Q, K, V, O and two FFN matrices, the
    attention scores and weighted sum (4 x L^2 x hidden per layer per sequence), and the pooler and
    classifier once per sequence. Embedding lookups, norms and activations are left out, as in MFU usage.
    `last_layer_one_row`: the work ce-ray's scoring BERT does (`bert.Layer`'s `first_only`): its last layer
    projects Q, K and V for every token, then attends, projects and runs the FFN for the first token alone.
    Counting the skipped rows would credit work never done (an MFU above 1 for a one-layer model).
    """
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = np.asarray(lengths, dtype=np.float64)
    tokens, sequences, squares = float(lengths.sum()), len(lengths), float((lengths**2).sum())
    full_layers = n - 1 if last_layer_one_row else n
    flops = 2.0 * full_layers * (4 * h * h + 2 * h * i) * tokens + 4.0 * full_layers * h * squares
    if last_layer_one_row:
        flops += 2.0 * 3 * h * h * tokens + 2.0 * (h * h + 2 * h * i) * sequences + 4.0 * h * tokens
    return flops + 2.0 * (h * h + h) * sequences


def matmul_peak(device: str, seconds: float = 2.0) -> Dict[str, float]:
    """Measured matmul FLOP/s: bf16 8192^3 on GPU; fp32 1024^3 on CPU (the dtype each path scores in)."""
    import torch

    cuda = device.startswith("cuda")
    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    wait = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):
        a @ b
    wait()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        wait()
        runs += 10
    elapsed = time.perf_counter() - start
    return {"flops_per_s": 2.0 * n**3 * runs / elapsed, "n": n, "dtype": str(dtype).replace("torch.", "")}


def device_info(device: str) -> dict:
    import torch

    info = {"device": device, "cpus": os.cpu_count(), "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "load_average_1m": round(os.getloadavg()[0], 2)}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "gpu_count": torch.cuda.device_count(), "cuda": torch.version.cuda}
    return info


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "sentence-transformers", "ray", "pyarrow", "numpy", "nanotoken",
                 "tokenizers", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def pick_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def write_result(name: str, result: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    # Renamed into place: a bench stopped as it writes keeps its last whole file.
    with open(f"{path}.partial", "w") as f:
        json.dump(result, f, indent=2, default=float)
    os.replace(f"{path}.partial", path)
    return path


def commit() -> Optional[str]:
    """The ce-ray commit measured: git's where the tree is a checkout, else the one `bench/kit.sh` recorded
    beside the carried assets (the tree travels to the GPU machine without .git); `+changes` where the tree
    differed from it."""
    recorded = os.path.join(ASSETS, "commit")
    if not os.path.exists(os.path.join(ROOT, ".git")):
        return open(recorded).read().strip() if os.path.exists(recorded) else None
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        changed = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        return head.stdout.strip() + ("+changes" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def header(device: str) -> dict:
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit(), "machine": device_info(device), "versions": versions()}


def tree_on_path() -> str:
    """PYTHONPATH with the working tree first where it is not on it: the working tree's ce_ray must reach Ray's
    workers and the jobs' processes (it is not installed on the GPU machine)."""
    value = os.environ.get("PYTHONPATH", "")
    paths = [p for p in value.split(os.pathsep) if p]
    return value if ROOT in paths else os.pathsep.join([ROOT] + paths)


def init_ray(num_cpus: Optional[int] = None, log_to_driver: bool = False):
    """A local Ray of its own; `log_to_driver` prints the workers' lines here (training's per-window lines,
    so that a run cut short by the suite's budget still shows how far it got)."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if ray.is_initialized():
        ray.shutdown()
    start = time.perf_counter()
    # The local cluster's processes inherit this environment.
    os.environ["PYTHONPATH"] = tree_on_path()
    for attempt in range(3):  # a loaded machine can take longer than Ray's 30 s to start a raylet
        try:
            # "local": a cluster of its own, never one that `ray start` left recorded in /tmp/ray.
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver)
            break
        except Exception as e:  # Ray raises a bare Exception on a startup timeout
            if attempt == 2 or "timed out" not in str(e):
                raise
            ray.shutdown()
            print(f"Ray did not start in time ({e}); trying again", flush=True)
    return time.perf_counter() - start


def covered_share(intervals: list) -> Optional[float]:
    """The share of the time from the first start to the last end that at least one (start, end) covers."""
    intervals = sorted(intervals)
    covered, (start, stop) = 0.0, intervals[0]
    for begin, finish in intervals[1:]:
        if begin > stop:  # a gap: close the covered stretch
            covered, start = covered + stop - start, begin
        stop = max(stop, finish)
    span = stop - intervals[0][0]
    return (covered + stop - start) / span if span > 0 else None


def job_timeline(since: float) -> dict:
    """Where a Ray Data job's time went, from Ray's own task events (`ray.timeline`), in seconds after
    `since` (time.time() at the job's start): when the first replica's process ran its constructor, the
    constructor's imports (unpickling its arguments) and its body (model load), the first scoring call, and
    the share of the time from a replica's first call to its last when one of its calls was running (calls
    may overlap: Ray Data fetches a call's rows while the one before runs)."""
    import ray

    time.sleep(2)  # workers report task events to Ray about once a second
    workers: Dict[str, list] = {}
    for event in ray.timeline():
        if event.get("ph") == "X" and event["ts"] / 1e6 >= since:
            workers.setdefault(event["tid"], []).append(event)
    at = lambda event: event["ts"] / 1e6 - since  # noqa: E731
    end = lambda event: at(event) + event["dur"] / 1e6  # noqa: E731
    tasks = [e for events in workers.values() for e in events if e["name"].endswith("_map_task")]
    # A replica is an actor whose calls are Ray Data map workers' `submit`; its constructor is `__init__`.
    replicas = [events for events in workers.values() if any(e["name"] == "submit" for e in events)]
    if not replicas:
        return {"replicas": 0}
    first = min(replicas, key=lambda events: min(at(e) for e in events))
    init = next((e for e in first if e["name"] == "__init__"), None)
    inside = [e for e in first if init and at(init) <= at(e) <= end(init)]
    phase = lambda name: next((e["dur"] / 1e6 for e in inside if e["name"] == name), None)  # noqa: E731
    calls = sorted((e for events in replicas for e in events if e["name"] == "submit"), key=at)
    busy = [covered_share([(at(e), end(e)) for e in events if e["name"] == "submit"]) for events in replicas]
    return {"replicas": len(replicas), "replica_lines": replica_lines(since),
            "first_task_at_s": min(map(at, tasks)) if tasks else None,
            "replica_constructor_at_s": at(init) if init else None,
            "replica_imports_s": phase("task:deserialize_arguments"), "replica_constructor_s": phase("task:execute"),
            "first_call_at_s": at(calls[0]), "first_call_s": calls[0]["dur"] / 1e6, "calls": len(calls),
            # Calls overlap (Ray Data hands a replica its next rows while it scores): the span, not a sum.
            "last_call_end_s": max(map(end, calls)),
            "replica_busy_fraction": None if None in busy else sum(busy) / len(busy)}


def replica_lines(since: float) -> list:
    """The lines the job's replicas printed when ready (`ce-ray replica: ...`, where a replica's start went),
    from the worker logs of Ray's session: the benches start Ray without sending them to the driver."""
    logs = os.path.join(tempfile.gettempdir(), "ray", "session_latest", "logs")
    lines = []
    for path in sorted(glob.glob(os.path.join(logs, "worker-*.err"))):
        if os.path.getmtime(path) >= since:  # a replica of this job, not of one before
            with open(path, errors="replace") as f:
                lines += [line.strip() for line in f if line.startswith("ce-ray replica:")]
    return lines


def timeline_line(t: dict) -> str:
    """`job_timeline`'s figures in one line, and under it the replicas' ready lines."""
    if not t.get("replicas"):
        return "  timeline: no replica call found"
    f = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    return (f"  timeline: first task at +{f(t['first_task_at_s'])} s; replica constructor at "
            f"+{f(t['replica_constructor_at_s'])} s: imports {f(t['replica_imports_s'])} s, body "
            f"{f(t['replica_constructor_s'])} s; first call at +{f(t['first_call_at_s'])} s "
            f"({t['first_call_s']:.2f} s); {t['calls']} calls on {t['replicas']} replica(s), "
            f"the last ending at +{t['last_call_end_s']:.1f} s, busy {f(t['replica_busy_fraction'])} of the time "
            f"from the first to the last" + "".join(f"\n  {line}" for line in t.get("replica_lines", [])))


def fmt_rate(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:,.0f}"


def table(rows: Sequence[Sequence[str]], widths: Sequence[int]) -> str:
    return "\n".join("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


if __name__ == "__main__":
    if sys.argv[1:] == ["assets"]:
        copy_assets()
    else:
        sys.exit("usage: python3 bench/common.py assets")
