"""Bounded streaming: scoring 5x more pairs must not take more memory, in the driver or in any worker.

Each size runs as its own `ce-ray score` process with a Ray of its own, sampled with psutil every 0.25 s.
CE_RAY_MEMORY_ROWS (default "100000,500000") sets the sizes; the figures go to stdout (pytest -s).
One large file (one parquet row group, one JSON Lines file) is read a chunk at a time, never whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, build_tiny_model

ROWS_PER_FILE = 50_000
# Bytes a peak may grow from the smallest size to the largest: one process, and all workers together
# (their sum also moves with how many idle workers Ray keeps at that moment).
GROWTH_LIMIT = {"driver": 150 * 2**20, "worker": 150 * 2**20, "workers": 300 * 2**20}
WORDS = np.array("the of ray data score rank query document model token batch cluster actor "
                 "worker stream block memory disk node python arrow file".split())


def write_pairs(folder, rows: int, seed: int = 0) -> None:
    """Short generated pairs (a 4-word query, a 12-word document) in parquet files of 50k rows."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for start in range(0, rows, ROWS_PER_FILE):
        n = min(ROWS_PER_FILE, rows - start)
        words = WORDS[rng.integers(0, len(WORDS), size=(n, 16))]
        queries = [" ".join(w) for w in words[:, :4]]
        documents = [" ".join(w) for w in words[:, 4:]]
        table = pa.table({"pair_id": np.arange(start, start + n), "query": queries, "document": documents})
        pq.write_table(table, folder / f"pairs-{start // ROWS_PER_FILE:04d}.parquet")


def sample_peaks(pid: int, stop: threading.Event, peaks: dict) -> None:
    driver = psutil.Process(pid)
    while not stop.is_set():
        try:
            peaks["driver"] = max(peaks["driver"], driver.memory_info().rss)
            workers = [p for p in driver.children(recursive=True) if p.name().startswith("ray::")
                       or "default_worker" in " ".join(p.cmdline())]
            sizes = []
            for worker in workers:
                try:
                    sizes.append(worker.memory_info().rss)
                except psutil.Error:
                    pass
            if sizes:
                peaks["worker"] = max(peaks["worker"], max(sizes))
                peaks["workers"] = max(peaks["workers"], sum(sizes))
        except psutil.Error:
            pass
        stop.wait(0.25)


def run_job(model, folder, out) -> dict:
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    peaks = {"driver": 0, "worker": 0, "workers": 0}
    stop = threading.Event()
    start = time.monotonic()
    job = subprocess.Popen([sys.executable, "-m", "ce_ray.cli", "score", "--model", str(model), "--input",
                            str(folder), "--output", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    sampler = threading.Thread(target=sample_peaks, args=(job.pid, stop, peaks), daemon=True)
    sampler.start()
    try:
        log, _ = job.communicate(timeout=700)
    finally:
        stop.set()
        sampler.join()
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, log[-3000:]
    return {**peaks, "seconds": time.monotonic() - start, "log": log}


@pytest.mark.timeout(1500)
def test_peak_memory_does_not_grow_with_input_size(tmp_path):
    sizes = [int(n) for n in os.environ.get("CE_RAY_MEMORY_ROWS", "100000,500000").split(",")]
    model = build_tiny_model(tmp_path / "model", layers=1, hidden=32)
    figures = {}
    for rows in sizes:
        write_pairs(tmp_path / f"in-{rows}", rows)
        figures[rows] = run_job(model, tmp_path / f"in-{rows}", tmp_path / f"out-{rows}")
        assert f"rows scored   {rows:,}" in figures[rows]["log"]
        mib = {k: round(v / 2**20) for k, v in figures[rows].items() if k not in ("seconds", "log")}
        print(f"\n{rows:>9,} pairs: {figures[rows]['seconds']:.0f} s, peak RSS MiB {mib}", flush=True)
    small, large = figures[min(sizes)], figures[max(sizes)]
    for key, limit in GROWTH_LIMIT.items():
        assert large[key] - small[key] < limit, (key, small[key] / 2**20, large[key] / 2**20)


BIG_FILE_ROWS = 160_000  # pairs of a 4-word query and a 60-word document, 62 MB in memory


def long_pairs(rows: int, seed: int = 0) -> pa.Table:
    """Pairs as long as MS MARCO's passages, of generated words."""
    rng = np.random.default_rng(seed)
    words = WORDS[rng.integers(0, len(WORDS), size=(rows, 64))]
    return pa.table({"pair_id": np.arange(rows), "query": [" ".join(w) for w in words[:, :4]],
                     "document": [" ".join(w) for w in words[:, 4:]]})


def read_with_peak(chunks) -> tuple:
    """The pair ids of a reader's `chunks`, taken one by one as a read task takes them, and the most bytes
    Arrow held meanwhile."""
    earlier, pool = pa.default_memory_pool(), pa.proxy_memory_pool(pa.default_memory_pool())
    pa.set_memory_pool(pool)
    try:
        ids = [i for chunk in chunks for i in chunk.column("pair_id").to_pylist()]
    finally:
        pa.set_memory_pool(earlier)
    return ids, pool.max_memory()


def test_one_big_row_group_and_one_big_json_lines_file_are_read_in_small_chunks(tmp_path, ray_local):
    """A file's read task holds a chunk at a time, never the file: a parquet file of one row group (pyarrow's
    `row_group_size=len(table)`, DuckDB's and Polars' exports) is read in batches of `rows_per_block` through
    small buffers, and a JSON Lines file in chunks of a few MiB of lines; every row comes, in order."""
    import pyarrow.fs as pafs

    from ce_ray.input_files import check_inputs
    from ce_ray.readers import json_lines_chunks, read_range, read_ranges, tag_rows

    pairs = long_pairs(BIG_FILE_ROWS)
    size = pairs.nbytes
    fs = pafs.LocalFileSystem()
    parquet, lines = str(tmp_path / "pairs.parquet"), str(tmp_path / "pairs.jsonl")
    pq.write_table(pairs, parquet, row_group_size=len(pairs))
    (check,), _ = check_inputs(fs, [parquet], "parquet", ["query"])
    ranges = read_ranges(check, BIG_FILE_ROWS)
    assert len(ranges) == 1 and ranges[0].row_groups == [0]
    ids, peak = read_with_peak(read_range(fs, ranges[0], rows_per_block=4096))
    assert ids == list(range(BIG_FILE_ROWS)) and peak < size / 4, (peak, size)

    pairs.to_pandas().to_json(lines, orient="records", lines=True)
    with fs.open_input_stream(lines) as f:
        ids, peak = read_with_peak(tag_rows(json_lines_chunks(f, lines, text_columns=["query", "document"]), lines))
    assert ids == list(range(BIG_FILE_ROWS)) and peak < size, (peak, size)


def test_long_rows_come_to_tokenizing_and_scoring_in_blocks_that_fit(tmp_path, ray_local, tiny_model, monkeypatch,
                                                                      capsys):
    """Ray Data batches by rows alone: 300 rows of 2.2 MB documents (a web page each) came to a replica as one call
    of 625 MiB, its memory 3.6 GiB, and at the default 4,096 rows a call would have held ~8 GiB. A job's rows of a
    block and of a call are cut where its files' rows are long (`FileCheck.row_bytes`, the longest file's on
    average) to fit `BLOCK_BYTES` (here made small)."""
    import pyarrow.fs as pafs

    import importlib

    from ce_ray.config import ScoreConfig
    from ce_ray.input_files import check_inputs, job_row_bytes
    from ce_ray.score import rows_that_fit, run_score

    fs = pafs.LocalFileSystem()
    words = " ".join(WORDS)
    long_docs = pa.table({"query": ["q"] * 40, "document": [f"{i} " + words * 500 for i in range(40)]})  # 64 KB
    pq.write_table(long_docs, tmp_path / "long.parquet")
    pq.write_table(pa.table({"query": ["q"] * 40, "document": ["d"] * 40}), tmp_path / "short.parquet")
    long_docs.to_pandas().to_json(tmp_path / "long.jsonl", orient="records", lines=True)
    checks, _ = check_inputs(fs, [str(tmp_path / n) for n in ("long.parquet", "short.parquet")], "parquet", ["query"])
    row_bytes = job_row_bytes(checks)
    (line_check,), _ = check_inputs(fs, [str(tmp_path / "long.jsonl")], "jsonl", ["query"])
    for estimate in (row_bytes, line_check.row_bytes):
        assert 64_000 < estimate < 64_100, estimate  # the long file's, not the two files' mean
    # A TSV's header is no row, and a row its first MiB cuts short is at least that long: rows of 1.3 MB were 0 bytes.
    (tmp_path / "long.tsv").write_text("query\tdocument\n" + "".join(f"q\t{words * 10_000}\n" for _ in range(3)))
    (tsv_check,), _ = check_inputs(fs, [str(tmp_path / "long.tsv")], "tsv", ["query"])
    assert tsv_check.row_bytes > 1_000_000, tsv_check.row_bytes
    config = ScoreConfig(model="m")
    assert rows_that_fit(config, False, 0.0) == (4096, 4096) and rows_that_fit(config, True, 0.0) == (4096, 32768)
    assert rows_that_fit(config, False, 2.2e6) == (61, 61) and rows_that_fit(config, True, 2.2e6) == (61, 244)
    assert rows_that_fit(ScoreConfig(model="m", rows_per_block=16), False, 2.2e6) == (16, 16)

    monkeypatch.setattr(importlib.import_module("ce_ray.score"), "BLOCK_BYTES", 1 << 20)
    (tmp_path / "in").mkdir()
    (tmp_path / "long.parquet").rename(tmp_path / "in" / "long.parquet")
    summary = run_score(ScoreConfig(model=str(tiny_model), input=str(tmp_path / "in"), output=str(tmp_path / "out")))
    assert summary.rows_scored == 40
    assert ("rows of ~63 KiB in memory (the input's longest on average): blocks of 16 rows and replica calls of 16, "
            "where rows_per_block (--rows-per-block) asks 4,096, so that a block holds at most 1 MiB"
            ) in capsys.readouterr().err


def test_rows_of_a_text_repeated_are_sized_as_they_decode(tmp_path):
    """Parquet stores a text repeated over rows (a long query over its candidates) once, in its column's dictionary:
    a footer's row group sizes are the pages as encoded, ~50 times under the rows in memory here, and a rerank of
    1.7 GB ranked in 2 partitions, one task holding 3.9 GB. The first rows of a file are decoded to tell, and every
    file's sizes are taken as they decode; a file stored without a dictionary, whose footer says so already, keeps
    its footer's."""
    import pyarrow.fs as pafs

    from ce_ray.input_files import check_inputs, job_row_bytes

    fs = pafs.LocalFileSystem()
    queries = [" ".join(WORDS) * 60 for _ in range(4)]  # ~8 KB each, over 500 candidates
    table = pa.table({"query_id": np.repeat(np.arange(4), 500), "query": np.repeat(np.array(queries), 500),
                      "document": [f"document {i}" for i in range(2000)]})
    pq.write_table(table, tmp_path / "repeated.parquet")
    pq.write_table(table, tmp_path / "plain.parquet", use_dictionary=False)
    in_memory = table.nbytes / table.num_rows
    for name in ("repeated", "plain"):
        checks, _ = check_inputs(fs, [str(tmp_path / f"{name}.parquet")], "parquet", ["query", "document"])
        assert in_memory * 0.8 < job_row_bytes(checks) < in_memory * 1.5, (name, job_row_bytes(checks), in_memory)
        assert table.nbytes * 0.8 < checks[0].size_bytes < table.nbytes * 1.5
        assert sum(size for _, size in checks[0].row_groups) == checks[0].size_bytes
