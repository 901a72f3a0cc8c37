"""Score and train jobs with model, input and output on a real S3-protocol server (moto) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_score import read_results, run_cli

BUCKET = "ce-ray-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server():
    """A moto S3 server on 127.0.0.1, its endpoint and credentials as environment variables to set. s3fs keeps one
    instance per set of arguments in a process: those of an earlier test's server, stopped since, are cleared
    before and after, where a test that reads the endpoint from the environment would have asked them."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield env
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()


def s3fs_for(env):
    import s3fs

    return s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=env["AWS_ENDPOINT_URL"])


def test_score_job_reads_and_writes_s3(tmp_path, tiny_model, s3_server):
    from conftest import wikiqa_pairs

    pairs = wikiqa_pairs("test", 80)[["query_id", "query", "document", "label"]].reset_index(drop=True)
    pairs["pair_id"] = np.arange(len(pairs))
    fs = s3fs_for(s3_server)
    fs.mkdir(BUCKET)
    for i, part in enumerate((pairs.iloc[:40], pairs.iloc[40:])):
        with fs.open(f"{BUCKET}/in/part-{i}.parquet", "wb") as f:
            part.to_parquet(f)
    fs.put(str(tiny_model) + "/", f"{BUCKET}/models/tiny/", recursive=True)
    pairs.to_parquet(tmp_path / "pairs.parquet")

    cache = {"CE_RAY_CACHE": str(tmp_path / "cache")}
    remote = run_cli("score", "--model", f"s3://{BUCKET}/models/tiny", "--input", f"s3://{BUCKET}/in/",
                     "--output", f"s3://{BUCKET}/out", "--rows-per-block", "32", env={**s3_server, **cache})
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert f"s3://{BUCKET}/out" in remote.stdout
    local = run_cli("score", "--model", str(tiny_model), "--input", str(tmp_path / "pairs.parquet"),
                    "--output", str(tmp_path / "out"))
    assert local.returncode == 0, local.stderr[-3000:]

    assert fs.exists(f"{BUCKET}/out/_SUCCESS")
    remote_rows = pd.concat(pd.read_parquet(fs.open(p, "rb")) for p in fs.glob(f"{BUCKET}/out/results/*.parquet"))
    local_rows = read_results(tmp_path / "out")
    remote_rows = remote_rows.sort_values("pair_id").reset_index(drop=True)
    local_rows = local_rows.sort_values("pair_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(remote_rows.drop(columns="score"), local_rows.drop(columns="score"))
    np.testing.assert_allclose(remote_rows["score"], local_rows["score"], atol=1e-6)
    assert len(remote_rows) == len(pairs)
    # The model was copied once into the local cache, and no credential reached the output or the logs.
    assert any((tmp_path / "cache" / "models").iterdir())
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in remote.stdout + remote.stderr


def test_train_job_reads_and_writes_s3(tmp_path, tiny_model, counting_store):
    """Model, training data, checkpoints and the trained model on S3: each worker copies the model for itself
    (a worker on another node has no copy of the driver's), and the run's settings go beside its checkpoints.
    The training file was looked up 6 times and read twice (its footer, its rows): whether it exists, whether the
    data is a BEIR folder (twice), listed twice (for the run's record, to read it), its ETag asked after each
    listing. Once each now but its existence and the read task's own look-up (the ETag its reads are held to)."""
    import collections
    import json

    import s3fs
    from sentence_transformers import CrossEncoder

    from conftest import wikiqa_pairs

    bucket = "ce-ray-train-test"  # moto keeps one store per process: a bucket the score test did not make
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    fs.put(str(tiny_model) + "/", f"{bucket}/models/tiny/", recursive=True)
    with fs.open(f"{bucket}/data/pairs.parquet", "wb") as f:
        wikiqa_pairs("train", 64)[["query", "document", "label"]].to_parquet(f)
    data, model, output = f"s3://{bucket}/data/pairs.parquet", f"s3://{bucket}/models/tiny", f"s3://{bucket}/trained"
    counting_store.requests.clear()
    cache = {"CE_RAY_CACHE": str(tmp_path / "cache")}
    result = run_cli("train", "--model", model, "--train-data", data, "--output", output, "--num-workers", "2",
                     "--batch-size", "8", "--max-steps", "3", timeout=420,
                     env=cache | {"RAY_DATA_DISABLE_PROGRESS_BARS": "0"})  # as a user runs it: the tests turn them off
    assert result.returncode == 0, result.stderr[-3000:]
    assert "steps         3" in result.stdout and output in result.stdout
    # A log that is a file: no terminal codes on the workers' lines (Ray coloured their prefixes: one a line), nor
    # Ray Data's warning that the bars ce-ray turns off for the training sets are off.
    workers = [line for line in (result.stdout + result.stderr).splitlines() if "RayTrainWorker pid=" in line]
    assert workers and not [line for line in workers if "\x1b[" in line], workers[:3]
    assert "Progress bars disabled" not in result.stdout + result.stderr
    looked_up = collections.Counter((method, path[len(f"/{bucket}/data/"):]) for method, path in counting_store.requests
                                    if path.startswith(f"/{bucket}/data/"))
    # (and a HEAD and a GET of the job's check that decodes its first rows, `input_files._as_decoded`)
    assert looked_up == {("HEAD", "pairs.parquet"): 4, ("GET", "pairs.parquet"): 3,  # 6 HEAD before
                         ("HEAD", "pairs.parquet/corpus.jsonl"): 1,  # a BEIR folder's? 2 before
                         ("HEAD", "pairs.parquet/corpus.jsonl.gz"): 1}, looked_up  # or a gzipped one's?
    run = json.loads(fs.cat(f"{bucket}/trained/checkpoints/trained/ce-ray-run.json"))
    assert run["model"] == model and run["num_workers"] == 2
    assert list(run["train_files"]) == [f"{bucket}/data/pairs.parquet"]  # with its size and ETag
    assert run["train_digests"] == {}  # an object goes by its ETag: not read for a digest
    fs.get(f"{bucket}/trained/", str(tmp_path / "trained"), recursive=True)
    assert CrossEncoder(str(tmp_path / "trained"), device="cpu").predict([("a query", "a document")]).shape == (1,)
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr
    # The data uploaded again, other rows under the same key: the run is not resumed from its checkpoints.
    with fs.open(f"{bucket}/data/pairs.parquet", "wb") as f:
        wikiqa_pairs("train", 128)[64:][["query", "document", "label"]].to_parquet(f)
    again = run_cli("train", "--model", model, "--train-data", data, "--output", output, "--num-workers", "2",
                    "--batch-size", "8", "--max-steps", "3", env=cache)
    assert again.returncode == 2, again.stderr[-3000:]
    assert (f"s3://{bucket}/trained/checkpoints/trained holds the checkpoints of a run whose training data changed "
            f"since ({bucket}/data/pairs.parquet rewritten)") in again.stderr


def test_a_training_run_refused_once_ray_started_leaves_nothing_in_the_bucket(tmp_path, tiny_model, s3_server):
    """Labels outside [0, 1], found once Ray has started: the run left the record of its settings
    (`<output>/checkpoints/<run>/ce-ray-run.json`) in the bucket; it now leaves nothing it wrote, beside a user's."""
    bucket = "ce-ray-refused-run"  # moto keeps one store per process: a bucket of this test alone
    fs = s3fs_for(s3_server)
    fs.mkdir(bucket)
    fs.pipe(f"{bucket}/mine/.keep", b"kept")  # a folder's marker, as consoles make them
    pd.DataFrame({"query": ["q"] * 4, "document": ["a", "b", "c", "d"], "label": [0.0, 1.0, 2.0, 3.0]}).to_parquet(
        tmp_path / "graded.parquet")
    for output in (f"s3://{bucket}/new/model", f"s3://{bucket}/mine"):
        refused = run_cli("train", "--model", str(tiny_model), "--train-data", str(tmp_path / "graded.parquet"),
                          "--output", output, env={**s3_server, "RAY_ADDRESS": "local"})
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert "2 label(s) of column 'label' outside [0, 1]" in refused.stderr.splitlines()[-1]
        fs.invalidate_cache()
        assert fs.find(bucket) == [f"{bucket}/mine/.keep"]
    # An output that is the s3:// model's own folder spelled s3a:// (the same objects) was taken: the trained model
    # would have been written over the one it started from.
    fs.put(str(tiny_model), f"{bucket}/base", recursive=True)
    refused = run_cli("train", "--model", f"s3://{bucket}/base", "--train-data", str(tmp_path / "graded.parquet"),
                      "--output", f"s3a://{bucket}/base/", env={**s3_server, "RAY_ADDRESS": "local"})
    assert refused.returncode == 2 and refused.stderr.splitlines()[-1] == (
        f"ce-ray train: error: output (--output) s3a://{bucket}/base/ is the model's own folder, which the trained "
        "model would replace: give another output"), refused.stderr[-3000:]


def test_a_second_job_of_a_process_sees_the_objects_as_they_are_now(tmp_path, tiny_model, s3_server):
    """Two jobs in one Python process (the Python API, a notebook): the second sees an input object rewritten
    and one added since the first, and its resume scores the rewritten one again (by its ETag). s3fs kept the
    process's first listings: the second job failed reading the rewritten object (`FileExpired`)."""
    import subprocess
    import sys

    from conftest import ROOT, wikiqa_pairs

    bucket = "ce-ray-second-job"  # moto keeps one store per process: a bucket of this test alone
    s3fs_for(s3_server).mkdir(bucket)
    pairs = wikiqa_pairs("test", 90)[["query", "document"]].reset_index(drop=True)
    pairs["pair_id"] = np.arange(len(pairs))
    pairs.to_parquet(tmp_path / "pairs.parquet")
    script = f"""
import json, pandas as pd, s3fs
from ce_ray import ScoreConfig, run_score
pairs, fs = pd.read_parquet({str(tmp_path / "pairs.parquet")!r}), s3fs.S3FileSystem()
def put(name, rows):
    with fs.open("{bucket}/in/" + name, "wb") as f:
        rows.to_parquet(f)
def job(mode):
    return run_score(ScoreConfig(model={str(tiny_model)!r}, input="s3://{bucket}/in/", output="s3://{bucket}/out",
                                 mode=mode))
put("a.parquet", pairs.iloc[:40]); put("b.parquet", pairs.iloc[40:80])
job("error")
put("a.parquet", pairs.iloc[:10]); put("c.parquet", pairs.iloc[80:])
summary = job("resume")
print("RESUMED", json.dumps([summary.files_in, summary.files_kept, summary.rows_in]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, **s3_server})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RESUMED [3, 1, 60]" in result.stdout
    assert "1 input file(s) that an earlier run completed were rewritten since" in result.stderr
    fs = s3fs_for(s3_server)
    scored = pd.concat(pd.read_parquet(fs.open(p, "rb")) for p in fs.glob(f"{bucket}/out/results/*.parquet"))
    assert sorted(scored["pair_id"]) == [*range(10), *range(40, 90)]


def test_a_parquet_object_left_unfinished_resumes_from_the_rows_its_parts_lack(tmp_path, tiny_model, s3_server):
    """A parquet object of 90 pairs written in 3 parts, one of them lost (as a killed job leaves it): the resume on S3
    reads the parts' footers for the rows they hold, keeps them and scores only the 30 rows missing; every row once."""
    import subprocess
    import sys

    from conftest import ROOT, wikiqa_pairs

    bucket = "ce-ray-resumed-in-part"  # moto keeps one store per process: a bucket of this test alone
    s3fs_for(s3_server).mkdir(bucket)
    pairs = wikiqa_pairs("test", 90)[["query", "document"]].reset_index(drop=True)
    pairs["pair_id"] = np.arange(len(pairs))
    pairs.to_parquet(tmp_path / "pairs.parquet", row_group_size=30)
    script = f"""
import json, s3fs
from ce_ray import ScoreConfig, run_score, sink
fs = s3fs.S3FileSystem()
fs.put({str(tmp_path / "pairs.parquet")!r}, "{bucket}/in/pairs.parquet")
sink.CPU_PART_BYTES = None  # a part of each scored block of 30 rows
def job(mode):
    return run_score(ScoreConfig(model={str(tiny_model)!r}, input="s3://{bucket}/in/", output="s3://{bucket}/out",
                                 mode=mode, rows_per_block=30))
job("error")
fs.rm([sorted(fs.ls("{bucket}/out/results"))[1], "{bucket}/out/_SUCCESS"])
summary = job("resume")
print("RESUMED", json.dumps([summary.files_kept, summary.files_kept_in_part, summary.rows_kept, summary.rows_in]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, **s3_server})
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line for line in result.stdout.splitlines() if line.endswith("file(s) to score")] == [
        "ce-ray score: 90 pairs in 1 file(s) to score", "ce-ray score: 30 pairs in 1 file(s) to score"]
    assert "RESUMED [1, 1, 60, 90]" in result.stdout
    fs = s3fs_for(s3_server)
    scored = pd.concat(pd.read_parquet(fs.open(p, "rb")) for p in fs.glob(f"{bucket}/out/results/*.parquet"))
    assert sorted(scored["pair_id"]) == list(range(90))


@pytest.fixture
def silent_store(monkeypatch):
    """An endpoint whose connections are taken and never read or answered: a store that stalled (a paused
    process, an overloaded gateway). Timeouts of a second and two tries of each request, so that a wait that
    has a bound ends in seconds, and one that has none shows."""
    import s3fs

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # never accepted: the kernel completes the connections, nothing reads them
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "1"}.items():
            monkeypatch.setenv(name, value)
        for name, value in (("read_timeout", 1), ("connect_timeout", 1), ("retries", 2)):
            monkeypatch.setattr(s3fs.S3FileSystem, name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield endpoint
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


def bounded(call, seconds: float):
    """(the exception `call` raised, seconds it took), failing the test where it has not ended in `seconds`."""
    import threading
    import time

    outcome = {}

    def run():
        start = time.monotonic()
        try:
            call()
        except Exception as e:  # noqa: BLE001 - what the store's silence raises is what is checked
            outcome["error"] = e
        outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)  # a call that hangs is left behind, not waited for
    thread.start()
    thread.join(seconds)
    assert "seconds" in outcome, f"still waiting after {seconds} s"
    return outcome.get("error"), outcome["seconds"]


def test_a_store_that_stops_answering_fails_writes_and_reads_in_bounded_time(silent_store, monkeypatch):
    """A write waited forever for the `100 Continue` that botocore asks of every upload, and a body the store
    stopped reading blocked its write for good; an input file of a store that did not answer read as
    `FileNotFoundError`. Each now fails after its timeouts and retries, naming the endpoint."""
    from ce_ray import s3_session
    from ce_ray.storage import filesystem

    fs, path = filesystem("s3://bucket/out")

    def write(size):
        with fs.open_output_stream(f"{path}/part.parquet") as f:
            f.write(b"x" * size)

    error, seconds = bounded(lambda: write(1000), 30)  # the waits: 2 tries of 1 s
    assert "Read timeout on endpoint URL" in str(error) and silent_store in str(error) and seconds < 10
    # 8 MiB: more than the sockets' buffers take; limit 1 + 1 s, beyond which it would be given 32 s
    monkeypatch.setattr(s3_session, "MIN_UPLOAD_BYTES_PER_S", 1 << 40)
    error, seconds = bounded(lambda: write(8 << 20), 30)
    assert "Read timeout on endpoint URL" in str(error) and silent_store in str(error) and seconds < 10
    error, seconds = bounded(lambda: fs.open_input_file(f"{path}/part.parquet"), 30)
    assert not isinstance(error, FileNotFoundError) and silent_store in str(error) and seconds < 10


def test_botocores_own_retry_variables_are_honoured(monkeypatch):
    """AWS_MAX_ATTEMPTS and AWS_RETRY_MODE bound a job's retries, where the client's settings overrode them."""
    from ce_ray.storage import s3_retries

    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    assert s3_retries() == {"max_attempts": 8, "mode": "adaptive"}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    assert s3_retries() == {}


def test_a_model_upload_that_the_store_does_not_take_fails(silent_store, tmp_path):
    """The trained model's files go up one by one, each failing where the store did not take it: through
    `pyarrow.fs.copy_files` a file whose upload failed was left out without a word."""
    from ce_ray.storage import filesystem, upload_folder

    (tmp_path / "model" / "sub").mkdir(parents=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "sub" / "weights.bin").write_bytes(b"w" * 1000)
    fs, path = filesystem("s3://bucket/trained")
    error, seconds = bounded(lambda: upload_folder(str(tmp_path / "model"), fs, path), 30)
    assert "Read timeout on endpoint URL" in str(error) and silent_store in str(error) and seconds < 10


@contextlib.contextmanager
def moto_behind(front):
    """A moto S3 server on 127.0.0.1 whose requests go through `front(environ, start_response, moto)`, a WSGI
    application given moto's: its environment."""
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    moto = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", free_port(), lambda environ, start_response: front(environ, start_response, moto),
                         threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_port}"}
    finally:
        server.shutdown()
        thread.join()


@contextlib.contextmanager
def moto_in_env(front, monkeypatch):
    """`moto_behind(front)` as the environment's S3 endpoint and credentials, which jobs read, with s3fs's cached
    filesystems of other endpoints dropped before and after."""
    import s3fs

    with moto_behind(front) as env:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def refusing_store():
    """A moto S3 server that refuses (403 AccessDenied) the first PUT of a key that matches `refuse["keys"]`, as a
    store does whose policy or quota stops a write: (its environment, the refusals' state)."""
    import re

    refuse = {"keys": None, "refused": []}

    def store(environ, start_response, moto):
        key = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] == "PUT" and refuse["keys"] and re.search(refuse["keys"], key) \
                and key not in refuse["refused"]:
            refuse["refused"].append(key)
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                    b"<Message>Access Denied</Message></Error>"]
        return moto(environ, start_response)

    with moto_behind(store) as env:
        yield env, refuse


def test_a_checkpoint_the_store_does_not_take_whole_is_not_recorded(tmp_path, tiny_model, refusing_store):
    """A checkpoint file that the store refuses fails the checkpoint, naming it, and Ray Train restarts the run from
    the last whole one (max_failures). Through Ray Train's own upload (`pyarrow.fs.copy_files`) the refusal was
    dropped: "Checkpoint successfully created", recorded without its weights, and resumed from."""
    import json

    from conftest import wikiqa_pairs

    env, refuse = refusing_store
    bucket = "ce-ray-refused-checkpoint"  # moto keeps one store per process: a bucket of this test alone
    fs = s3fs_for(env)
    fs.mkdir(bucket)
    wikiqa_pairs("train", 32)[["query", "document", "label"]].to_parquet(tmp_path / "pairs.parquet")
    refuse["keys"] = r"/checkpoint_0000002/model/model\.safetensors$"
    result = run_cli("train", "--model", str(tiny_model), "--train-data", str(tmp_path / "pairs.parquet"),
                     "--output", str(tmp_path / "trained"), "--storage-path", f"s3://{bucket}/runs",
                     "--batch-size", "8", "--max-steps", "2", "--save-every", "1", "--max-failures", "1",
                     timeout=300, env={**env, "RAY_ADDRESS": "local"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert refuse["refused"] == [f"/{bucket}/runs/trained/checkpoint_0000002/model/model.safetensors"]
    assert (f"CheckpointUploadError: the checkpoint s3://{bucket}/runs/trained/checkpoint_0000002 was not written "
            "whole to the store (PermissionError: Access Denied)") in result.stdout + result.stderr
    assert "steps         2 (0.5 epochs, 16 pairs; resumed at step 1)" in result.stdout
    assert "Steps: 2 (0.5 epochs, 16 pairs; resumed at step 1); throughput: " in (
        tmp_path / "trained" / "README.md").read_text()
    recorded = json.loads(fs.cat(f"{bucket}/runs/trained/checkpoint_manager_snapshot.json"))
    assert recorded["latest_checkpoint_result"]["checkpoint_dir_name"] == "checkpoint_0000002"
    assert fs.exists(f"{bucket}/runs/trained/checkpoint_0000002/model/model.safetensors")
    assert (tmp_path / "trained" / "model.safetensors").exists()


def test_parts_a_store_lost_after_it_took_them_fail_the_check_before_success(s3_server, monkeypatch):
    """A store that took a job's parts and then lost them (an object deleted, the store restarted empty within
    the retry window): `_SUCCESS` counted them all. The check before it lists the output and reads each part's
    footer, and fails naming the parts."""
    import urllib.request

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ce_ray.output_state import RESUME
    from ce_ray.sink import OutputLostError, check_parts

    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    bucket, fs = "ce-ray-lost-parts", s3fs_for(s3_server)
    fs.mkdir(bucket)
    expected = {}
    for i, rows in enumerate((3, 5)):
        with fs.open(f"{bucket}/out/results/in-{i}.parquet", "wb") as f:
            pq.write_table(pa.table({"x": list(range(rows))}), f)
        expected[f"{bucket}/out/results/in-{i}.parquet"] = rows
    output = f"s3://{bucket}/out"
    check_parts(output, expected, RESUME)  # as written: whole
    fs.rm(f"{bucket}/out/results/in-0.parquet")
    with pytest.raises(OutputLostError, match=r": results/in-0.parquet is missing \(3 rows\)\. No _SUCCESS written"):
        check_parts(output, expected, RESUME)
    reset = urllib.request.Request(s3_server["AWS_ENDPOINT_URL"] + "/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=10).close()  # the store restarted empty: no bucket, no object
    with pytest.raises(OutputLostError, match=r"in-0.parquet is missing \(3 rows\); results/in-1.parquet is missing"):
        check_parts(output, expected, RESUME)


@pytest.fixture
def counting_store(monkeypatch):
    """A moto S3 server that answers each request after 50 ms, as a store across a network does, and records it as
    (method, path) in `requests`, the prefix of each whole listing (not one of a key or two, a look-up) in `listings`,
    and the most requests it answered at once in `most_at_once`; the process's S3 settings point at it."""
    import threading
    import time
    import urllib.parse
    from types import SimpleNamespace

    counted = SimpleNamespace(requests=[], listings=[], at_once=0, most_at_once=0)
    lock = threading.Lock()

    def store(environ, start_response, moto):
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        with lock:
            counted.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
            if "list-type" in query and "max-keys" not in query:
                counted.listings.append(query.get("prefix", [""])[0])
            counted.at_once += 1
            counted.most_at_once = max(counted.most_at_once, counted.at_once)
        try:
            time.sleep(0.05)
            return moto(environ, start_response)
        finally:
            with lock:
                counted.at_once -= 1

    with moto_in_env(store, monkeypatch):
        yield counted


def test_an_input_of_many_files_costs_a_few_requests_a_file_before_any_work(counting_store):
    """Users keep pairs as hundreds or thousands of parquet files (Spark's parts). Before any work a job reads each
    input file's footer (one ranged GET of its end), its size and ETag coming from the input's listing, and a resume
    reads each part's footer (one GET), 16 at a time: at moto's ~20 ms a request, what a file costs is a job's
    start. Opening each input file as pyarrow does cost two HEAD requests more, and its size and ETag one more: 4
    requests a file, then 2. The stamps are those that a HEAD gives, that earlier runs recorded for resume. A read
    task opens its file with one look-up, where it made two. A folder is listed once, where pyarrow listed it twice
    (asking first whether it is a folder, which s3fs answers by listing it)."""
    import collections

    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs

    from ce_ray import readers
    from ce_ray.input_files import check_inputs, list_files
    from ce_ray.output_state import RESULTS
    from ce_ray.sink import scan_parts
    from ce_ray.storage import size_and_stamp

    requests, bucket, files = counting_store.requests, "ce-ray-many-files", 20
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    for i in range(files):
        for key in (f"in/part-{i:05d}.parquet", f"out/{RESULTS}/part-{i:05d}-0000000{i % 10}-r000000000000.parquet"):
            with fs.open(f"{bucket}/{key}", "wb") as f:
                pq.write_table(pa.table({"query": [f"query {i}"] * 3, "document": ["a document"] * 3}), f)

    def each_file(prefix: str) -> collections.Counter:
        return collections.Counter(method for method, path in requests if path.startswith(f"/{bucket}/{prefix}"))

    requests.clear()
    counting_store.listings.clear()
    paths, input_format, input_fs, listed, _ = list_files(f"s3://{bucket}/in/")
    checks, schema = check_inputs(input_fs, paths, input_format, ["query", "document"], listed=listed)
    assert [check.rows for check in checks] == [3] * files and schema.names == ["query", "document"]
    # and one file's first rows decoded (`input_files._as_decoded`): a look-up and a read, once a job
    assert each_file("in/part-") == {"GET": files + 1, "HEAD": 1}
    assert len(requests) <= files + 10  # the listing and the look-ups of the job, not of each file
    assert counting_store.listings == ["in/"]  # once: pyarrow's listing of a folder lists it twice
    # as a HEAD gives them (the ETag in its quotes), and as `_ce_ray/inputs.json` of earlier runs holds them
    assert {check.path: check.stamp for check in checks} == {
        path: size_and_stamp(input_fs, path)[1] for path in paths}
    assert all(check.stamp.endswith('"') for check in checks)
    requests.clear()  # as a read task reads a file: one look-up (its size, the ETag its reads are held to), its bytes
    [whole] = readers.read_ranges(checks[0], 1000)
    assert sum(chunk.num_rows for chunk in readers.read_range(input_fs, whole, 1000)) == 3
    assert each_file("in/part-")["HEAD"] == 1
    requests.clear()
    counting_store.listings.clear()
    assert len(scan_parts(f"s3://{bucket}/out").parts) == files
    assert each_file(f"out/{RESULTS}/part-") == {"GET": files}
    assert len(requests) <= files + 10
    assert counting_store.listings.count(f"out/{RESULTS}/") == 1


def test_a_read_task_reads_its_small_files_a_few_at_once_each_row_once_and_in_order(counting_store):
    """A read task of many small files (Spark's parts) read them one after another, each waiting on the store's
    latency (its look-up, then its bytes) before the next began. It reads up to `READ_AHEAD` of them at once, and
    gives their rows in the files' order, each file's rows together and in order, each row once."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import s3fs

    from ce_ray import readers
    from ce_ray.input_files import check_inputs, list_files

    bucket, files, rows = "ce-ray-read-ahead", 40, 3
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    for i in range(files):
        with fs.open(f"{bucket}/in/part-{i:05d}.parquet", "wb") as f:
            pq.write_table(pa.table({"query": [f"query {i}"] * rows, "document": ["a document"] * rows,
                                     "n": list(range(i * rows, (i + 1) * rows))}), f)
    paths, input_format, input_fs, listed, _ = list_files(f"s3://{bucket}/in/")
    checks, _ = check_inputs(input_fs, paths, input_format, ["query", "document"], listed=listed)
    ranges = [r for check in checks for r in readers.read_ranges(check, 1000)]
    [task] = readers.tagged_parquet(ranges, input_fs, 1000).get_read_tasks(1)  # the 40 small files in one task
    counting_store.requests.clear()
    counting_store.most_at_once = 0
    table = pa.concat_tables(task())
    assert table.column("n").to_pylist() == list(range(files * rows))  # each row once, in the files' order
    assert table.column(readers.ROW_INPUT).to_pylist() == [readers.input_key(p) for p in paths for _ in range(rows)]
    assert table.column(readers.ROW_INDEX).to_pylist() == [*range(rows)] * files
    assert pc.max(table.column(readers.FILE_ROWS)).as_py() == rows
    reads = [method for method, path in counting_store.requests if path.startswith(f"/{bucket}/in/")]
    assert reads.count("GET") == files and reads.count("HEAD") == files  # each file opened and read once
    assert 2 <= counting_store.most_at_once <= readers.READ_AHEAD  # one at a time, it was 1


def test_a_resume_reads_the_footer_of_each_kept_part_once(counting_store):
    """A resume read the footer of each part it kept twice: to tell which inputs are complete, then again in the
    check before `_SUCCESS` (`check_parts`). The check takes the footers the resume read, for the parts listed with
    the same size and ETag as then: 1,000 kept parts were 2,000 GET requests. A kept part rewritten since is read
    again, and its other rows fail the check."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs

    from ce_ray.output_state import JOB, RESULT_ROWS, RESULTS, STATE, SUCCESS
    from ce_ray.sink import INPUT_ROWS, OutputLostError, PairsSink, prepare_output, resume_state

    bucket, files = "ce-ray-kept-parts", 30
    output, fs = f"s3://{bucket}/out", s3fs.S3FileSystem()
    fs.mkdir(bucket)
    table = pa.table({"query": ["a query"] * 2, "document": ["a document"] * 2, "score": [0.5, 0.25]})
    names = [f"in{i:03d}-0000{i:04d}-r000000000000.parquet" for i in range(files)]
    for name in names:  # a finished output: each input's one part holds its row count
        with fs.open(f"{bucket}/out/{RESULTS}/{name}", "wb") as f:
            pq.write_table(table.replace_schema_metadata({INPUT_ROWS: b"2"}), f)
    fs.pipe({f"{bucket}/out/{SUCCESS}": b"{}", f"{bucket}/out/{STATE}/{JOB}": b'{"model": "m"}'})

    def resume() -> tuple:
        state, sink = resume_state(output, {"model": "m"}), PairsSink(output, ["score"])
        return prepare_output(output, "resume", job={"model": "m"}, resume=state, checked=True, run=sink.run), sink

    counting_store.requests.clear()
    kept, sink = resume()
    sink.write_success({"rows_in": 2 * files}, kept=kept)
    assert len(kept.parts) == files
    read = [path for method, path in counting_store.requests if method == "GET" and f"/{RESULTS}/" in path]
    assert sorted(read) == [f"/{bucket}/out/{RESULTS}/{name}" for name in names]  # each footer once
    fs.invalidate_cache()
    assert json.loads(fs.cat(f"{bucket}/out/{SUCCESS}"))[RESULT_ROWS] == {name: 2 for name in names}

    kept, sink = resume()
    with fs.open(f"{bucket}/out/{RESULTS}/{names[0]}", "wb") as f:  # rewritten with one row, after the resume read it
        pq.write_table(table.slice(0, 1).replace_schema_metadata({INPUT_ROWS: b"2"}), f)
    with pytest.raises(OutputLostError, match=rf"results/{names[0]} holds 1 row of the 2 written"):
        sink.write_success({"rows_in": 2 * files}, kept=kept)


def test_a_resume_deletes_the_parts_of_unfinished_inputs_in_one_request(counting_store):
    """A resume deletes the parts of the inputs an earlier run did not finish (and temporaries) before it scores:
    on S3 two requests a part (pyarrow's look-up, the delete), 2,000 requests for 1,000 parts. They go in one
    request per 1,000 (S3's DeleteObjects). Where the output has no `_SUCCESS`, its results/ and rejects/ are listed
    once, where the resume listed each twice (whether the output had results, then its parts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs

    from ce_ray.output_state import REJECTS, RESULTS
    from ce_ray.sink import prepare_output, resume_state

    from ce_ray.output_state import JOB, STATE

    bucket, output = "ce-ray-unfinished-parts", "s3://ce-ray-unfinished-parts/out"
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    fs.pipe({f"{bucket}/out/{STATE}/{JOB}": b"{}"})  # a job's output
    for i in range(8):  # parts without the input's row count (its last part): none of these inputs is complete
        with fs.open(f"{bucket}/out/{RESULTS}/part-{i:05d}-0000000{i}-r000000000000.parquet", "wb") as f:
            pq.write_table(pa.table({"query": ["a query"], "document": ["a document"]}), f)
    counting_store.listings.clear()
    state = resume_state(output)
    assert state.parts and not state.complete
    assert sorted(counting_store.listings) == [f"out/{REJECTS}/", f"out/{RESULTS}/"]
    requests = counting_store.requests
    requests.clear()
    assert not prepare_output(output, "resume", resume=state).parts
    fs.invalidate_cache()
    assert not fs.find(f"{bucket}/out/{RESULTS}")
    assert not [path for _, path in requests if path.startswith(f"/{bucket}/out/{RESULTS}/")]  # none a part
    assert requests.count(("POST", f"/{bucket}")) == 1  # DeleteObjects, of the 8


def test_a_new_output_is_looked_up_once_before_a_job_writes_it(counting_store):
    """Preparing an output in the default mode looked up whether it had results twice (its `_SUCCESS`, a listing
    of results/ and of rejects/ each time): the check that refuses one, then again to clear it."""
    import s3fs

    from ce_ray.output_state import RESULTS
    from ce_ray.sink import prepare_output

    bucket = "ce-ray-new-output"
    s3fs.S3FileSystem().mkdir(bucket)
    counting_store.listings.clear()
    prepare_output(f"s3://{bucket}/out", "error", job={"model": "m"})
    assert counting_store.listings.count(f"out/{RESULTS}/") == 1


def test_an_overwrite_lists_the_old_output_once(counting_store):
    """--mode overwrite looked up whether the output had results (its `_SUCCESS`, a listing of results/ and of
    rejects/ where it had none), then listed results/, rejects/ and `_ce_ray/` again to delete them: 12 requests in
    all, with the job's own check. One listing of the output tells what to delete."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs

    from ce_ray.output_state import JOB, REJECTS, RESULTS, STATE
    from ce_ray.sink import check_output, prepare_output

    bucket, output = "ce-ray-overwrite-listed", "s3://ce-ray-overwrite-listed/out"
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    requests = counting_store.requests
    for finished in (True, False):
        for i in range(3):
            with fs.open(f"{bucket}/out/{RESULTS}/part-{i:05d}.parquet", "wb") as f:
                pq.write_table(pa.table({"query": ["a query"], "score": [0.5]}), f)
        # a job's output: its settings (the first time; then the last overwrite's), its summary where finished
        fs.pipe({f"{bucket}/out/{REJECTS}/part-00000.parquet": b"rejected", f"{bucket}/out/eval.json": b"{}"}
                | ({f"{bucket}/out/_SUCCESS": b"{}", f"{bucket}/out/{STATE}/{JOB}": b"{}"} if finished else {}))
        requests.clear()
        counting_store.listings.clear()
        check_output(output, "overwrite")  # as a job does, before its work
        prepare_output(output, "overwrite", job={"model": "m"}, checked=True)
        assert counting_store.listings == ["out/"]
        assert len(requests) <= 9  # 12 before, of either output; and the look-up of the old job's settings
        fs.invalidate_cache()
        assert sorted(fs.find(f"{bucket}/out")) == [f"{bucket}/out/{STATE}/{JOB}"]  # eval.json measured the old


def test_an_overwrite_deletes_only_what_a_job_writes_and_lists_no_more(counting_store):
    """A user's objects under an output (a folder beside results/, a file, a folder named `results` deeper down) and
    beside it (`out-results/`, `outx_SUCCESS`) stay through --mode overwrite. Those under it added a listing request
    per 1,000, though only `_SUCCESS`, `_ce_ray/`, `eval.json`, `rejects/` and `results/` are deleted: the listing
    starts at the first of them and stops past the last, so 1,001 objects of a `scratch/` folder cost no request,
    where they cost one more."""
    import s3fs

    from ce_ray.output_state import EVAL, JOB, REJECTS, RESULTS, STATE, SUCCESS
    from ce_ray.sink import prepare_output

    bucket, output = "ce-ray-overwrite-beside", "s3://ce-ray-overwrite-beside/out"
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    users = {f"{bucket}/{key}": b"the user's" for key in (
        "out/Data/a.parquet", "out/notes.txt", "out/notes/results/n.txt", "out-results/x.parquet", "outx_SUCCESS",
        *(f"out/scratch/{i:05d}" for i in range(1001)))}
    ours = {f"{bucket}/out/{key}": b"{}" for key in (
        SUCCESS, f"{STATE}/{JOB}", EVAL, f"{REJECTS}/part-00000.parquet",
        *(f"{RESULTS}/part-{i:05d}.parquet" for i in range(3)))}
    fs.pipe(users | ours)
    counting_store.listings.clear()
    prepare_output(output, "overwrite", job={"model": "m"})
    assert counting_store.listings == ["out/"]  # one page: two for the whole output
    fs.invalidate_cache()
    assert sorted(fs.find(bucket)) == sorted([*users, f"{bucket}/out/{STATE}/{JOB}"])


def test_a_folder_that_spark_or_hadoop_wrote_is_read_as_its_parts(counting_store, tmp_path, capsys):
    """Spark, Hadoop, Hive and Databricks write a folder of parts with an empty `_SUCCESS` (Spark `.crc` files too),
    and on S3 the empty objects that show a folder (`<folder>/`: the console's, Hadoop S3A's; `<folder>_$folder$`:
    EMRFS's). The parts are the rows, of score and rerank (`list_files`, `check_inputs`) and of eval alike. The
    markers were listed as files: read as parquet where the format was given (a Hadoop `part-r-00000` needs it),
    failing the job, and said to be skipped, by an empty name, where it was not."""
    import s3fs

    from ce_ray.config import EvalConfig
    from ce_ray.evaluate import run_eval
    from ce_ray.input_files import check_inputs, list_files
    from ce_ray.output_state import job_summary

    bucket = "ce-ray-spark-folder"
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    pairs = pd.DataFrame({"query_id": ["1", "1", "2"], "query": ["q1", "q1", "q2"], "document": ["a", "b", "c"],
                          "label": [1, 0, 1], "score": [0.9, 0.1, 0.5]})
    names = [f"part-{i:05d}-5e1d7c2a-c000.snappy.parquet" for i in range(2)]
    for name, rows in zip(names, (pairs.iloc[:2], pairs.iloc[2:])):
        with fs.open(f"{bucket}/spark/{name}", "wb") as f:
            rows.to_parquet(f)
        fs.pipe(f"{bucket}/spark/.{name}.crc", b"crc")
    fs.pipe({f"{bucket}/spark/_SUCCESS": b"", f"{bucket}/spark/._SUCCESS.crc": b"crc"})
    for marker in ("spark/", "spark/_temporary/", "spark/day=1/", "spark/day=1_$folder$"):
        fs.call_s3("put_object", Bucket=bucket, Key=marker, Body=b"")
    uri = f"s3://{bucket}/spark"
    for input_format in ("auto", "parquet"):
        listing = list_files(uri, input_format)
        assert listing.files == [f"{bucket}/spark/{name}" for name in names]
        checks, _ = check_inputs(listing.fs, listing.files, "parquet", ["query", "document"], listed=listing.stamps)
        assert [check.rows for check in checks] == [2, 1]
    assert "skipped" not in capsys.readouterr().err
    assert job_summary(uri) is None  # no output of ce-ray: its `_SUCCESS` is Spark's
    assert run_eval(EvalConfig(input=uri, baseline_column="", output=str(tmp_path / "eval.json")))["pairs"] == 3


def test_a_partition_folder_of_a_delta_table_in_a_bucket_is_refused(counting_store):
    """A Delta Lake table's partition folder (`table/dt=1/`) keeps its earlier versions' files, and its
    `_delta_log/` lies above it, which two look-ups find; a partition folder of no table is read."""
    import s3fs

    from ce_ray.input_files import list_files
    from ce_ray.messages import InputError

    bucket = "ce-ray-delta-partition"
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    for table in ("table", "plain"):
        with fs.open(f"{bucket}/{table}/dt=1/part-0.parquet", "wb") as f:
            pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(f)
    fs.pipe(f"{bucket}/table/_delta_log/00000000000000000000.json", b"{}")
    with pytest.raises(InputError, match=rf"^input s3://{bucket}/table/dt=1/ lies in the folder of the Delta Lake "
                                         rf"table at {bucket}/table/ \(_delta_log/\): .* ray\.data\.read_delta"):
        list_files(f"s3://{bucket}/table/dt=1/")
    counting_store.requests.clear()
    assert list_files(f"s3://{bucket}/plain/dt=1/").files == [f"{bucket}/plain/dt=1/part-0.parquet"]
    # the input's look-up (a HEAD, a listing), `_ce_ray/`'s, `_delta_log/`'s and `.hoodie/`'s; its listing
    assert len(counting_store.requests) <= 10


@pytest.fixture
def undeletable_store(monkeypatch):
    """A moto S3 server whose bulk deletes (DeleteObjects) leave the keys that match `keep["keys"]` and name them in
    their answer, as a store does whose retention or policy stops a delete: (the keys kept, as a dict to set them).
    The process's S3 settings point at it."""
    import io
    import re
    import urllib.parse

    keep = {"keys": None}

    def store(environ, start_response, moto):
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if environ["REQUEST_METHOD"] != "POST" or "delete" not in query or not keep["keys"]:
            return moto(environ, start_response)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)).decode()
        answer = []
        for key in re.findall(r"<Key>(.*?)</Key>", body):
            if re.search(keep["keys"], key):
                answer.append(f"<Error><Key>{key}</Key><Code>AccessDenied</Code><Message>Access Denied</Message>"
                              "</Error>")
                continue
            one = {name: value for name, value in environ.items()
                   if name not in ("CONTENT_TYPE", "HTTP_CONTENT_MD5", "RAW_URI", "REQUEST_URI")}
            one |= {"REQUEST_METHOD": "DELETE", "PATH_INFO": f"{environ['PATH_INFO'].rstrip('/')}/{key}",
                    "QUERY_STRING": "", "CONTENT_LENGTH": "0", "wsgi.input": io.BytesIO()}
            b"".join(moto(one, lambda *args: None))  # the store deletes the others, one by one
            answer.append(f"<Deleted><Key>{key}</Key></Deleted>")
        start_response("200 OK", [("Content-Type", "application/xml")])
        return [f'<?xml version="1.0" encoding="UTF-8"?><DeleteResult>{"".join(answer)}</DeleteResult>'.encode()]

    with moto_in_env(store, monkeypatch):
        yield keep


def test_an_overwrite_fails_naming_an_old_part_the_store_did_not_delete(undeletable_store):
    """--mode overwrite deleted the old output through s3fs's recursive delete, which passes over the keys that the
    store's answer says it did not delete: the job went on, and its output held an old part beside its own. It
    fails now before any work, naming the part; a store that deletes them all leaves nothing of the old output."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs

    from ce_ray.output_state import JOB, REJECTS, RESULTS, STATE
    from ce_ray.sink import OutputError, prepare_output

    bucket, output = "ce-ray-overwritten", "s3://ce-ray-overwritten/out"
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)

    def old_output():
        for i in range(3):
            with fs.open(f"{bucket}/out/{RESULTS}/part-{i:05d}.parquet", "wb") as f:
                pq.write_table(pa.table({"query": ["a query"], "score": [0.5]}), f)
        fs.pipe({f"{bucket}/out/{REJECTS}/part-00000.parquet": b"rejected", f"{bucket}/out/_SUCCESS": b"{}",
                 f"{bucket}/out/{STATE}/{JOB}": b"{}", f"{bucket}/out/eval.json": b"{}"})

    old_output()
    undeletable_store["keys"] = r"results/part-00001\.parquet$"
    with pytest.raises(OutputError, match=rf"cannot write the output {output}: the store did not delete 1 of 6 "
                                          rf"object\(s\), e.g. {bucket}/out/{RESULTS}/part-00001\.parquet: "
                                          "AccessDenied Access Denied"):
        prepare_output(output, "overwrite", job={"model": "m"})
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/out/_SUCCESS")  # deleted first: the old output is no finished one
    undeletable_store["keys"] = None
    old_output()
    prepare_output(output, "overwrite", job={"model": "m"})
    fs.invalidate_cache()
    assert fs.find(f"{bucket}/out") == [f"{bucket}/out/{STATE}/{JOB}"]


def test_a_resume_looks_up_success_once_and_opens_no_folder_as_a_file(counting_store, monkeypatch):
    """A resume looked up the output's `_SUCCESS` 5 times (whether the output had results, twice; whether its job
    finished; before deleting it, twice) and whether the output is a file twice (the job's check, then again as
    it prepared the output). Once each now, the delete of `_SUCCESS` one request. Opening a folder as a file, which
    fails, left the file that s3fs opened to look it up open."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs

    from ce_ray.output_state import JOB, RESULTS, STATE
    from ce_ray.sink import INPUT_ROWS, prepare_output, resume_state
    from ce_ray.storage import filesystem

    bucket, output = "ce-ray-resumed", "s3://ce-ray-resumed/out"
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    for i in range(3):  # a finished output: each input's part holds its row count
        table = pa.table({"query": ["a query"], "document": ["a document"]})
        with fs.open(f"{bucket}/out/{RESULTS}/in-0000000{i}-r000000000000.parquet", "wb") as f:
            pq.write_table(table.replace_schema_metadata({INPUT_ROWS: b"1"}), f)
    fs.pipe({f"{bucket}/out/_SUCCESS": b"{}", f"{bucket}/out/{STATE}/{JOB}": b'{"model": "m"}'})
    requests = counting_store.requests
    requests.clear()
    state = resume_state(output, {"model": "m"})
    assert state.finished and len(state.complete) == 3
    assert len(prepare_output(output, "resume", job={"model": "m"}, resume=state, checked=True).parts) == 3
    assert [method for method, path in requests if path == f"/{bucket}/out/_SUCCESS"] == ["HEAD"]
    assert not [path for _, path in requests if path == f"/{bucket}/out"]  # checked by the job, before its work
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/out/_SUCCESS")

    opened = []
    input_fs, path = filesystem(output)
    s3, s3_open = input_fs.handler.fs, input_fs.handler.fs.open
    monkeypatch.setattr(s3, "open", lambda *args, **kwargs: opened.append(s3_open(*args, **kwargs)) or opened[-1])
    with pytest.raises(FileNotFoundError):
        input_fs.open_input_file(f"{path}/{RESULTS}")
    assert len(opened) == 1 and opened[0].closed


def test_eval_of_an_output_reads_its_success_once(counting_store):
    """`ce-ray eval` of a job's output read its `_SUCCESS` twice (for the job's settings, then for the parts it
    counts), looked up whether the folder is an output three times and whether it is a folder four: 28 requests for
    an output of one part. Each once now, and the folder's look-up not at all (an output is one)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs

    from ce_ray.config import EvalConfig
    from ce_ray.evaluate import run_eval
    from ce_ray.output_state import JOB, RESULT_PARTS, RESULT_ROWS, RESULTS, STATE

    bucket = "ce-ray-evaluated"
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    with fs.open(f"{bucket}/out/{RESULTS}/part-00000.parquet", "wb") as f:
        pq.write_table(pa.table({"query_id": ["q1", "q1", "q2", "q2"], "score": [0.9, 0.1, 0.2, 0.8],
                                 "label": [1, 0, 0, 1]}), f)
    success = {"rows_in": 4, "rows_scored": 4, RESULT_PARTS: 1, RESULT_ROWS: {"part-00000.parquet": 4}}
    fs.pipe({f"{bucket}/out/_SUCCESS": json.dumps(success).encode(), f"{bucket}/out/{STATE}/{JOB}": b"{}"})
    requests = counting_store.requests
    requests.clear()
    assert run_eval(EvalConfig(input=f"s3://{bucket}/out"))["reranked"]["ndcg@10"] == 1.0
    assert [method for method, path in requests if path == f"/{bucket}/out/_SUCCESS"] == ["HEAD", "GET"]  # one read
    assert [path for _, path in requests].count(f"/{bucket}/out/{STATE}") == 1
    assert len(requests) <= 13  # 28 before; one the look-up of the input's bucket, before any work


def test_candidates_and_eval_look_at_their_buckets_before_anything_else(tmp_path, s3_server, monkeypatch, capsys):
    """`ce-ray candidates` into a bucket that is not there made it (s3fs makes a bucket asked for a folder in it: on
    AWS, a typo's bucket in the user's account), where score and rerank refuse it; without credentials it, and
    `ce-ray eval` of an `s3://` input, failed in a traceback, exit 1, candidates saying `rerun it with --mode
    overwrite`. Both look at their buckets first now: one line, exit 2."""
    from ce_ray.cli import main
    from conftest import SCIFACT

    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    fs = s3fs_for(s3_server)
    fs.mkdir("ce-ray-there")
    endpoint = s3_server["AWS_ENDPOINT_URL"]
    assert main(["candidates", "--data", str(SCIFACT), "--output", "s3://typo-bucket/cand"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ce-ray candidates: error: bucket typo-bucket does not exist at {endpoint}")
    assert "typo-bucket" not in [bucket.rstrip("/") for bucket in fs.ls("", refresh=True)]
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for argv in (["candidates", "--data", str(SCIFACT), "--output", "s3://ce-ray-there/cand"],
                 ["eval", "--input", "s3://ce-ray-there/out"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith(f"ce-ray {argv[0]}: error: cannot reach s3://ce-ray-there at "
                                               f"{endpoint}: NoCredentialsError"), err[-2000:]
        assert "Traceback" not in err


def model_in_store(s3_server, monkeypatch, tmp_path, model, bucket: str):
    """An s3fs of the server, where `model` is uploaded as `s3://<bucket>/models/reranker`; this process reads the
    server through the environment, and its model copies go into `tmp_path/cache`."""
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CE_RAY_CACHE", str(tmp_path / "cache"))
    fs = s3fs_for(s3_server)
    fs.mkdir(bucket)
    fs.put(str(model) + "/", f"{bucket}/models/reranker/", recursive=True)
    return fs


def test_an_s3_model_is_its_objects_whatever_spells_the_endpoint(tmp_path, tiny_model, s3_server, monkeypatch):
    """The same objects are the same model where the endpoint is spelt otherwise (a trailing `/`): it was another
    version, and the resume of an output scored with it was refused as of another model. A file of the model named
    for its folder is said to be one, as a local one is (it failed as a cache that cannot be written). An endpoint
    the AWS config file gives (`endpoint_url`) is the one errors name: they said AWS S3."""
    from ce_ray.messages import InputError
    from ce_ray.model_folder import ModelError, local_model_path, model_version
    from ce_ray.storage import check_s3_access

    bucket, uri = "ce-ray-model-spelt", "s3://ce-ray-model-spelt/models/reranker"
    model_in_store(s3_server, monkeypatch, tmp_path, tiny_model, bucket)
    version, copy = model_version(uri), local_model_path(uri)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["AWS_ENDPOINT_URL"] + "/")
    assert model_version(uri) == version and local_model_path(uri) == copy
    with pytest.raises(ModelError, match=rf"^model {uri}/config.json is a file: give the model's folder"):
        local_model_path(f"{uri}/config.json")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    (tmp_path / "aws-config").write_text(f"[default]\nendpoint_url = {s3_server['AWS_ENDPOINT_URL']}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    with pytest.raises(InputError, match=rf"^bucket no-such-bucket does not exist at {s3_server['AWS_ENDPOINT_URL']}$"):
        check_s3_access("s3://no-such-bucket/pairs/")


def test_a_prefix_is_read_as_one_though_an_object_has_its_name_and_a_location_without_a_bucket_is_named(
        s3_server, monkeypatch):
    """`s3://b/dup/` read the object `dup` where S3 held it beside the prefix `dup/` (a format it could not tell, or
    other rows, exit 0); an object named with a `/` after it is still read, as a local file is. `s3://` and
    `s3:///pairs/` failed as `cannot reach s3:// at <endpoint>` with botocore's regex of bucket names."""
    from ce_ray.input_files import list_files
    from ce_ray.messages import InputError

    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    fs = s3fs_for(s3_server)
    fs.mkdir("ce-ray-dup")
    frame = pd.DataFrame({"query": ["q"], "document": ["d"]})
    for key in ("dup/part.parquet", "alone.parquet"):
        with fs.open(f"ce-ray-dup/{key}", "wb") as f:
            frame.to_parquet(f)
    fs.pipe("ce-ray-dup/dup", b"q Q0 d 1 0.5 bm25\n")  # a TREC run
    assert list_files("s3://ce-ray-dup/dup/").files == ["ce-ray-dup/dup/part.parquet"]
    assert list_files("s3://ce-ray-dup/dup", input_format="parquet").files == ["ce-ray-dup/dup"]
    assert list_files("s3://ce-ray-dup/alone.parquet/").files == ["ce-ray-dup/alone.parquet"]
    for uri in ("s3://", "s3:///pairs/"):
        with pytest.raises(InputError, match=rf"^{uri} names no bucket: an S3 location is s3://<bucket>/<prefix>$"):
            list_files(uri)
    # So for eval (the object a TREC run), and for an output inside the prefix, refused as inside its input.
    from ce_ray.evaluate import is_trec_run
    from ce_ray.storage import refuse_written_inside

    assert is_trec_run("s3://ce-ray-dup/dup") and not is_trec_run("s3://ce-ray-dup/dup/")
    with pytest.raises(InputError, match=r"^the output s3://ce-ray-dup/dup/scored is inside the input"):
        refuse_written_inside("s3://ce-ray-dup/dup/", "s3://ce-ray-dup/dup/scored")


def test_objects_whose_names_lead_out_of_a_model_or_checkpoint_are_not_copied(tmp_path, tiny_model, s3_server,
                                                                              monkeypatch):
    """An object store holds keys with `..` or `//` parts: an `s3://` model with `model/../../<path>` or
    `model//<absolute path>`, or such a file planted in a run's checkpoint, was copied where its name led, before
    any check (exit 2 for a model of no weights, the file written all the same; a run resumed from the checkpoint).
    Neither is copied now: each is refused, naming the object."""
    import pyarrow.fs as pafs
    import ray.train

    from ce_ray.checkpoints import IncompleteCheckpoint, checkpoint_folder
    from ce_ray.model_folder import ModelError, local_model_path

    fs = model_in_store(s3_server, monkeypatch, tmp_path, tiny_model, "ce-ray-planted")
    outside = tmp_path / "outside"
    outside.mkdir()
    depth = "../" * len(outside.parts)
    for key in (f"models/reranker/{depth}{outside}/up.txt", f"models/reranker/{outside}/absolute.txt"):
        fs.pipe(f"ce-ray-planted/{key}", b"x")
    names = fs.find("ce-ray-planted/models/reranker")
    assert any("/../" in name for name in names) and any("reranker//" in name for name in names), names
    with pytest.raises(ModelError, match=r"^model s3://ce-ray-planted/models/reranker holds an object whose name "
                                         r"leads out of its folder, '.*': it is not copied; remove it from the store$"):
        local_model_path("s3://ce-ray-planted/models/reranker")

    fs.put(str(tiny_model) + "/", "ce-ray-planted/run/checkpoint_000002/", recursive=True)
    fs.pipe(f"ce-ray-planted/run/checkpoint_000002/{depth}{outside}/resumed.txt", b"x")
    checkpoint = ray.train.Checkpoint("ce-ray-planted/run/checkpoint_000002",
                                      filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)))
    with pytest.raises(IncompleteCheckpoint, match=r"^the checkpoint s3://ce-ray-planted/run/checkpoint_000002 holds "
                                                   r"a file whose name leads out of its folder, '(\.\./)+"):
        checkpoint_folder(checkpoint, "s3://ce-ray-planted/run/checkpoint_000002", str(tmp_path / "into"))
    assert list(outside.iterdir()) == [] and not (tmp_path / "into").exists()


def test_a_copy_left_by_a_killed_process_is_removed(tmp_path, tiny_model, s3_server, monkeypatch):
    """A copy of an `s3://` model that its process left part-way, killed (SIGKILL, out of memory), stayed in the
    cache for good (a model's size on each node, at each kill). It is removed with the folder's older copies, once
    no process holds it; one a process copies still, or began this minute (not yet held), stays."""
    import fcntl

    from ce_ray.model_folder import local_model_path

    model_in_store(s3_server, monkeypatch, tmp_path, tiny_model, "ce-ray-model-killed")
    copy = local_model_path("s3://ce-ray-model-killed/models/reranker")
    left, copying, begun = (Path(f"{copy}.partial-{pid}") for pid in (999991, 999992, 999993))
    for partial in (left, copying, begun):
        partial.mkdir()
        (partial / "model.safetensors").write_bytes(b"part of a copy")
    for partial in (left, copying):
        os.utime(partial, (0, 0))
    held = os.open(copying, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        assert local_model_path("s3://ce-ray-model-killed/models/reranker") == copy
        assert not left.exists() and copying.exists() and begun.exists()
        assert sorted(p.name for p in Path(copy).parent.iterdir()) == sorted([Path(copy).name, copying.name,
                                                                              begun.name])
    finally:
        os.close(held)


def test_a_model_written_again_under_its_key_is_copied_again(tmp_path, tiny_model, s3_server, monkeypatch):
    """An `s3://` model was copied into the local cache once and that copy used forever after: a model trained again
    into the same output (or uploaded again) was scored with its old weights, silently. The copy is named by the
    objects as the store lists them now (their ETags): the new weights are copied, the unchanged model is not."""
    import shutil

    from conftest import build_tiny_model

    from ce_ray.model_folder import local_model_path

    bucket, uri = "ce-ray-model-again", "s3://ce-ray-model-again/models/reranker"
    fs = model_in_store(s3_server, monkeypatch, tmp_path, tiny_model, bucket)
    first = local_model_path(uri)
    assert (Path(first) / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert local_model_path(uri) == first  # unchanged: the copy is used again
    retrained = build_tiny_model(tmp_path / "retrained", seed=1)
    fs.put(str(retrained / "model.safetensors"), f"{bucket}/models/reranker/model.safetensors")
    again = local_model_path(uri)
    assert again != first
    assert (Path(again) / "model.safetensors").read_bytes() == (retrained / "model.safetensors").read_bytes()
    assert sorted(p.name for p in Path(again).iterdir()) == sorted(p.name for p in Path(first).iterdir())
    shutil.rmtree(again)  # removed by hand, though this process holds it: copied again
    assert local_model_path(uri) == again and (Path(again) / "model.safetensors").is_file()


def test_a_cache_that_cannot_be_written_is_named(tmp_path, tiny_model, s3_server, monkeypatch):
    """An `s3://` model is copied into ce-ray's cache: one that cannot be written (a container's HOME of another
    user, a read-only folder; here under a file) failed the job with a traceback and Python's PermissionError, its
    last line saying that --mode resume finishes it, which failed the same way."""
    from ce_ray.model_folder import ModelError, local_model_path

    model_in_store(s3_server, monkeypatch, tmp_path, tiny_model, "ce-ray-cache-refused")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CE_RAY_CACHE", str(tmp_path / "file" / "ce-ray"))
    with pytest.raises(ModelError, match=r"^cannot copy model s3://ce-ray-cache-refused/models/reranker into "
                                         r"ce-ray's cache: Not a directory: \S+/file/ce-ray/models/\w+-\w+ "
                                         r"\(CE_RAY_CACHE: a folder to copy models into\)$"):
        local_model_path("s3://ce-ray-cache-refused/models/reranker")
    # A cache whose disk fills as the model is copied: a write's error names no file, and it failed the same way,
    # each try leaving its part of a copy behind.
    import builtins
    import errno

    from ce_ray import model_folder

    class Full:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("CE_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(model_folder, "open", lambda path, mode="r": Full(builtins.open(path, mode)) if mode == "wb"
                        else builtins.open(path, mode), raising=False)
    with pytest.raises(ModelError, match=r"^cannot copy model s3://ce-ray-cache-refused/models/reranker into "
                                         rf"ce-ray's cache: No space left on device: {tmp_path}/cache/models "):
        local_model_path("s3://ce-ray-cache-refused/models/reranker")
    assert os.listdir(tmp_path / "cache" / "models") == []


def test_a_trained_models_copy_leaves_its_checkpoints_out(tmp_path, tiny_model, s3_server, monkeypatch):
    """A model that train wrote to S3 holds its run's checkpoints (the default storage_path, <output>/checkpoints):
    every node's copy of it took them too, weights and optimizer state several times the model's size, and a run
    writing a checkpoint while a job copied the model failed the copy as a model written again. The copy is the
    model's files alone, named by them: a new checkpoint leaves it as it is."""
    from ce_ray.model_folder import local_model_path

    bucket, uri = "ce-ray-model-checkpoints", "s3://ce-ray-model-checkpoints/models/reranker"
    fs = model_in_store(s3_server, monkeypatch, tmp_path, tiny_model, bucket)
    fs.put(str(tiny_model) + "/", f"{bucket}/models/reranker/checkpoints/reranker/checkpoint_0000004/model/",
           recursive=True)
    fs.pipe(f"{bucket}/models/reranker/checkpoints/reranker/checkpoint_0000004/state.pt", b"optimizer state")
    copy = local_model_path(uri)
    assert sorted(p.name for p in Path(copy).iterdir()) == sorted([".ce-ray-complete", *os.listdir(tiny_model)])
    fs.pipe(f"{bucket}/models/reranker/checkpoints/reranker/checkpoint_0000008/state.pt", b"a later checkpoint")
    assert local_model_path(uri) == copy


def score_rewriting_the_model_after(step: str, tmp_path, tiny_model, s3_server, bucket: str):
    """`ce-ray score` of 24 WikiQA pairs with `s3://<bucket>/models/reranker` (`tiny_model`), as the command line
    runs it, the model's weights written again (another seed's) as soon as the job's `score.<step>` returns. Gives
    the job's run, an s3fs of the server, and the weights written."""
    import subprocess
    import sys

    from conftest import ROOT, build_tiny_model, wikiqa_pairs

    fs = s3fs_for(s3_server)
    fs.mkdir(bucket)
    fs.put(str(tiny_model) + "/", f"{bucket}/models/reranker/", recursive=True)
    wikiqa_pairs("test", 24)[["query", "document"]].to_parquet(tmp_path / "pairs.parquet")
    retrained = build_tiny_model(tmp_path / "retrained", seed=1) / "model.safetensors"
    script = (f"import importlib, sys, s3fs\nscore = importlib.import_module('ce_ray.score')\nstep = score.{step}\n"
              "def rewritten(*args):\n    done = step(*args)\n"
              f"    s3fs.S3FileSystem().put({str(retrained)!r}, '{bucket}/models/reranker/model.safetensors')\n"
              f"    return done\nscore.{step} = rewritten\nfrom ce_ray.cli import main\nsys.exit(main(sys.argv[1:]))")
    env = {**os.environ, **s3_server, "CE_RAY_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", script, "score", "--model", f"s3://{bucket}/models/reranker",
                          "--input", str(tmp_path / "pairs.parquet"), "--output", str(tmp_path / "out")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    return run, fs, retrained


def test_a_job_scores_with_the_model_it_listed_though_it_is_written_again(tmp_path, tiny_model, s3_server):
    """Each replica listed an `s3://` model again as it started: a model written again while a job ran was scored
    with its new weights by the replicas that started after, one output of two models, silently. The driver lists it
    once and the replicas copy those objects: the model rewritten after the driver's listing, before the replicas
    start, every row is scored with the weights listed."""
    bucket = "ce-ray-model-listed"
    run, fs, retrained = score_rewriting_the_model_after("scoring_model_ahead", tmp_path, tiny_model, s3_server,
                                                         bucket)
    assert run.returncode == 0, run.stderr[-3000:]
    assert fs.cat(f"{bucket}/models/reranker/model.safetensors") == retrained.read_bytes()  # rewritten meanwhile
    listed = run_cli("score", "--model", str(tiny_model), "--input", str(tmp_path / "pairs.parquet"), "--output",
                     str(tmp_path / "listed"))
    assert listed.returncode == 0, listed.stderr[-3000:]
    np.testing.assert_allclose(read_results(tmp_path / "out")["score"], read_results(tmp_path / "listed")["score"],
                               atol=1e-6)


def test_the_version_a_job_records_is_the_one_it_scores_with(tmp_path, tiny_model, s3_server):
    """A job listed an `s3://` model twice: for the version its output records (which a resume must share), then for
    the objects its replicas copy. A model written again between the two was recorded as the old and scored as the
    new: a resume after the rewrite, refused by version, was the one that would not have mixed two models. One
    listing now serves both: a model written again after it is not copied (a clear error, nothing written)."""
    bucket = "ce-ray-model-version"
    run, fs, retrained = score_rewriting_the_model_after("job_settings", tmp_path, tiny_model, s3_server, bucket)
    assert fs.cat(f"{bucket}/models/reranker/model.safetensors") == retrained.read_bytes()
    assert run.returncode != 0
    assert (f"model s3://{bucket}/models/reranker was written again after this job listed it (model.safetensors is "
            "not the object it listed)") in run.stderr, run.stderr[-3000:]
    assert not (tmp_path / "out").exists() or not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_model_written_again_after_its_listing_is_not_copied(tmp_path, tiny_model, s3_server, monkeypatch):
    """A process that copies a model by the job's listing (a replica on another node, no copy there yet) fails
    naming the model where an object is no longer the one listed, rather than copying other weights."""
    from conftest import build_tiny_model

    from ce_ray.model_folder import ModelError, local_model_path, model_files

    bucket, uri = "ce-ray-model-relisted", "s3://ce-ray-model-relisted/models/reranker"
    fs = model_in_store(s3_server, monkeypatch, tmp_path, tiny_model, bucket)
    files = model_files(uri)
    fs.put(str(build_tiny_model(tmp_path / "retrained", seed=1) / "model.safetensors"),
           f"{bucket}/models/reranker/model.safetensors")
    with pytest.raises(ModelError) as error:
        local_model_path(uri, files)
    assert str(error.value) == (f"model {uri} was written again after this job listed it (model.safetensors is not "
                                "the object it listed): the job scores or trains with one model; run it again")
    assert not (tmp_path / "cache" / "models").exists() or not os.listdir(tmp_path / "cache" / "models")
    fs.put(str(tiny_model / "model.safetensors"), f"{bucket}/models/reranker/model.safetensors")  # as listed again
    copy = local_model_path(uri, files)
    assert (Path(copy) / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()


def test_a_models_older_copies_go_once_no_job_reads_them(tmp_path, tiny_model, s3_server):
    """Each rewrite of an `s3://` model left another whole copy of it in the cache, forever. A new copy removes the
    folder's older ones, but not one that a running job holds (a process that asked for it, while it lives): that
    one goes with the first use of a copy after the job. Another folder's copy stays."""
    import subprocess
    import sys

    from conftest import ROOT, build_tiny_model

    bucket, uri = "ce-ray-model-copies", "s3://ce-ray-model-copies/models/reranker"
    fs = s3fs_for(s3_server)
    fs.mkdir(bucket)
    fs.put(str(tiny_model) + "/", f"{bucket}/models/reranker/", recursive=True)
    fs.put(str(tiny_model) + "/", f"{bucket}/models/other/", recursive=True)
    env = {**os.environ, **s3_server, "CE_RAY_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    script = "import sys; from ce_ray.model_folder import local_model_path; print(local_model_path(sys.argv[1]))"

    def copy_of(model: str) -> str:  # a job that copies the model, reads it and ends
        run = subprocess.run([sys.executable, "-c", script, model], env=env, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    # a job still running with the old weights (and another folder's): it holds its copies until it ends
    running = subprocess.Popen([sys.executable, "-c", script + "; print(local_model_path(sys.argv[2]), flush=True); "
                                "sys.stdin.read()", uri, f"s3://{bucket}/models/other"],
                               env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        old, other = running.stdout.readline().strip(), running.stdout.readline().strip()
        fs.put(str(build_tiny_model(tmp_path / "retrained", seed=1) / "model.safetensors"),
               f"{bucket}/models/reranker/model.safetensors")
        new = copy_of(uri)
        assert new != old and os.path.isdir(old)  # the running job's copy is kept
    finally:
        running.communicate("", timeout=60)
    assert copy_of(uri) == new  # used again, after the job with the old weights ended
    copies = tmp_path / "cache" / "models"
    assert sorted(os.listdir(copies)) == sorted([os.path.basename(new), os.path.basename(other)])
    fs.put(str(build_tiny_model(tmp_path / "third", seed=2) / "model.safetensors"),
           f"{bucket}/models/reranker/model.safetensors")
    third = copy_of(uri)  # no job holds the last copy: it goes as soon as the new one is complete
    assert sorted(os.listdir(copies)) == sorted([os.path.basename(third), os.path.basename(other)])


def test_an_endpoint_that_holds_a_password_is_named_without_it(monkeypatch):
    """`AWS_ENDPOINT_URL=http://user:pass@host` (which never works: the client refuses a user in the URL) was
    printed whole in the error that said so, the password with it."""
    from ce_ray.messages import InputError
    from ce_ray.storage import check_s3_access

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: nothing answers there
        for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://admin:PASSWORDinURL@127.0.0.1:{port}",
                            "AWS_MAX_ATTEMPTS": "1"}.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(InputError, match=rf"^cannot reach s3://bkt at http://127\.0\.0\.1:{port}: ") as refused:
            check_s3_access("s3://bkt/pairs")
    assert "PASSWORDinURL" not in str(refused.value) and "admin" not in str(refused.value)
