"""Cost linear in the number of pairs, memory bounded: `ce-ray score` end to end at 1M and 5M pairs.

Each size runs as its own `ce-ray score` process with a local Ray of its own, on MS MARCO-like pairs
(`common.synthetic_pairs`, 250,000 a file, 4 distinct files repeated; the larger input holds the smaller
one's files) and a random reranker. A sampler reads, every 0.5 s, the resident memory of the job's driver
and of each Ray worker (resident, and heap alone), and on a GPU the device memory in use. It prints, per
size, the seconds, the job's pairs/s and the peaks; then, given two sizes, the cost fitted to them (seconds =
fixed + pairs / rate: the rate is what each further pair costs, free of Ray's start and the model load) and
how much each peak grew. Before the timed jobs, a process asks transformers for the model's tokenizer facts, as
the first job with a model folder does once (later jobs read its record): its seconds are printed and kept apart
from the jobs' (L12's 5M job of 2026-12-04 paid them within its own). With `--first-job` each job is a first one
instead (a cache of its own): its driver has the facts asked while Ray starts, within its seconds. With
`--running-ray` the jobs join a Ray started once before them (`ray start --head`), as jobs on a cluster do: their
seconds hold no Ray start (5-8 s on the GPU machine). `--command
rerank` runs `ce-ray rerank` instead: the same, and the rank stage's shuffle (query ids start again in each file,
so a query gathers 100 rows from each: 400 at 1M, 2,000 at 5M).

    python3 bench/scale.py --layers 6                          # GPU machine (see bench/README.md)
    python3 bench/scale.py --layers 12 --sizes 5000000         # one size: L12's rate at 5M pairs
    .venv/bin/python bench/scale.py --hidden 32 --layers 1     # CPU: a tiny model, so that the pipeline,
                                                               # not the model, is what is measured
    .venv/bin/python bench/scale.py --hidden 32 --layers 1 --command rerank -- --top-k 10
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ROWS_PER_FILE = 250_000
# Distinct files made; the inputs repeat them (hard links), since making 5M pairs would take minutes of
# the GPU machine. Scoring costs the same for a repeated file: no stage keeps anything from one file to the next.
POOL_FILES = 4
SAMPLE_S = 0.5


def write_inputs(work: str, sizes: list) -> dict:
    """One folder per size of hard links to the pool's files; a smaller size's files are a larger one's first."""
    pool = os.path.join(work, "pool")
    os.makedirs(pool, exist_ok=True)
    for i in range(min(POOL_FILES, -(-max(sizes) // ROWS_PER_FILE))):
        path = os.path.join(pool, f"pairs-{i:04d}.parquet")
        if not os.path.exists(path):
            table = common.synthetic_pairs(ROWS_PER_FILE, seed=1000 + i)
            pair_id = pa.array(table.column("pair_id").to_numpy() + i * ROWS_PER_FILE)
            pq.write_table(table.set_column(0, "pair_id", pair_id), path)
    folders = {}
    for size in sizes:
        if size % ROWS_PER_FILE:
            sys.exit(f"sizes must be multiples of {ROWS_PER_FILE:,}")
        folder = os.path.join(work, f"in-{size}")
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        for i in range(size // ROWS_PER_FILE):
            name = f"pairs-{i:04d}.parquet"
            os.link(os.path.join(pool, f"pairs-{i % POOL_FILES:04d}.parquet"), os.path.join(folder, name))
        folders[size] = folder
    return folders


def gpu_memory_used() -> int:
    """Bytes in use on the first GPU, all processes together (0 without nvidia-smi)."""
    if not shutil.which("nvidia-smi"):
        return 0
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True, timeout=10).stdout
    return int(out.split()[0]) * 2**20 if out.strip() else 0


def anonymous_memory(pid: int) -> int:
    """A process's own heap (RssAnon): unlike its resident size, without the object store's shared pages and
    the mapped files it has touched, which Ray and the page cache reclaim."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def sample(pid: int, stop: threading.Event, peaks: dict, running_ray: bool = False) -> None:
    """Peaks of the job's memory: its driver's and its Ray workers' (with `running_ray`, every Ray worker of the
    machine, the running Ray's; else the driver's children, its own Ray's)."""
    import ray  # noqa: F401  Ray puts the psutil it carries on the path (the GPU machine has no other)
    import psutil

    driver = psutil.Process(pid)
    while not stop.is_set():
        try:
            workers = []
            for process in psutil.process_iter() if running_ray else driver.children(recursive=True):
                try:
                    if process.name().startswith("ray::") or "default_worker" in " ".join(process.cmdline()):
                        workers.append(({"rss": process.memory_info().rss, "anon": anonymous_memory(process.pid)},
                                        process.name()))
                except (psutil.Error, OSError):
                    pass
            peaks["driver"] = max(peaks["driver"], driver.memory_info().rss)
            for kind in ("rss", "anon"):
                sizes = [memory[kind] for memory, _ in workers]
                if sizes and max(sizes) > peaks[f"worker_{kind}"]:
                    peaks[f"worker_{kind}"] = max(sizes)
                    peaks[f"worker_{kind}_name"] = workers[sizes.index(max(sizes))][1]
                if sum(sizes) > peaks[f"workers_{kind}"]:  # and how many processes that sum is over
                    peaks[f"workers_{kind}"], peaks[f"workers_{kind}_count"] = sum(sizes), len(sizes)
            peaks["gpu"] = max(peaks["gpu"], gpu_memory_used())
        except psutil.Error:
            pass
        stop.wait(SAMPLE_S)


def record_tokenizer_facts(model: str) -> dict:
    """Seconds a job's driver spent asking transformers for the model's tokenizer facts, in a process of its own
    as a job's driver is (~0 where an earlier run recorded them), and of those the import of torch (transformers
    imports it), as Python's -X importtime tells. Only the first job with a model folder pays them
    (`ce_ray.tokenizer_facts`: transformers and torch imported, the answer recorded); the timed jobs come after,
    as a user's later jobs do, so that this one-off cost does not count as part of the cost per job."""
    code = ("import sys, time; from ce_ray.tokenizer_facts import tokenizer_facts; "
            "start = time.perf_counter(); tokenizer_facts(sys.argv[1]); print(time.perf_counter() - start)")
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code, model], cwd=common.ROOT, env=job_env(),
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"asking transformers for {model}'s tokenizer facts failed:\n{done.stderr[-4000:]}")
    # "import time: self [us] | cumulative | name", the name indented by its depth
    torch_us = [int(line.split("|")[1]) for line in done.stderr.splitlines()
                if line.startswith("import time:") and line.split("|")[-1].strip() == "torch"]
    return {"seconds": float(done.stdout.split()[-1]), "import_torch_seconds": max(torch_us, default=0) / 1e6}


# The Ray the jobs join (`--running-ray`: `start_ray`'s address and token); unset, each job starts its own.
RUNNING_RAY: dict = {}
TERMINATED = threading.Event()  # this process got SIGTERM (the suite's `timeout`): it is stopping


def job_env(cache: Optional[str] = None) -> dict:
    """A job's environment: a local Ray of its own (or the running one), and the working tree's ce_ray; with
    `cache`, ce-ray's cache."""
    return {**os.environ, "RAY_ADDRESS": "local", "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **RUNNING_RAY,
            "PYTHONPATH": common.tree_on_path(), **({"CE_RAY_CACHE": cache} if cache else {})}


def start_ray(work: str) -> subprocess.Popen:
    """`ray start --head --block` on this machine, with a token of its own, for the jobs to join (`RUNNING_RAY`),
    once it says it started; `stop_ray` stops it (and no other Ray of the machine, as `ray stop` would). Its files
    in `work`: the address it records there is none that a later `ray.init()` of the machine would join."""
    import secrets

    token = os.path.join(work, "ray-token")
    with open(token, "w") as f:
        f.write(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token}
    with socket.socket() as probe:  # a port free now on the loopback, for Ray's GCS
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = os.path.join(work, "ray-start.log")
    with open(log, "w") as out:
        head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                                 f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                                 "--disable-usage-stats", f"--temp-dir={os.path.join(work, 'ray')}"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while "Ray runtime started" not in open(log).read():
            if head.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"ray start --head did not start:\n{open(log).read()[-4000:]}")
            time.sleep(0.1)
    except BaseException:  # its failure, or a SIGTERM as it starts (`main`): the head, in its own session, stopped
        stop_ray(head)
        raise
    RUNNING_RAY.update(RAY_ADDRESS=f"127.0.0.1:{port}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
    return head


def exit_terminated(signum, frame) -> None:
    TERMINATED.set()
    sys.exit(128 + signum)


def stop_ray(head: subprocess.Popen) -> None:
    """`ray start --block` stops its node (GCS, raylet and their workers) on SIGTERM. Where this process was
    stopped itself, the suite's `timeout -k 10` kills it 10 s later: the head, in a session of its own, would then
    outlive it into the later steps' timings, so it has 5 s to stop before it is killed."""
    if head.poll() is None:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5 if TERMINATED.is_set() else 90)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)


def run_job(model: str, folder: str, out: str, settings: list, timeout: float, command: str = "score",
            cache: Optional[str] = None) -> dict:
    env = job_env(cache)
    peaks = {"driver": 0, "worker_rss": 0, "workers_rss": 0, "worker_anon": 0, "workers_anon": 0, "gpu": 0}
    stop = threading.Event()
    start = time.perf_counter()
    job = subprocess.Popen([sys.executable, "-m", "ce_ray.cli", command, "--model", model, "--input", folder,
                            "--output", out, "--mode", "overwrite", *settings],
                           cwd=common.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = threading.Thread(target=sample, args=(job.pid, stop, peaks, bool(RUNNING_RAY)), daemon=True)
    sampler.start()
    try:
        log, _ = job.communicate(timeout=timeout)
    finally:
        stop.set()
        sampler.join()
        if job.poll() is None:
            job.kill()
    seconds = time.perf_counter() - start
    if job.returncode != 0:
        sys.exit(f"ce-ray {command} failed:\n{log[-4000:]}")
    rate = re.search(r"pairs/s\s+([\d,.]+)", log)
    return {"seconds": seconds, "job_pairs_per_s": float(rate.group(1).replace(",", "")) if rate else None,
            **{f"peak_{k}" + ("" if k.endswith(("_name", "_count")) else "_mib"):
               v if k.endswith(("_name", "_count")) else round(v / 2**20) for k, v in peaks.items()}}


def timed_job(args, model: str, folder: str, work: str, settings: list, size: int) -> dict:
    """One `ce-ray` job on `folder`'s `size` pairs, its figures printed; its output removed after."""
    cache = tempfile.mkdtemp(prefix="ce-ray-cache-", dir=work) if args.first_job else None
    out = os.path.join(work, f"out-{size}")
    point = run_job(model, folder, out, settings, args.timeout, args.command, cache)
    print(f"{size:>11,} pairs  {point['seconds']:8.1f} s  job {common.fmt_rate(point['job_pairs_per_s'])} "
          f"pairs/s  peak MiB: driver {point['peak_driver_mib']:,}; "
          f"largest worker rss {point['peak_worker_rss_mib']:,} "
          f"({point.get('peak_worker_rss_name')}), heap {point['peak_worker_anon_mib']:,} "
          f"({point.get('peak_worker_anon_name')}); all workers rss {point['peak_workers_rss_mib']:,}, heap "
          f"{point['peak_workers_anon_mib']:,} ({point.get('peak_workers_anon_count')} processes); "
          f"GPU {point['peak_gpu_mib']:,}", flush=True)
    for made in (out, cache):
        if made:
            shutil.rmtree(made, ignore_errors=True)
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=None, help="a narrower random model (CPU); default MiniLM's 384")
    parser.add_argument("--work", default=None,
                        help="folder for inputs and outputs, kept for the next run (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one job may take")
    parser.add_argument("--command", choices=["score", "rerank"], default="score",
                        help="rerank: the same inputs, ranked per query (a query gathers 100 rows from each file)")
    parser.add_argument("--first-job", action="store_true",
                        help="each job the first with its model folder (a new cache): the facts within its seconds")
    parser.add_argument("--running-ray", action="store_true",
                        help="the jobs join a Ray started once before them, as on a cluster: no Ray start in them")
    parser.add_argument("--name", default=None, help="results file name (default: scale_l<layers>, ...; the command's "
                        "settings after -- call for one of their own)")
    parser.add_argument("settings", nargs=argparse.REMAINDER, help="after --: more flags of the command")
    args = parser.parse_args()
    settings = [s for s in args.settings if s != "--"]
    device = common.pick_device("auto")
    work = args.work or tempfile.mkdtemp(prefix="ce-ray-scale-")
    model = common.build_model(os.path.join(work, f"model-l{args.layers}"), args.layers, hidden=args.hidden)
    facts = {"seconds": None, "import_torch_seconds": None}
    if not args.first_job:
        facts = record_tokenizer_facts(model)
        print(f"the model's tokenizer facts asked of transformers in {facts['seconds']:.1f} s, torch's import "
              f"{facts['import_torch_seconds']:.1f} s of them (a cost of the first job with the folder alone; ~0 "
              "where an earlier run recorded them)", flush=True)
    print(f"writing inputs ({max(args.sizes):,} pairs) to {work}", flush=True)
    folders = write_inputs(work, sorted(args.sizes))

    name = args.name or (("scale_rerank" if args.command == "rerank" else "scale") + f"_l{args.layers}"
                         + (f"_h{args.hidden}" if args.hidden else "") + ("" if device == "cuda" else "_cpu"))
    head, ray_start, points = None, None, {}

    def save(fit: Optional[dict] = None) -> str:
        """The results as they stand: written after each job too, so that a run cut short keeps its jobs."""
        return common.write_result(name, {**common.header(device), "command": args.command, "layers": args.layers,
                                          "hidden": args.hidden or 384,
                                          "settings": settings, "rows_per_file": ROWS_PER_FILE,
                                          "first_jobs": args.first_job, "running_ray_start_seconds": ray_start,
                                          "first_job_tokenizer_facts_seconds": facts["seconds"],
                                          "first_job_torch_import_seconds": facts["import_torch_seconds"],
                                          "points": {str(k): v for k, v in points.items()}, "fit": fit})

    if args.running_ray:
        # The suite's `timeout` stops this process with SIGTERM, whose default skips `finally`: the head, in a
        # session of its own, ran on into the later steps' timings. As an exit, the head is stopped.
        signal.signal(signal.SIGTERM, exit_terminated)
        start = time.perf_counter()
        head = start_ray(work)
        ray_start = time.perf_counter() - start
        print(f"the jobs join a Ray started in {ray_start:.1f} s (`ray start --head`), as on a cluster", flush=True)
    try:
        for size in sorted(args.sizes):
            points[size] = timed_job(args, model, folders[size], work, settings, size)
            save()
    finally:
        if head is not None:
            stop_ray(head)

    fit = None
    if len(points) > 1:  # one size (L12 at 5M, say) has no cost to fit
        small, large = min(points), max(points)
        rate = (large - small) / (points[large]["seconds"] - points[small]["seconds"])
        fit = {"pairs_per_s_per_further_pair": rate, "fixed_seconds": points[small]["seconds"] - small / rate,
               "job_rate_ratio": (points[large]["job_pairs_per_s"] or 0) / (points[small]["job_pairs_per_s"] or 1),
               "peak_growth_mib": {k: points[large][k] - points[small][k] for k in points[small] if k.endswith("_mib")}}
        print(f"\nseconds = {fit['fixed_seconds']:.1f} + pairs / {rate:,.0f}; job pairs/s at {large:,} / at "
              f"{small:,} = {fit['job_rate_ratio']:.2f}; peak growth MiB {fit['peak_growth_mib']}")
    print(f"wrote {save(fit)}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
