"""An input's files listed (a file, a folder, a glob, an earlier job's output) and their schemas checked before
any work starts: a bad input fails naming the file and the column. Reading the files is `readers.py`'s."""

from __future__ import annotations

import fnmatch
import io
import json
import os
import posixpath
import re
import sys
import urllib.parse
from dataclasses import dataclass, replace
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.fs as pafs

from .arrow_types import holds_empty_struct, is_list, is_text, nulls_as_text, one_type, read_type
from .messages import InputError, column_list, lookalikes_hint, setting_and_flag, settings_hint
from .output_state import REJECTS, RESULTS, Finished, finished_job, finished_parts, is_output
from .storage import (check_s3_access, filesystem, glob_base, in_parallel, is_glob, is_remote, list_tree,
                      local_path, look_up, named_as_a_folder, parquet_footer, size_and_stamp)


DELIMITED = ("csv", "tsv")  # read by Arrow's CSV reader, a header line or column_names naming the columns
CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}  # read through, by the suffix
COMPRESSED = tuple(CODECS)
# Codecs of text files that ce-ray does not read: a file of pairs so compressed was skipped as "not csv" in a folder,
# its rows lost, and named alone was said to be of no format it could tell, or given one, not UTF-8.
UNREAD_CODECS = {".xz": "xz", ".lzma": "lzma", ".lz4": "lz4", ".br": "brotli", ".deflate": "deflate",
                 ".snappy": "snappy", ".lzo": "lzo", ".gzip": "gzip", ".zip": "zip", ".7z": "7z", ".z": "compress"}
# A compressed text file's text, in memory, taken as this many times its size (text compresses 3-5x).
COMPRESSED_TEXT_RATIO = 4
# What a block's rows take in memory at most where an input's rows are long (whole web pages as documents): Ray Data's
# own target for a block, which it keeps by bytes where it reads, but batches after by rows alone (`rows_within`).
BLOCK_BYTES = 128 << 20
# Rows a parquet input's first row group is sampled by, read and decoded, to tell what its rows take in memory where
# its footer says far less (`_as_decoded`); a ratio past this one to the footer's counts.
SAMPLED_ROWS, DECODED_RATIO = 1024, 2
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
OWN_COLUMNS = "_ce_"  # the prefix of the columns ce-ray adds to rows as they travel (their file and place)


def parse_names(text: str, setting: str = "column_names") -> Optional[List[str]]:
    """A setting that names columns, `query_id,doc_id,query,document`, as a list (None when unset)."""
    if not text.strip():
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise InputError(f"{setting_and_flag(setting)} must be distinct names separated by commas, got {text!r}")
    return names


# Names that say a file is no data of any format (a dataset's README.md, LICENSE.pdf, a notebook): in a folder they
# are skipped with the format given too (and by eval, which reads parquet), where they were read as that format and
# failed the job (`cannot read .../README.md: Parquet file size is 11 bytes`).
_DOCUMENTS = (".md", ".rst", ".pdf", ".html", ".htm", ".png", ".jpg", ".jpeg", ".svg", ".yaml", ".yml", ".py",
              ".ipynb", ".log", ".sh", ".zip", ".tar", ".tgz")
_DOCUMENT_NAMES = ("readme", "license", "licence", "notice", "copying")  # with no extension too


# What `ce-ray eval` writes beside a folder it measured (`<input>.eval.json`), and by an earlier ce-ray beside a file,
# in a folder of pairs (the candidates' file, in their folder): no pairs, though `.json` names JSONL. Read as such,
# the folder that a rerank read next "mixed formats ['jsonl', 'parquet']" and failed.
EVAL_SUFFIX = ".eval.json"


def eval_beside(uri: str) -> str:
    """Where `ce-ray eval` writes its measures of `uri` by default, beside it: `_<file>.eval.json` for a file (a
    name that says its format), whose folder pandas, Arrow, Spark and Ray Data then read as they did, passing over
    it as over `_SUCCESS` (`<file>.eval.json` failed their reads, Parquet magic bytes not found), `<input>.eval.json`
    for a folder, in its parent; a bucket's `_eval.json`, in it. A local path as written out from the working
    directory: `.` was written `..eval.json` there (a hidden file), and `s3://bucket` `s3://bucket.eval.json`, which
    no bucket holds."""
    place = uri.rstrip("/") if is_remote(uri) else os.path.abspath(local_path(uri))
    if is_remote(place) and "/" not in place.split("://", 1)[1]:
        return f"{place}/_{EVAL_SUFFIX[1:]}"
    folder, sep, name = place.rpartition("/")
    if detect_format(name) is None:
        return place + EVAL_SUFFIX
    return f"{folder}{sep}_{name}{EVAL_SUFFIX}"


# A table format's own folder of metadata: its data folder keeps the parquet files of every version (those an update,
# a delete or a compaction replaced too) beside the current ones, which the metadata alone tells apart. Read as a
# folder of parquet files, a Delta table's earlier rows came again, exit 0.
TABLE_FORMATS = {"_delta_log": ("Delta Lake", "read_delta"), ".hoodie": ("Apache Hudi", "read_hudi"),
                 "metadata": ("Apache Iceberg", "read_iceberg")}


def _refuse_tables(uri: str, base: str, listed: Dict[str, Tuple[int, str]], files: List[str]) -> None:
    """Refuses the files to read (`files`) where they lie in a Delta Lake, Hudi or Iceberg table's folder (its
    metadata folder among the files listed under `base`): its parquet files are not its rows. A table beside them
    (in a glob's base folder) is not theirs."""
    tables = {}  # a table's folder (with a trailing /) -> its metadata folder's name
    for path in listed:
        parts = path[len(base):].split("/")
        for at, folder in enumerate(parts[:-1]):
            if folder in TABLE_FORMATS and (folder != "metadata" or parts[-1].endswith(".metadata.json")):
                tables[(base + "/".join(parts[:at])).rstrip("/") + "/"] = folder
    for table_folder, folder in tables.items():
        if any(file.startswith(table_folder) for file in files):
            table, reader = TABLE_FORMATS[folder]
            raise InputError(f"input {uri} holds a {table} table ({folder}/): {_read_the_table(reader)}")


def _read_the_table(reader: str) -> str:
    return (f"its folder keeps the files of the table's earlier versions too, which would be read as rows. Read it "
            f"with Ray Data's ray.data.{reader} and score the Dataset with ce_ray.score or ce_ray.rerank "
            "(docs/python.md), or give the files of one version")


def _refuse_table_above(uri: str, fs: pafs.FileSystem, folder: str) -> None:
    """Refuses an input folder inside a table's: a Delta Lake or Hudi table's partition (`table/dt=2024-01-01/`,
    its metadata folder beside a `key=value` folder), an Iceberg table's data (`table/data/…`, Iceberg's `metadata/`
    beside `data/`). `_refuse_tables` finds a table's metadata under the input only, and a partition folder was read
    with the files of the table's earlier versions in it, exit 0. Each such folder on the way is looked beside (a
    table may lie in another's partition, `lake/env=prod/table/dt=1/`): a look-up or two of each."""
    parts = folder.rstrip("/").split("/")
    above = []  # (a folder above the input, the metadata folder that would make it a table's)
    for at, part in enumerate(parts):
        if at and "=" in part.strip("=") and "=" not in parts[at - 1].strip("="):  # a table's first partition key
            above += [("/".join(parts[:at]), marker) for marker in ("_delta_log", ".hoodie")]
        if at and part == "data":
            above.append(("/".join(parts[:at]), "metadata"))
    for table, marker in above:
        if _is_table_metadata(fs, f"{table}/{marker}"):
            name, reader = TABLE_FORMATS[marker]
            raise InputError(f"input {uri} lies in the folder of the {name} table at {table}/ ({marker}/): "
                             f"{_read_the_table(reader)}")


def _is_table_metadata(fs: pafs.FileSystem, folder: str) -> bool:
    """Whether `folder` is a table's metadata folder (`TABLE_FORMATS`): a folder of its own named `metadata` holds
    Iceberg's `*.metadata.json`. One that cannot be looked into (no permission) is not known to be one."""
    try:
        if not folder.endswith("/metadata"):
            return fs.get_file_info(folder).type == pafs.FileType.Directory
        return any(info.path.endswith(".metadata.json")
                   for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)))
    except OSError:
        return False


def _named_as_a_pattern(fs: pafs.FileSystem, uri: str, path: str) -> str:
    """Where a folder or file whose own name holds `[`, `*` or `?` (`pairs[v2]/`) is a pattern too, matching nothing:
    the input given that name escaped, the rest as given (`pairs[v2]/*`: `pairs[[]v2]/*`), to read it as it is."""
    parts, given = path.rstrip("/").split("/"), uri.rstrip("/").split("/")
    for end in range(len(parts), 0, -1):
        named = "/".join(parts[:end])
        kind = fs.get_file_info(named).type if is_glob(parts[end - 1]) else pafs.FileType.NotFound
        if kind == pafs.FileType.NotFound:
            continue
        rest = given[len(given) - (len(parts) - end):] if end < len(parts) else []
        escaped = re.sub(r"([*?[])", r"[\1]", "/".join(given[:len(given) - len(rest)]))
        if not rest and kind == pafs.FileType.Directory:
            rest = ["*"]
        return (f": `[`, `*` and `?` make a path a pattern, and {named} is a name that holds them; to read it as it "
                f"is, give {'/'.join([escaped, *rest])}")
    return ""


def each_file_once(files: List[str], base: str) -> List[str]:
    """Local `files`, a file reached by two names (`latest/p.parquet` and `2024-01-02/p.parquet`, where `latest` is a
    link; two links to one file) once: by the name of its own place under `base` where it has one, else the first.
    Its rows were read once a name."""
    top = os.path.realpath(base)
    by_target: Dict[str, str] = {}
    for file in files:
        target = os.path.realpath(file)
        own_place = target == os.path.join(top, os.path.relpath(file, base))
        if target not in by_target or own_place:
            by_target[target] = file
    kept = set(by_target.values())
    return [file for file in files if file in kept]


def _refuse_unread_codecs(files: List[str], named: bool, read_as_given: bool) -> None:
    """Refuses a file of pairs compressed by a codec ce-ray does not read: one whose name says a format before the
    codec's suffix (`b.csv.xz`), one named alone, or one a glob or the format given would read (not a document, an
    archive of images); naming it and what to do."""
    for file in files:
        suffix = next((s for s in UNREAD_CODECS if file.lower().endswith(s)), None)
        if suffix and (named or detect_format(file[: -len(suffix)]) is not None
                       or (read_as_given and not is_document(file))):
            if suffix == ".gzip":
                raise InputError(f"{file} ends in .gzip, which ce-ray does not read as gzip: name it .gz")
            raise InputError(f"{file} is compressed with {UNREAD_CODECS[suffix]} ({suffix}), which ce-ray does not "
                             f"read: recompress it as {', '.join(COMPRESSED[:-1])} or {COMPRESSED[-1]}")


def is_document(path: str) -> bool:
    stem, extension = os.path.splitext(posixpath.basename(path).lower())
    return extension in _DOCUMENTS or stem in _DOCUMENT_NAMES or path.lower().endswith(EVAL_SUFFIX)


def compression_of(path: str) -> Optional[str]:
    """A text file's codec, by its name's suffix in any case: Arrow's and Ray Data's detection know `.gz`, not `.GZ`
    (a Windows name), whose compressed bytes they read as its text (refused as no UTF-8)."""
    return next((codec for suffix, codec in CODECS.items() if path.lower().endswith(suffix)), None)


def detect_format(path: str) -> Optional[str]:
    name = path.lower()
    if name.endswith(EVAL_SUFFIX):
        return None
    for suffix in COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return _EXTENSIONS.get(os.path.splitext(name)[1])


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
        if kind == pafs.FileType.File and named_as_a_folder(uri):
            # The prefix, where it read the object of its name. s3fs lists the object where no key starts with the
            # prefix: `s3://b/p.parquet/` reads it.
            kind = pafs.FileType.Directory
        named = kind == pafs.FileType.File and not has_glob
        if named:  # its size and stamp from the same look-up, where a caller asked for them again (a HEAD on S3)
            listed = {path: stamp}
        if kind == pafs.FileType.Directory and not has_glob and is_output(fs, path):
            finished = finished_job(fs, path, uri)
        if not named and finished is None:
            _refuse_table_above(uri, fs, base)
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
        _refuse_tables(uri, base, listed, files)
    if has_glob and not files:
        raise InputError(f"input {uri} matches no files" + _named_as_a_pattern(fs, uri, path))
    _refuse_unread_codecs(files, named, has_glob or input_format != "auto")
    given = input_format != "auto"
    if input_format == "auto":
        formats = {detect_format(f) for f in files} - {None}
        if len(formats) > 1:
            # the flag beside the key: a user of the command line gives the flag
            raise InputError(f"input {uri} mixes formats {sorted(formats)}: read one with "
                             f"{setting_and_flag('input_format', sorted(formats)[0])}, which skips the other's files")
        if not formats and files:
            # the data file (a part-00000), not a README beside it that sorts first and would be skipped
            unknown = next((f for f in files if not is_document(f)), files[0])
            raise InputError(f"cannot tell the format of {unknown} from its name: pass "
                             f"{setting_and_flag('input_format')}: parquet, jsonl, csv or tsv")
        input_format = formats.pop() if formats else "parquet"
    if not named:
        # A folder's other files (a LICENSE.pdf, a README.md, an eval's .eval.json) are not pairs, nor a glob's
        # (`folder/*`). A file whose name says no format (part-00000, pairs.txt) is read when the format was given,
        # or a glob named it.
        kept = [f for f in files if detect_format(f) == input_format
                or (detect_format(f) is None and (has_glob or given) and not is_document(f))]
        if len(kept) < len(files) and note_skipped:
            other = [posixpath.basename(f) for f in sorted(set(files) - set(kept))]
            print(f"ce-ray: note: {uri}: skipped {len(other)} file(s) that are not {input_format}: "
                  + ", ".join(other[:5]) + (", ..." if len(other) > 5 else ""), file=sys.stderr, flush=True)
        files = kept if is_remote(uri) else each_file_once(kept, base)
    if not files:
        raise InputError(f"input {uri} holds no {input_format} files")
    if column_names and input_format not in DELIMITED:
        raise InputError(f"{setting_and_flag('column_names')} names the columns of CSV or TSV files without a header "
                         f"line; {uri} is {input_format}, whose files name their columns")
    return Listing(files, input_format, fs, {file: listed[file] for file in files if file in listed},
                   None if finished is None else finished_parts(finished, base))


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
    row_bytes: float = 0.0  # about what a row takes in memory: parquet's row groups over its rows, a text head's lines


def job_row_bytes(checks) -> float:
    """What a row of a job's input takes in memory, by the file whose rows are the longest on average (its
    `FileCheck.row_bytes`), where the rows of one file may be far longer than another's."""
    return max((check.row_bytes for check in checks), default=0.0)


def rows_within(rows: int, row_bytes: float, limit: int = BLOCK_BYTES) -> int:
    """`rows`, or fewer where rows of `row_bytes` (`FileCheck.row_bytes`) would take more than `limit` bytes."""
    return max(1, min(rows, int(limit // row_bytes))) if row_bytes > 0 else rows


def _text_bytes(path: str, size: int, head: bytes, whole: bool) -> int:
    """A text file's size in memory: its head when that was all of it, else its size (`size` bytes)."""
    if whole:
        return len(head)
    return size * COMPRESSED_TEXT_RATIO if compression_of(path) else size


def _head(f, blank: bytes = b"\r\n") -> Tuple[bytes, bool]:
    """A text file's first `HEAD_BYTES`, or more to the end of its first line where that is longer (a JSON record
    holding a long document); and whether that is the whole file. The lines of `blank` characters alone that open
    the file, which its reader skips (a CSV's empty lines; a JSON Lines file's of spaces and tabs too), are passed
    over: a head of them alone said a file of rows had none, and it was left out."""
    chunks = []
    while True:
        chunk = f.read(HEAD_BYTES)
        if not chunks and len(chunk) == HEAD_BYTES and not chunk.removeprefix(UTF8_BOM).strip(blank):
            continue
        chunks.append(chunk)
        if len(chunk) < HEAD_BYTES:
            return b"".join(chunks), True
        if b"\n" in (chunk if len(chunks) > 1 else chunk.lstrip()) or len(chunks) >= FIRST_LINE_BYTES // HEAD_BYTES:
            return b"".join(chunks), False


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
            # (a name given twice, which pyarrow writes, is refused by `check_inputs`, not here by `schema.field`)
            in_memory = sum(size for _, size in groups)
            return FileCheck(path, schema.names, meta.num_rows, dict(zip(schema.names, schema.types)),
                             groups, in_memory, row_bytes=in_memory / max(meta.num_rows, 1))
        with fs.open_input_stream(path, compression=compression_of(path)) as f:
            # Arrow's CSV reader reads a line of spaces as a row (a header, refused below); JSON Lines' reader skips it
            head, whole = _head(f, b"\r\n" if input_format in DELIMITED else b" \t\r\n")
        size = _text_bytes(path, size, head, whole)
        head = head.removeprefix(UTF8_BOM)
        # A CSV or TSV line may end in "\r" alone, as Arrow's reader reads it (bytes' splitlines splits at no other).
        lines = [line for line in (head.splitlines() if input_format in DELIMITED else head.split(b"\n"))
                 if line.strip()]
        # What a row takes: the head's rows past a CSV's header, those it holds whole, else the one it cut short (a
        # row at least that long). The header counted as a row, and a cut row was left out: rows of 1.3 MB, 0 bytes.
        rows = lines[1:] if input_format in DELIMITED and not column_names else lines
        sample = (rows if whole else rows[:-1]) or rows[-1:]
        row_bytes = sum(len(line) + 1 for line in sample) / max(len(sample), 1)
        if input_format in DELIMITED:
            # Arrow's reader skips empty lines alone: a first line of spaces is the header it reads, of one column
            if not column_names and lines and not next(line for line in head.splitlines() if line).strip():
                raise InputError(f"{path}: its first line holds spaces or tabs alone, which is read as its header: "
                                 "remove that line")
            first = _first_record(head[head.index(lines[0]):], input_format, path) if lines else []
            if column_names:  # no header line: every line is a row, each of as many fields as there are names
                if lines and len(first) != len(column_names):
                    raise InputError(f"{path}: its first line has {len(first)} field(s), "
                                     f"{setting_and_flag('column_names')} names {len(column_names)} "
                                     f"({', '.join(column_names)})")
                if first == column_names:  # it would be scored (or trained on) as a pair
                    raise InputError(f"{path}: its first line is a header naming the columns "
                                     f"{setting_and_flag('column_names')} names: leave it out")
                return FileCheck(path, column_names, None if lines or not whole else 0, as_text(column_names),
                                 size_bytes=size, row_bytes=row_bytes)
            _refuse_header_not_utf8(path, lines[0] if lines else b"")
            return FileCheck(path, first, 0 if whole and len(lines) <= 1 else None, as_text(first), size_bytes=size,
                             row_bytes=row_bytes)
        if not lines:  # (the head is the whole file: its blank lines are passed over)
            return FileCheck(path, [], 0, {})
        # The columns of the head's lines, not of the first alone: a line may leave a key out (a null), and a query
        # missing from line 1 alone failed the file as having no query column. A line 1 that is no JSON object (no
        # UTF-8, cut short, an array) is rejected as the reader rejects any other line: it failed the whole file.
        if lines[0].lstrip().startswith(b"[") and not is_json(lines[0]):
            # An array's opening line, an object a line after it: its last object parses, and was scored, its other
            # lines rejected (its "[" too) where the file was small enough for the check to read to its end.
            _refuse_line_1(path, lines[0])
        types = _json_types(lines if whole else lines[:-1] or lines[:1], path)
        if not types:  # its lines all rejected: the reader would reject them too, and no column names its pairs
            _refuse_header_not_utf8(path, lines[0], "line 1")
            _refuse_line_1(path, lines[0])
        return FileCheck(path, list(types), None, types, size_bytes=size, row_bytes=row_bytes)
    except InputError as e:
        raise InputError(f"{e}{_read_otherwise(path, input_format)}") from None
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot read {path}: {e}{_read_otherwise(path, input_format)}") from e


def _read_otherwise(path: str, input_format: str) -> str:
    """Where a file's name says another format than the one it is read as (a config's `input_format: csv` over
    parquet files): said after what its read found, which was of the format it is not (`its header line is not
    UTF-8`)."""
    named = detect_format(path)
    if named is None or named == input_format:
        return ""
    return f" (read as {input_format}, though its name says {named}: check {setting_and_flag('input_format')})"


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
        writer = "Excel's Unicode Text" if line == "its header line" else "Windows PowerShell 5's Out-File"
        utf16 = f" (UTF-16, as {writer} writes it)" if header[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise InputError(f"{path}: {line} is not UTF-8{utf16}: byte {header[e.start]:#04x} at {e.start}; "
                         "write the file as UTF-8") from None


def is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


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


def _first_record(data: bytes, input_format: str, path: str) -> List[str]:
    """The fields of the first record of CSV or TSV `data`, split as the reader splits them (a quoted CSV
    field may hold line breaks)."""
    import csv

    text = data.decode("utf-8", errors="replace")
    if input_format == "tsv":
        return re.split(r"\r\n|\r|\n", text, maxsplit=1)[0].split("\t")
    # Python's csv module refuses a field past 131,072 characters, which Arrow reads: the limit (the process's own)
    # is raised to the head's length. newline="": a line may end in "\r" alone (Excel for Mac), as Arrow reads it.
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    try:
        return next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error as e:
        raise InputError(f"{path}: its first record cannot be read as CSV ({e})") from None


def refuse_reasons_of(kind, where: str) -> None:
    """Fails for a `reject_reason` column of `kind`, not text, where a job or `ce_ray.score` takes an earlier job's
    reasons for rejecting rows (`ce_ray.score`'s Dataset written out): every row of it failed the job mid-way."""
    from .batching import REJECT

    raise InputError(f"{where} has a column {REJECT!r} of {kind}, where a job reads an earlier job's reasons for "
                     "rejecting rows (text), and rejects the rows that have one: rename it")


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
    one_field = check.columns[0] if len(check.columns) == 1 and input_format in DELIMITED else ""
    # the format a header of one field reads in: split at a mark this format does not split at
    fits = next((form for mark, form in ((",", "csv"), ("\t", "tsv"), ("{", "jsonl")) if mark in one_field), None)
    if (named and named != input_format) or fits:
        return f"; read as {input_format}" + (f", though its name says {named}" if named and named != input_format
                                              else f", though its first line reads as {fits}") + (
            f": check {setting_and_flag('input_format')}")
    if any(mark in one_field for mark in ";|"):
        return (f"; its header is one field, {one_field[:60]!r}: CSV files are read split at commas and TSV files at "
                "tabs (write it with either)")
    if input_format in DELIMITED and not column_names and not some_found:
        headless = f"for a file without a header line, give its columns' names in {setting_and_flag('column_names')}"
        named_otherwise = settings_hint(missing, settings)
        # A first line of names alone (WikiQA's `QuestionID, Question, ...`) is a header whose columns are named
        # otherwise, where a number among them (MS MARCO's `1048585, 7187158, ...`) is a row: both said, the likelier
        # first (a header was told only to give column_names).
        if named_otherwise and not any(is_number(name) for name in check.columns):
            return f"{named_otherwise}; or, {headless}"
        return f"; {headless}"
    return settings_hint(missing, settings)


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    # A JSON Lines line may leave a key out (Spark's writer leaves out a null field), and so may every line of a
    # file of a few: a text column that another file has is null in its rows (the reader gives it), whose rows are
    # rejected as nulls are. A `present` one (an id, a label), which no reader fills, is still the file's to have.
    elsewhere = {name for c in checks if c.rows != 0 for name in c.columns} if input_format == "jsonl" else set()
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
            refuse_reasons_of(reasons, f"{check.path}:")
        twice = sorted({name for name in check.columns if check.columns.count(name) > 1})
        if twice:
            naming = "its header" if input_format in DELIMITED else "its schema"
            raise InputError(f"{check.path}: {naming} names {', '.join(map(repr, twice))} more than once: name "
                             "each column once")
        missing = [c for c in required if c not in check.columns and c not in elsewhere] + [
            c for c in present if c not in check.columns]
        if missing:
            raise InputError(f"{check.path}: missing column(s) {', '.join(map(repr, missing))} "
                             f"(columns: {column_list(check.columns)})"
                             + _missing_columns_hint(check, input_format, column_names, len(missing) < len(
                                 [*required, *present]), missing, settings or {})
                             + lookalikes_hint(missing, check.columns))
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
    checks = _as_decoded(fs, checks) if input_format == "parquet" else checks
    agreeing = checks if read is None else [replace(c, types={n: t for n, t in c.types.items() if n in read})
                                            for c in checks]
    schema = agreed_schema(agreeing)
    if input_format == "jsonl":  # a column null in every file's lines checked: text, which takes later values
        schema = pa.schema([field.with_type(nulls_as_text(field.type)) for field in schema])
    return checks, schema


def _as_decoded(fs: pafs.FileSystem, checks: List[FileCheck]) -> List[FileCheck]:
    """Parquet checks, their sizes in memory as their rows decode where that is far past their footers' (a row group's
    size is of its pages as encoded): a text repeated over rows (a long query over its candidates) is stored once in
    its column's dictionary, and its rows took ~50 times the footer's bytes, so that a rerank ranked 1.7 GB in 2
    partitions, 3.9 GB in one task, where it takes 7. The first rows of one file are read and decoded, as Ray Data's
    parquet reader samples its files; the others are taken to encode alike."""
    import pyarrow.parquet as pq

    sample = next((c for c in checks if c.row_groups and c.row_groups[0][0]), None)
    if sample is None:
        return checks
    try:
        with fs.open_input_file(sample.path) as f:  # pages read as the rows need them, not the row group whole
            rows = next(pq.ParquetFile(f, buffer_size=1 << 20).iter_batches(SAMPLED_ROWS, row_groups=[0]), None)
    except (OSError, pa.ArrowException):
        return checks  # the job's read of it says what is wrong with it
    group_rows, group_bytes = sample.row_groups[0]
    ratio = (rows.nbytes / rows.num_rows) / max(group_bytes / group_rows, 1) if rows and rows.num_rows else 1
    if ratio < DECODED_RATIO:
        return checks
    return [replace(c, row_groups=tuple((n, int(size * ratio)) for n, size in c.row_groups),
                    size_bytes=int(c.size_bytes * ratio), row_bytes=c.row_bytes * ratio) if c.row_groups else c
            for c in checks]


def agreed_schema(checks: List[FileCheck]) -> pa.Schema:
    """The input's columns, each in one type for every file (in the order files first have them), that the job
    writes every output part in (`sink.conform`), so that the output reads back as one table.

    Fails naming the file where a column holds objects without keys, which parquet cannot write (`{}` on every
    line of a JSON Lines file's start), and naming both files when a column is of kinds in two files that Arrow
    cannot make one (a number in one, text in the other, a struct in one): Ray Data would fail the job where it
    first puts rows of both in one block, mid-way. Kinds that widen to one type (int32 and int64, an integer and a
    float, string and large_string, timestamp units, an all-null column, structs of other fields) pass, as Ray Data
    unifies them.
    The types are parquet's footers', a JSON Lines file's first lines' (`HEAD_BYTES`) and text for CSV and TSV."""
    # a column's type so far, the first file that has it and its type there: the error names that file's own type,
    # where the widened one (double, after int64 and double files) named a type that file does not have
    seen: Dict[str, Tuple[pa.DataType, str, pa.DataType]] = {}
    for check in checks:
        if check.rows == 0:
            continue
        for name, dtype in check.types.items():
            dtype = read_type(dtype)
            if holds_empty_struct(dtype):  # the job would score every row, then fail at its first write
                raise InputError(f"{check.path}: column {name!r} is {dtype}: it holds JSON objects without keys ({{}}) "
                                 "on every line checked, which parquet cannot write; give them a key, or leave the "
                                 "column out of the file")
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
