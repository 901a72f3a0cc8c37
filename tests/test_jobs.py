"""Ray Jobs end to end: a real local cluster (`ray start --head`, token authentication on), jobs submitted
with `ce-ray submit`, followed to their end. Only the processes this module starts are stopped: `ray stop`
would stop every Ray on the machine."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, build_tiny_model, wikiqa_pairs

BIN = Path(sys.executable).parent
JOB_TIMEOUT = 420  # seconds a submitted job may take on a busy 2-core machine


def free_port() -> int:
    """A port nothing listens on, below Linux's ephemeral range (32768-60999): a port of that range, free when
    checked, can be taken before `ray start` binds it by a connection that Ray's own processes open."""
    import random

    while True:
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def reference_scores(model: Path, df: pd.DataFrame) -> np.ndarray:
    """Scores of the pairs from the model loaded in this process, in one padded batch."""
    import torch

    from ce_ray.model import load_reranker

    reranker = load_reranker(str(model), device="cpu")
    enc = reranker.tokenizer(list(df["query"]), list(df["document"]), truncation="longest_first",
                             max_length=reranker.max_length, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return reranker.scores(reranker.model(**enc).logits).numpy()


def kill_leftovers(marker: str) -> None:
    """Kills processes whose command line names this cluster's own temp dir (all started by it)."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


@dataclass
class LocalCluster:
    address: str  # dashboard URL, for `ce-ray submit --address`
    env: dict  # the environment a client needs: token authentication on, the venv's python first on PATH

    def submit(self, job: str, config: Path, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ce-ray"), "submit", job, "--config", str(config), "--address", self.address, *flags],
            env=env or self.env, capture_output=True, text=True, timeout=JOB_TIMEOUT, cwd=ROOT,
        )


def node_logs(temp_dir: str) -> str:
    """The tail of `ray start`'s output and of the node's dashboard and raylet logs, for failure messages."""
    paths = [Path(temp_dir) / "ray-start.log"]
    for name in ("dashboard.log", "dashboard.err", "raylet.err", "gcs_server.err"):
        paths += sorted(Path(temp_dir).glob(f"ray/session_*/logs/{name}"))
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in paths if p.exists())


def stop(proc: subprocess.Popen, temp_dir: str) -> None:
    if proc.poll() is not None:  # the node went down on its own: say why in the test's output
        print(node_logs(temp_dir))
    # `ray start --block` stops its node (raylet, GCS, dashboard and their workers) on SIGTERM.
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    kill_leftovers(temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    # A short temp dir of its own: Ray's unix socket paths must stay under 108 characters.
    temp_dir = tempfile.mkdtemp(prefix="ce-ray-jobs-", dir="/tmp")
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(token), RAY_DATA_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    dashboard = free_port()
    command = [
        str(BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}", f"--dashboard-port={dashboard}",
        "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}/ray",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        "--include-dashboard=true", "--disable-usage-stats",
    ]
    log = open(Path(temp_dir) / "ray-start.log", "w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        request = urllib.request.Request(f"{address}/api/version",
                                         headers={"Authorization": f"Bearer {token.read_text()}"})
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode}:\n{node_logs(temp_dir)}")
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the local Ray cluster's dashboard did not come up in 240 s:\n{node_logs(temp_dir)}")
            time.sleep(1)
        yield LocalCluster(address, env)
    finally:
        stop(proc, temp_dir)
        log.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("jobs-model"), seed=3)


def write_config(path: Path, **settings) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(settings))
    return path


def test_score_job_on_a_local_cluster(cluster, model, tmp_path):
    pairs = wikiqa_pairs("test", 40)[["query_id", "doc_id", "query", "document", "label"]]
    pairs.to_parquet(tmp_path / "pairs.parquet", index=False)
    config = write_config(tmp_path / "score.yaml", model=str(model), input=str(tmp_path / "pairs.parquet"),
                          output=str(tmp_path / "out"), rows_per_block=16)

    run = cluster.submit("score", config)

    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCEEDED" in run.stdout
    assert "rows scored   40" in run.stdout  # the job's own summary, followed from its logs
    assert (tmp_path / "out" / "_SUCCESS").exists()
    out = pq.read_table(tmp_path / "out" / "results").to_pandas()
    assert len(out) == 40 and not out.duplicated(["query_id", "doc_id"]).any()
    merged = pairs.merge(out[["query_id", "doc_id", "score"]], on=["query_id", "doc_id"], validate="1:1")
    assert np.abs(merged["score"].to_numpy() - reference_scores(model, merged)).max() <= 1e-5

    # The command's own flags after the config override it, as locally (the job's errors name them): checked
    # here (a wrong one is submitted nowhere) and passed to the entrypoint. They were refused by submit.
    bad = cluster.submit("score", config, "--mode", "resum")
    assert bad.returncode == 2 and "invalid choice: 'resum'" in bad.stderr and "submitted" not in bad.stdout
    again = cluster.submit("score", config, "--mode", "overwrite", "--score-column", "score_2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "--config score.yaml --mode overwrite --score-column score_2" in again.stdout
    assert "score_2" in pq.read_schema(next((tmp_path / "out" / "results").glob("*.parquet"))).names

    # The job's progress lines reach its log: its replicas find the job's counter on the cluster by its name.
    rows = 3_000
    pq.write_table(pa.table({"query": [f"query {i % 31}" for i in range(rows)],
                             "document": [f"document {i}" for i in range(rows)]}), tmp_path / "more.parquet")
    more = write_config(tmp_path / "more.yaml", model=str(model), input=str(tmp_path / "more.parquet"),
                        output=str(tmp_path / "more"), rows_per_block=16)
    run = cluster.submit("score", more, "--env", "CE_RAY_PROGRESS_SECONDS",
                         env=dict(cluster.env, CE_RAY_PROGRESS_SECONDS="0.2"))
    assert run.returncode == 0, run.stdout + run.stderr
    done = [int(n.replace(",", "")) for n in re.findall(r"^ce-ray score: ([\d,]+) of 3,000 pairs scored ",
                                                        run.stdout, re.MULTILINE)]
    assert done and max(done) > 0, run.stdout[-3000:]


def test_a_cluster_that_stops_answering_is_asked_again_then_said(cluster):
    """A port-forward that drops while a job is followed: the job's status is asked again for a while, then
    the command says how to follow the job (it printed requests' traceback and exited 1, as if the job failed).
    In a process of the cluster's environment (Ray reads the token's mode once per process)."""
    script = f"""
import time
from ray.job_submission import JobSubmissionClient
from ce_ray import submit
client = JobSubmissionClient({cluster.address!r})
client._address = "http://127.0.0.1:{free_port()}"  # the forwarded port, gone
submit.UNANSWERED_SECONDS = 3.0
started = time.monotonic()
try:
    submit._status(client, "a-job")
except submit.LostContact:
    print("lost after", round(time.monotonic() - started))
"""
    run = subprocess.run([sys.executable, "-c", script], env=cluster.env, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert int(run.stdout.split("lost after ")[1]) >= 3


def test_a_proxy_answering_http_errors_is_asked_again_then_said(cluster):
    """An ingress that answers 502 while the head restarts: Ray's client raises a RuntimeError for it, which the
    follow did not catch, and submit said `error: Request failed with status code 502` and exit 2, nothing
    submitted, of a job that was. Its status is asked again, as where the cluster does not answer, then said."""
    script = f"""
import http.server, threading, time
from ray.job_submission import JobSubmissionClient
from ce_ray import submit

class BadGateway(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_error(502)
    def log_message(self, *args):
        pass

proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BadGateway)
threading.Thread(target=proxy.serve_forever, daemon=True).start()
client = JobSubmissionClient({cluster.address!r})
client._address = f"http://127.0.0.1:{{proxy.server_address[1]}}"
submit.UNANSWERED_SECONDS = 3.0
started = time.monotonic()
try:
    submit._status(client, "a-job")
except submit.LostContact as e:
    print("lost after", round(time.monotonic() - started), e)
"""
    run = subprocess.run([sys.executable, "-c", script], env=cluster.env, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert int(run.stdout.split("lost after ")[1].split()[0]) >= 3 and "502" in run.stdout


# A TCP proxy in front of the dashboard, as a port-forward or an ingress is: "drop" cuts the first log stream (a
# websocket) 2.5 s after it opened, "refuse" answers each websocket's handshake with a 502; other requests pass.
LOG_STREAM_PROXY = """
import socket, threading

def pipe(source, target):
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    for end in (source, target):
        try:
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

def serve(listener, upstream, mode):
    cut = False
    while True:
        conn, _ = listener.accept()
        head = conn.recv(65536)
        if b"upgrade: websocket" in head.lower():
            if mode == "refuse":
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n")
                conn.close()
                continue
            if not cut:
                cut = True
                threading.Timer(2.5, conn.shutdown, (socket.SHUT_RDWR,)).start()
        up = socket.create_connection(upstream)
        up.sendall(head)
        for ends in ((conn, up), (up, conn)):
            threading.Thread(target=pipe, args=ends, daemon=True).start()

def proxy(upstream, mode):
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve, args=(listener, upstream, mode), daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}"
"""


@pytest.mark.parametrize("mode", ["drop", "refuse"])
def test_a_broken_log_stream_is_opened_again_and_a_refused_one_leaves_the_status(cluster, mode):
    """A log stream that broke once (a port-forward restarting, a proxy's idle timeout: a websocket closed 1006)
    ended the logs for the rest of the job: no progress, no summary, its last line unseen. It is opened again, and
    what was printed is not printed twice (a stream gives the logs from their start). A proxy that refuses the
    websocket's handshake (a 502, aiohttp's WSServerHandshakeError) failed submit with a traceback and exit 1, as if
    the job had failed, while it ran on: the job's status is followed then, to its end."""
    from ce_ray.submit import STREAM_TRIES

    port = int(cluster.address.rsplit(":", 1)[1])
    script = LOG_STREAM_PROXY + f"""
from ray.job_submission import JobSubmissionClient
from ce_ray import submit
client = JobSubmissionClient({cluster.address!r})
job = client.submit_job(entrypoint="python -c 'import time\\nfor i in range(6): print(\\"line\\", i, flush=True); "
                                   "time.sleep(1)\\nprint(\\"ce-ray score: done\\")'")
client._address = proxy(("127.0.0.1", {port}), {mode!r})
print("last line:", repr(submit._follow(client, job, "score")), client.get_job_status(job))
"""
    run = subprocess.run([sys.executable, "-c", script], env=cluster.env, capture_output=True, text=True,
                         timeout=180, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    if mode == "drop":
        assert re.findall(r"^line \d", run.stdout, re.MULTILINE) == [f"line {i}" for i in range(6)], run.stdout
        assert "; opening it again" in run.stderr and "waiting for the job" not in run.stderr, run.stderr
        assert run.stdout.endswith("last line: 'ce-ray score: done' SUCCEEDED\n"), run.stdout
    else:
        assert run.stderr.count("ce-ray submit: lost the log stream (") == STREAM_TRIES, run.stderr
        assert run.stderr.rstrip().endswith("; waiting for the job to end"), run.stderr
        assert run.stdout.endswith("last line: None SUCCEEDED\n"), run.stdout


def test_a_job_that_waited_to_start_and_ended_without_its_commands_line_is_followed_to_its_end(cluster):
    """A job pending past the time its wait is said (its cluster's CPUs held by another job), then failing before
    its command said a line (a runtime environment that failed to install, a driver killed): the follow returned
    its flag of the wait said (True) as the command's last line, and submit failed on it (`'bool' object has no
    attribute 'startswith'`), its job's FAILED and message unsaid."""
    script = f"""
from ray.job_submission import JobStatus, JobSubmissionClient
from ce_ray import submit
client = JobSubmissionClient({cluster.address!r})
blocker = client.submit_job(entrypoint="python -c 'import time; time.sleep(8)'", entrypoint_num_cpus=2)
job = client.submit_job(entrypoint="python -c 'import sys; sys.exit(3)'", entrypoint_num_cpus=1)
submit.PENDING_SAID_AFTER = 0.0
print("last line:", repr(submit._follow(client, job, "score")), client.get_job_status(job))
"""
    run = subprocess.run([sys.executable, "-c", script], env=cluster.env, capture_output=True, text=True,
                         timeout=180, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "is pending: " in run.stdout and "last line: None FAILED" in run.stdout, run.stdout[-3000:]


def test_failing_job_reports_its_status_and_message(cluster, model, tmp_path):
    pq.write_table(pa.table({"query": ["what is ray?"] * 3, "passage": ["a", "b", "c"]}), tmp_path / "bad.parquet")
    config = write_config(tmp_path / "bad.yaml", model=str(model), input=str(tmp_path / "bad.parquet"),
                          output=str(tmp_path / "out"))

    run = cluster.submit("score", config)

    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAILED" in run.stderr
    assert "missing column(s) 'document'" in run.stdout + run.stderr
    assert "--mode resume" not in run.stderr  # refused before any work: nothing to finish
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_job_that_fails_mid_way_says_why_and_how_to_finish_it(cluster, model, tmp_path):
    """A job that fails during its work: its log ends with the command's line of what failed and how to finish
    the job, and submit's own line says the same way to finish it (it said FAILED and the exit code alone)."""
    from conftest import undecodable_parquet

    (tmp_path / "in").mkdir()
    frame = pd.DataFrame({"query": [f"query {i % 3}" for i in range(40)],
                          "document": [f"doc {i % 7}" for i in range(40)]})
    undecodable_parquet(tmp_path / "in" / "pairs.parquet", frame)
    config = write_config(tmp_path / "score.yaml", model=str(model), input=str(tmp_path / "in"),
                          output=str(tmp_path / "out"))

    run = cluster.submit("score", config)

    assert run.returncode == 1, run.stdout + run.stderr
    finish = "--mode resume finishes it (the input files completed are kept, and the rows written of parquet files)"
    logged = [line for line in run.stdout.splitlines() if line.startswith("ce-ray score: ")]
    assert logged[-1] == (f"ce-ray score: failed: ArrowInvalid: Index not in dictionary bounds (reading "
                          f"{tmp_path}/in/pairs.parquet); {finish}")
    assert run.stdout.rstrip().endswith(logged[-1])  # the job's log ends with it
    said = run.stderr.strip().splitlines()[-1]
    assert said.startswith("ce-ray submit: job ") and said.endswith(f" FAILED: Job entrypoint command failed with "
                                                                      f"exit code 1; {finish}"), run.stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_job_that_ce_rays_own_error_stops_says_how_to_finish_it(cluster, model, tmp_path):
    """A row that --on-invalid fail stops at, in a task: the job's command ended `error:`, exit 2, as for an error
    found before any work, and submit's FAILED line said no way to finish it. Both say it now."""
    pq.write_table(pa.table({"query": ["what is ray?", None], "document": ["a", "b"]}), tmp_path / "pairs.parquet")
    config = write_config(tmp_path / "score.yaml", model=str(model), input=str(tmp_path / "pairs.parquet"),
                          output=str(tmp_path / "out"), on_invalid="fail")

    run = cluster.submit("score", config)

    assert run.returncode == 1, run.stdout + run.stderr
    finish = ("mend those rows, or pass --on-invalid reject to set them aside in rejects/; then --mode resume "
              "finishes it (the input files completed are kept, and the rows written of parquet files)")
    # The job's own lines: a worker's (prefixed `(MapWorker(...) pid=N)`) may reach the log after the driver's last
    own = [line for line in run.stdout.splitlines() if not re.match(r"^(\x1b\[\d+m)?\(\S.* pid=\d+\)", line)]
    assert "\n".join(own).rstrip().endswith(
        "ce-ray score: failed: InputError: 1 row(s) cannot be scored, e.g. query is null, in row 2 of "
        f"{tmp_path}/pairs.parquet (on_invalid fail (--on-invalid fail)); {finish}"), \
        run.stdout[-3000:]
    assert run.stderr.strip().splitlines()[-1].endswith(" FAILED: Job entrypoint command failed with exit code 1; "
                                                        f"{finish}"), run.stderr


def test_submission_needs_the_token(cluster, model, tmp_path):
    """No token, or one not the cluster's: one line, what the cluster answered and what to do here (it printed
    Ray's paragraph of generic advice between them, and told a user whose token was wrong to put one)."""
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "pairs.parquet")
    config = write_config(tmp_path / "score.yaml", model=str(model), input=str(tmp_path / "pairs.parquet"),
                          output=str(tmp_path / "out"))
    expected = {
        "disabled": "Authentication required: Unauthorized: Missing authentication token; the cluster uses token "
                    "authentication: set RAY_AUTH_MODE=token here, with the cluster's token in RAY_AUTH_TOKEN, "
                    "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token",
        "wrong": "Authentication failed: Forbidden: Invalid authentication token; the token found here is not the "
                 "cluster's: RAY_AUTH_TOKEN is read first, then the file RAY_AUTH_TOKEN_PATH names, then "
                 "~/.ray/auth_token",
    }
    envs = {"disabled": dict(cluster.env, RAY_AUTH_MODE="disabled"), "wrong": dict(cluster.env, RAY_AUTH_TOKEN="0f")}
    for case, env in envs.items():
        run = cluster.submit("score", config, env=env)

        assert run.returncode == 2, case
        said = [line for line in run.stderr.splitlines() if "INFO" not in line]
        assert said == [f"ce-ray submit: error: {expected[case]}"], run.stderr
    assert not (tmp_path / "out").exists()


def test_a_submission_id_taken_is_said(cluster, model, tmp_path):
    """An id already given to a job: the job server refuses the request with its tracebacks, whose last line is a
    period: submit said `error: .`. It says the reason now, in one line."""
    config = write_config(tmp_path / "score.yaml", model=str(model), input=str(tmp_path / "missing.parquet"),
                          output=str(tmp_path / "out"))
    first = cluster.submit("score", config, "--submission-id", "ce-ray-id-taken", "--no-wait",
                           "--entrypoint-num-cpus", "0.5")
    assert first.returncode == 0, first.stdout + first.stderr
    # The CPUs asked for the job's driver are those the cluster reserved for it: its supervisor actor's.
    asked = subprocess.run(
        [sys.executable, "-c", "import sys; from ray.util.state import list_actors; "
         "print([a.required_resources for a in list_actors(sys.argv[1], detail=True, filters=[('name', '=', "
         "'_ray_internal_job_actor_ce-ray-id-taken')])])", cluster.address],
        env=cluster.env, capture_output=True, text=True, timeout=120)
    assert asked.stdout.strip() == "[{'CPU': 0.5}]", asked.stdout + asked.stderr

    again = cluster.submit("score", config, "--submission-id", "ce-ray-id-taken", "--no-wait")

    assert again.returncode == 2 and "submitted" not in again.stdout
    said = [line for line in again.stderr.splitlines() if line.startswith("ce-ray submit: ")]
    assert said == ["ce-ray submit: error: Job with submission_id ce-ray-id-taken already exists. Please use a "
                    "different submission_id."], again.stderr


def test_a_bad_config_fails_before_submission(tmp_path, capsys):
    from ce_ray.cli import main

    config = write_config(tmp_path / "score.yaml", model="m", input="in", output="out", rows_per_blok=16)
    # Nothing listens on port 9: the config is refused before any connection is tried.
    assert main(["submit", "score", "--config", str(config), "--address", "http://127.0.0.1:9"]) == 2
    assert "unknown setting 'rows_per_blok' (did you mean 'rows_per_block'?)" in capsys.readouterr().err


def test_a_failed_pip_install_is_said_by_pips_own_error():
    """A `--pip` requirement that cannot be installed fails the job with Ray's `runtime_env setup failed: Failed to
    set up runtime environment.` and pip's output below it: the first line alone, which submit printed, said not
    why. Pip's last `ERROR:` line is kept; another failed job's message keeps its first line."""
    from ce_ray.submit import job_message

    ray_said = ("runtime_env setup failed: Failed to set up runtime environment.\nTraceback (most recent call last):\n"
                "  ...\nRuntimeError: Failed to install pip requirements:\nCollecting nonexistent-package-xyz==0.0.1\n"
                "ERROR: Could not find a version that satisfies the requirement nonexistent-package-xyz==0.0.1\n"
                "ERROR: No matching distribution found for nonexistent-package-xyz==0.0.1\n")
    assert job_message(ray_said) == ("runtime_env setup failed: Failed to set up runtime environment: ERROR: No "
                                     "matching distribution found for nonexistent-package-xyz==0.0.1")
    assert job_message("Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 "
                       "chars):\nERROR: x") == "Job entrypoint command failed with exit code 1"


def test_relative_paths_are_said_before_submission(tmp_path, capsys):
    """On the cluster a relative path is read in the job's working directory, which Ray deletes after the job:
    a relative output would be lost. A hub id is no path."""
    from ce_ray.config import ConfigError
    from ce_ray.submit import check_config

    config = write_config(tmp_path / "score.yaml", model="cross-encoder/ms-marco-MiniLM-L6-v2",
                          input="s3://bucket/pairs", output="out/scored")
    check_config("score", str(config))
    err = capsys.readouterr().err
    assert "relative path(s)" in err and f"output: out/scored (in {config})" in err
    assert "model" not in err and "input" not in err
    # A relative path given by a flag after the config is said to come from it, not from the file.
    check_config("score", str(config), ["--input", "pairs.parquet"])
    err = capsys.readouterr().err
    assert "input: pairs.parquet (from --input)" in err and f"output: out/scored (in {config})" in err
    # A config without a setting the job needs failed on the cluster alone.
    with pytest.raises(ConfigError, match=r"^missing required setting\(s\): model \(--model\)$"):
        check_config("score", str(write_config(tmp_path / "nomodel.yaml", input="/x", output="/y")))


def test_the_address_given_wins_over_ray_address(tmp_path, capsys, monkeypatch):
    """Ray's job client takes RAY_ADDRESS over the address it is given: `--address` was ignored where
    RAY_ADDRESS was set (an earlier cluster's), and the job went there. Nothing listens on either port."""
    from ce_ray.cli import main

    given, other = free_port(), free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{other}")
    config = write_config(tmp_path / "score.yaml", model="m", input="s3://b/in", output="s3://b/out")
    assert main(["submit", "score", "--config", str(config), "--address", f"http://127.0.0.1:{given}"]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{given}" in err and f"127.0.0.1:{other}" not in err
    assert os.environ["RAY_ADDRESS"] == f"http://127.0.0.1:{other}"  # the environment as it was


def test_the_ray_job_lines_said_reach_the_cluster_the_job_went_to(monkeypatch):
    """The lines that say how to follow or stop the job (`--no-wait`, Ctrl-C, a lost connection) gave `--address`,
    which Ray's CLI takes RAY_API_SERVER_ADDRESS and RAY_ADDRESS over: with RAY_ADDRESS set here to another
    cluster, as it was when `--address` was given, `ray job logs` asked that one."""
    from ce_ray.submit import ray_job_command

    where = "http://127.0.0.1:8265"
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert ray_job_command("stop", "raysubmit_1", where) == f"ray job stop raysubmit_1 --address {where}"
    monkeypatch.setenv("RAY_ADDRESS", where)  # the same cluster: nothing to override
    assert ray_job_command("stop", "raysubmit_1", where) == f"ray job stop raysubmit_1 --address {where}"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    assert ray_job_command("logs --follow", "raysubmit_1", where) == (
        f"RAY_API_SERVER_ADDRESS={where} ray job logs --follow raysubmit_1 --address {where}")


def test_no_token_found_here_is_said_in_ce_rays_line_alone(tmp_path, capsys, monkeypatch):
    """With RAY_AUTH_MODE=token and no token here, Ray's error is one line of ~900 characters (its advice appended to
    its message), which ce-ray's own advice then repeated."""
    from ray.exceptions import AuthenticationError

    from ce_ray import submit
    from ce_ray.cli import main

    def no_token(*args):
        raise AuthenticationError("Token authentication is enabled but no authentication token was found")

    monkeypatch.setattr(submit, "submit", no_token)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    config = write_config(tmp_path / "score.yaml", model="m", input="s3://b/in", output="s3://b/out")
    assert main(["submit", "score", "--config", str(config), "--address", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "ce-ray submit: error: Token authentication is enabled but no authentication token was found; RAY_AUTH_MODE="
        "token is set here: put the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (a "
        "cluster without token authentication needs none: unset RAY_AUTH_MODE)")


def test_a_setting_of_another_command_is_named_so(tmp_path, capsys):
    """rerank's --top-k given to score, eval's --qrels to rerank, in a flag or a YAML key: the error names the
    command that takes it, with the usage of the command given (ce-ray's own usage hid which one it was)."""
    from ce_ray.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["score", "--model", "m", "--input", "in", "--output", "out", "--top-k", "5"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "usage: ce-ray score" in err
    assert "--top-k is a setting of ce-ray candidates and ce-ray rerank, not of ce-ray score" in err
    config = write_config(tmp_path / "score.yaml", model="m", input="in", output="out", top_k=5)
    assert main(["score", "--config", str(config)]) == 2
    assert "unknown setting 'top_k' (a setting of ce-ray candidates and ce-ray rerank)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # refused before any connection: nothing listens on port 9
        main(["submit", "rerank", "--config", str(config), "--address", "http://127.0.0.1:9", "--qrels", "q"])
    assert "--qrels is a setting of ce-ray eval, not of ce-ray rerank" in capsys.readouterr().err


def test_a_missing_column_is_named_with_the_setting_that_names_it(tmp_path, tiny_model, capsys):
    """WikiQA's columns (QuestionID, Question, Sentence, Label) given to each job that reads pairs: the error
    names the flag that picks the column the job looked for, as the Python API's does, where it listed the
    file's columns alone; before any work, exit 2."""
    from ce_ray.cli import main

    pq.write_table(pa.table({"QuestionID": ["Q1"], "Question": ["q"], "Sentence": ["d"], "Label": [1]}),
                   tmp_path / "wikiqa.parquet")
    common = ["--model", str(tiny_model), "--input", str(tmp_path / "wikiqa.parquet")]
    texts = ["--query-column", "Question", "--document-column", "Sentence"]
    expected = {
        ("score", "--output", str(tmp_path / "s")): "missing column(s) 'query', 'document' (columns: QuestionID, "
        "Question, Sentence, Label); name the columns with query_column (--query-column) and document_column "
        "(--document-column)",
        ("rerank", *texts, "--output", str(tmp_path / "r")): "missing column(s) 'query_id' (columns: QuestionID, "
        "Question, Sentence, Label); name the column with query_id_column (--query-id-column)",
    }
    for args, message in expected.items():
        assert main([args[0], *common, *args[1:]]) == 2
        assert capsys.readouterr().err.strip().endswith(message)
    train = ["train", "--model", str(tiny_model), "--train-data", str(tmp_path / "wikiqa.parquet"), *texts,
             "--output", str(tmp_path / "t")]
    assert main(train) == 2
    assert capsys.readouterr().err.strip().endswith(  # and the file's `Label`, as the file names it
        "name the column with label_column (--label-column); the file has 'Label' for 'label', which differ in case, "
        "blanks or Unicode form: name it as the file does")


def test_a_flag_written_as_its_yaml_key_is_named_with_its_dashes(capsys):
    """--query_column, as the YAML key is written, given to score: the error gives the flag's spelling, where it
    said that --query_column was a setting of rerank and train, not of score, which has it as --query-column."""
    from ce_ray.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["score", "--model", "m", "--input", "in", "--output", "out", "--query_column", "q", "--top-k", "5"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "did you mean --query-column?" in err
    assert "not of ce-ray score" in err and "--query_column is a setting" not in err
    assert "--top-k is a setting of ce-ray candidates and ce-ray rerank, not of ce-ray score" in err


def test_a_flag_is_never_taken_for_a_longer_one_it_begins(capsys, tmp_path):
    """argparse takes a prefix of a flag for it: `ce-ray train --mode resume` (the other commands' flag, as the
    README gives submit's overrides) set `--model resume`, and the error blamed the model its YAML named; `--k 10`
    (eval's) set `--keep-checkpoints 10` without a word; `submit train ... --mode resume` sent it so."""
    from ce_ray.cli import main
    from ce_ray.submit import check_config

    (tmp_path / "train.yaml").write_text("model: m\ntrain_data: t\noutput: o\n")
    for flags, said in ((["--mode", "resume"], "--mode is a setting of ce-ray score and ce-ray candidates and ce-ray "
                                               "rerank, not of ce-ray train"),
                        (["--k", "10"], "--k is a setting of ce-ray eval, not of ce-ray train"),
                        (["--input", "x"], "--input is a setting of")):
        with pytest.raises(SystemExit) as stop:
            main(["train", "--config", str(tmp_path / "train.yaml"), *flags])
        assert stop.value.code == 2
        assert f"unrecognized arguments: {' '.join(flags)} ({said}" in capsys.readouterr().err
        with pytest.raises(SystemExit) as stop:
            check_config("train", str(tmp_path / "train.yaml"), flags)
        assert stop.value.code == 2 and f"unrecognized arguments: {' '.join(flags)}" in capsys.readouterr().err


def test_cross_encoder_trainers_names_of_training_arguments_are_given_ce_rays(tmp_path, capsys):
    """eval_steps, save_steps, learning_rate, as a CrossEncoderTrainer user writes them: the error names the
    setting that does their job, where eval_steps and save_steps were said to be max_steps (the closest
    spelling: a run cut short for whoever followed it), in a YAML key, a flag and a keyword of ce_ray.train."""
    import ce_ray
    from ce_ray.cli import main
    from ce_ray.config import ConfigError

    config = write_config(tmp_path / "train.yaml", model="m", train_data="t", output="o", eval_steps=50)
    assert main(["train", "--config", str(config)]) == 2
    assert "unknown setting 'eval_steps' (CrossEncoderTrainer's name: ce-ray's is 'eval_every')" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["train", "--config", str(config), "--save-steps", "10", "--learning-rate", "1e-4"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--save-steps is CrossEncoderTrainer's name: ce-ray's is --save-every" in err
    assert "--learning-rate is CrossEncoderTrainer's name: ce-ray's is --lr" in err
    with pytest.raises(ConfigError, match="'warmup_steps' \\(CrossEncoderTrainer's name: ce-ray's is 'warmup_ratio'"):
        ce_ray.train(model="m", train_data="t", output="o", warmup_steps=100)
    assert main(["score", "--model", "m", "--input", "i", "--output", "o", "--config",
                 str(write_config(tmp_path / "score.yaml", eval_steps=5))]) == 2
    assert capsys.readouterr().err.strip().endswith("unknown setting 'eval_steps'")  # no training in a score job


def submit_without_ray_settings(tmp_path, monkeypatch, address: str) -> int:
    """`ce-ray submit score` of a config to `address`, in this process, with no RAY_ variable set: the exit code."""
    from ce_ray.cli import main

    config = write_config(tmp_path / "score.yaml", model="m", input="s3://b/in", output="s3://b/out")
    for name in [name for name in os.environ if name.startswith("RAY_")]:
        monkeypatch.delenv(name)
    return main(["submit", "score", "--config", str(config), "--address", address])


def test_an_address_without_http_is_said_to_be_a_gcs_address(tmp_path, capsys, monkeypatch):
    """The dashboard's host:port without http://, which Ray takes for a GCS address: submit printed Ray's traceback
    and `failed: RpcError`, exit 1 (as if a job had failed), nothing submitted. One line now, exit 2. Nothing listens
    on the port: the line came after Ray's ~35 s wait for a GCS there; a connection refused now says it at once."""
    port = free_port()
    started = time.monotonic()
    assert submit_without_ray_settings(tmp_path, monkeypatch, f"127.0.0.1:{port}") == 2
    assert time.monotonic() - started < 25  # not Ray's wait for a GCS: 41 s here (2 busy cores)
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"ce-ray submit: error: nothing answers ([Errno 111] Connection refused) at 127.0.0.1:{port}; an "
        "address without http:// is a cluster's GCS address (`ray start --port`); its dashboard's is "
        "http://HOST:PORT (`--dashboard-port`, 8265 by default)")
    assert "Traceback" not in err


def test_submit_without_an_address_takes_the_cluster_ray_start_runs_here_alone(tmp_path, capsys, monkeypatch):
    """Without --address nor RAY_ADDRESS, Ray's client took any Ray it found running on the machine where `ray start`
    had left no record: a local Ray that another job started for itself, which ends with that job (and with two,
    `Found multiple active Ray instances`); so with RAY_ADDRESS=local, which starts a Ray for a job run here. The
    record alone is taken (Ray's temp folder, RAY_TMPDIR here); without one, one line says what to give, exit 2."""
    from ce_ray.cli import main

    config = write_config(tmp_path / "score.yaml", model="m", input="s3://b/in", output="s3://b/out")
    for name in [name for name in os.environ if name.startswith("RAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no `ray start` recorded there
    for address in (None, "local"):  # RAY_ADDRESS=local, which starts a Ray for a job run here, names no cluster
        if address:
            monkeypatch.setenv("RAY_ADDRESS", address)
        assert main(["submit", "score", "--config", str(config)]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            "ce-ray submit: error: no cluster to submit to: give its dashboard's address, --address http://HOST:8265 "
            "(or RAY_ADDRESS), or run `ray start --head` on this machine")
    port = free_port()
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")  # as `ray start` records its GCS
    assert main(["submit", "score", "--config", str(config)]) == 2
    assert re.fullmatch(rf"ce-ray submit: error: nothing answers \(.*\) at \S+:{port}; an address without http:// "
                        r"is a cluster's GCS address .*", capsys.readouterr().err.strip().splitlines()[-1])


def test_an_env_variable_not_set_here_is_said_before_the_cluster_is_asked(tmp_path, capsys, monkeypatch):
    """`--env NAME` of a variable not set here was said after submit had asked the cluster: where that failed (an
    address where nothing answers), its error came first, and the variable's after the user had mended it."""
    from ce_ray.cli import main

    config = write_config(tmp_path / "score.yaml", model="m", input="s3://b/in", output="s3://b/out")
    monkeypatch.delenv("CE_RAY_NOT_SET", raising=False)
    assert main(["submit", "score", "--config", str(config), "--address", f"127.0.0.1:{free_port()}", "--env",
                 "CE_RAY_NOT_SET"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "ce-ray submit: error: --env names variable(s) not set here: CE_RAY_NOT_SET")
    for given, said in (("", "''"), ("TOKEN=abc", "'TOKEN=…'")):  # no name (it said `not set here: `), a value
        assert main(["submit", "score", "--config", str(config), "--address", f"127.0.0.1:{free_port()}", "--env",
                     given]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"ce-ray submit: error: --env takes a variable's name, whose value is this environment's: got {said}")


def test_a_dashboards_address_without_http_is_said_so_at_once(tmp_path, capsys, monkeypatch):
    """The dashboard's HOST:8265 without http://, the mistake a user makes most: Ray took it for a GCS address and
    waited for a GCS there, ~35 s (45 s measured), before the line; a GCS speaks gRPC, and what answers HTTP there is
    no GCS. The line at once, with the address as it should be written. (An HTTP server stands for the dashboard.)"""
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert submit_without_ray_settings(tmp_path, monkeypatch, f"127.0.0.1:{port}") == 2
    finally:
        server.shutdown()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"ce-ray submit: error: 127.0.0.1:{port} answers HTTP, as a dashboard does; an address without http:// is a "
        f"cluster's GCS address (`ray start --port`); its dashboard's is http://127.0.0.1:{port} (`--dashboard-port`, "
        "8265 by default)")


def test_a_ray_client_address_is_said_to_be_no_dashboards(tmp_path, capsys, monkeypatch):
    """`ray://HOST:10001`, the address `ray.init` takes (Ray Client), given to submit: Ray's client tried it for
    ~30 s, then said `ray client connection timeout`. Submit talks to the Ray Jobs API, the dashboard's: one line
    at once saying so, with the dashboard's address on that host, exit 2, as for a GCS address."""
    port = free_port()
    assert submit_without_ray_settings(tmp_path, monkeypatch, f"ray://127.0.0.1:{port}") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"ce-ray submit: error: ray://127.0.0.1:{port} is a Ray Client address (`ray.init`), and submit talks to the "
        "Ray Jobs API that the cluster's dashboard serves; its dashboard's is http://127.0.0.1:8265 "
        "(`--dashboard-port`, 8265 by default)")
    from ce_ray.cli import main

    monkeypatch.setenv("RAY_ADDRESS", "ray://head.example:10001")  # the address taken from the environment
    assert main(["submit", "score", "--config", str(tmp_path / "score.yaml")]) == 2
    assert "its dashboard's is http://head.example:8265 " in capsys.readouterr().err


def test_a_stopped_job_says_how_to_finish_it(cluster, model, tmp_path):
    """A job stopped (`ray job stop`) while followed: exit 1 and one line with Ray's message and how to finish the
    job, which read `Job was intentionally stopped.; --mode resume ...`."""
    import threading

    wikiqa_pairs("test", 3000)[["query", "document"]].to_parquet(tmp_path / "pairs.parquet", index=False)
    config = write_config(tmp_path / "score.yaml", model=str(model), input=str(tmp_path / "pairs.parquet"),
                          output=str(tmp_path / "out"), rows_per_block=16)
    runs = []
    follow = threading.Thread(target=lambda: runs.append(cluster.submit("score", config, "--submission-id",
                                                                        "ce-ray-stopped")))
    follow.start()
    status = ""
    while "RUNNING" not in status and follow.is_alive():
        time.sleep(1)
        status = subprocess.run([str(BIN / "ray"), "job", "status", "ce-ray-stopped", "--address", cluster.address],
                                env=cluster.env, capture_output=True, text=True).stdout
    subprocess.run([str(BIN / "ray"), "job", "stop", "ce-ray-stopped", "--address", cluster.address],
                   env=cluster.env, capture_output=True, timeout=120)
    follow.join(timeout=JOB_TIMEOUT)

    assert runs[0].returncode == 1, runs[0].stdout + runs[0].stderr
    assert runs[0].stderr.strip().splitlines()[-1] == (
        "ce-ray submit: job ce-ray-stopped STOPPED: Job was intentionally stopped; --mode resume finishes it (the "
        "input files completed are kept, and the rows written of parquet files)")
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_job_whose_own_line_says_no_way_to_finish_it_ends_without_one(cluster, model, tmp_path):
    """submit's FAILED line took its way to finish a job from its exit code alone: after a float16 overflow, whose
    line says to score in another dtype with --mode overwrite (a resume is refused over float16's files), it added
    `--mode resume finishes it`; after a training run that a NaN loss stopped, `the same command resumes it from
    its last checkpoint`, which meets the same NaN. It says what the job's own last line said: here, nothing."""
    from safetensors.torch import load_file, save_file

    overflowing = shutil.copytree(model, tmp_path / "overflowing")
    weights = load_file(overflowing / "model.safetensors")
    name = next(key for key in weights if key.endswith("word_embeddings.weight"))
    weights[name] = weights[name] * 1e6  # past float16's largest value, 65,504
    save_file(weights, overflowing / "model.safetensors", metadata={"format": "pt"})
    nan_head = shutil.copytree(model, tmp_path / "nan-head")
    weights = load_file(nan_head / "model.safetensors")
    weights["classifier.bias"][:] = float("nan")
    save_file(weights, nan_head / "model.safetensors", metadata={"format": "pt"})
    wikiqa_pairs("train", 16)[["query", "document", "label"]].to_parquet(tmp_path / "pairs.parquet", index=False)
    configs = {
        "score": write_config(tmp_path / "score.yaml", model=str(overflowing), input=str(tmp_path / "pairs.parquet"),
                              output=str(tmp_path / "scored"), dtype="float16"),
        "train": write_config(tmp_path / "train.yaml", model=str(nan_head), train_data=str(tmp_path / "pairs.parquet"),
                              output=str(tmp_path / "trained"), batch_size=8, max_steps=2, log_every=1),
    }
    for job, config in configs.items():
        run = cluster.submit(job, config)

        assert run.returncode == 1, run.stdout[-3000:] + run.stderr
        own = [line for line in run.stdout.splitlines() if line.startswith(f"ce-ray {job}: failed: ")]
        assert own and "resume" not in own[-1], run.stdout[-3000:]
        said = run.stderr.strip().splitlines()[-1]
        assert said.endswith(" FAILED: Job entrypoint command failed with exit code 1"), run.stderr


def test_a_job_stopped_after_its_summary_is_said_to_have_done_its_work():
    """A job stopped as it shut down, after its summary (`ce-ray score: done`, said once its output is whole), or
    whose process died then: submit's line said `--mode resume finishes it`, from the job's status alone, and the
    resume kept every file. It says that the job had done its work; the job's closing lines give their own way."""
    from ce_ray.cli import finishing_said

    assert finishing_said("score", "ce-ray score: done") == "; it had done its work: its output is whole"
    assert finishing_said("train", "ce-ray train: done") == "; it had done its work: its output is whole"
    assert finishing_said("score", "ce-ray score: 10,848 of 24,000 pairs scored (45.2%) in 30s") is None
    finish = "--mode resume finishes it (the input files completed are kept, and the rows written of parquet files)"
    assert finishing_said("score", f"ce-ray score: stopped (SIGTERM); {finish}") == f"; {finish}"
    mend = f"mend those rows, or pass --on-invalid reject to set them aside in rejects/; then {finish}"
    assert finishing_said("score", "ce-ray score: failed: InputError: 1 row(s) cannot be scored, e.g. query is null "
                                   f"(on_invalid fail (--on-invalid fail)); {mend}") == f"; {mend}"
    assert finishing_said("train", "ce-ray train: stopped (SIGTERM); the same command resumes it from its last "
                                   "checkpoint, step 95 or later") == (
        "; the same command resumes it from its last checkpoint, step 95 or later")


def test_what_submit_sends_holds_the_commands_flags_its_package_variables_and_requirements(tmp_path, monkeypatch):
    """The job's entrypoint runs the config with the flags given after it (`--mode overwrite` ran the config's
    mode where they were dropped), in a runtime env of the staged folder, ce-ray's package (else the cluster's own
    ce-ray, or none), the variables of --env and the requirements of --pip; an address Ray resolves itself (`auto`)
    is passed on as it is."""
    from ce_ray.submit import PACKAGE_DIR, check_address, runtime_env, stage_job

    config = write_config(tmp_path / "score.yaml", model="m", input="in", output="out")
    (tmp_path / "staged").mkdir()
    entrypoint = stage_job("score", str(config), tmp_path / "staged", ["--mode", "overwrite"])
    assert entrypoint.endswith("--config score.yaml --mode overwrite")
    assert (tmp_path / "staged" / "score.yaml").read_text() == config.read_text()
    monkeypatch.setenv("CE_RAY_SENT", "value")
    assert runtime_env(tmp_path / "staged", ["bm25s"], ["CE_RAY_SENT"]) == {
        "working_dir": str(tmp_path / "staged"), "py_modules": [str(PACKAGE_DIR)], "excludes": ["__pycache__", "*.pyc"],
        "env_vars": {"CE_RAY_SENT": "value"}, "pip": ["bm25s"]}
    assert check_address("auto") is None


def test_the_way_to_finish_a_failed_job_says_to_mend_its_rows_and_names_no_mode_its_cause_named():
    """A job stopped at a row that cannot be scored is finished once the rows are mended or set aside (a resume
    alone stopped at the same row); a cause that names a mode already (a float16 overflow's `--mode overwrite`)
    gets no other."""
    from ce_ray.cli import finishing_hint

    assert finishing_hint("score", "1 row(s) cannot be scored, e.g. query is null").startswith(
        "; mend those rows, or pass --on-invalid reject to set them aside in rejects/; then --mode resume finishes")
    assert finishing_hint("score", "a part was lost").startswith("; --mode resume finishes it")
    assert finishing_hint("score", "scores overflow float16: score again in float32 with --mode overwrite") == ""
