"""Score jobs on multi-node Ray clusters on one machine (`ray.cluster_utils.Cluster`: a head without CPUs and
worker nodes), each in a driver subprocess of its own, apart from the session's in-process Ray: a job that loses
a worker node mid-job still writes every row exactly once, with the right score; a job on CPU nodes scores on
each of them, each replica on its own node's CPUs."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import build_tiny_model, wikiqa_pairs
from test_jobs import free_port, kill_leftovers, reference_scores

ROWS, FILES, GATE_ROW = 1200, 6, 400

# Rows from GATE_ROW on wait in a step after scoring until a worker node has been removed, so the removal
# always lands mid-job: the job cannot end before it, and it ends only after work has been lost with the node.
DRIVER = r'''
import json, os, sys, threading, time
from pathlib import Path

import pyarrow.compute as pc
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from ce_ray.config import ScoreConfig
from ce_ray.score import run_score

model, input_dir, output, signals, temp_dir, gate_row, dashboard_port = sys.argv[1:8]
signals, gate_row = Path(signals), int(gate_row)
removed = signals / "node-removed"


def gate(batch):
    if pc.min(batch["row"]).as_py() >= gate_row:
        (signals / f"waiting-{os.getpid()}").touch()
        while not removed.exists():
            time.sleep(0.1)
    return batch


def remove_a_scoring_node(cluster, workers, report):
    deadline = time.monotonic() + 240
    while not list(signals.glob("waiting-*")):
        if time.monotonic() > deadline:
            report["error"] = "no batch reached the gate"
            removed.touch()
            return
        time.sleep(0.2)
    # A batch may reach the gate while the replicas still start (a loaded machine): wait until one runs.
    scorers = []
    while not scorers and time.monotonic() < deadline:
        # This cluster's state: without an address, the state API may find another Ray on this machine.
        alive = list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")])
        scorers = [a for a in alive if "ScoringReplica" in a.class_name]
        time.sleep(0.2)
    hosts = {a.node_id for a in scorers}
    victim = next((w for w in workers if w.node_id in hosts), workers[-1])
    report.update(removed_node=victim.node_id, scorer_on_removed_node=victim.node_id in hosts,
                  scorers_alive=len(scorers), done_before_removal=(Path(output) / "_SUCCESS").exists(),
                  seconds_to_removal=round(time.monotonic() - start, 1))
    cluster.remove_node(victim, allow_graceful=False)
    removed.touch()


start = time.monotonic()
# A lost node is declared dead after ~3 s instead of ~15 s, so that recovery starts soon.
health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 6}
# The dashboard (the state API) on a port of its own: another Ray on this machine may hold the default one.
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": temp_dir, "_system_config": health,
                                                        "dashboard_port": int(dashboard_port)})
try:
    # 3 CPUs a node: the survivor holds both scoring replicas (1 CPU each) and still has one for writing.
    workers = [cluster.add_node(num_cpus=3, temp_dir=temp_dir) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    report = {"seconds_to_start": round(time.monotonic() - start, 1)}
    watcher = threading.Thread(target=remove_a_scoring_node, args=(cluster, workers, report), daemon=True)
    watcher.start()
    config = ScoreConfig(model=model, input=input_dir, output=output, rows_per_block=100, replicas=2,
                         min_replicas=2, tokenize_cpus=0.5)
    summary = run_score(config, transform=lambda ds: ds.map_batches(gate, batch_format="pyarrow", num_cpus=0.5))
    watcher.join(timeout=60)
    seconds = round(time.monotonic() - start, 1)
    # A job that ends within seconds of the removal may end before Ray declares the node dead (~3 s): wait for it.
    deadline = time.monotonic() + 30
    while sum(n["Alive"] for n in ray.nodes()) > 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    report.update(rows_scored=summary.rows_scored, rows_rejected=summary.rows_rejected,
                  nodes_alive=sum(n["Alive"] for n in ray.nodes()), seconds=seconds)
    print("REPORT " + json.dumps(report), flush=True)
finally:
    ray.shutdown()
    cluster.shutdown()
'''


@pytest.fixture
def scratch():
    # Short and of its own: Ray's socket paths must stay under 108 characters, and leftovers are found by it.
    path = tempfile.mkdtemp(prefix="ce-ray-mn-", dir="/tmp")
    yield Path(path)
    kill_leftovers(path)
    shutil.rmtree(path, ignore_errors=True)


def run_driver(script: str, tmp_path: Path, scratch: Path, args: list, timeout: float = 480) -> tuple:
    """Runs a driver script in a process group of its own, with token authentication for its cluster and none of
    this process's Ray settings; (its exit status, its output). A driver still running at `timeout` is killed."""
    (scratch / "auth_token").write_text(secrets.token_hex(32))
    (tmp_path / "driver.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(scratch / "auth_token"),
               RAY_DATA_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    with open(scratch / "driver.log", "w") as out:
        driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), *args],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            driver.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(timeout=30)
    return driver.returncode, (scratch / "driver.log").read_text(errors="replace")


def test_score_job_survives_losing_a_worker_node(tmp_path, scratch):
    model = build_tiny_model(tmp_path / "model", seed=5)
    pairs = wikiqa_pairs("train", ROWS)[["query", "document"]].reset_index(drop=True)
    pairs.insert(0, "row", np.arange(ROWS, dtype=np.int64))
    (tmp_path / "in").mkdir()
    for i, part in enumerate(np.array_split(np.arange(ROWS), FILES)):
        pq.write_table(pa.Table.from_pandas(pairs.iloc[part], preserve_index=False),
                       tmp_path / "in" / f"pairs-{i}.parquet")
    (tmp_path / "signals").mkdir()
    returncode, log = run_driver(DRIVER, tmp_path, scratch, [
        str(model), str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "signals"), str(scratch / "ray"),
        str(GATE_ROW), str(free_port())])

    assert returncode == 0, log[-6000:]
    report = json.loads(next(line for line in log.splitlines() if line.startswith("REPORT "))[len("REPORT "):])
    print(report)
    assert "error" not in report, report
    assert report["scorer_on_removed_node"] and not report["done_before_removal"], report
    assert report["nodes_alive"] == 2, report  # the head and the surviving worker
    assert report["rows_scored"] == ROWS and report["rows_rejected"] == 0, report

    out = pq.read_table(tmp_path / "out" / "results").to_pandas().sort_values("row").reset_index(drop=True)
    assert len(out) == ROWS and out["row"].tolist() == list(range(ROWS))  # every row, exactly once
    assert (out[["query", "document"]] == pairs[["query", "document"]]).all().all()
    assert np.abs(out["score"].to_numpy() - reference_scores(model, pairs)).max() <= 1e-5


# Two CPU nodes of 2 and 1 CPUs on this machine, as two pods of a CPU cluster: each sees all the machine's cores.
CPU_NODES_DRIVER = r'''
import sys

import ray
from ray.cluster_utils import Cluster

from ce_ray.config import ScoreConfig
from ce_ray.score import run_score, score

model, input_dir, output, temp_dir = sys.argv[1:5]
# No dashboard: another Ray on this machine may hold its port, and this job needs none.
head = {"num_cpus": 0, "temp_dir": temp_dir, "include_dashboard": False}
cluster = Cluster(initialize_head=True, head_node_args=head)
try:
    for cpus in (2, 1):
        cluster.add_node(num_cpus=cpus, temp_dir=temp_dir)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    # A task runs on one node: 2.5 CPUs a tokenize task are more than any node has, though not the cluster.
    score(ray.data.from_items([{"query": "q", "document": "d"}]), model=model, tokenize_cpus=2.5)  # not run
    run_score(ScoreConfig(model=model, input=input_dir, output=output, rows_per_block=50))
finally:
    ray.shutdown()
    cluster.shutdown()
'''


def test_a_cpu_cluster_scores_on_every_node_each_replica_on_its_nodes_cores(tmp_path, scratch, tiny_model):
    """On CPUs a replica per node by default: with one replica, one node scored and the others only read. Each
    replica runs on its own node's CPUs: a Ray node's CPU resource (as a pod's CPU limit) bounds its threads, where
    all the machine's cores under it (os.sched_getaffinity) oversubscribed them."""
    (tmp_path / "in").mkdir()
    pairs = wikiqa_pairs("test", 400)[["query", "document"]]
    for i, part in enumerate(np.array_split(np.arange(len(pairs)), 4)):
        pairs.iloc[part].to_parquet(tmp_path / "in" / f"pairs-{i}.parquet")
    returncode, log = run_driver(CPU_NODES_DRIVER, tmp_path, scratch, [
        str(tiny_model), str(tmp_path / "in"), str(tmp_path / "out"), str(scratch / "ray")], timeout=300)
    assert returncode == 0 and "rows scored   400" in log, log[-6000:]
    assert "on CPU, up to 2 replica(s) on 2 node(s), each on its node's cores" in log, log[-6000:]
    assert ("note: the job needs 2.5 CPUs a tokenize task (tokenize_cpus (--tokenize-cpus); the cluster's largest "
            "node has 2): it waits until the cluster has them") in log, log[-6000:]
    ready = [line for path in scratch.glob("ray/session_latest/logs/worker-*.err")
             for line in path.read_text(errors="replace").splitlines() if "ce-ray replica:" in line]
    threads = sorted(line.split(" on cpu (")[1].split(")")[0] for line in ready)
    assert threads == ["1 thread", "2 threads"], ready
