"""Shared fixtures: paths to ../shared, one local Ray for the session, tiny random rerankers."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

# ce-ray's cache (models copied from S3, tokenizer facts) goes to a folder of the run's own, not the user's.
# Removed as the run ends (each run left one in /tmp, up to 20 MB of models and tokenizer facts); Ray's own exit
# handler, registered after this one, runs before it and stops the workers that wrote there.
os.environ["CE_RAY_CACHE"] = tempfile.mkdtemp(prefix="ce-ray-test-cache-")
atexit.register(shutil.rmtree, os.environ["CE_RAY_CACHE"], ignore_errors=True)

ROOT = Path(__file__).resolve().parent.parent
SHARED = (ROOT / ".." / "shared").resolve()
L12 = SHARED / "models" / "ms-marco-MiniLM-L12-v2"
WIKIQA = SHARED / "data" / "wikiqa"
SCIFACT = SHARED / "data" / "scifact"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# A time in a progress line (`progress.duration`): 42s, 3m05s, 2h07m. A test job on a busy machine runs past a minute.
DURATION = r"(?:\d+s|\d+m\d\ds|\d+h\d\dm)"


def build_tiny_model(path: Path, layers: int = 2, hidden: int = 32, seed: int = 0, init_range: float = 0.02) -> Path:
    """A random BERT reranker with the real tokenizer: the shapes of the shared config, made tiny. Weights
    drawn wider than BERT's (`init_range` 0.5 against 0.02) spread its scores over (0, 1)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(L12)
    config.num_hidden_layers = layers
    config.hidden_size = hidden
    config.num_attention_heads = 2
    config.intermediate_size = hidden * 2
    config.initializer_range = init_range
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.save_pretrained(path, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(L12 / name, path / name)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-reranker"))


@pytest.fixture(scope="session")
def ray_local():
    """One in-process local Ray for the tests that use the Python API or in-process jobs."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if not ray.is_initialized():
        # address="local": always a new in-process Ray, never a cluster that `ray start` left on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def spread_model(tiny_model, path):
    """The tiny reranker with its classifier scaled up: random BERT scores crowd within 1e-6 of each
    other, closer than CrossEncoder parity, and both sides must see the same order."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model, path)
    weights = load_file(path / "model.safetensors")
    for name in ("classifier.weight", "classifier.bias"):
        weights[name] = weights[name] * 300
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


def interrupted_as_in_a_terminal(command: list, after: str, wait: float = 3.0, sent: str = "SIGINT",
                                 again: str = "") -> tuple:
    """Runs `ce-ray <command>` as a terminal runs it, Ctrl-C reaching it (a test run started in the background
    of a shell ignores SIGINT, and so would the job it starts), sends SIGINT (or the signal `sent`: SIGTERM, a
    scheduler's stop) `wait` seconds after a line of its output holds `after`, and SIGINT again as soon as a line
    of its errors holds `again` (a second, impatient Ctrl-C), and returns its exit code and stderr."""
    import signal
    import subprocess
    import sys

    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_TMPDIR": tempfile.mkdtemp(prefix="cer-", dir="/tmp")}
    as_in_a_terminal = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                        f"sys.argv = ['ce-ray', *{command!r}]; runpy.run_module('ce_ray.cli', run_name='__main__')")
    job = subprocess.Popen([sys.executable, "-c", as_in_a_terminal], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        for line in job.stdout:
            if after in line:
                break
        time.sleep(wait)
        job.send_signal(getattr(signal, sent))
        said = []
        for line in job.stderr if again else ():
            said.append(line)
            if again in line:
                job.send_signal(signal.SIGINT)
                break
        _, errors = job.communicate(timeout=120)
    finally:
        job.kill()
    return job.returncode, "".join(said) + errors


def undecodable_parquet(path: Path, frame) -> Path:
    """`frame` as a parquet file with a data page that cannot be decoded (bits flipped on a disk, a copy gone
    wrong), its footer whole: the footer's checks pass, and the job fails mid-way where it reads the page, with
    pyarrow's `ArrowInvalid: Index not in dictionary bounds` (a ValueError), which names no file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, compression="none")
    whole = path.read_bytes()
    column = pq.ParquetFile(path).metadata.row_group(0).column(frame.columns.get_loc("document"))
    for offset in range(column.data_page_offset, column.data_page_offset + column.total_compressed_size):
        path.write_bytes(whole[:offset] + b"\xff\xff\xff\xff" + whole[offset + 4:])
        try:
            pq.read_table(path)
        except pa.ArrowInvalid as e:
            if "dictionary" in str(e):
                return path
        except Exception:  # another failure (a page header that cannot be read): another offset
            pass
    raise AssertionError("no offset in the document column's page makes the file undecodable")


@contextlib.contextmanager
def files_of_at_most(size: int):
    """A disk that does not take a file past `size` bytes, as a full one does not: this process's writes beyond it
    fail (EFBIG; `RLIMIT_FSIZE`, its signal ignored), other processes' (Ray's) are as they were."""
    import resource
    import signal

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def wikiqa_pairs(split: str = "test", n: int | None = None):
    """WikiQA (question, sentence) pairs as a pandas frame with query/document columns."""
    import pandas as pd

    df = pd.read_csv(WIKIQA / f"WikiQA-{split}.tsv.gz", sep="\t", quoting=3, keep_default_na=False)
    df = df.rename(columns={"Question": "query", "Sentence": "document", "QuestionID": "query_id",
                            "SentenceID": "doc_id", "Label": "label"})
    return df if n is None else df.head(n)


# The whole suite must end inside CI's limit, whatever hangs: past this budget the remaining tests fail at
# once with a clear reason, so that the run still reports which test used the time. CI allows 90 minutes,
# of which setting up takes ~5: 75 minutes of tests leave the last test and the report ten (the suite took
# ~50 minutes on a slow CI machine in 2026-12).
SUITE_BUDGET_S = float(os.environ.get("CE_RAY_TEST_BUDGET_S", 4500))
_SUITE_START = time.monotonic()


def scifact_pairs(n: int) -> pd.DataFrame:
    """SciFact (claim, abstract) pairs from the test qrels; abstracts run past 512 tokens."""
    import json

    import pandas as pd

    queries = {q["_id"]: q["text"] for q in map(json.loads, open(SCIFACT / "queries.jsonl"))}
    corpus = {d["_id"]: (d["title"] + " " + d["text"]).strip() for d in map(json.loads, open(SCIFACT / "corpus.jsonl"))}
    qrels = pd.read_csv(SCIFACT / "qrels" / "test.tsv", sep="\t", dtype=str)
    rows = [(queries[q], corpus[d]) for q, d in zip(qrels["query-id"], qrels["corpus-id"])]
    # Longest abstracts first, so that truncation is exercised for sure.
    rows.sort(key=lambda r: -len(r[1]))
    return pd.DataFrame(rows[:n], columns=["query", "document"])


# A test started within the budget ends 5 minutes after it, whatever its own timeout (one started at 4,499 s under
# test_memory's 1,500 s ran past CI's 90 minutes): 80 minutes of tests and ~5 of setting up leave the report five.
SUITE_END_S = SUITE_BUDGET_S + 300


def pytest_runtest_setup(item):
    spent = time.monotonic() - _SUITE_START
    if spent > SUITE_BUDGET_S:
        pytest.fail(f"the suite's time budget ({SUITE_BUDGET_S:.0f} s) is spent ({spent:.0f} s); not started")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """The test's timeout (pytest-timeout's, whose hook this one runs before) cut to what is left of SUITE_END_S."""
    left = SUITE_END_S - (time.monotonic() - _SUITE_START)
    marker = item.get_closest_marker("timeout")
    own = marker.args[0] if marker is not None and marker.args else float(item.config.getini("timeout") or 0)
    if left >= 1 and (not own or own > left):
        item.add_marker(pytest.mark.timeout(int(left)), append=False)
    yield


def pytest_runtest_logreport(report):
    """Print a failure as it happens, not only in the summary: a run cut short still shows why."""
    if report.failed:
        print(f"\n--- {report.nodeid} ({report.when}) failed after {report.duration:.0f} s ---\n"
              f"{report.longreprtext[-6000:]}\n---", flush=True)
