"""URIs to filesystems, input files listed and their schemas checked before any work starts, and S3 access
checked. Reading the files is `readers.py`'s.

One code path for local disk and object storage: `filesystem(uri)` is the only place a URI becomes a
filesystem. `s3://` goes through s3fs, which takes the endpoint and credentials from the environment
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...) or the instance role; nothing is read from config files.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import posixpath
import re
import sys
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

FORMATS = ("parquet", "jsonl", "csv", "tsv")
DELIMITED = ("csv", "tsv")  # read by Arrow's CSV reader, a header line or column_names naming the columns
COMPRESSED = (".gz", ".bz2", ".zst")  # read through, by the suffix
# A compressed text file's text, in memory, taken as this many times its size (text compresses 3-5x).
COMPRESSED_TEXT_RATIO = 4
HEAD_BYTES = 1 << 20  # what the schema check reads of a text file, and more to the end of its first line
FIRST_LINE_BYTES = 64 << 20  # a first line longer than this is not read to its end (16 files are checked at once)
UTF8_BOM = b"\xef\xbb\xbf"  # what some tools (Excel) write first in a text file; Arrow's readers skip it
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
}


# An output folder of ce-ray (its layout: ce_ray/sink.py), which may be the input of a later job.
RESULTS = "results"
REJECTS = "rejects"
SUCCESS = "_SUCCESS"
EVAL = "eval.json"  # `ce-ray eval`'s measures of results/, beside it
RESULT_PARTS = "result_parts"  # in `_SUCCESS`: how many parts results/ held when the job finished
RESULT_ROWS = "result_rows"  # in `_SUCCESS`: each part of results/ (its name) and its rows, when the job finished
REJECT_ROWS = "reject_rows"  # in `_SUCCESS`: each part of rejects/ and its rows (none in outputs of earlier versions)
# What finishes a job that stopped or failed mid-way: a score job resumes, a job that regroups rows cannot.
RESUME, OVERWRITE = "--mode resume finishes it", "rerun it with --mode overwrite"
STATE = "_ce_ray"
JOB = "job.json"  # in STATE: the settings of the job that wrote the output
OWN_COLUMNS = "_ce_"  # the prefix of the columns ce-ray adds to rows as they travel (their file and place)


class InputError(ValueError):
    """The input cannot be read as pairs: named file, named column."""


def holds_texts(value) -> bool:
    """A JSON value that a column of texts or of lists of texts takes."""
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def is_list(dtype: pa.DataType) -> bool:
    return pa.types.is_list(dtype) or pa.types.is_large_list(dtype)


def is_text(dtype: pa.DataType) -> bool:
    """Strings, strings dictionary-encoded (a pandas categorical, a Polars categorical written to parquet), or
    string views (Polars' strings in Arrow)."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


def read_type(dtype: pa.DataType) -> pa.DataType:
    """The type a column of a file is read as (`readers.plain_columns`): string and binary views (Polars') as
    plain strings and binaries, dictionary-encoded columns (pandas' and Polars' categoricals) as their values."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}.get(dtype, dtype)


def missing_values(column) -> pa.Array:
    """Where an id is missing: null, or NaN (how pandas writes a missing integer id)."""
    import pyarrow.compute as pc

    missing = column.is_null()
    if pa.types.is_floating(column.type):
        missing = pc.or_(missing, pc.is_nan(column).fill_null(True))
    return missing


def parse_names(text: str, setting: str = "column_names") -> Optional[List[str]]:
    """A setting that names columns, `query_id,doc_id,query,document`, as a list (None when unset)."""
    if not text.strip():
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise InputError(f"{setting_and_flag(setting)} must be distinct names separated by commas, got {text!r}")
    return names


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def absolute(uri: str) -> str:
    """A local path written out from the working directory; a URI as it is."""
    return uri if "://" in uri else os.path.abspath(uri)


def s3_retries() -> dict:
    """botocore's retry settings of the job's S3 client: 8 retries in `adaptive` mode, unless the environment
    sets botocore's own `AWS_MAX_ATTEMPTS` (attempts in all) or `AWS_RETRY_MODE`, which a client's settings
    would override.

    They set how long a store that does not answer (stalled, overloaded, its connections taken and left silent)
    holds a job. Each request is retried by botocore (9 attempts, backoff up to 20 s) and, where botocore gave up,
    by s3fs (5 times), and each attempt waits s3fs's `read_timeout` (15 s) for an answer and `connect_timeout`
    (5 s) for a connection (`s3_session` bounds the rest): a look-up or a write fails after about 15 minutes,
    naming the endpoint's URL (886-921 s against moto under SIGSTOP, 2026-12-01). A read from a file already open
    is retried by s3fs 5 times more around that, as it retries a broken download: up to 75 minutes, past Ray
    Data's no-progress limit (30 minutes, which fails the job naming no store). `AWS_MAX_ATTEMPTS=3` brings 15
    minutes to 4 (measured 233-245 s), 75 to about 20; `AWS_MAX_ATTEMPTS=1`, to 77 s and 387 s (measured). A
    store that refuses connections (down) fails a request in 35-60 s; a shorter pause is ridden out.
    """
    retries = {}
    if not os.environ.get("AWS_MAX_ATTEMPTS"):
        retries["max_attempts"] = 8
    if not os.environ.get("AWS_RETRY_MODE"):
        retries["mode"] = "adaptive"
    return retries


class _S3Handler(pafs.FSSpecHandler):
    """pyarrow's handler asks `isfile` before opening a file for reading, which answers False for any error: a
    store that timed out or could not be reached read as `FileNotFoundError: <path>` (a score job's input file,
    after 15 minutes of a store that did not answer). Here the store's own error goes through, from s3fs's own
    look-up of the file as it opens it (its size, and the ETag its reads are held to): one HEAD request, where a
    look-up before it cost a second one for each file a job reads."""

    def _file(self, path: str):
        from pyarrow import PythonFile

        f = self.fs.open(path, mode="rb")  # FileNotFoundError where there is nothing
        if f.details["type"] != "file":  # a folder
            f.close()
            raise FileNotFoundError(path)
        return PythonFile(f, mode="r")

    def open_input_stream(self, path):
        return self._file(path)

    def open_input_file(self, path):
        return self._file(path)


def read_tail(fs: pafs.FileSystem, path: str, size: int, length: int) -> bytes:
    """The last `length` bytes of a file whose `size` a listing gave, in one read. On S3 that is one ranged GET:
    opening the file first, as pyarrow does, costs two HEAD requests more (the handler's and s3fs's own)."""
    start = max(size - length, 0)
    if start >= size:  # an empty file (an empty range is no valid HTTP range)
        return b""
    handler = getattr(fs, "handler", None)  # a PyFileSystem's
    if isinstance(handler, _S3Handler):
        return handler.fs.cat_file(path, start=start, end=size)
    with fs.open_input_file(path) as f:
        return f.read_at(size - start, start)


def remove(fs: pafs.FileSystem, path: str) -> None:
    """Deletes the file or the folder at `path`, if there is one."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


BULK_DELETE_KEYS = 1000  # the most keys S3 deletes in one request (DeleteObjects)


def delete_files(fs: pafs.FileSystem, paths: Sequence[str]) -> None:
    """Deletes files. On S3 in one request per 1,000 (DeleteObjects), where deleting each file costs two (pyarrow's
    look-up, the delete): a resume of 1,000 parts cut short deleted them in 2,000 requests. A key the store did not
    delete (its answer lists it) fails the call, naming it: s3fs's own bulk delete passes over those."""
    handler = getattr(fs, "handler", None)
    if not isinstance(handler, pafs.FSSpecHandler):
        in_parallel(fs.delete_file, paths)
        return
    s3 = handler.fs
    buckets: Dict[str, List[str]] = {}
    for path in paths:
        bucket, key, _ = s3.split_path(path)
        buckets.setdefault(bucket, []).append(key)
    for bucket, keys in buckets.items():
        for start in range(0, len(keys), BULK_DELETE_KEYS):
            objects = [{"Key": key} for key in keys[start:start + BULK_DELETE_KEYS]]
            answer = s3.call_s3("delete_objects", Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
            failed = answer.get("Errors") or []
            if failed:
                raise OSError(f"the store did not delete {len(failed)} of {len(objects)} object(s), e.g. "
                              f"{bucket}/{failed[0].get('Key')}: {failed[0].get('Code')} {failed[0].get('Message')}")


FOOTER_BYTES = 64 << 10  # read from a parquet file's end: its footer and more, for all but very wide tables


def parquet_footer(fs: pafs.FileSystem, path: str, size: int) -> pq.FileMetaData:
    """The footer of a parquet file of `size` bytes, read from its end alone (parquet ends with the footer, its
    length and `PAR1`): one read for most files, two where the footer is larger than `FOOTER_BYTES`. Raises
    pyarrow's ArrowInvalid for a file too short for a footer or without parquet's magic."""
    tail = read_tail(fs, path, size, FOOTER_BYTES)
    length = int.from_bytes(tail[-8:-4], "little") + 8 if tail[-4:] == b"PAR1" else 0
    if len(tail) < length <= size:
        tail = read_tail(fs, path, size, length)
    return pq.ParquetFile(pa.BufferReader(tail)).metadata


def in_parallel(function, items: Sequence) -> list:
    """`function` of each item, 16 at a time: what a look-up per file (an S3 request, ~20 ms or more) costs a
    thousand files is the time of 63 rather than 1,000."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(function, items))


def filesystem(uri: str) -> Tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path, `file://` or `s3://` URI."""
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        import s3fs

        from .s3_session import BoundedSession

        # s3fs (botocore) reads AWS_ENDPOINT_URL, keys and region from the environment or instance role.
        # Retries with backoff cover transient errors (throttling, 5xx, dropped connections). s3fs keeps one
        # instance per process, and by default every listing it made for the process's life: a second job of
        # a process (the Python API, a notebook) would not see objects written or rewritten since, by another
        # process (Ray's workers write the outputs), and fail reading a rewritten one (`FileExpired`).
        # Every request is bounded in time (`s3_session`); how long a store that does not answer holds a job:
        # `s3_retries`.
        fs = s3fs.S3FileSystem(use_listings_cache=False,
                               config_kwargs={"retries": s3_retries(), "http_session_cls": BoundedSession})
        # `s3://b/out/` and `s3://b/out` are one folder: paths joined to it must not hold `//`.
        return pafs.PyFileSystem(_S3Handler(fs)), uri.split("://", 1)[1].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise InputError(f"unsupported URI scheme in {uri!r}: use a local path or s3://")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def upload_folder(local_dir: str, fs: pafs.FileSystem, path: str) -> None:
    """Copies a local folder's files to `path` in `fs`, failing where a file could not be written.
    `pyarrow.fs.copy_files` is not used: it ignores the error of closing an output stream of a Python filesystem
    (pyarrow 26), and s3fs uploads a file when it closes it: files that a store down or not answering did not take
    were left out of a trained model without a word (`config.json` of one, whose run failed only at its next
    request, a listing)."""
    for root, _, names in os.walk(local_dir):
        folder = posixpath.join(path, os.path.relpath(root, local_dir).replace(os.sep, "/")).removesuffix("/.")
        if names and folder != path:
            fs.create_dir(folder, recursive=True)
        for name in names:
            with open(os.path.join(root, name), "rb") as f, fs.open_output_stream(f"{folder}/{name}") as out:
                while chunk := f.read(8 << 20):
                    out.write(chunk)


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri.rstrip("/"), *parts) if is_remote(uri) else os.path.join(uri, *parts)


# Names that say a file is no data of any format (a dataset's README.md, LICENSE.pdf, a notebook): in a folder they
# are skipped with the format given too (and by eval, which reads parquet), where they were read as that format and
# failed the job (`cannot read .../README.md: Parquet file size is 11 bytes`).
_DOCUMENTS = (".md", ".rst", ".pdf", ".html", ".htm", ".png", ".jpg", ".jpeg", ".svg", ".yaml", ".yml", ".py",
              ".ipynb", ".log", ".sh", ".zip", ".tar", ".tgz")
_DOCUMENT_NAMES = ("readme", "license", "licence", "notice", "copying")  # with no extension too


# What `ce-ray eval` writes beside a file it measured (`<input>.eval.json`), often in a folder of pairs (the
# candidates' file, in their folder): no pairs, though `.json` names JSONL. Read as such, the folder that a rerank
# read next "mixed formats ['jsonl', 'parquet']" and failed.
EVAL_SUFFIX = ".eval.json"


def is_document(path: str) -> bool:
    stem, extension = os.path.splitext(posixpath.basename(path).lower())
    return extension in _DOCUMENTS or stem in _DOCUMENT_NAMES or path.lower().endswith(EVAL_SUFFIX)


def detect_format(path: str) -> Optional[str]:
    name = path.lower()
    if name.endswith(EVAL_SUFFIX):
        return None
    for suffix in COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return _EXTENSIONS.get(os.path.splitext(name)[1])


GLOB_CHARS = "*?["


def is_glob(path: str) -> bool:
    return any(c in path for c in GLOB_CHARS)


def glob_base(path: str) -> str:
    """The folder a glob lists (`data/*.parquet`: `data`; its `*` matches inside subfolders too), else the path."""
    if is_glob(path):
        prefix = path[: min(path.index(c) for c in GLOB_CHARS if c in path)]
        path = (prefix.rsplit("/", 1)[0] or "/") if "/" in prefix else "."
    return path.rstrip("/") or "/"


def check_apart(input_uri: str, output_uri: str) -> None:
    """Refuses an output inside the input (a later run would read its results as pairs, and delete them as it
    overwrites its output while reading them) or an input inside the output (overwriting would delete it)."""
    def inside(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip("/") + "/")

    fs, source = filesystem(input_uri)
    source, target = glob_base(source), filesystem(output_uri)[1].rstrip("/") or "/"
    # Under a file nothing can be written (that write fails, saying so); a folder or a glob's folder is checked.
    if inside(target, source) and fs.get_file_info(source).type != pafs.FileType.File:
        raise InputError(f"the output {output_uri} is inside the input {input_uri}: later runs would read its "
                         "results as pairs; write it elsewhere")
    if inside(source, target):
        raise InputError(f"the input {input_uri} is inside the output {output_uri}, whose results a run "
                         "replaces: write the output elsewhere")


def is_output(fs: pafs.FileSystem, path: str) -> bool:
    """A folder that a ce-ray job wrote: it holds the job's settings (`_ce_ray/`)."""
    return fs.get_file_info(f"{path}/{STATE}").type == pafs.FileType.Directory


def read_state(fs: pafs.FileSystem, path: str, name: str = JOB) -> Optional[dict]:
    """One of the JSON files in an output's `_ce_ray/` (the job's settings by default), or None where it has none."""
    try:
        with fs.open_input_stream(f"{path}/{STATE}/{name}") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def job_summary(uri: str) -> Optional[dict]:
    """The summary (`_SUCCESS`, `finished_job`) of the finished job whose output folder `uri` is, with the job's
    settings (`_ce_ray/job.json`) as its "settings", or None for any other input."""
    if is_glob(uri):
        return None
    fs, path = filesystem(uri)
    if not is_output(fs, path):  # a folder of its own, `_ce_ray/`: the input is one (a file holds no folder)
        return None
    summary = finished_job(fs, path, uri)
    try:
        return summary | {"settings": read_state(fs, path) or {}}
    except (OSError, ValueError):
        return summary | {"settings": {}}


def finished_job(fs: pafs.FileSystem, path: str, uri: str) -> dict:
    """The summary (`_SUCCESS`) of the ce-ray job whose output folder `path` is, as every job that reads the
    output (a cascade, eval) reads it. Refused where the job did not finish (no `_SUCCESS`), and where the marker
    is not the JSON object that ce-ray writes (empty, as Spark's and Hadoop's are, or other text): another hand
    wrote it, and whether the job finished is unknown. A folder without `_ce_ray/` is no output of ce-ray: its
    `_SUCCESS` is its writer's own, never read."""
    try:
        with fs.open_input_stream(f"{path}/{SUCCESS}") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"input {uri} is the output of a job that did not finish (no {SUCCESS}): its results "
                         "are partial; finish or rerun that job first") from None
    try:
        summary = json.loads(data)
    except ValueError:
        summary = None
    if not isinstance(summary, dict):
        raise InputError(f"input {uri} is the output of a ce-ray job whose {SUCCESS} is not the summary ce-ray "
                         f"writes ({'empty' if not data.strip() else 'not a JSON object'}): whether that job "
                         f"finished is unknown; rerun it, or give its {RESULTS}/ folder to read the rows it holds")
    return summary


class Finished(NamedTuple):
    """What the `_SUCCESS` of a finished job whose output is the input counts of its results/: each part (path) and
    its rows (`RESULT_ROWS`); in outputs of the version that counted parts alone, how many (`RESULT_PARTS`, with
    `rows` empty); neither in outputs of earlier versions, whose rows are read as they are."""
    rows: Dict[str, int]
    parts: Optional[int]


def finished_parts(summary: dict, folder: str) -> Finished:
    """What a finished job's `summary` (its `_SUCCESS`) counts of `folder`, its output's results/."""
    return Finished({f"{folder}/{name}": rows for name, rows in (summary.get(RESULT_ROWS) or {}).items()},
                    summary.get(RESULT_PARTS))


class Listing(NamedTuple):
    """An input's data files (paths as the filesystem names them, no scheme), their format, the filesystem, and
    each file's size and stamp as the listing gave them (`size_and_stamp`'s; a file named alone's from its look-up)."""
    files: List[str]
    input_format: str
    fs: pafs.FileSystem
    stamps: Dict[str, Tuple[int, str]]
    # Where the input is a finished job's output: what its `_SUCCESS` counts, which `refuse_changed_output` holds the
    # parts read to; None for any other input.
    finished: Optional[Finished]


def list_files(uri: str, input_format: str = "auto", column_names: Optional[List[str]] = None,
               note_skipped: bool = True, summary: Optional[dict] = None) -> Listing:
    """Expands a file, a folder (recursively) or a glob into data files, all of one format.

    Hidden and underscore files (`_SUCCESS`, `.crc`) are skipped, as Spark and Arrow do, and in a folder or
    glob the files of other formats: a folder that Spark, Hadoop or DuckDB wrote reads as its parts. An output folder
    of ce-ray gives its `results/` (refused unless its job finished, `finished_job`), and what that job's `_SUCCESS`
    counts of them (`Listing.finished`), which the readers hold the parts to once their footers are read
    (`refuse_changed_output`). `column_names`, for files without a header line, is refused for formats whose files
    name their columns. `note_skipped`: say which files of other formats are skipped (once a job, by its reader).
    `summary`: that job's `_SUCCESS` where the caller read it (`job_summary`), not read again.
    """
    check_s3_access(uri)
    fs, path = filesystem(uri)
    has_glob = is_glob(path)
    base = glob_base(path) if has_glob else path
    named = False  # one file, named: read whatever its name
    listed: Dict[str, Tuple[int, str]] = {}
    finished = summary  # the `_SUCCESS` of an earlier job whose output is the input
    if finished is None:
        try:
            kind, stamp = look_up(fs, base)
        except OSError as e:
            raise InputError(f"cannot read input {uri}: {e}") from e
        if kind == pafs.FileType.NotFound:
            raise InputError(f"input {uri} does not exist")
        named = kind == pafs.FileType.File and not has_glob
        if named:  # its size and stamp from the same look-up, where a caller asked for them again (a HEAD on S3)
            listed = {path: stamp}
        if kind == pafs.FileType.Directory and not has_glob and is_output(fs, path):
            finished = finished_job(fs, path, uri)
    if finished is not None:
        # An earlier job's output (a cascade reranks one again, eval measures one): its results are the rows.
        base = path = f"{path}/{RESULTS}"
    if named:
        files = [path]
    else:
        try:
            listed = list_tree(fs, base)
        except OSError as e:
            raise InputError(f"cannot list input {uri}: {e}") from e
        if finished is not None and not listed:  # S3 keeps no empty folder; a local one is as empty
            raise InputError(f"input {uri} is the output of a job that scored no row (see its {REJECTS}/)")
        files = sorted(
            file
            for file in listed
            if not any(part.startswith(("_", ".")) for part in file[len(base) :].split("/") if part)
            and (not has_glob or fnmatch.fnmatch(file, path))
        )
    if has_glob and not files:
        raise InputError(f"input {uri} matches no files")
    given = input_format != "auto"
    if input_format == "auto":
        formats = {detect_format(f) for f in files} - {None}
        if len(formats) > 1:
            # the flag beside the key: a user of the command line gives the flag
            raise InputError(f"input {uri} mixes formats {sorted(formats)}: read one with "
                             f"{setting_and_flag('input_format', sorted(formats)[0])}, which skips the other's files")
        if not formats and files:
            raise InputError(f"cannot tell the format of {files[0]} from its name: pass "
                             f"{setting_and_flag('input_format')}: parquet, jsonl, csv or tsv")
        input_format = formats.pop() if formats else "parquet"
    if not named:
        # A folder's other files (a LICENSE.pdf, a README.md) are not pairs. A file whose name says no format
        # (part-00000, pairs.txt) is read when the format was given and it is no document, or a glob named it.
        kept = [f for f in files if detect_format(f) == input_format
                or (detect_format(f) is None and (has_glob or (given and not is_document(f))))]
        if len(kept) < len(files) and note_skipped:
            other = [posixpath.basename(f) for f in sorted(set(files) - set(kept))]
            print(f"ce-ray: note: {uri}: skipped {len(other)} file(s) that are not {input_format}: "
                  + ", ".join(other[:5]) + (", ..." if len(other) > 5 else ""), file=sys.stderr, flush=True)
        files = kept
    if not files:
        raise InputError(f"input {uri} holds no {input_format} files")
    if column_names and input_format not in DELIMITED:
        raise InputError(f"{setting_and_flag('column_names')} names the columns of CSV or TSV files without a header "
                         f"line; {uri} is {input_format}, whose files name their columns")
    return Listing(files, input_format, fs, {file: listed[file] for file in files if file in listed},
                   None if finished is None else finished_parts(finished, base))


def refuse_changed_output(uri: str, finished: Optional[Finished], rows: Dict[str, Optional[int]]) -> None:
    """Refuses a finished job's output (`Listing.finished`) whose results/ no longer holds what its `_SUCCESS`
    counts, `rows` being each part read and its rows now (from its footer): parts lost or added since, or parts
    rewritten with other rows. Either way the rows left would be read as the whole. The comparison is the one that
    the job made before it wrote `_SUCCESS` (`part_differences`, `sink.check_parts`), of results/ alone: what a
    reader reads."""
    if finished is None:
        return
    if finished.rows:
        output = posixpath.dirname(posixpath.dirname(next(iter(finished.rows))))  # parts named from it: results/<part>
        said = part_differences(finished.rows, rows, "the job", f"{output}/")
        if said:
            raise InputError(f"input {uri} is the output of a job whose {RESULTS}/ no longer holds what its {SUCCESS} "
                             f"counts: {briefly(said)}; rerun that job (a score job's --mode resume scores again only "
                             "the inputs whose parts are gone, cut short or rewritten)")
        return
    then = len(rows) if finished.parts is None else finished.parts  # an earlier version's count of parts alone
    if then != len(rows):
        raise InputError(f"input {uri} is the output of a job that finished with {then:,} part(s) in {RESULTS}/, "
                         f"which now holds {len(rows):,}: parts were lost or added since; rerun that job (a score "
                         "job's --mode resume scores again only the inputs whose parts are gone)")


def part_differences(counted: Dict[str, int], held: Dict[str, Optional[int]], job: str, base: str = "") -> List[str]:
    """What the parts `held` (path -> its rows now, from its footer; None where the footer cannot be read) differ by
    from those `job` ("this job", "the job") wrote and counted (`counted`: path -> rows), each said in a few words,
    a part named by its path after `base`: parts missing, unreadable or of other rows, and parts no one counted.
    The same words where a job checks its output before it writes `_SUCCESS` and where a later job reads it."""
    def name(path: str) -> str:
        return path[len(base):] if base and path.startswith(base) else path

    said = []
    for path, rows in sorted(counted.items()):
        if path not in held:
            said.append(f"{name(path)} is missing ({rows:,} rows)")
        elif held[path] is None:
            said.append(f"{name(path)} cannot be read as parquet (cut short?; {rows:,} rows written)")
        elif held[path] != rows:
            said.append(f"{name(path)} holds {held[path]:,} rows of the {rows:,} written")
    return said + [f"{name(path)} was not written by {job}" for path in sorted(held.keys() - counted.keys())]


def briefly(said: List[str], most: int = 5) -> str:
    """The first `most` of many things said, and how many more."""
    return "; ".join(said[:most]) + (f"; and {len(said) - most} more" if len(said) > most else "")


def changed_parts(counted: Dict[str, int], rows: Dict[str, Optional[int]]) -> List[str]:
    """The parts that a finished job's `_SUCCESS` counts (`counted`: path -> rows) and that hold other rows now
    (`rows`, from their footers): rewritten since."""
    return sorted(path for path, now in rows.items() if path in counted and now != counted[path])


@dataclass
class FileCheck:
    path: str
    columns: List[str]
    rows: Optional[int]  # known for parquet (footer); None for text formats
    types: dict
    row_groups: Tuple[Tuple[int, int], ...] = ()  # parquet: (rows, bytes in memory) of each row group
    size_bytes: int = 0  # about what its rows take in memory: parquet's row groups, a text file's text
    # Its size and modification time or ETag (`size_and_stamp`): a resumed job tells from it a file rewritten since
    # the earlier run, whose results it scores again.
    stamp: str = ""


def size_and_stamp(fs: pafs.FileSystem, path: str) -> Tuple[int, str]:
    """A file's size in bytes, and its stamp: `<bytes>:<modified, ns>` of a local file, `<bytes>:<ETag>` of an
    S3 object (s3fs gives Arrow no time, and a new upload gets a new ETag). One look-up (a HEAD on S3): a listing
    gives the same of every file it holds (`list_tree`)."""
    handler = getattr(fs, "handler", None)
    if isinstance(handler, pafs.FSSpecHandler):
        return object_stamp(handler.fs.info(path))
    return _stat_stamp(fs.get_file_info(path))


def look_up(fs: pafs.FileSystem, path: str) -> Tuple[pafs.FileType, Optional[Tuple[int, str]]]:
    """What `path` is, and a file's size and stamp (`size_and_stamp`'s), in one look-up: pyarrow's of an S3 object
    drops the ETag, which took a second HEAD."""
    handler = getattr(fs, "handler", None)
    if isinstance(handler, pafs.FSSpecHandler):
        try:
            info = handler.fs.info(path)
        except FileNotFoundError:
            return pafs.FileType.NotFound, None
        if info.get("type") == "file":
            return pafs.FileType.File, object_stamp(info)
        return pafs.FileType.Directory if info.get("type") == "directory" else pafs.FileType.Unknown, None
    info = fs.get_file_info(path)
    return info.type, _stat_stamp(info) if info.type == pafs.FileType.File else None


def object_stamp(info: dict) -> Tuple[int, str]:
    """An S3 object's size and stamp from s3fs's details of it, a HEAD's or a listing's: both give the ETag as S3
    does, in its quotes, the stamp that `_ce_ray/inputs.json` of earlier runs holds."""
    return info.get("size"), f"{info.get('size')}:{info.get('ETag') or info.get('LastModified') or ''}"


def _stat_stamp(info: pafs.FileInfo) -> Tuple[int, str]:
    return info.size, f"{info.size}:{info.mtime_ns or ''}"


# The empty objects that tools write on S3 to show a folder (the console's and Hadoop S3A's `<folder>/`, EMRFS's
# `<folder>_$folder$`), which s3fs lists as files: read as data they failed an input given its format, and were
# named as files skipped (an empty name) where it was not given.
FOLDER_MARKERS = ("/", "_$folder$")


def list_tree(fs: pafs.FileSystem, folder: str) -> Dict[str, Tuple[int, str]]:
    """Every file under `folder` (none where there is no folder), at any depth, with its size and stamp as the
    listing gives them (`size_and_stamp`'s, without a request a file). On S3 one listing (a request per 1,000
    objects): pyarrow's listing of a folder asks first whether it is one, which s3fs answers by listing it as well,
    and drops the ETags."""
    handler = getattr(fs, "handler", None)
    if isinstance(handler, pafs.FSSpecHandler):
        try:
            found = handler.fs.find(folder, withdirs=False, detail=True)
        except FileNotFoundError:  # no bucket
            return {}
        return {path: object_stamp(info) for path, info in found.items()
                if info.get("type") == "file" and not path.endswith(FOLDER_MARKERS)}
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    return {info.path: _stat_stamp(info) for info in infos if info.type == pafs.FileType.File}


def _text_bytes(path: str, size: int, head: bytes, whole: bool) -> int:
    """A text file's size in memory: its head when that was all of it, else its size (`size` bytes)."""
    if whole:
        return len(head)
    return size * COMPRESSED_TEXT_RATIO if path.lower().endswith(COMPRESSED) else size


def _head(f) -> Tuple[bytes, bool]:
    """A text file's first `HEAD_BYTES`, or more to the end of its first line where that is longer (a JSON record
    holding a long document); and whether that is the whole file."""
    head = f.read(HEAD_BYTES)
    if len(head) < HEAD_BYTES:
        return head, True
    if b"\n" in head.lstrip():
        return head, False
    chunks = [head]
    while len(chunks) < FIRST_LINE_BYTES // HEAD_BYTES:
        chunks.append(f.read(HEAD_BYTES))
        if len(chunks[-1]) < HEAD_BYTES or b"\n" in chunks[-1]:
            break
    return b"".join(chunks), len(chunks[-1]) < HEAD_BYTES


def _check_one(fs: pafs.FileSystem, path: str, input_format: str, column_names: Optional[List[str]],
               listed: Optional[Tuple[int, str]] = None) -> FileCheck:
    """`listed`: the file's size and stamp from the input's listing, taken before its rows are read (so is a look-up
    here): a file rewritten meanwhile differs later."""
    try:
        size, stamp = listed or size_and_stamp(fs, path)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}") from e
    return replace(_read_schema(fs, path, size, input_format, column_names), stamp=stamp)


def _read_schema(fs: pafs.FileSystem, path: str, size: int, input_format: str,
                 column_names: Optional[List[str]]) -> FileCheck:
    try:
        if input_format == "parquet":
            meta = parquet_footer(fs, path, size)  # one ranged GET on S3, where opening the file cost two HEADs more
            schema = meta.schema.to_arrow_schema()
            groups = tuple((meta.row_group(i).num_rows, meta.row_group(i).total_byte_size)
                           for i in range(meta.num_row_groups))
            return FileCheck(path, schema.names, meta.num_rows, {n: schema.field(n).type for n in schema.names},
                             groups, sum(size for _, size in groups))
        with fs.open_input_stream(path, compression="detect") as f:
            head, whole = _head(f)
        size = _text_bytes(path, size, head, whole)
        head = head.removeprefix(UTF8_BOM)
        lines = [line for line in head.split(b"\n") if line.strip()]
        if input_format in DELIMITED:
            first = _first_record(head[head.index(lines[0]):], input_format) if lines else []
            if column_names:  # no header line: every line is a row, each of as many fields as there are names
                if lines and len(first) != len(column_names):
                    raise InputError(f"{path}: its first line has {len(first)} field(s), "
                                     f"{setting_and_flag('column_names')} names {len(column_names)} "
                                     f"({', '.join(column_names)})")
                if first == column_names:  # it would be scored (or trained on) as a pair
                    raise InputError(f"{path}: its first line is a header naming the columns "
                                     f"{setting_and_flag('column_names')} names: leave it out")
                return FileCheck(path, column_names, None if lines else 0, as_text(column_names), size_bytes=size)
            _refuse_header_not_utf8(path, lines[0] if lines else b"")
            return FileCheck(path, first, 0 if len(lines) <= 1 else None, as_text(first), size_bytes=size)
        if not lines:
            return FileCheck(path, [], 0, {})
        # The columns of the head's lines, not of the first alone: a line may leave a key out (a null), and a query
        # missing from line 1 alone failed the file as having no query column. A line 1 that is no JSON object (no
        # UTF-8, cut short, an array) is rejected as the reader rejects any other line: it failed the whole file.
        types = _json_types(lines if whole else lines[:-1] or lines[:1], path)
        if not types:  # its lines all rejected: the reader would reject them too, and no column names its pairs
            _refuse_header_not_utf8(path, lines[0], "line 1")
            _refuse_line_1(path, lines[0])
        return FileCheck(path, list(types), None, types, size_bytes=size)
    except InputError:
        raise
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot read {path}: {e}") from e


def as_text(columns: Sequence[str]) -> Dict[str, pa.DataType]:
    """A CSV's or TSV's columns, each read as text (`readers.delimited_chunks`)."""
    return {name: pa.string() for name in columns}


def _json_types(lines: List[bytes], path: str) -> Dict[str, pa.DataType]:
    """The types a JSON Lines file's first lines (whole lines of its head) are read as, by the reader's own
    parsing (`readers.read_json_lines`): its columns' types, from a cheap look at the file's start."""
    from .batching import REJECT
    from .readers import read_json_lines

    table = read_json_lines(lines, list(range(1, len(lines) + 1)), path, text_columns=[])
    return {field.name: field.type for field in table.schema if field.name != REJECT}


def _refuse_header_not_utf8(path: str, header: bytes, line: str = "its header line") -> None:
    """A header line that is no UTF-8 (a Latin-1 `café`, a file saved as UTF-16) names no column: Arrow's reader
    failed the job in its read task (`UnicodeDecodeError`), after the check had read the names with U+FFFD. A row's
    byte that is no UTF-8 rejects its row alone (`readers.reject_invalid_utf8`). A JSON Lines file whose first lines
    are all rejected has no column to check: its line 1 is named (`line`) where it is no UTF-8."""
    try:
        header.decode("utf-8")
    except UnicodeDecodeError as e:
        utf16 = " (UTF-16, as Excel's Unicode Text writes it)" if header[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise InputError(f"{path}: {line} is not UTF-8{utf16}: byte {header[e.start]:#04x} at {e.start}; "
                         "write the file as UTF-8") from None


def _refuse_line_1(path: str, line: bytes) -> None:
    """Why a JSON Lines file whose first lines are all rejected is none, named by its line 1."""
    if line.lstrip().startswith(b"["):  # pandas' to_json(orient="records"), on one line or indented
        raise InputError(f"{path}: a JSON array, where JSON Lines (one object a line) are read: write one object "
                         "per line (pandas: to_json(orient='records', lines=True))")
    try:
        first = json.loads(line)
    except ValueError as e:
        raise InputError(f"{path}: line 1 is not valid JSON ({e})") from None
    if not isinstance(first, dict):
        raise InputError(f"{path}: line 1 is not a JSON object")


def _first_record(data: bytes, input_format: str) -> List[str]:
    """The fields of the first record of CSV or TSV `data`, split as the reader splits them (a quoted CSV
    field may hold line breaks)."""
    import csv

    text = data.decode("utf-8", errors="replace")
    if input_format == "tsv":
        return text.split("\n", 1)[0].rstrip("\r").split("\t")
    return next(csv.reader(io.StringIO(text)))


def column_list(names: Sequence[str], most: int = 12) -> str:
    """The columns an error names, the first `most` of them: where there are more it says so and how many, or a
    list cut short reads as every column the file has."""
    shown = ", ".join(names[:most]) or "none"
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def refuse_written(columns: Sequence[str], written: Dict[str, str], where: str) -> None:
    """Fails naming the first of `columns` that the job writes (`written`: each name with what the user can do
    about it), which the job would overwrite."""
    for column in columns:
        if column in written:
            raise InputError(f"{where} has a column {column!r}, which the job writes: {written[column]}")


def _missing_columns_hint(check: FileCheck, input_format: str, column_names: Optional[List[str]],
                          some_found: bool, missing: Sequence[str], settings: Dict[str, str]) -> str:
    """What a missing column most likely means: a file read in another format than its own, or (a first line
    that names none of the columns) a file without a header line, as MS MARCO's files are; else a column of
    another name, which the setting that names it (`settings`: column -> setting) gives."""
    named = detect_format(check.path)
    one_field = len(check.columns) == 1 and any(mark in check.columns[0] for mark in (",", "\t", "{"))
    if (named and named != input_format) or (input_format in DELIMITED and one_field):
        return f"; read as {input_format}" + (f", though its name says {named}" if named else "") + (
            f": check {setting_and_flag('input_format')}")
    if input_format in DELIMITED and not column_names and not some_found:
        return f"; for a file without a header line, give its columns' names in {setting_and_flag('column_names')}"
    return settings_hint(missing, settings)


def n_queries(count: int) -> str:
    """A count of queries as a line says it: `1 query`, `2 queries`."""
    return f"{count:,} query" if count == 1 else f"{count:,} queries"


def setting_and_flag(name: str, value: Union[str, bool] = "") -> str:
    """A setting as a message names it, by its YAML key and its command's flag: `batch_tokens (--batch-tokens)`;
    with a `value`, the setting given it: `mode overwrite (--mode overwrite)`, `use_gpu false (--no-use-gpu)` (a
    boolean's flag takes no value)."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"{name} {str(value).lower()} (--{'' if value else 'no-'}{flag})"
    return f"{name} {value} (--{flag} {value})" if value else f"{name} (--{flag})"


def settings_hint(missing: Sequence[str], settings: Dict[str, str]) -> str:
    """`; name the column with <setting> (--<flag>)` for the `missing` columns that a setting names (`settings`:
    column -> setting); empty where none does."""
    named = [settings[c] for c in missing if c in settings]
    if not named:
        return ""
    flags = " and ".join(setting_and_flag(s) for s in dict.fromkeys(named))
    return f"; name the {'column' if len(missing) == 1 else 'columns'} with {flags}"


def _as_read(types: dict, required: Sequence[str], lists: Sequence[str]) -> dict:
    """A JSON Lines file's types as its reader gives them: a required text column is text in every block (the
    reader rejects the rows of other values) whatever its first lines hold, and stays in its place among the
    file's columns, where the output writes it; a column that may hold lists of texts is checked where its pairs
    are made, and left out."""
    return {name: pa.string() if name in required else dtype for name, dtype in types.items()
            if name not in lists or name not in required}


# The folder that Spark and Hive write the rows of a null partition key in (`query_id=__HIVE_DEFAULT_PARTITION__/`).
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def partition_values(path: str) -> Dict[str, Optional[str]]:
    """The partition keys of a file's folders, written hive-style as Spark, Hive and Ray Data write them
    (`.../day=2026-11-30/lang=en/part-0.parquet`), each a column of text, URL-decoded: what Ray Data's readers
    give by default. A null key's folder (`HIVE_NULL`) gives a null, as Spark and pyarrow read it: taken as text,
    the rows of pairs without a query id were ranked as one query."""
    folders = (f.split("=") for f in posixpath.dirname(path).split("/") if f.count("=") == 1)
    return {key: None if value == HIVE_NULL else urllib.parse.unquote(value) for key, value in folders if key}


def _with_partition_keys(check: FileCheck) -> FileCheck:
    """A file's check with the keys of its hive-style folders (`partition_values`) as columns of text, which the
    reader adds to its rows (`readers._tag`; a column of the file's own of that name wins): a query id kept as a
    partition key is there, as Ray Data's readers give it."""
    keys = [key for key in partition_values(check.path) if key not in check.columns]
    if not keys:
        return check
    return replace(check, columns=[*check.columns, *keys], types=check.types | {key: pa.string() for key in keys})


def check_inputs(
    fs: pafs.FileSystem, files: List[str], input_format: str, required: List[str],
    column_names: Optional[List[str]] = None, present: Sequence[str] = (), lists: Sequence[str] = (),
    written: Optional[Dict[str, str]] = None, listed: Optional[Dict[str, Tuple[int, str]]] = None,
    read: Optional[Sequence[str]] = None, settings: Optional[Dict[str, str]] = None,
) -> Tuple[List[FileCheck], pa.Schema]:
    """Reads each file's schema (parquet footer, CSV header, first JSON line) before any work starts, and returns
    the files' checks and the input's schema (`agreed_schema`), which the job writes its output parts in.

    Fails naming the file and the column when a required (text) column or a `present` one (of any type: an
    id) is missing or a required one is not text (nor a list of texts, for those in `lists`), a file has a
    column the job writes (`written`: each name with what the user can do about it), a file is unreadable,
    or there are no rows at all. `listed`: each file's size and stamp from the input's listing (`Listing.stamps`),
    where a file not in it costs a look-up (a HEAD on S3) more than its schema's read. With `read` (a job that
    reads only those columns: training), only their types must agree from file to file, and only they make
    the schema: the others may differ. `settings`: the setting that names each column (`query_column`), which a
    missing column's error says to give.
    """
    from .batching import REJECT

    listed = listed or {}
    checks = [_with_partition_keys(check)
              for check in in_parallel(lambda p: _check_one(fs, p, input_format, column_names, listed.get(p)), files)]
    if input_format == "jsonl":
        checks = [replace(c, types=_as_read(c.types, required, lists)) for c in checks]
    for check in checks:
        if check.rows == 0:
            continue  # an empty file contributes no rows and needs no columns
        refuse_written(check.columns, written or {}, f"{check.path}:")
        own = [name for name in check.columns if name.startswith(OWN_COLUMNS)]
        if own:
            raise InputError(f"{check.path}: has a column {own[0]!r}, a name ce-ray gives its own columns (a row's "
                             "file and place as it travels): rename it")
        reasons = check.types.get(REJECT)  # taken for an earlier job's reasons (`ce_ray.score`'s Dataset written out)
        if reasons is not None and not (is_text(reasons) or pa.types.is_null(reasons)):
            raise InputError(f"{check.path}: has a column {REJECT!r} of {reasons}, where a job reads an earlier job's "
                             "reasons for rejecting rows (text), and rejects the rows that have one: rename it")
        twice = sorted({name for name in check.columns if check.columns.count(name) > 1})
        if twice:
            raise InputError(f"{check.path}: its header names {', '.join(map(repr, twice))} more than once: name "
                             "each column once")
        missing = [c for c in [*required, *present] if c not in check.columns]
        if missing:
            raise InputError(f"{check.path}: missing column(s) {', '.join(map(repr, missing))} "
                             f"(columns: {column_list(check.columns)})"
                             + _missing_columns_hint(check, input_format, column_names, len(missing) < len(
                                 [*required, *present]), missing, settings or {}))
        for column in required:
            dtype = check.types.get(column)
            if dtype is not None and column in lists and is_list(dtype):
                dtype = dtype.value_type
            if dtype is not None and not (is_text(dtype) or pa.types.is_null(dtype)):
                kind = "text or a list of texts" if column in lists else "text"
                raise InputError(f"{check.path}: column {column!r} is {check.types[column]}, not {kind}")
    if all(c.rows == 0 for c in checks):
        raise InputError(f"input has no rows ({len(files)} file(s), all empty: {', '.join(files[:3])}"
                         + (", ...)" if len(files) > 3 else ")"))
    agreeing = checks if read is None else [replace(c, types={n: t for n, t in c.types.items() if n in read})
                                            for c in checks]
    return checks, agreed_schema(agreeing)


def agreed_schema(checks: List[FileCheck]) -> pa.Schema:
    """The input's columns, each in one type for every file (in the order files first have them), that the job
    writes every output part in (`sink.conform`), so that the output reads back as one table.

    Fails naming both files when a column is of kinds in two files that Arrow cannot make one (a number in one,
    text in the other, a struct in one): Ray Data would fail the job where it first puts rows of both in one
    block, mid-way. Kinds that widen to one type (int32 and int64, an integer and a float, string and
    large_string, timestamp units, an all-null column, structs of other fields) pass, as Ray Data unifies them.
    The types are parquet's footers', a JSON Lines file's first lines' (`HEAD_BYTES`) and text for CSV and TSV."""
    # a column's type so far, the first file that has it and its type there: the error names that file's own type,
    # where the widened one (double, after int64 and double files) named a type that file does not have
    seen: Dict[str, Tuple[pa.DataType, str, pa.DataType]] = {}
    for check in checks:
        if check.rows == 0:
            continue
        for name, dtype in check.types.items():
            dtype = read_type(dtype)
            if name not in seen:
                seen[name] = dtype, check.path, dtype
                continue
            unified, where, its_own = seen[name]
            one = one_type(unified, dtype)
            if one is None:
                raise InputError(f"{check.path}: column {name!r} is {dtype}, but in {where} it is {its_own}: rows "
                                 "of both cannot be put together; write it as one type in every file")
            seen[name] = one, where, its_own
    return pa.schema([(name, dtype) for name, (dtype, _, _) in seen.items()])


def one_type(one: pa.DataType, other: pa.DataType) -> Optional[pa.DataType]:
    """The type that rows of both types are put together in, as Ray Data widens them; None where there is none.
    Extension types (Ray's tensors) Ray Data unifies its own way: the first is kept."""
    if one == other or isinstance(one, pa.ExtensionType) or isinstance(other, pa.ExtensionType):
        return one
    try:
        return pa.unify_schemas([pa.schema([("c", one)]), pa.schema([("c", other)])],
                                promote_options="permissive").field("c").type
    except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def s3_location(uri: str) -> Tuple[str, str]:
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def s3_endpoint() -> str:
    """The S3 endpoint the environment names (botocore's variables, the S3-only one first); '' for AWS's own."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def check_s3_access(uri: str) -> None:
    """Fails fast, before any work, when the S3 endpoint cannot be reached or refuses the credentials.

    The job's own filesystem retries transient errors with backoff for minutes; this one look-up
    (list one key under the prefix) gives up after a few seconds with a message that names the endpoint
    and bucket. Credentials are never part of a message.
    """
    if not uri.startswith(("s3://", "s3a://")):
        return
    import s3fs
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = s3_location(uri)
    key = re.split(r"[*?\[]", key, maxsplit=1)[0]  # a glob lists from its fixed prefix
    endpoint = s3_endpoint() or "AWS S3"
    where = f"s3://{bucket} at {endpoint}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True, config_kwargs={
        "retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 20})
    fs.retries = 1
    try:
        fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
    except PermissionError as e:
        raise InputError(f"{where} refused the credentials from the environment or instance role ({e}): check "
                         "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the role's permissions") from None
    except FileNotFoundError:
        raise InputError(f"bucket {bucket} does not exist at {endpoint}") from None
    except (BotoCoreError, ClientError, OSError) as e:
        raise InputError(f"cannot reach {where}: {type(e).__name__}: {e}") from None
