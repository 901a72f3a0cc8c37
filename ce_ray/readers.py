"""Input files to a Ray Dataset of tagged rows: `read_dataset`, and Ray Data datasources of ce-ray's own for
each format (parquet in ranges of row groups, JSON Lines, CSV and TSV in chunks of whole lines).

Every row carries where it came from (`TAGS`: its input file's key, its position in the file, and on a file's
last chunk the file's row count), so that outputs are named after their inputs and a re-run can tell which
inputs are complete (docs/reliability.md). A record that cannot be read becomes a row with a reject reason,
never a failed file. The partition keys of hive-style folders (`day=2026-11-30/`) become columns, as in Ray
Data's readers.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .arrow_types import is_list, is_text, one_type, read_type
from .input_files import (COMPRESSED, DELIMITED, UTF8_BOM, FileCheck, Listing, check_inputs, compression_of,
                          job_row_bytes, list_files, partition_values, rows_within)
from .messages import InputError, cannot_hold
from .output_state import refuse_changed_output
from .runtime import ensure_ray


class InputRead(NamedTuple):
    """What `read_dataset` read: the Dataset (None when nothing is left to read), the input files' checks (those
    with rows), about how many bytes the rows to read take in memory (`FileCheck.size_bytes`), the input's schema
    (`input_files.agreed_schema`) and how many files the input holds (with a parquet file of no rows, which has no
    check here: a job's summary counts it among the files in)."""
    dataset: Any
    checks: List[FileCheck]
    size_bytes: int
    schema: pa.Schema
    listed: int


class CheckedInput(NamedTuple):
    """An input's listing, its files' checks and its schema (`check_input`), which `read_dataset` reads."""
    listing: Listing
    checks: List[FileCheck]
    schema: Optional[pa.Schema]


def check_input(uri: str, input_format: str = "auto", required: Optional[List[str]] = None,
                column_names: Optional[List[str]] = None, present: Sequence[str] = (), lists: Sequence[str] = (),
                written: Optional[Dict[str, str]] = None, read: Optional[Sequence[str]] = None,
                settings: Optional[Dict[str, str]] = None, listing: Optional[Listing] = None) -> CheckedInput:
    """`read_dataset`'s checks of the input, without Ray: a job that reads its input after Ray's start (training)
    checks it first, and passes the result to `read_dataset`."""
    listing = listing or list_files(uri, input_format, column_names)
    checks, schema = check_inputs(listing.fs, listing.files, listing.input_format, list(required or []),
                                  column_names, present, lists, written, listing.stamps, read, settings)
    refuse_changed_output(uri, listing.finished, {check.path: check.rows for check in checks})
    return CheckedInput(listing, checks, schema)


def read_dataset(uri: str, input_format: str = "auto", required: Optional[List[str]] = None,
                 keep=None, rows_per_block: int = 4096, rows_per_read: Optional[int] = None,
                 column_names: Optional[List[str]] = None, present: Sequence[str] = (),
                 lists: Sequence[str] = (), written: Optional[Dict[str, str]] = None,
                 read: Optional[Sequence[str]] = None, settings: Optional[Dict[str, str]] = None,
                 listing: Optional[Listing] = None, held=None,
                 checked: Optional[CheckedInput] = None) -> InputRead:
    """A Ray Dataset over the input files, after `check_inputs` passed (`required` text columns, or lists of
    texts for those in `lists`; `present` ones of any type; none that the job writes, `written`).

    Files are streamed in chunks of `rows_per_block` rows, and every row is tagged with its input file's key
    and position (`TAGS`). A text file is read whole by one task; a parquet file in ranges of `rows_per_read` rows
    (`PARQUET_ROWS_PER_READ`), in whole row groups (`ReadRange`); small files several to a task (`read_together`).
    `keep(check)`, when given, selects the files to read (resume) from their `FileCheck`; `held(check)`, the rows of a
    parquet file to leave out, as runs [start, stop) of its row numbers (those a resumed output holds already):
    its row groups wholly held are not read, the other rows keep their numbers. `column_names` names the
    columns of CSV or TSV files that have no header line. `read`: the only columns the job reads, when it does not
    pass the rows on (training), whose types alone must agree from file to file (`check_inputs`): the job drops the
    others from each block before rows of two files meet. `settings`: the setting that names each column, which a
    missing one's error gives. `listing`: the input's (`list_files`), where the caller listed it already.
    `checked`: the input's `check_input`, where the caller checked it already (the settings that only its checks
    take then go unused).
    """
    listing, checks, schema = checked or check_input(uri, input_format, required, column_names, present, lists,
                                                     written, read, settings, listing)
    input_format, fs = listing.input_format, listing.fs
    listed = len(checks)
    checks = [c for c in checks if c.rows != 0]
    todo = [c for c in checks if keep is None or keep(c)]
    if not todo:
        return InputRead(None, checks, 0, schema, listed)
    ensure_ray()  # here, not by Ray Data's own start, which would start the dashboard too
    size_bytes = sum(c.size_bytes for c in todo)
    # Small files are read together where the job passes their columns on, which agree from file to file; a job
    # that reads some columns alone (training) drops the others after the read, and files whose other columns
    # clash (a `source` of numbers, then of text) failed in the read task that put their rows together.
    together = read is None
    if input_format == "parquet":
        ranges = [r for c in todo for r in read_ranges(c, rows_per_read or PARQUET_ROWS_PER_READ,
                                                       held(c) if held else ())]
        # Long rows read in fewer a chunk: 300 rows of 2.1 MB documents were one chunk of 625 MiB in the read task.
        rows_per_block = rows_within(rows_per_block, job_row_bytes(todo))
        source = tagged_parquet(ranges, fs, rows_per_block, together, schema)
        return InputRead(_read(source), checks, size_bytes, schema, listed)
    paths = [c.path for c in todo]
    if input_format in DELIMITED:
        columns = list(dict.fromkeys(name for c in todo for name in c.columns))  # every file's, all read as text
        source = tagged_files(paths, fs, functools.partial(delimited_chunks, text_columns=columns,
                                                            tab_separated=input_format == "tsv",
                                                            column_names=column_names), together)
    else:
        source = tagged_files(paths, fs, functools.partial(json_lines_chunks, text_columns=list(required or []),
                                                            list_columns=lists, schema=schema), together)
    # A file is read whole by one task: its rows travel together, so files complete one after another.
    return InputRead(_read(source), checks, size_bytes, schema, listed)


def _read(source):
    """The Dataset of a datasource of ce-ray's, in as many blocks as it has read tasks (`read_together`): asked
    for more, Ray Data cuts each task's output into as many more blocks (`SplitBlocks`), and 2,000 small files read
    in 32 tasks still came as 2,016 blocks, each a task of the stages after."""
    import ray.data

    return ray.data.read_datasource(source, override_num_blocks=len(source.get_read_tasks(1)))


def holds_texts(value) -> bool:
    """A JSON value that a column of texts or of lists of texts takes."""
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _parse_lines_slowly(lines: List[bytes], numbers: List[int], path: str, text_columns: List[str],
                        list_columns: Sequence[str] = ()) -> pa.Table:
    """Line by line, for a chunk Arrow's JSON reader refused (mixed types, a bad line): nothing is lost.
    `numbers`: each line's number in its file.

    A line that is not valid JSON (or not UTF-8, or holding a lone surrogate, `\\ud800`, which is valid JSON
    but no UTF-8 text) becomes a row with null text and a reason; a text column holding a number, list or
    object keeps the value as JSON text and the row is rejected with the reason.
    A text column of `list_columns` may hold lists of texts: where the chunk has some, its texts become lists
    of one (the same pairs), so that the column has one type.
    """
    from .batching import REJECT

    rows, reasons = [], []
    for number, line in zip(numbers, lines):
        try:
            # Decoded as UTF-8, as Arrow's reader reads: json.loads of bytes guessed UTF-16 from a line's byte order
            # mark, and a file saved so (Windows PowerShell 5's `>`) had its line 1 scored, every other line rejected
            # as cut out of step at its bytes `\n`, and a line more counted than the file has.
            record = json.loads(line.removeprefix(UTF8_BOM).decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            json.dumps(record, ensure_ascii=False).encode("utf-8")  # fails on a lone surrogate
        except UnicodeEncodeError:
            rows.append({})
            reasons.append(f"{path} line {number}: holds a lone surrogate (\\ud800-\\udfff), which is no UTF-8 text")
            continue
        except ValueError as e:
            rows.append({})
            reasons.append(f"{path} line {number}: not valid JSON ({str(e)[:80]})")
            continue
        reason = None
        for column in text_columns:
            value = record.get(column)
            if value is None or isinstance(value, str) or (column in list_columns and holds_texts(value)):
                continue
            kind = "text or a list of texts" if column in list_columns else "text"
            reason = reason or f"{column} is {type(value).__name__}, not {kind}"
            record[column] = json.dumps(value)
        rows.append(record)
        reasons.append(reason)
    for column in list_columns:
        if any(isinstance(row.get(column), list) for row in rows):
            for row in rows:
                if isinstance(row.get(column), str):
                    row[column] = [row[column]]
    columns = {}
    for name in dict.fromkeys(k for row in rows for k in row):
        values = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values)
        # mixed types in a passthrough column, or an integer past int64 (a uint64 id): all kept as text (lists of
        # plain values as lists of texts)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            lists = as_text_lists(values)
            columns[name] = lists if lists is not None else as_json_text(values)
    for column in text_columns:
        if column not in columns or pa.types.is_null(columns[column].type):
            columns[column] = pa.nulls(len(rows), pa.string())
    columns[REJECT] = pa.array(reasons, pa.string())
    return pa.table(columns)


def as_json_text(values: list) -> pa.Array:
    """A passthrough column's values as text: texts as they are and other values as JSON, so that an id written
    `1` on one line and `"1"` on another is one id, where quoting the text too made `"1"` another."""
    return pa.array([_json_text(v) for v in values], pa.string())


def as_text_lists(values: list) -> Optional[pa.Array]:
    """A column of lists of plain values, of more than one kind (`[1, 0]` on one line, `["1", "x"]` on another:
    a list of labels), as lists of texts, each item as `as_json_text` writes it: still lists, where the whole
    list as text was no list of labels any more (training reads the texts as numbers, rejecting a row with one
    that is none). None where a value is neither a list of such nor null, or every value is null."""
    plain = (str, int, float, bool, type(None))
    if all(v is None for v in values) or not all(
            v is None or (isinstance(v, list) and all(isinstance(item, plain) for item in v)) for v in values):
        return None
    return pa.array([None if v is None else [_json_text(item) for item in v] for v in values], pa.list_(pa.string()))


def _json_text(value):
    return value if value is None or isinstance(value, str) else json.dumps(value)


def _dates_as_text(kind: pa.DataType) -> pa.DataType:
    """`kind` with every timestamp or date in it, nested in structs and lists too, as text."""
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return pa.string()
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(_dates_as_text(field.type)) for field in kind])
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        make = pa.large_list if pa.types.is_large_list(kind) else pa.list_
        return make(kind.value_field.with_type(_dates_as_text(kind.value_type)))
    return kind


def _read_json_as_written(data: bytes) -> pa.Table:
    """Arrow's JSON reader, which reads a string that looks like a date ("2021-03-04", an ISO timestamp) as a
    timestamp, a value changed (its zone dropped) and a query no longer text: such columns are read again,
    as the strings they are."""
    import pyarrow.json as pajson

    table = pajson.read_json(pa.BufferReader(data))
    schema = pa.schema([field.with_type(_dates_as_text(field.type)) for field in table.schema])
    if schema == table.schema:
        return table
    return pajson.read_json(pa.BufferReader(data), parse_options=pajson.ParseOptions(explicit_schema=schema))


INT64_MAX = (1 << 63) - 1
FLOAT_EXACT = 1 << 53  # the integers a double holds each exactly: up to 2^53
_LONG_NUMBER = re.compile(rb"-?\d{16,}")  # a number (or a run of digits in a text) that a double may not hold


def _holds_floats(kind: pa.DataType) -> bool:
    """Whether `kind` is a float, or a struct or list with one in it."""
    if pa.types.is_floating(kind):
        return True
    return any(_holds_floats(kind.field(i).type) for i in range(kind.num_fields))


def _rounds_integers(data: bytes, table: pa.Table) -> bool:
    """Whether Arrow's JSON reader may have read an integer of `data` as a float, rounded: one past int64's range (a
    uint64 hash id), or past 2^53 in a column that holds a float too (`0.5` beside `9007199254740993`, pandas' ids
    beside a missing one): 12345678901234567890 and ...891 became one value. A chunk with a float column and such a
    number anywhere is read line by line, where it is kept exactly or as the text it was written."""
    if not any(_holds_floats(field.type) for field in table.schema):
        return False
    return any(abs(int(number)) > FLOAT_EXACT for number in _LONG_NUMBER.findall(data))


def read_json_lines(lines: List[bytes], numbers: List[int], path: str, text_columns: Sequence[str],
                    list_columns: Sequence[str] = ()) -> pa.Table:
    """JSON Lines `lines` (each line's number in its file, `numbers`) as a table: Arrow's reader for speed, line by
    line (`_parse_lines_slowly`) where it refuses them (mixed types, a bad line) or reads a text column as another
    kind (a query that is a number on every line), so that a text column is text in every block of every file,
    its other values rejected with their rows. A column of `list_columns` (training's documents) is checked value
    by value where its pairs are made (`training_pairs`), which keeps a row's other pairs. An integer past int64
    is kept as the text it was written (`_rounds_integers`)."""
    try:
        data = b"\n".join(lines)
        # Arrow's reader takes bytes that are no UTF-8 into its strings, which failed the job where the text was
        # tokenized: such lines are read one by one, and rejected.
        data.decode("utf-8")
        table = _read_json_as_written(data)
        if table.num_rows != len(lines):
            raise pa.ArrowInvalid("row count differs from line count")
        if _rounds_integers(data, table):
            raise pa.ArrowInvalid("an integer past int64, read as a float")
        texts = [table.schema.field(c).type for c in text_columns if c in table.column_names and c not in list_columns]
        if all(is_text(dtype) or pa.types.is_null(dtype) for dtype in texts):
            return table
    except (pa.ArrowInvalid, UnicodeDecodeError):
        pass
    return _parse_lines_slowly(lines, numbers, path, text_columns, list_columns)


def as_checked_types(table: pa.Table, schema: pa.Schema, numbers: List[int], path: str,
                     own: Sequence[str]) -> pa.Table:
    """A JSON Lines chunk's columns in kinds that can be put together with the types the input's check found
    (`input_files.agreed_schema`, from each file's first MiB), where they changed past it: a column of text there takes
    other values as JSON text (as lines of mixed kinds do, `as_json_text`); any other fails the job naming the
    file and lines (a text past a megabyte of numbers), where Ray Data would fail it where the rows meet, naming
    no file. The query and document (`own`) are the reader's: a value of another kind is rejected with its row."""
    for i, field in enumerate(table.schema):
        if field.name in schema.names and field.name not in own and not pa.types.is_null(field.type):
            agreed = schema.field(field.name).type
            lists = is_list(agreed) and is_text(agreed.value_type) and is_list(field.type)
            if (widest := one_type(agreed, field.type)) is not None:
                # Written in the agreed type (`sink.conform`), which must hold its values: a float past a megabyte
                # of integers (0.5 after 1) would be a part of another schema, and the output no longer one table.
                try:
                    held = table.column(i) if pa.types.is_null(agreed) else table.column(i).cast(agreed)
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                    if widest == agreed:  # of a kind the agreed type takes, with values it cannot hold (an id past
                        # 2^53 beside another file's floats): no type changed past the check, as said below
                        raise cannot_hold(f"{path} lines {numbers[0]:,}-{numbers[-1]:,}", field.name, field.type,
                                          agreed, e) from None
                else:
                    if pa.types.is_nested(agreed) and widest == agreed:  # as `in_nested_type` puts it, cast once
                        table = table.set_column(i, field.name, held)
                    continue
            elif is_text(agreed) or lists:
                values = table.column(i).to_pylist()
                table = table.set_column(i, field.name, as_text_lists(values) if lists else as_json_text(values))
                continue
            raise InputError(f"{path}: column {field.name!r} is {field.type} in lines {numbers[0]:,}-"
                             f"{numbers[-1]:,}{_first_other(table.column(i), agreed, numbers)}, but {agreed} "
                             "where the check before the job read the input (each file's first MiB): rows of "
                             "both cannot be put together; write it as one type in every file")
    return table


def _first_other(column: pa.ChunkedArray, agreed: pa.DataType, numbers: List[int]) -> str:
    """` (e.g. line N: value)`: the first value of a chunk's column that is not of the `agreed` type, which a chunk
    read line by line (`_parse_lines_slowly`) made text with the others. Only where the job fails."""
    for number, value in zip(numbers, column.to_pylist()):
        try:
            pa.array([value]).cast(agreed)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return f" (e.g. line {number:,}: {str(value)[:40]!r})"
    return ""


# A chunk of a JSON Lines file is held several times over while it is parsed (the bytes, its lines, their join,
# Arrow's table, the chunk before it), beside the 128 MiB block Ray Data gathers: for one file of 800k pairs of ~60
# words (420 MB), chunks of 32 MiB took its read task to 677 MiB of its own memory, 8 MiB to 535 MiB (and 536 for
# 1.6M pairs), no slower (2-core CPU, 2026-12-02; docs/reliability.md).
JSON_LINES_CHUNK_BYTES = 8 << 20


def json_lines_chunks(f, path: str, text_columns: Sequence[str], list_columns: Sequence[str] = (),
                      schema: Optional[pa.Schema] = None):
    """A JSON Lines file's rows, in tables of whole lines: Arrow's reader for speed, line by line where a chunk has
    mixed types or bad lines, so that one odd record never fails the whole file. `schema`: the types the input check
    agreed, which each table is given (`as_checked_types`)."""
    from .batching import REJECT

    own = [*text_columns, *list_columns, REJECT]  # the columns the reader checks value by value
    pending, line_number = b"", 1
    while True:
        data = f.read(JSON_LINES_CHUNK_BYTES)
        chunk = pending + data
        if data:
            cut = chunk.rfind(b"\n") + 1
            chunk, pending = chunk[:cut], chunk[cut:]
        else:
            pending = b""
        numbered = [(line_number + i, line) for i, line in enumerate(chunk.split(b"\n")) if line.strip()]
        if numbered:
            numbers, lines = (list(values) for values in zip(*numbered))
            table = read_json_lines(lines, numbers, path, text_columns, list_columns)
            yield as_checked_types(table, schema, numbers, path, own) if schema else table
        line_number += chunk.count(b"\n")
        if not data:
            return


# Every row read by `read_dataset` carries where it came from, so that outputs can be named after their
# input file and a re-run can tell which inputs are complete. The sink drops these columns.
ROW_INPUT = "_ce_input"  # the input file's key, `<stem>-<hash8>`, which names its output parts
ROW_INDEX = "_ce_row"  # the row's position in its input file
FILE_ROWS = "_ce_file_rows"  # the input file's row count, on the rows of its last chunk only (else null)
TAGS = (ROW_INPUT, ROW_INDEX, FILE_ROWS)


def input_key(path: str) -> str:
    """`<stem>-<hash8>`: readable, and unique per input path, so it names the outputs of one input file."""
    import hashlib

    name = posixpath.basename(path.rstrip("/"))
    for suffix in COMPRESSED:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(name)[0])[:64]
    # Not "_" or "." first (`ü.parquet`, `#1.csv`, `(copy).jsonl`): pyarrow, pandas and Spark skip such files as
    # metadata or hidden, and the output's rows of that input were lost to them, without a word.
    stem = stem.lstrip("_.-") or "input"
    return f"{stem}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def input_sources(checks: Sequence[FileCheck]) -> Dict[str, str]:
    """The input files' paths by the key their rows carry (`input_key`), to name the file of a row."""
    return {input_key(check.path): check.path for check in checks}


def plain_columns(table: pa.Table) -> pa.Table:
    """The columns in the types they are read as (`arrow_types.read_type`): the same values, in types that every stage
    and Ray Data's group-by take, and the same in every file (a categorical in one file, plain text in another,
    would fail where Ray Data puts their rows in one block). Without the pandas metadata a writer left: Ray Data's
    hash shuffle (rerank's) reads a block's key column into pandas with it, and one made by hand (no `columns`)
    failed it with a KeyError; the output's parts carry none of the input's metadata anyway (`sink.PairsSink`)."""
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"pandas"} or None
    schema = pa.schema([f.with_type(read_type(f.type)) for f in table.schema], metadata=metadata)
    if schema.equals(table.schema, check_metadata=True):
        return table
    return table.cast(schema) if schema != table.schema else table.replace_schema_metadata(metadata)


def reject_invalid_utf8(table: pa.Table, what: str) -> pa.Table:
    """Rows whose text holds invalid UTF-8 are rejected (text shown with U+FFFD), never fail the file."""
    from .batching import REJECT

    reasons = None
    for i, field in enumerate(table.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)) or field.name == REJECT:
            continue
        column = table.column(i).combine_chunks()
        try:
            column.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        raw = column.view(pa.large_binary() if pa.types.is_large_string(field.type) else pa.binary()).to_pylist()
        fixed, bad = [], []
        for value in raw:
            if value is None:
                fixed.append(None)
                bad.append(False)
                continue
            try:
                fixed.append(value.decode("utf-8"))
                bad.append(False)
            except UnicodeDecodeError:
                fixed.append(value.decode("utf-8", errors="replace"))
                bad.append(True)
        table = table.set_column(i, field.name, pa.array(fixed, field.type))
        if reasons is None:
            reasons = [None] * table.num_rows
        for row in (r for r, b in enumerate(bad) if b):
            reasons[row] = reasons[row] or f"{field.name} is not valid UTF-8 in {what} (shown with U+FFFD)"
    if reasons is None:
        return table
    if REJECT in table.column_names:  # keep a reason the reader already gave
        earlier = table.column(REJECT).to_pylist()
        reasons = [e or r for e, r in zip(earlier, reasons)]
        table = table.drop_columns([REJECT])
    return table.append_column(REJECT, pa.array(reasons, pa.string()))


def _tag(table: pa.Table, key: str, start: int, file_rows: Optional[int], partitions: Dict[str, str]) -> pa.Table:
    import numpy as np

    n = table.num_rows
    for name, value in partitions.items():
        if name not in table.column_names:  # a column of the file's own wins, as in Ray Data
            table = table.append_column(name, pa.repeat(pa.scalar(value, pa.string()), n))
    table = table.append_column(ROW_INPUT, pa.array([key] * n, pa.string()))
    table = table.append_column(ROW_INDEX, pa.array(np.arange(start, start + n, dtype=np.int64)))
    rows = pa.nulls(n, pa.int64()) if file_rows is None else pa.array(np.full(n, file_rows, dtype=np.int64))
    return table.append_column(FILE_ROWS, rows)


def _naming_the_file(chunks, path: str):
    """The chunks; an error in reading them notes the file. Arrow's own name none (a parquet page that cannot be
    decoded: `OSError: Couldn't deserialize thrift ...`), and the job's failure is to say which file it was."""
    try:
        yield from chunks
    except Exception as e:
        if path not in str(e):
            e.add_note(f"reading {path}")
        raise


def tag_rows(chunks, path: str, start: int = 0, ends_file: bool = True):
    """Adds the row tags to a file's chunks, the first being the file's row `start`. The last chunk of the
    file (when `ends_file`) also carries the file's row count: one chunk is held back to know which is last.
    The file's partition keys (`partition_values`) become columns too."""
    key, held, partitions = input_key(path), None, partition_values(path)
    for chunk in _naming_the_file(chunks, path):
        table = chunk if isinstance(chunk, pa.Table) else pa.Table.from_pandas(chunk, preserve_index=False)
        if not table.num_rows:
            continue
        if held is not None:
            yield _tag(held, key, start, None, partitions)
            start += held.num_rows
        held = table
    if held is not None:
        yield _tag(held, key, start, start + held.num_rows if ends_file else None, partitions)


# A parquet file is read by one task per this many rows, in whole row groups, so that a few large files still
# spread over a node's CPUs: a task reads ~0.5M rows/s (bench/README.md, finding 9), a node of 8 GPUs scores
# over 1M pairs/s.
PARQUET_ROWS_PER_READ = 1 << 20


@dataclass
class ReadRange:
    """Consecutive row groups of one parquet file: what one read task reads."""

    path: str
    row_groups: List[int]
    first_row: int  # the file's row number of the range's first row
    rows: int  # the rows it yields: those of its row groups, less those it skips
    size_bytes: int  # in memory, as the footer gives it
    ends_file: bool
    skip: Tuple[Tuple[int, int], ...] = ()  # runs [start, stop) of the file's rows in the range that are not read


def read_ranges(check: FileCheck, rows_per_read: int, held: Sequence[Sequence[int]] = ()) -> List[ReadRange]:
    """The file's row groups in order, cut into ranges of at least `rows_per_read` rows (the last may hold
    fewer); a row group is never split, so a file of one row group is one range. Empty row groups are left out:
    one that made a range of its own (a writer's last, empty write) left the range that ends the file no row to
    carry the file's row count, and the file was never complete. `held`: runs [start, stop) of rows not to read
    (a resume's, sorted, apart): a row group wholly inside them is left out and ends the range before it, and a
    range skips those of its rows that are (`ReadRange.skip`), so that a resumed file reads only its rows missing."""
    groups, first_row = [], 0  # (row group, its first row in the file, rows, bytes) of each non-empty row group
    for i, (rows, size) in enumerate(check.row_groups):
        if rows:
            groups.append((i, first_row, rows, size))
            first_row += rows
    ranges, at = [], 0
    while at < len(groups):
        if _held_rows(held, groups[at][1], groups[at][1] + groups[at][2]) == groups[at][2]:
            at += 1  # held whole: not read
            continue
        start, rows = at, 0
        while (at < len(groups) and rows < rows_per_read
               and _held_rows(held, groups[at][1], groups[at][1] + groups[at][2]) < groups[at][2]):
            rows, at = rows + groups[at][2], at + 1
        first, stop = groups[start][1], groups[start][1] + rows
        skip = tuple((max(a, first), min(b, stop)) for a, b in held if a < stop and b > first)
        ranges.append(ReadRange(check.path, [g[0] for g in groups[start:at]], first,
                                rows - _held_rows(held, first, stop), sum(g[3] for g in groups[start:at]),
                                at == len(groups), skip))
    return ranges


def _held_rows(held: Sequence[Sequence[int]], start: int, stop: int) -> int:
    """How many of the rows [start, stop) the runs `held` hold."""
    return sum(max(0, min(b, stop) - max(a, start)) for a, b in held)


# A parquet file is read through a buffer of this many bytes per column, page after page, rather than whole
# row groups at once (pyarrow's pre_buffer): reading a row group of 150,000 pairs of 2.6 KB each (373 MiB) took
# 500 MiB, and 160-180 MiB so, in two-thirds of the time (pyarrow alone, a local file, 2-core CPU, 2026-12-01);
# in a job, its read task's resident memory went from 1,146 to 752 MiB. 8 MiB keeps a read from S3 to a request
# per 8 MiB of a column (not measured on S3).
PARQUET_BUFFER_BYTES = 8 << 20


def read_range(fs: pafs.FileSystem, part: ReadRange, rows_per_block: int, schema: Optional[pa.Schema] = None):
    """A range's rows in chunks of `rows_per_block`, tagged with their file's key and row numbers; in the input's
    types (`schema`, `in_input_types`) where given."""
    with fs.open_input_file(part.path) as f:
        parquet = pq.ParquetFile(f, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
        batches = parquet.iter_batches(batch_size=rows_per_block, row_groups=part.row_groups)
        chunks = (in_input_types(reject_invalid_utf8(plain_columns(pa.Table.from_batches([b])), part.path), schema,
                                 part.path) for b in batches)
        for table in tag_rows(chunks, part.path, part.first_row, part.ends_file):
            table = without_rows(table, part.skip)
            if table.num_rows:
                yield table


def in_input_types(table: pa.Table, schema: Optional[pa.Schema], path: str) -> pa.Table:
    """A parquet chunk's plain columns (numbers, text, times) in the input's types (`input_files.agreed_schema`)
    where its file has another: small files are read together, and a value that type cannot hold (an id past 2^53
    among another file's doubles, a uint64 past int64) failed the job in Ray's block of both, naming neither the
    column nor the file. Nested columns too (`in_nested_type`); extension columns are left as they are, for Ray Data
    to put together."""
    for i, field in enumerate(table.schema):
        agreed = schema.field(field.name).type if schema is not None and field.name in schema.names else field.type
        if agreed == field.type or isinstance(agreed, pa.ExtensionType):
            continue
        if pa.types.is_nested(agreed):
            table = table.set_column(i, field.name, in_nested_type(table.column(i), agreed))
            continue
        try:
            table = table.set_column(i, field.name, table.column(i).cast(agreed))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise cannot_hold(path, field.name, field.type, agreed, e) from None
    return table


def in_nested_type(column: pa.ChunkedArray, agreed: pa.DataType) -> pa.ChunkedArray:
    """A struct, list or map column in the input's type where that type holds all of it (every field, by name): Ray
    Data's concat of blocks of two struct types (`struct<a>` and `struct<b>`, `year` int32 and int64) dropped the
    structs' nulls, a null row coming back as `{'a': None, 'b': None}`, or with the 0 Arrow stores under a null
    (`{'year': 0}`). A type that lacks some of it (a JSON key past the check's first MiB) is left as it is: a cast
    drops the fields its target lacks."""
    if one_type(agreed, column.type) != agreed:
        return column
    try:
        return column.cast(agreed)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return column  # for Ray Data to put together, as before


def without_rows(table: pa.Table, runs: Sequence[Sequence[int]]) -> pa.Table:
    """The tagged rows of `table` whose row numbers (`ROW_INDEX`) are in none of the runs [start, stop)."""
    if not runs:
        return table
    import numpy as np

    numbers = table.column(ROW_INDEX).to_numpy()
    keep = np.ones(len(numbers), dtype=bool)
    for start, stop in runs:
        keep &= (numbers < start) | (numbers >= stop)
    return table if keep.all() else table.filter(pa.array(keep))


# Small files are read several to a task: a Ray task's scheduling and start (~25 ms on 2 CPU
# cores, the input's checks waiting too) cost more than reading a file of a few rows, and 2,000 parquet files of 5-20
# rows took 68 s to read one to a task, where the model scored them in 3.5 s. A task takes whole files until they
# hold this many bytes, or this many files, which keeps tasks enough to spread over a cluster's CPUs and a slow
# store's reads in parallel: a file of 16 MiB takes a task far longer to read than the task's start, and is read
# alone as before (the GPU benchmarks' files of 62,500 pairs, ~25 MiB, one to a task).
TASK_BYTES = 16 << 20
TASK_FILES = 64


def read_together(tasks: list, whole: List[bool]) -> list:
    """`tasks` (Ray Data's read tasks, each of a file or a range of one) put together in order, as few to a task as
    `TASK_BYTES` and `TASK_FILES` allow: each task reads its files a few at once (`read_ahead`) and gives their rows
    in order, each file's rows tagged as before, so that the rows of a file still travel together and the output's
    parts are the same. A task that reads part of a file (`whole` False: a range of a large parquet file) stays
    alone, so that the file's ranges spread over the CPUs, as does one of a file that is to be read alone (`whole`
    False too)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import ReadTask

    groups, size, open_ = [], 0, False  # open_: the last group may take more
    for task, of_whole_file in zip(tasks, whole):
        bytes_ = task.metadata.size_bytes or 0
        if not (of_whole_file and open_ and len(groups[-1]) < TASK_FILES and size + bytes_ <= TASK_BYTES):
            groups.append([])
            size = 0
        groups[-1].append(task)
        size += bytes_
        open_ = of_whole_file
    return [group[0] if len(group) == 1 else ReadTask(
        functools.partial(read_ahead, group),
        BlockMetadata(num_rows=_total(t.metadata.num_rows for t in group),
                      size_bytes=_total(t.metadata.size_bytes for t in group), exec_stats=None,
                      input_files=[path for t in group for path in t.metadata.input_files or ()]),
        per_task_row_limit=group[0].per_task_row_limit)
        for group in groups]


# A task's small files are read this many at once, each in a thread of the task. Read one after another, each file
# waited on the store's latency before the next began (on S3 a HEAD as it is opened, then a GET or more, ~20-50 ms
# each), and a task of 64 small files spent nearly all its time waiting: the reads are I/O, which threads overlap
# (pyarrow and s3fs release the GIL as they wait). 1,000 parquet files of 10 pairs on moto, 30 ms added to each
# request, took 40-50 s to read, now 11-15 s (docs/inputs.md). At most this many files' rows are held at once: a
# file's rows are read whole before they are given on, in order, so that a file's rows still travel together.
READ_AHEAD = 8


def read_ahead(tasks: list):
    """The blocks of `tasks` (read tasks of whole small files), in order, up to `READ_AHEAD` files read at once.
    A file is read ahead only once an earlier one's rows are given on, so that no more than `READ_AHEAD` files'
    rows are held; an error of a file's read is raised where its rows would have come."""
    from concurrent.futures import ThreadPoolExecutor

    upcoming = iter(tasks)
    with ThreadPoolExecutor(max_workers=min(READ_AHEAD, len(tasks))) as pool:
        reading = collections.deque(pool.submit(_blocks, task) for task in itertools.islice(upcoming, READ_AHEAD))
        try:
            while reading:
                blocks = reading.popleft().result()
                while blocks:
                    yield blocks.popleft()  # let go of each block as it is given on
                following = next(upcoming, None)
                if following is not None:
                    reading.append(pool.submit(_blocks, following))
        finally:  # the reader stopped early (a failed file, a limit reached): no file more is started
            for read in reading:
                read.cancel()


def _blocks(task) -> collections.deque:
    return collections.deque(task())


def _total(counts) -> Optional[int]:
    counts = list(counts)
    return None if None in counts else sum(counts)


def tagged_parquet(ranges: List[ReadRange], filesystem: pafs.FileSystem, rows_per_block: int,
                   together: bool = True, schema: Optional[pa.Schema] = None):
    """A Ray Data datasource that reads each range in a task, a small file's whole range with others' where
    `together` (`read_together`), in the input's types (`schema`) where given. The footers were read once, by
    `check_inputs`: each task knows its rows and size before it runs, as Ray Data's planning wants."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class TaggedParquet(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return sum(r.size_bytes for r in ranges)

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> List[ReadTask]:
            return read_together([ReadTask(functools.partial(read_range, filesystem, r, rows_per_block, schema),
                                           BlockMetadata(num_rows=r.rows, size_bytes=r.size_bytes, exec_stats=None,
                                                         input_files=[r.path]),
                                           per_task_row_limit=per_task_row_limit)
                                  for r in ranges], [together and r.first_row == 0 and r.ends_file for r in ranges])

    return TaggedParquet()


# Tab-separated values as IANA's text/tab-separated-values defines them, and as MS MARCO, BEIR's qrels and
# WikiQA are written: a header line, then fields split at every tab. There is no quoting: a quote is text.
TAB_SEPARATED = dict(delimiter="\t", quote_char=False)


# Arrow's CSV reader parses blocks of this many bytes, and fails a file with a row longer than one: its default,
# 1 MiB, failed a file whose rows held two documents of a megabyte each.
CSV_BLOCK_BYTES = 64 << 20


def delimited_chunks(f, path: str, text_columns: List[str], tab_separated: bool = False,
                     column_names: Optional[List[str]] = None):
    """A CSV (or TSV) file's rows, chunk by chunk, with Arrow's streaming reader. With `column_names` the file
    has no header line (MS MARCO's files have none) and its first line is a row.

    `text_columns` (the file's columns) are read as text, as they come: a CSV holds no types, and guessing
    them would change values (an id `0042` would become the number 42, which no longer matches its qrels)
    and could fail a file mid-way (an id `A7` after a megabyte of numbers). Spark reads CSV the same way by
    default. Where a number is needed (a training label), it is parsed there. Only an empty field is null:
    `NA`, `null` or `nan` are words (a document may be the word "null").

    A row whose fields do not match the header (a stray delimiter, a tab inside a TSV field, a line cut short)
    is rejected with the reason and its text, and the others are read: it never fails the file. A TSV field
    cannot hold a line break (there is no quoting): one ends the row, read as it stands where it has the header's
    fields, and what follows is a row of its own. Arrow does not say where such a row was: it comes after the
    chunk being read when it was found."""
    import pyarrow.csv as pacsv

    malformed = []

    def reject_row(row) -> str:
        if row.text.strip():  # a line of spaces is a blank line, as in JSON Lines
            malformed.append(f"{path}: a row of {row.actual_columns} field(s) where the "
                             f"{'column names have' if column_names else 'header has'} {row.expected_columns} "
                             f"({row.text!r})")
        return "skip"

    # A quoted CSV field may hold line breaks: Arrow cuts its blocks at a line break that is not in one only when
    # told so. Cut inside one, a file past a block lost or cut rows silently, its quoting out of step from there.
    parse = pacsv.ParseOptions(invalid_row_handler=reject_row,
                               **(TAB_SEPARATED if tab_separated else {"newlines_in_values": True}))
    # One thread, so that where a rejected row lands depends on the file alone (a retried task must give the
    # same rows): with threads, Arrow parses blocks ahead, as they happen to run. It reads as fast (~3.8M
    # rows/s here), and a task has one CPU.
    read = pacsv.ReadOptions(use_threads=False, column_names=column_names, block_size=CSV_BLOCK_BYTES)
    # UTF-8 is checked per row afterwards, so that one bad byte rejects its row instead of failing the file.
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in text_columns}, null_values=[""],
                                   strings_can_be_null=True, check_utf8=False)
    try:
        reader = pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
        for batch in reader:
            table = with_rejected_rows(pa.Table.from_batches([batch]), malformed)
            malformed = []
            if table.num_rows:
                yield reject_invalid_utf8(table, path)
    except pa.ArrowInvalid as e:
        too_long = (f" (a row longer than the reader's blocks of {CSV_BLOCK_BYTES >> 20} MiB)"
                    if "straddl" in str(e) else "")
        raise InputError(f"cannot read {path}: {str(e).splitlines()[0]}{too_long}") from None
    if malformed:  # found in the last chunk, after its rows
        yield with_rejected_rows(reader.schema.empty_table(), malformed)


def with_rejected_rows(table: pa.Table, reasons: List[str]) -> pa.Table:
    """`table` and after it a row for each reason: every column null, the reason in `reject_reason`."""
    from .batching import REJECT

    if not reasons:
        return table
    if REJECT not in table.column_names:
        table = table.append_column(REJECT, pa.nulls(table.num_rows, pa.string()))
    rejected = pa.table({field.name: pa.array(reasons, pa.string()) if field.name == REJECT
                         else pa.nulls(len(reasons), field.type) for field in table.schema})
    return pa.concat_tables([table, rejected])


def tagged_files(paths: List[str], filesystem: pafs.FileSystem, read_file, together: bool = True):
    """A Ray Data datasource over whole text files: `read_file(f, path)` yields a file's chunks, tagged here. Ray
    Data makes a read task of each file, and small ones are read several to a task where `together`
    (`read_together`)."""
    from ray.data.datasource import FileBasedDatasource

    class TaggedFiles(FileBasedDatasource):
        _FILE_EXTENSIONS = None

        def get_read_tasks(self, parallelism: int, **kwargs):  # a task a file, whatever is asked: then together
            tasks = super().get_read_tasks(len(paths), **kwargs)
            return read_together(tasks, [together] * len(tasks))

        def resolve_compression(self, path: str, open_args: dict) -> Optional[str]:
            return open_args.get("compression") or compression_of(path)  # `.GZ` too

        def _read_stream(self, f, path):
            yield from tag_rows(read_file(f, path), path)

    return TaggedFiles(paths, filesystem=filesystem)
