"""URIs to filesystems, and reading pairs with their schema checked before any work starts.

One code path for local disk and object storage: `filesystem(uri)` is the only place a URI becomes a
filesystem. `s3://` goes through s3fs, which takes the endpoint and credentials from the environment
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...) or the instance role; nothing is read from config files.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List, Optional, Tuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

FORMATS = ("parquet", "jsonl", "csv")
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
}


class InputError(ValueError):
    """The input cannot be read as pairs: named file, named column."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def filesystem(uri: str) -> Tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path, `file://` or `s3://` URI."""
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        import s3fs

        # s3fs (botocore) reads AWS_ENDPOINT_URL, keys and region from the environment or instance role.
        # Retries with backoff cover transient errors (throttling, 5xx, dropped connections).
        fs = s3fs.S3FileSystem(config_kwargs={"retries": {"max_attempts": 8, "mode": "adaptive"}})
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), uri.split("://", 1)[1]
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise InputError(f"unsupported URI scheme in {uri!r}: use a local path or s3://")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri.rstrip("/"), *parts) if is_remote(uri) else os.path.join(uri, *parts)


def detect_format(path: str) -> Optional[str]:
    name = path.lower()
    for suffix in (".gz", ".bz2", ".zst"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return _EXTENSIONS.get(os.path.splitext(name)[1])


def list_files(uri: str, input_format: str = "auto") -> Tuple[List[str], str, pafs.FileSystem]:
    """Expands a file, a folder (recursively) or a glob into data files, all of one format.

    Returns the paths as the filesystem names them (no scheme), the format and the filesystem.
    Hidden and underscore files (`_SUCCESS`, `.crc`) are skipped, as Spark and Arrow do.
    """
    fs, path = filesystem(uri)
    has_glob = any(c in path for c in "*?[")
    base = path
    if has_glob:
        base = path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0] or "/"
    try:
        info = fs.get_file_info(base)
    except OSError as e:
        raise InputError(f"cannot read input {uri}: {e}") from e
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input {uri} does not exist")
    if info.type == pafs.FileType.File and not has_glob:
        files = [path]
    else:
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        except OSError as e:
            raise InputError(f"cannot list input {uri}: {e}") from e
        files = sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and not any(part.startswith(("_", ".")) for part in i.path[len(base) :].split("/") if part)
            and (not has_glob or fnmatch.fnmatch(i.path, path))
        )
    if input_format == "auto":
        formats = {detect_format(f) for f in files} - {None}
        if len(formats) > 1:
            raise InputError(f"input {uri} mixes formats {sorted(formats)}: pass input_format")
        if not formats and files:
            raise InputError(
                f"cannot tell the format of {files[0]} from its name: pass input_format (parquet, jsonl or csv)"
            )
        input_format = formats.pop() if formats else "parquet"
    files = [f for f in files if detect_format(f) in (input_format, None)]
    if not files:
        raise InputError(f"input {uri} holds no {input_format} files")
    return files, input_format, fs


@dataclass
class FileCheck:
    path: str
    columns: List[str]
    rows: Optional[int]  # known for parquet (footer); None for text formats
    types: dict


def _check_one(fs: pafs.FileSystem, path: str, input_format: str) -> FileCheck:
    try:
        if input_format == "parquet":
            with fs.open_input_file(path) as f:
                meta = pq.ParquetFile(f).metadata
                schema = meta.schema.to_arrow_schema()
            return FileCheck(path, schema.names, meta.num_rows, {n: schema.field(n).type for n in schema.names})
        with fs.open_input_stream(path, compression="detect") as f:
            head = f.read(1 << 20)
        lines = [line for line in head.split(b"\n") if line.strip()]
        if input_format == "csv":
            if not lines:
                return FileCheck(path, [], 0, {})
            import csv

            header = next(csv.reader([lines[0].decode("utf-8", errors="replace")]))
            return FileCheck(path, header, 0 if len(lines) == 1 else None, {})
        if not lines:
            return FileCheck(path, [], 0, {})
        try:
            first = json.loads(lines[0])
        except ValueError as e:
            raise InputError(f"{path}: line 1 is not valid JSON ({e})") from None
        if not isinstance(first, dict):
            raise InputError(f"{path}: line 1 is not a JSON object")
        return FileCheck(path, list(first), None, {})
    except InputError:
        raise
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot read {path}: {e}") from e


def check_inputs(
    fs: pafs.FileSystem, files: List[str], input_format: str, required: List[str]
) -> List[FileCheck]:
    """Reads each file's schema (parquet footer, CSV header, first JSON line) before any work starts.

    Fails naming the file and the column when a required column is missing, a file is unreadable, or
    there are no rows at all.
    """
    with ThreadPoolExecutor(max_workers=16) as pool:
        checks = list(pool.map(lambda p: _check_one(fs, p, input_format), files))
    for check in checks:
        if check.rows == 0:
            continue  # an empty file contributes no rows and needs no columns
        missing = [c for c in required if c not in check.columns]
        if missing:
            have = ", ".join(check.columns[:12]) or "none"
            raise InputError(f"{check.path}: missing column(s) {', '.join(map(repr, missing))} (columns: {have})")
        for column in required:
            dtype = check.types.get(column)
            if dtype is not None and not (pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
                                          or pa.types.is_null(dtype)):
                raise InputError(f"{check.path}: column {column!r} is {dtype}, not text")
    if all(c.rows == 0 for c in checks):
        raise InputError(f"input has no rows ({len(files)} file(s), all empty)")
    return checks


def read_dataset(uri: str, input_format: str = "auto", required: Optional[List[str]] = None):
    """A Ray Dataset over the input files, after `check_inputs` passed."""
    import ray.data

    files, input_format, fs = list_files(uri, input_format)
    checks = check_inputs(fs, files, input_format, list(required or []))
    files = [c.path for c in checks if c.rows != 0]
    if input_format == "parquet":
        ds = ray.data.read_parquet(files, filesystem=fs)
    elif input_format == "csv":
        import pyarrow.csv as pacsv

        # Text columns stay text (a query "42" is a string, not an integer); empty cells are nulls.
        types = {c: pa.string() for c in (required or [])}
        ds = ray.data.read_csv(
            files,
            filesystem=fs,
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True),
        )
    else:
        # lines=True reads with pandas, which keeps a record whose text is a number or null instead of
        # failing the whole file the way Arrow's JSON reader does; such rows become rejects.
        ds = ray.data.read_json(files, filesystem=fs, lines=True)
    return ds, files, input_format
