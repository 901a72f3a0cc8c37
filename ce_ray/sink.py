"""Writing scored pairs: `results/` and `rejects/` parquet beside each other, `_SUCCESS` when complete.

Layout of an output folder:
    results/part-000000.parquet ...   every input column, plus score (and rank for rerank)
    rejects/part-000000.parquet ...   rows that could not be scored, with a `reason` column
    _SUCCESS                          JSON summary, written last: its presence means the output is complete
A part is named after its write task, so a retried task overwrites its own file rather than adding one,
and each file is written under a temporary name and renamed (S3 puts are atomic by themselves).
"""

from __future__ import annotations

import json
from typing import Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import BlockAccessor

from .batching import REJECT
from .io import filesystem, is_remote

RESULTS = "results"
REJECTS = "rejects"
SUCCESS = "_SUCCESS"


class OutputExistsError(FileExistsError):
    pass


def has_results(output: str) -> bool:
    fs, path = filesystem(output)
    for sub in (RESULTS, REJECTS, SUCCESS):
        if fs.get_file_info(f"{path}/{sub}").type != pafs.FileType.NotFound:
            return True
    return False


def prepare_output(output: str, mode: str) -> None:
    """mode error: refuse an output that has results; overwrite: clear them first."""
    fs, path = filesystem(output)
    if not has_results(output):
        fs.create_dir(path, recursive=True)
        return
    if mode == "error":
        raise OutputExistsError(
            f"{output} already has results: pass --mode overwrite to replace them (or --mode resume)"
        )
    if mode == "overwrite":
        for sub in (SUCCESS, RESULTS, REJECTS):
            info = fs.get_file_info(f"{path}/{sub}")
            if info.type == pafs.FileType.Directory:
                fs.delete_dir(info.path)
            elif info.type == pafs.FileType.File:
                fs.delete_file(info.path)


def write_table_atomic(fs: pafs.FileSystem, path: str, table: pa.Table, remote: bool) -> None:
    if remote:
        pq.write_table(table, path, filesystem=fs)
        return
    tmp = f"{path}.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)


def split_rejects(table: pa.Table) -> tuple:
    """(scored rows without the reject column, rejected rows with `reason` and without scores)."""
    if REJECT not in table.column_names:
        return table, None
    rejected = table.column(REJECT).is_valid()
    good = table.filter(pa.compute.invert(rejected)).drop_columns([REJECT])
    bad = table.filter(rejected)
    if not bad.num_rows:
        return good, None
    bad = bad.drop_columns([c for c in ("score", "rank") if c in bad.column_names])
    bad = bad.rename_columns([("reason" if c == REJECT else c) for c in bad.column_names])
    return good, bad


class PairsSink(Datasink):
    def __init__(self, output: str):
        self.output = output
        self.counts = {"rows_scored": 0, "rows_rejected": 0, "files": 0}

    def on_write_start(self, schema=None) -> None:
        fs, path = filesystem(self.output)
        fs.create_dir(f"{path}/{RESULTS}", recursive=True)

    def write(self, blocks: Iterable, ctx) -> dict:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return {"rows_scored": 0, "rows_rejected": 0, "files": 0}
        good, bad = split_rejects(pa.concat_tables(tables, promote_options="default"))
        fs, path = filesystem(self.output)
        remote = is_remote(self.output)
        name = f"part-{ctx.task_idx:06d}.parquet"
        files = 0
        if good.num_rows:
            write_table_atomic(fs, f"{path}/{RESULTS}/{name}", good, remote)
            files += 1
        if bad is not None:
            fs.create_dir(f"{path}/{REJECTS}", recursive=True)
            write_table_atomic(fs, f"{path}/{REJECTS}/{name}", bad, remote)
            files += 1
        return {"rows_scored": good.num_rows, "rows_rejected": 0 if bad is None else bad.num_rows, "files": files}

    def on_write_complete(self, write_result) -> None:
        for part in write_result.write_returns:
            for key in self.counts:
                self.counts[key] += part[key]

    def write_success(self, summary: dict) -> None:
        fs, path = filesystem(self.output)
        with fs.open_output_stream(f"{path}/{SUCCESS}") as f:
            f.write(json.dumps(summary, indent=2).encode())
