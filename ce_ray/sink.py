"""Writing scored pairs: `results/` and `rejects/` parquet beside each other, `_SUCCESS` when complete.

Layout of an output folder:
    results/<stem>-<hash8>-r<first row>.parquet   every input column, plus score (and rank for rerank)
    rejects/<stem>-<hash8>-r<first row>.parquet   rows that could not be scored, with a `reason` column
    _ce_ray/job.json                              the settings that decide the scores (checked by resume)
    _ce_ray/inputs.json                           each input file's size and time or ETag (for resume)
    _ce_ray/run.json                              the run writing the output, as each of its parts' footers
                                                  says too (`RUN_ID`): of two jobs at once on one output,
                                                  neither writes `_SUCCESS` over the other's parts
    _SUCCESS                                      JSON summary, written last: the output is complete, as
                                                  its parts' footers show (`check_parts`); it names each
                                                  part of results/ and its rows (`result_rows`), and
                                                  of rejects/ (`reject_rows`)
`<stem>-<hash8>` names the input file (its name, and a hash of its path), and `r<first row>` the first
row of that file the part holds. The names depend only on the input, so a retried write task rewrites its
own files and a re-run never adds a second copy of a row. The part holding a file's last row records the
file's row count in its footer, so the output alone tells which inputs are complete (see `scan_parts`); every
part records which rows of its file it holds (`ROW_RUNS`), so that a resume of a parquet file left unfinished
keeps its parts and reads only the rows they lack (`ResumeState.held_rows`).
Rows without input tags (a transform that regroups rows, the Python API) get task-indexed names.
Each file is written under a hidden temporary name and renamed; an S3 put is atomic by itself.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import posixpath
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Sequence, Set, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from ray.data import Datasink
from ray.data.block import BlockAccessor

from .batching import REJECT
from .messages import InputError, briefly, cannot_hold, setting_and_flag
from .output_state import (ACTIVATION_SCORED, DTYPE_SCORED, EVAL, JOB, MAX_LENGTH_SCORED, MODEL_VERSION, OVERWRITE,
                           REJECT_ROWS, REJECTS, RESOLVED_LATE, RESULT_PARTS, RESULT_ROWS, RESULTS, RESUME, RUN, STATE,
                           SUCCESS, changed_parts, finished_job, finished_parts, is_output, part_differences,
                           read_state)
from .input_files import EVAL_SUFFIX
from .readers import FILE_ROWS, ROW_INDEX, ROW_INPUT, TAGS
from .runtime import work
from .storage import (delete_files, file_in_the_way, filesystem, in_parallel, is_remote, list_tree, parquet_footer,
                      remove, try_local_folder, write_bytes_atomic, write_table_atomic)

REASON = "reason"  # why a row of rejects/ was rejected
INPUTS = "inputs.json"  # input key -> the file's stamp (`input_files.FileCheck.stamp`) when the job read it
INPUT_ROWS = b"ce_ray.input_rows"  # footer key: the input file's row count, on the part with its last row
# Footer key: the rows of its input file a part holds, as JSON runs [[start, stop], ...] of row numbers (stop not
# included), in order: a write task's rows of a file need not be consecutive (blocks come as they are scored).
ROW_RUNS = b"ce_ray.row_runs"
RUN_ID = b"ce_ray.run"  # footer key: the run that wrote the part (`PairsSink.run`)
# Writing is I/O: a write task asks for a quarter of a core, so it never waits behind tokenizing for one.
WRITE_REMOTE_ARGS = {"num_cpus": 0.25}
# Fault injection, for tests only: the write of rows from an input whose key contains this value hangs, as
# a stuck writer would, so that a test can kill the job at a known point.
STALL_ENV = "CE_RAY_TEST_STALL_WRITE"
_PART = re.compile(r"^(?P<key>.+)-r(?P<first>\d{12})\.parquet$")


class OutputExistsError(FileExistsError):
    pass


class ResumeError(ValueError):
    """The output cannot be resumed by this job."""


class OutputError(ValueError):
    """The output cannot be written where it is (a folder that cannot be made)."""


class OutputLostError(ValueError):
    """The output does not hold what the job wrote to it: the job is not done."""


def is_temporary(file: str) -> bool:
    """A part being written (`.<name>.<random>.tmp`, renamed to its name once whole), or left by a job killed then."""
    return posixpath.basename(file).startswith(".")


def has_results(output: str) -> bool:
    """Whether a job wrote rows or finished here. A job that failed before its first write leaves only its
    settings (`_ce_ray/job.json`), and perhaps the temporary of a part it was writing: nothing to keep or to
    resume from."""
    fs, path = filesystem(output)
    return (fs.get_file_info(f"{path}/{SUCCESS}").type != pafs.FileType.NotFound
            or any(not is_temporary(file) for sub in (RESULTS, REJECTS) for file in list_tree(fs, f"{path}/{sub}")))


@dataclass
class InputParts:
    """What an output folder holds of one input file."""

    rows: int = 0  # rows in its parts, results and rejects together
    rows_scored: int = 0
    rows_rejected: int = 0
    input_rows: Optional[int] = None  # known once the part with the file's last row is written
    files: Dict[str, Optional[int]] = field(default_factory=dict)  # part -> its rows; None: its footer is unreadable
    # part -> its size and time or ETag (`storage.list_tree`'s stamp) as listed when its footer was read
    stamps: Dict[str, str] = field(default_factory=dict)
    # part -> the runs of the input's rows it holds (`ROW_RUNS`); None where its footer has none (an earlier version's)
    runs: Dict[str, Optional[list]] = field(default_factory=dict)
    columns: Dict[str, Optional[list]] = field(default_factory=dict)  # part -> its columns (`Footer.columns`)

    @property
    def complete(self) -> bool:
        return self.input_rows is not None and self.rows == self.input_rows and None not in self.files.values()


@dataclass
class ResumeState:
    parts: Dict[str, InputParts]  # input key -> its parts
    other: list  # files that belong to no input: temporaries of a killed run, task-indexed parts
    # input key -> its file's stamp when the earlier run read it (empty for outputs of versions without them)
    stamps: Dict[str, str] = field(default_factory=dict)
    finished: bool = False  # the earlier job wrote `_SUCCESS`: every input it read was complete then
    record: dict = field(default_factory=dict)  # the earlier job's settings (its `job.json`), where it has any

    @property
    def complete(self) -> Set[str]:
        return {key for key, parts in self.parts.items() if parts.complete}

    @property
    def damaged(self) -> list:
        """Parts whose footer cannot be read (cut short, not parquet): their inputs are scored again."""
        return sorted(file for parts in self.parts.values() for file, rows in parts.files.items() if rows is None)

    def files(self) -> Dict[str, int]:
        """Every part held, and its rows."""
        return {file: rows for parts in self.parts.values() for file, rows in parts.files.items()}

    def footers_read(self) -> Dict[str, Tuple[str, Optional[int]]]:
        """Every part held -> (its stamp as listed when its footer was read, the rows the footer gave): what
        `check_parts` need not read again of a part listed with the same stamp."""
        return {file: (parts.stamps.get(file), rows)
                for parts in self.parts.values() for file, rows in parts.files.items()}

    def lost(self, stamps: Dict[str, str]) -> list:
        """The input files (key -> stamp now) that the earlier job, finished, completed as they are now, and whose
        parts the output no longer holds (deleted or lost since; those that cannot be read are `damaged`)."""
        if not self.finished:
            return []
        damaged = {key for key, parts in self.parts.items() if None in parts.files.values()}
        return sorted(key for key, stamp in stamps.items() if self.stamps.get(key) == stamp
                      and key not in self.complete and key not in damaged)

    def done(self, key: str, stamp: str) -> bool:
        """Whether the earlier run completed the input file `key` as the file is now (`stamp`): one rewritten
        since (another size, time or ETag) is scored again."""
        return key in self.parts and self.parts[key].complete and self.stamps.get(key, stamp) == stamp

    def held_rows(self, key: str, stamp: str, rows: int) -> Optional[list]:
        """The rows of the unfinished input file `key` (of `rows` rows) that its parts hold, as sorted runs
        [start, stop), where a resume keeps those parts and reads only the other rows: the file as the earlier run
        read it (`stamp`, recorded), and every part of it saying which rows it holds (`ROW_RUNS`), as many as its
        footer counts, none held twice, none past the file's end. None otherwise (a part of an earlier version, one
        cut short or rewritten since): the file is scored again whole."""
        parts = self.parts.get(key)
        if parts is None or not parts.files or key not in self.stamps or self.stamps[key] != stamp:
            return None
        runs = []
        for file, count in parts.files.items():
            held = parts.runs.get(file)
            if count is None or held is None or count != sum(stop - start for start, stop in held):
                return None
            runs += held
        runs.sort()
        if runs and (runs[0][0] < 0 or runs[-1][1] > rows) or any(a[1] > b[0] for a, b in zip(runs, runs[1:])):
            return None
        return _merged(runs)

    def rows_unsaid(self, key: str) -> bool:
        """Whether the output holds parts of the input file `key`, all readable, some of which do not say which rows
        they hold (`ROW_RUNS`: an earlier ce-ray's), for which `held_rows` keeps none of them."""
        parts = self.parts.get(key)
        return (parts is not None and bool(parts.files) and None not in parts.files.values()
                and None in parts.runs.values())


def _merged(runs: list) -> list:
    """Sorted runs [start, stop) that do not overlap, those that touch made one."""
    merged = []
    for start, stop in runs:
        if merged and merged[-1][1] == start:
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    return merged


def row_runs(numbers) -> list:
    """Sorted row numbers (numpy) as runs [[start, stop], ...] of consecutive numbers, stop not included."""
    import numpy as np

    if not len(numbers):
        return []
    breaks = np.flatnonzero(np.diff(numbers) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(numbers)]])
    return [[int(numbers[a]), int(numbers[b - 1]) + 1] for a, b in zip(starts, stops)]


def _runs_in(metadata: dict) -> Optional[list]:
    """A footer's `ROW_RUNS`, or None where it has none or not as ce-ray writes them."""
    try:
        runs = json.loads(metadata[ROW_RUNS])
    except (KeyError, ValueError):
        return None
    if not isinstance(runs, list) or not all(
            isinstance(run, list) and len(run) == 2 and all(type(n) is int for n in run) and run[0] < run[1]
            for run in runs):
        return None
    return runs


def _list(fs: pafs.FileSystem, folder: str) -> Dict[str, Tuple[int, str]]:
    """The files in `folder` (none where there is no folder), each with its size and stamp (`storage.list_tree`): on
    S3 one listing, where pyarrow's took two (asking first whether the folder is one, which s3fs answers by listing
    it)."""
    return {file: listed for file, listed in list_tree(fs, folder).items() if posixpath.dirname(file) == folder}


@dataclass
class Footer:
    """What a part's parquet footer says; `rows` None where there is no footer to read (a file cut short, or not
    parquet), `missing` where the file is not there."""

    rows: Optional[int] = None
    input_rows: Optional[int] = None
    missing: bool = False
    runs: Optional[list] = None  # the input's rows the part holds (`ROW_RUNS`), where its footer says
    run: Optional[bytes] = None  # the run that wrote it (`RUN_ID`), where its footer says
    columns: Optional[list] = None  # its columns: (name, Arrow type)


def _footer(fs: pafs.FileSystem, file: str, size: int) -> Footer:
    """The footer of a part of `size` bytes (`storage.parquet_footer`)."""
    try:
        meta = parquet_footer(fs, file, size)
    except FileNotFoundError:
        return Footer(missing=True)
    except pa.ArrowInvalid:  # pyarrow's error for a file too short for a footer, or without parquet's magic
        return Footer()
    # Any other error (a store that does not answer) fails the caller: a part not read is no damaged part.
    metadata = meta.metadata or {}
    input_rows = metadata.get(INPUT_ROWS)
    columns = [(column.name, column.type) for column in meta.schema.to_arrow_schema()]
    return Footer(meta.num_rows, None if input_rows is None else int(input_rows), runs=_runs_in(metadata),
                  run=metadata.get(RUN_ID), columns=columns)


def read_footers(fs: pafs.FileSystem, sizes: Dict[str, int]) -> Dict[str, Footer]:
    """The footers of many parts (path -> size, from a listing), read in parallel: metadata only."""
    return dict(zip(sizes, in_parallel(lambda file: _footer(fs, file, sizes[file]), list(sizes))))


def _listed_parts(fs: pafs.FileSystem, path: str) -> list:
    """The files of the output's results/ and rejects/: (folder, file, its name's match of a part's, size, stamp)."""
    return [(sub, file, _PART.match(posixpath.basename(file)), size, stamp)
            for sub in (RESULTS, REJECTS) for file, (size, stamp) in _list(fs, f"{path}/{sub}").items()]


def scan_parts(output: str, listed: Optional[list] = None) -> ResumeState:
    """Reads the footers of every part in the output (`listed`, where the caller listed them: `_listed_parts`):
    rows per input file, and which files are complete."""
    fs, path = filesystem(output)
    listed = _listed_parts(fs, path) if listed is None else listed
    named = [entry for entry in listed if entry[2]]
    other = [entry for entry in listed if not entry[2]]
    footers = read_footers(fs, {file: size for _, file, _, size, _ in named})
    parts: Dict[str, InputParts] = {}
    for sub, file, match, _, stamp in named:
        footer = footers[file]
        if footer.missing:  # deleted since the listing
            continue
        entry = parts.setdefault(match["key"], InputParts())
        rows = footer.rows or 0
        entry.rows += rows
        if sub == RESULTS:
            entry.rows_scored += rows
        else:
            entry.rows_rejected += rows
        if footer.input_rows is not None:
            entry.input_rows = footer.input_rows
        entry.files[file] = footer.rows
        entry.stamps[file] = stamp
        entry.runs[file] = footer.runs
        entry.columns[file] = footer.columns
    return ResumeState(parts, [file for _, file, *_ in other])


def refuse_other_columns(output: str, state: ResumeState, kept: Iterable[str], schema: Optional[pa.Schema],
                         written: Sequence[str]) -> None:
    """Refuses a resume whose input's columns (`schema`, as `conform` writes every part) are not those of the parts it
    would keep (of the input files `kept`): a file added with another column, or a wider type, gave its parts the
    input's columns now and left the kept ones as they were, and the output read back as no one table (a type
    that did not fit: ArrowInvalid), or as the first part's columns, silently."""
    if schema is None:
        return
    wanted = [(column.name, column.type) for column in schema if column.name != REJECT]
    # The job's own: the score, and the reason of a row of rejects/ (`reject_reason` where the input has a `reason`)
    own = {REJECT, *written} | ({REASON} if all(name != REASON for name, _ in wanted) else set())
    for key in kept:
        for part, columns in state.parts[key].columns.items():
            held = [(name, kind) for name, kind in columns or () if name not in own]
            change = _column_change(held, wanted) if columns is not None else None
            if change:
                raise ResumeError(f"{output} holds parts written from input of other columns ({part}: {change}): "
                                  "kept, they would not read back as one table with the parts written now; pass "
                                  "--mode overwrite")


def _column_change(held: list, wanted: list) -> Optional[str]:
    """How a part's input columns differ from the input's (each (name, Arrow type)); None where they agree. A column
    that the input's types give as null (all null where they were agreed) takes any type, as `conform` writes it."""
    kinds, wanted_kinds = dict(held), dict(wanted)
    for name, kind in wanted:
        if name not in kinds:
            return f"no column {name!r}, which the input has now"
        if kinds[name] != kind and not pa.types.is_null(kind):
            return f"{name!r} of {kinds[name]}, the input's now of {kind}"
    gone = [name for name, _ in held if name not in wanted_kinds]
    return f"a column {gone[0]!r}, which the input no longer has" if gone else None  # (in any order: read by name)


def _as_recorded_now(job: dict) -> dict:
    """An earlier job's settings with its input and model written out as jobs now record them: earlier ones kept
    them as typed (`data/in`, `/models/rr/`, `s3a://b/in/`), and their outputs resume from the same working
    directory, or spelled another way."""
    from .storage import absolute
    from .model_folder import model_source

    written_out = {"input": absolute, "model": model_source}
    return job | {name: write(job[name]) for name, write in written_out.items() if isinstance(job.get(name), str)}


def refuse_other_settings(output: str, earlier: dict, job: dict) -> None:
    """Refuses to resume an output whose record (`earlier`, its `job.json` as `_as_recorded_now` reads it) holds other
    settings than the `job`'s. What the job resolves once its model is checked (`RESOLVED_LATE`: the pairs' cut and the
    activation) is compared where both hold it: `score.run_score` asks again with them."""
    # An output of a ce-ray that did not record the model's version or the dtype it scored in (`job_settings`)
    # is taken as of this one. Where both record the dtype scored, the dtype as typed does not count: `auto` is
    # float16 on GPUs and float32 on CPUs (a resume on the other device mixed them), `float32` CPUs' `auto`.
    recorded = {MODEL_VERSION, DTYPE_SCORED} & set(earlier)
    as_typed = set() if DTYPE_SCORED not in recorded or DTYPE_SCORED not in job else {"dtype"}
    # A job that on_invalid=fail stopped wrote rows that any on_invalid writes alike: it resumes setting the rows
    # it stopped at aside (`--on-invalid reject`), as the line that ended it says.
    uncompared = as_typed | ({"on_invalid"} if earlier.get("on_invalid") == "fail" else set())
    uncompared |= {k for k in RESOLVED_LATE if k not in job or k not in earlier}
    changed = sorted(k for k in set(job) | set(earlier) if job.get(k) != earlier.get(k)
                     and (k not in (MODEL_VERSION, DTYPE_SCORED) or k in recorded) and k not in uncompared)
    if changed == [MODEL_VERSION]:
        raise ResumeError(
            f"{output} was scored by another version of {job['model']} (its files changed since): resuming "
            "would mix two models' scores; pass --mode overwrite, or score with the model it was scored with"
        )
    if changed:
        said = {DTYPE_SCORED: f"dtype: scored in {earlier.get(DTYPE_SCORED)}, here {job.get(DTYPE_SCORED)}",
                MAX_LENGTH_SCORED: f"max_length: pairs cut at {earlier.get(MAX_LENGTH_SCORED)} tokens, here "
                                   f"{job.get(MAX_LENGTH_SCORED)}",
                ACTIVATION_SCORED: f"activation: {earlier.get(ACTIVATION_SCORED)}, here {job.get(ACTIVATION_SCORED)}"}
        raise ResumeError(
            f"{output} was written with other settings ({', '.join(said.get(k, k) for k in changed)}): resuming "
            "would mix their scores; pass --mode overwrite, or the same settings"
        )


def resume_state(output: str, job: Optional[dict] = None) -> ResumeState:
    """Read-only: what a `--mode resume` run would keep. Refuses an output written with other settings."""
    fs, path = filesystem(output)
    success = fs.get_file_info(f"{path}/{SUCCESS}").type  # looked up once: whether there are results, and finished
    listed = _listed_parts(fs, path)  # listed once: whether there are results, and the parts to read
    if success == pafs.FileType.NotFound and not listed:
        return ResumeState({}, [])
    earlier = read_state(fs, path)
    if earlier is not None:
        earlier = _as_recorded_now(earlier)
    if job is not None and earlier is not None:
        refuse_other_settings(output, earlier, job)
    state = scan_parts(output, listed)
    state.record = earlier or {}
    state.stamps = read_state(fs, path, INPUTS) or {}
    state.finished = success == pafs.FileType.File
    if any(not is_temporary(f) for f in state.other):  # a foreign part
        raise ResumeError(
            f"{output} holds parts not named after an input file (written by a job that regroups rows, "
            "such as rerank): it cannot be resumed; pass --mode overwrite"
        )
    return state


def lost_or_rewritten(output: str, state: ResumeState, stamps: Dict[str, str]) -> tuple:
    """The inputs that the finished job completed and whose parts the output no longer holds whole
    (`ResumeState.lost`), as (those whose parts were deleted or lost, {a part rewritten since with other rows than the
    job's `_SUCCESS` counts: its input, rows counted, rows now}). `_SUCCESS` is read only where there are such inputs.
    It counts the parts of results/ and of rejects/; that of an earlier version counts no part of rejects/, whose
    inputs are said lost."""
    lost = state.lost(stamps)
    if not lost:
        return [], {}
    fs, path = filesystem(output)
    try:
        summary = finished_job(fs, path, output)
    except InputError:  # a marker that is not ce-ray's summary: nothing counted to tell a rewritten part by
        return lost, {}
    counted = finished_parts(summary, f"{path}/{RESULTS}").rows | {
        f"{path}/{REJECTS}/{name}": rows for name, rows in (summary.get(REJECT_ROWS) or {}).items()}
    held = {file: (key, rows) for key in lost if key in state.parts for file, rows in state.parts[key].files.items()}
    rewritten = {file: (held[file][0], counted[file], held[file][1])
                 for file in changed_parts(counted, {file: rows for file, (_, rows) in held.items()})}
    return [key for key in lost if key not in {key for key, _, _ in rewritten.values()}], rewritten


def _refuse_linked_folders(output: str, path: str) -> None:
    """A job writes and clears its own folders in its output: one that was a link (planted in a shared output
    folder, `/tmp/scored/results -> ~/work`) took its files where it led, and an overwrite deleted what was there."""
    linked = next((name for name in (STATE, RESULTS, REJECTS)
                   if not is_remote(output) and os.path.islink(f"{path}/{name}")), None)
    if linked:
        raise OutputError(f"{output}/{linked} is a link: a job writes its own folders in its output, not through "
                          "links; remove it, or write the output elsewhere")


def check_output(output: str, mode: str, resumable: bool = True) -> None:
    """What `prepare_output` would refuse, checked before a job starts its work: an output that is a file, one
    holding results/, rejects/ or `_SUCCESS` that no job wrote (in every mode: an overwrite deleted them), and in
    mode error one that has results. The refusal names --mode resume only for a job that can resume
    (`resumable`: not one that regroups rows across input files, such as rerank)."""
    fs, path = filesystem(output)
    with writing(output):
        if fs.get_file_info(path).type == pafs.FileType.File:
            raise OutputError(f"{setting_and_flag('output')} {output} is a file: give a folder")
    if blocker := file_in_the_way(output):  # found as the output was made, once Ray had started
        raise OutputError(f"cannot write the output {output}: {blocker} is a file, not a folder")
    with writing(output):  # a folder that cannot be made or written: found as the first part was, Ray started
        try_local_folder(output)
    _refuse_linked_folders(output, path)
    # A job's settings (`_ce_ray/job.json`, written before its first part) tell its output: one request (a folder's
    # look-up on S3 took three), and whether it has results is looked up where needed alone (a store's requests
    # are counted: an overwrite of a job's output needs no listing here).
    ours = fs.get_file_info(f"{path}/{STATE}/{JOB}").type == pafs.FileType.File
    results = has_results(output) if mode == "error" or not ours else False
    if results and not ours:
        # A folder of a user's own results/ (a project's, a home folder's) or another tool's `_SUCCESS` (Spark's):
        # an overwrite deleted them, files ce-ray never wrote.
        raise OutputError(f"{setting_and_flag('output')} {output} holds {RESULTS}/, {REJECTS}/ or {SUCCESS} that no "
                          f"ce-ray score or rerank job wrote (it has no {STATE}/): give another output folder")
    if mode == "error" and results:
        raise OutputExistsError(f"{output} already has results: pass --mode overwrite to replace them"
                                + (", or --mode resume to finish an interrupted job" if resumable else ""))


def prepare_output(output: str, mode: str, job: Optional[dict] = None, resume: Optional[ResumeState] = None,
                   stamps: Optional[Dict[str, str]] = None, resumable: bool = True, checked: bool = False,
                   in_part: Iterable[str] = (), run: Optional[str] = None) -> ResumeState:
    """mode error: refuse an output that has results; overwrite: clear them first; resume: keep the parts
    of complete inputs (of those still in the input, and as they were then, where `stamps` gives the input
    files' keys and stamps now) and of the unfinished inputs `in_part` (whose other rows the job reads:
    `ResumeState.held_rows`), remove everything else (parts of other unfinished or rewritten inputs, temporaries,
    `_SUCCESS`). Records the job's settings in `_ce_ray/job.json`, `stamps` in `_ce_ray/inputs.json`, and the
    sink's `run` in `_ce_ray/run.json` (`PairsSink.write_success` tells by it a job begun on the output meanwhile).
    `checked`: the job ran `check_output` before its work; only mode error's refusal is checked again, here just
    before the first write (another job may have written results meanwhile). Returns what was kept."""
    fs, path = filesystem(output)
    kept = ResumeState({}, [])
    if mode == "error" or not checked:
        check_output(output, mode, resumable)  # in mode error, it refused an output that has results
    else:  # checked before the work (`check_output`), and again as it writes
        _refuse_linked_folders(output, path)
    if mode == "overwrite":
        with writing(output):
            _clear(fs, path, is_remote(output))
    elif mode == "resume":
        resume = resume or resume_state(output, job)  # it read what the output holds: nothing to look up again
        if resume.finished:  # incomplete again until this run ends; first, alone, with eval's measures of it
            finished = [f"{path}/{name}" for name in (SUCCESS, EVAL, RESULTS_EVAL)]
            delete_files(fs, finished if is_remote(output) else [file for file in finished if os.path.exists(file)])
        dropped = list(resume.other)
        in_part = set(in_part)
        for key, parts in resume.parts.items():
            complete = parts.complete if stamps is None else key in stamps and resume.done(key, stamps[key])
            if complete or key in in_part:
                kept.parts[key] = parts
            else:
                dropped += parts.files
        delete_files(fs, dropped)
    elif mode != "error":
        raise ValueError(f"unknown mode {mode!r}")
    if not is_remote(output):
        delete_files(fs, _leftover_temporaries(path))
    with writing(output):  # the job's first write: a place it cannot write fails here, before any work
        fs.create_dir(f"{path}/{STATE}", recursive=True)
        for name, state in ((JOB, job), (INPUTS, stamps), (RUN, run and {"run": run})):
            if state is not None:
                write_bytes_atomic(fs, f"{path}/{STATE}/{name}", json.dumps(state, indent=2).encode(),
                                   is_remote(output))
    return kept


# `ce-ray eval`'s measures of the results as it writes them for `<output>/results/` given as its input
# (`evaluate.default_output`), beside results/.
RESULTS_EVAL = RESULTS + EVAL_SUFFIX
# What a job writes in its output folder, in the order S3 lists keys; with `ce-ray eval`'s measures of its results,
# which an overwrite replaces: kept, they stood beside other results as theirs.
WRITTEN = (SUCCESS, STATE, EVAL, REJECTS, RESULTS_EVAL, RESULTS)


def _clear(fs: pafs.FileSystem, path: str, remote: bool) -> None:
    """Deletes what a job writes in its output folder `path` (`WRITTEN`), `_SUCCESS` first, `_ce_ray/` last; other
    files stay. On S3, the objects of one listing of the output (`_written_objects`), in bulk (`delete_files`), which
    fails naming an object the store did not delete: s3fs's recursive delete passed over those, and the job went on
    beside the old parts. A folder without `_ce_ray/` holds nothing of a job's (`check_output` refused one with
    results/): a user's `eval.json` there stays, and so `_ce_ray/` goes last: an overwrite killed after it went left
    results/ that every later job refused as no job's, the overwrite that would finish the clearing too."""
    if not remote:
        if is_output(fs, path):
            for sub in sorted(WRITTEN, key=lambda sub: sub == STATE):
                remove(fs, f"{path}/{sub}")
        return
    written = _written_objects(fs.handler.fs, path)
    state = [file for file in written if file.startswith(f"{path}/{STATE}/")]
    if not state:  # from the same listing: no request more
        return
    success = f"{path}/{SUCCESS}"
    # `_ce_ray/`'s keys in the last request: a request sent is carried out whole, the client killed or not.
    others = [file for file in written if file != success and file not in state] + state
    for files in ([success] if success in written else [], others):
        if files:  # `_SUCCESS` alone first: never an output said finished whose parts are gone
            delete_files(fs, files)


def _written_objects(s3, path: str) -> list:
    """The objects that a job writes (`WRITTEN`) in the S3 output folder `path`, from one listing that starts at the
    first of them and stops past the last: S3 lists keys in order, and `_SUCCESS` ... `results/` is a range of it.
    A user's other objects under the output are kept; those outside the range (`Data/`, `scratch/`: a name that comes
    before `_` or after `results/`) are not even listed, where a listing of the whole output took a request more per
    1,000 of them. Those inside (a user's `notes.txt`) are listed and left: never more requests than the whole
    listing."""
    bucket, key, _ = s3.split_path(path)
    prefix = f"{key}/" if key else ""
    end = f"{prefix}{RESULTS}0"  # "0" follows "/": after every key under results/
    request = {"Bucket": bucket, "Prefix": prefix, "StartAfter": f"{prefix}_"}  # "_" comes before "_SUCCESS"
    keys = []
    while True:
        page = s3.call_s3("list_objects_v2", **request)
        listed = [entry["Key"] for entry in page.get("Contents", [])]
        keys += [name for name in listed if name < end and name[len(prefix):].split("/", 1)[0] in WRITTEN]
        if not page.get("IsTruncated") or (listed and listed[-1] >= end):
            return [f"{bucket}/{name}" for name in keys]
        request["ContinuationToken"] = page["NextContinuationToken"]


@contextlib.contextmanager
def writing(output: str):
    """The filesystem's error of a write to `output` as an OutputError that names the output."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"cannot write the output {output}: {e}") from None


def _leftover_temporaries(path: str) -> list:
    """The temporaries of `_SUCCESS` and of `_ce_ray/`'s files (`write_bytes_atomic`) in the local output folder `path`
    that a job killed as it wrote them left: those of `results/` and `rejects/` a resume deletes with their parts,
    these stayed for good beside the output (S3's writes are whole objects, no temporaries)."""
    folder = glob.escape(path)
    return glob.glob(f"{folder}/.{SUCCESS}.*.tmp") + glob.glob(f"{folder}/{STATE}/.*.tmp")


def split_rejects(table: pa.Table, written: Sequence[str]) -> tuple:
    """(scored rows without the reject column, rejected rows with `reason` and without the `written` columns,
    the score's and rank's). Where the input has a `reason` column of its own, the rejects' is `reject_reason`."""
    if REJECT not in table.column_names:
        return table, None
    rejected = table.column(REJECT).is_valid()
    good = table.filter(pc.invert(rejected)).drop_columns([REJECT])
    bad = table.filter(rejected)
    if not bad.num_rows:
        return good, None
    bad = bad.drop_columns([c for c in written if c in bad.column_names])
    if REASON not in bad.column_names:
        bad = bad.rename_columns([(REASON if c == REJECT else c) for c in bad.column_names])
    return good, bad


def conform(table: pa.Table, schema: Optional[pa.Schema], rows_of: str = "the job's rows") -> pa.Table:
    """A part's rows in the input's columns and types (`input_files.agreed_schema`): a column that its input file
    lacks is null, one of a narrower type (int32 for int64, an all-null column) is widened, and the columns come in
    one order, so that every part of the output has one schema and the folder reads back as one table (Arrow's and
    pandas' readers take the first part's schema, and failed on a later part's `string` for an all-null column
    or dropped a column the first part lacked). The job's own columns (score, rank, reason) follow. Values that the
    input's type cannot hold (an integer id past 2^53 in a file, float ids in another) fail the job, naming them
    (`rows_of`): a part in a type of its own left an output that reads back as no one table."""
    if schema is None:
        return table
    columns, fields = [], []
    for wanted in schema:
        if wanted.name == REJECT:  # an earlier job's column: the reasons of this one replace it
            continue
        if wanted.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, wanted.type))
        else:
            column = table.column(wanted.name)
            try:
                column = column if column.type == wanted.type else column.cast(wanted.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                if not pa.types.is_null(wanted.type):
                    raise cannot_hold(rows_of, wanted.name, column.type, wanted.type, e) from None
                wanted = wanted.with_type(column.type)  # all null where the check read it: its values' type
            columns.append(column)
        fields.append(wanted)
    # The job's own columns, and its `reject_reason` where the input's schema has one too (placed here, after the
    # input's columns): left out with the input's, the rejects lost their reasons.
    placed = {field.name for field in fields}
    rest = [name for name in table.column_names if name not in placed]
    return pa.Table.from_arrays(columns + [table.column(name) for name in rest],
                                schema=pa.schema(fields + [table.schema.field(name) for name in rest],
                                                 metadata=table.schema.metadata))


def _input_groups(table: pa.Table):
    """(input key, rows in order without tags but their row numbers (`ROW_INDEX`), input row count or None) for each
    input file in a block."""
    keys = table.column(ROW_INPUT)
    for key in pc.unique(keys).to_pylist():
        rows = table.filter(pc.equal(keys, key)).sort_by(ROW_INDEX)
        input_rows = pc.max(rows.column(FILE_ROWS)).as_py()
        yield key, rows.drop_columns([ROW_INPUT, FILE_ROWS]), input_rows


def _part_name(key: str, part: pa.Table) -> str:
    """`<key>-r<first row>.parquet`: named after the first row the part itself holds, not that of the rows it was
    split from (results and rejects), so that a part a resume writes never takes the name of one it kept (its rows
    are those no kept part holds): a results part named after a rejected first row would take it, where its rejects
    part was lost and that row is read again with rows that are scored."""
    return f"{key}-r{part.column(ROW_INDEX)[0].as_py():012d}.parquet"


# The bytes of rows a score job's write task gathers before it writes their parts, as Ray Data's blocks hold up to
# (`DataContext.target_max_block_size`): the rows reach the writer in blocks of a replica's call (4,096 rows on CPUs),
# and a part of each would be hundreds of parts a file, each a PUT and a footer read before `_SUCCESS`.
PART_BYTES = 128 * 1024 * 1024
# On CPUs, 128 MiB of rows is hours of scoring (500,000 short pairs, where the L12 reranker scores ~45 a second on 2
# cores), and nothing of it is on disk until a write task has gathered them: a job over 48 files of 5,000 pairs killed
# half-way had written no part, and its resume scored every file again. A CPU job's write task gathers this much
# (~30,000 short pairs; ~12 minutes of the L12 on 2 cores, seconds of a small model): the files it completes are
# kept by a resume, and so are the parts of a parquet file left unfinished, whose other rows alone it scores.
CPU_PART_BYTES = 8 * 1024 * 1024


class PairsSink(Datasink):
    """Writes each input file's rows to results/ and rejects/, named after it; `written`: the columns the job
    added (the score's, the rank's), which rejected rows go without; `schema`, the input's columns and types, which
    every part is written in (`conform`); `part_bytes`, the bytes of rows a write task gathers before it writes
    them (Ray Data bundles the blocks it is given up to it), else a block a task."""

    def __init__(self, output: str, written: Sequence[str], schema: Optional[pa.Schema] = None,
                 finish: str = RESUME, part_bytes: Optional[int] = None):
        self.output = output
        self.part_bytes = part_bytes
        self.written = list(written)
        self.schema = schema
        self.finish = finish  # what finishes the job where the output lost parts it wrote
        self.run = uuid.uuid4().hex  # this run's, in the output's `_ce_ray/run.json` (`prepare_output`)
        self.counts = {"rows_scored": 0, "rows_rejected": 0}
        self.parts: Dict[str, int] = {}  # every part written: results/<name> or rejects/<name> -> its rows

    @property
    def min_bytes_per_write(self) -> Optional[int]:
        return self.part_bytes  # Ray Data bundles a write task's blocks up to it (`PART_BYTES`)

    def on_write_start(self, schema=None) -> None:
        fs, path = filesystem(self.output)
        fs.create_dir(f"{path}/{RESULTS}", recursive=True)

    def write(self, blocks: Iterable, ctx) -> dict:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        counts = {"rows_scored": 0, "rows_rejected": 0}
        if not tables:
            return counts | {"parts": {}}
        table = pa.concat_tables(tables, promote_options="permissive")  # blocks of one file read in other types
        if ROW_INPUT in table.column_names and ROW_INDEX in table.column_names:
            groups = list(_input_groups(table))
        else:
            table = table.drop_columns([c for c in TAGS if c in table.column_names])
            groups = [(None, table, None)]
        fs, path = filesystem(self.output)
        remote = is_remote(self.output)
        stall = os.environ.get(STALL_ENV)
        written = {}  # part (results/<name>, rejects/<name>) -> its rows, checked before _SUCCESS is written
        for key, rows, input_rows in groups:
            good, bad = split_rejects(rows, self.written)
            for sub, part in ((RESULTS, good), (REJECTS, bad)):
                if part is None or not part.num_rows:
                    continue
                name = f"part-{ctx.task_idx:06d}.parquet" if key is None else _part_name(key, part)
                if stall and stall in name:
                    time.sleep(3600)
                metadata = {RUN_ID: self.run.encode()}
                if input_rows is not None:
                    metadata[INPUT_ROWS] = str(input_rows).encode()
                if key is not None:  # rows of an input file: which of its rows the part holds
                    runs = row_runs(part.column(ROW_INDEX).to_numpy())
                    metadata[ROW_RUNS] = json.dumps(runs, separators=(",", ":")).encode()
                    part = part.drop_columns([ROW_INDEX])
                part = conform(part, self.schema, "a block" if key is None else f"the rows of input {key}")
                # ce-ray's own metadata alone, none of what the rows were read with: that was one input file's
                # (the first block's) in every part, its pandas index and dtypes (pandas gave a part another
                # file's index, or read a stored index as the index in one part and a column in another), or an
                # earlier job's INPUT_ROWS in a rerank's parts of other rows.
                part = part.replace_schema_metadata(metadata)
                if sub == REJECTS:
                    fs.create_dir(f"{path}/{REJECTS}", recursive=True)
                write_table_atomic(fs, f"{path}/{sub}/{name}", part, remote)
                written[f"{sub}/{name}"] = part.num_rows
            counts["rows_scored"] += good.num_rows
            counts["rows_rejected"] += 0 if bad is None else bad.num_rows
        return counts | {"parts": written}

    def on_write_complete(self, write_result) -> None:
        for returned in write_result.write_returns:
            for key in self.counts:
                self.counts[key] += returned[key]
            for name, rows in returned["parts"].items():  # two tasks writing one name: the rows of both
                self.parts[name] = self.parts.get(name, 0) + rows

    def write_success(self, summary: dict, kept: Optional[ResumeState] = None) -> None:
        """Writes `_SUCCESS`, once the output is seen to hold every part this job wrote and kept, whole, and no other
        job has begun on it since this one did, nor written its parts again: two jobs at once on one output (a
        command run again while the first still ran) wrote their parts under the same names, of other rows, and the
        first to end wrote `_SUCCESS` over the other's, rows twice in results/."""
        fs, path = filesystem(self.output)
        expected = {f"{path}/{name}": rows for name, rows in self.parts.items()} | (kept.files() if kept else {})
        with work():  # a part lost during the work, or another job's, fails the job, as an error of its tasks does
            with writing(self.output):
                run = read_state(fs, path, RUN)  # the run that writes the output now (`prepare_output`)
            if run != {"run": self.run}:
                raise OutputLostError(f"another job began writing {self.output} while this one did ({STATE}/{RUN} is "
                                      f"not this job's): their parts are mixed. No {SUCCESS} written; {BEGUN_AGAIN}")
            check_parts(self.output, expected, self.finish, kept.footers_read() if kept else None, self.run,
                        {f"{path}/{name}" for name in self.parts})
        # The parts of results/ and rejects/ and their rows, so that a job reading this output later tells one that
        # lost parts since, or whose parts were cut short or rewritten (`output_state.refuse_changed_output`), and a
        # resume tells which (`lost_or_rewritten`).
        rows = {sub: {file[len(f"{path}/{sub}/"):]: count for file, count in sorted(expected.items())
                      if file.startswith(f"{path}/{sub}/")} for sub in (RESULTS, REJECTS)}
        summary = summary | {RESULT_PARTS: len(rows[RESULTS]), RESULT_ROWS: rows[RESULTS], REJECT_ROWS: rows[REJECTS]}
        # a disk that filled: the error named no file. Once the work is done: its line says --mode resume finishes it.
        with work(), writing(self.output):
            write_bytes_atomic(fs, f"{path}/{SUCCESS}", json.dumps(summary, indent=2).encode(), is_remote(self.output))


# What finishes a job whose output another job wrote at the same time: only starting over tells whose rows are whose
# (its settings, `_ce_ray/job.json`, are the other job's, which a resume would take the other's parts by).
BEGUN_AGAIN = f"once no other job writes it, {OVERWRITE}"


def _differences(fs: pafs.FileSystem, path: str, expected: Dict[str, int], read: Dict[str, Tuple[str, Optional[int]]],
                 run: Optional[str] = None, own: Set[str] = frozenset()) -> Tuple[list, list]:
    """What results/ and rejects/ hold otherwise than `expected` (part -> rows), each said in a few words
    (`output_state.part_differences`, which a later job reading the output holds its results/ to as well): parts
    missing, of other row counts or unreadable (from their footers alone), and parts that no one expected; and,
    apart, the parts of `own` (those the job of `run` wrote) that another run wrote again since, under their names.
    A part whose footer was `read` by the job (part -> (its stamp then, its rows)) and that is listed with the same
    stamp now is the file that was read: its rows are taken as read."""
    held = {file: listed for sub in (RESULTS, REJECTS) for file, listed in _list(fs, f"{path}/{sub}").items()
            if not is_temporary(file)}
    known = {file: read[file][1] for file, (_, stamp) in held.items() if file in read and read[file][0] == stamp}
    footers = read_footers(fs, {file: size for file, (size, _) in held.items()
                                if file in expected and file not in known})
    rows = {file: known[file] if file in known else footers[file].rows if file in footers else None for file in held
            if not footers.get(file, Footer()).missing}  # deleted since the listing: missing
    again = [f"{file[len(path) + 1:]} was written again by another job" for file in sorted(own)
             if run and rows.get(file) is not None and file in footers and footers[file].run != run.encode()]
    return part_differences(expected, rows, "this job", f"{path}/"), again


def check_parts(output: str, expected: Dict[str, int], finish: str,
                read: Optional[Dict[str, Tuple[str, Optional[int]]]] = None, run: Optional[str] = None,
                own: Set[str] = frozenset()) -> None:
    """Fails unless the output holds exactly the parts `expected` (path -> rows), so that `_SUCCESS` never counts
    rows that are not there: a store that lost writes it had taken, a folder cleared by another hand, a part
    deleted by another job's --mode overwrite. `read`: the parts whose footers the job read already (a resume's kept
    parts, `ResumeState.footers_read`), each with its stamp as listed then and its rows: one listed now with the same
    stamp (size, and time or ETag) is not read again, where a resume read each kept part's footer twice. `run`
    and `own`: the job's run, and the parts it wrote, which another job may have written again (`_differences`)."""
    fs, path = filesystem(output)
    said, again = _differences(fs, path, expected, read or {}, run, own)
    if said or again:
        raise OutputLostError(f"{output} does not hold the parts this job counts: {briefly(said + again)}. "
                              f"No {SUCCESS} written; {BEGUN_AGAIN if again else finish}")
