"""An output folder of ce-ray as a later job finds it (its layout: `sink.py`): its names, the settings of the job
that wrote it (`_ce_ray/`), its summary (`_SUCCESS`, read as every job that reads the output reads it), and
whether its results/ still hold the parts and rows that the summary counts."""

from __future__ import annotations

import json
import posixpath
from typing import Dict, List, NamedTuple, Optional, Tuple

import pyarrow.fs as pafs

from .messages import InputError, briefly, plural
from .storage import filesystem, glob_base, is_glob, read_bytes


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
# In STATE: the run that writes the output now (`sink.PairsSink.run`); a job begun on it meanwhile replaces it.
RUN = "run.json"
MODEL_VERSION = "model_version"  # in JOB: which version of the model scored it (`model_folder.model_version`)
DTYPE_SCORED = "dtype_scored"  # in JOB: the dtype the replicas computed in (`auto` resolved where they ran)
# In JOB: the tokens the pairs were cut at and the activation applied, the model's own where none was given, as the job
# resolved them once its model was checked (`score.resolved_settings`): an upgrade of ce-ray or transformers may
# resolve them otherwise, and a resume then mixed pairs cut at two lengths under one `max_length: null`.
MAX_LENGTH_SCORED, ACTIVATION_SCORED = "max_length_scored", "activation_scored"
RESOLVED_LATE = (MAX_LENGTH_SCORED, ACTIVATION_SCORED)
# In `_SUCCESS`: the cut of a rerank whose output this job's input is, or was at some step before (a cascade):
# {"top_k": k, "rows_cut": n}. Its rows are that reranker's choice, whichever later job scored them again.
INPUT_CUT = "input_cut"


def is_output(fs: pafs.FileSystem, path: str) -> bool:
    """A folder that a ce-ray job wrote: it holds the job's settings (`_ce_ray/`)."""
    return fs.get_file_info(f"{path}/{STATE}").type == pafs.FileType.Directory


def read_state(fs: pafs.FileSystem, path: str, name: str = JOB) -> Optional[dict]:
    """One of the JSON files in an output's `_ce_ray/` (the job's settings by default), or None where it has none;
    one request on S3 (`storage.read_bytes`)."""
    try:
        return json.loads(read_bytes(fs, f"{path}/{STATE}/{name}"))
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
    return _with_settings(finished_job(fs, path, uri), fs, path)


def _with_settings(summary: dict, fs: pafs.FileSystem, path: str) -> dict:
    """A finished job's summary with its settings (`_ce_ray/job.json`, none where unreadable) as its "settings"."""
    try:
        return summary | {"settings": read_state(fs, path) or {}}
    except (OSError, ValueError):
        return summary | {"settings": {}}


def job_of_results(uri: str) -> Optional[dict]:
    """As `job_summary`, for an input inside a ce-ray output's results/ (the folder, a part of it, a glob of its
    parts) where that job finished: the rows are that job's, written as its settings say, though they are read as
    the files they are (the way to read them past a `_SUCCESS` that is not ce-ray's). None for any other input."""
    fs, output = _output_of_results(uri)
    if output is None:
        return None
    try:
        summary = finished_job(fs, output, uri)
    except InputError:  # not finished, or its marker not ce-ray's: the rows as they are, as before
        return None
    return _with_settings(summary, fs, output)


def in_unfinished_results(uri: str) -> bool:
    """Whether `uri` is inside the results/ of a ce-ray output whose job did not finish (no `_SUCCESS`): its rows
    as they are now, which may be some of the job's only."""
    fs, output = _output_of_results(uri)
    return output is not None and fs.get_file_info(f"{output}/{SUCCESS}").type == pafs.FileType.NotFound


def _output_of_results(uri: str) -> Tuple[pafs.FileSystem, Optional[str]]:
    """The filesystem of `uri`, and the ce-ray output folder whose results/ it is in (None where it is in none)."""
    fs, path = filesystem(glob_base(uri))
    names = path.rstrip("/").split("/")
    if RESULTS not in names[1:]:
        return fs, None
    output = "/".join(names[: len(names) - 1 - names[::-1].index(RESULTS)])
    return fs, output if is_output(fs, output) else None


def rows_cut_before(summary: dict) -> Optional[dict]:
    """The cut (`INPUT_CUT`) that an output's rows went through, from the summary of the job that wrote it: its own
    (a rerank that kept each query's top k and cut rows) or its input's; None where none was cut."""
    if summary.get("rows_cut"):
        return {"top_k": summary.get("top_k"), "rows_cut": summary["rows_cut"]}
    return summary.get(INPUT_CUT)


def input_cut_record(uri: str) -> dict:
    """For a job's `_SUCCESS`: the cut that the rows of its input `uri` went through (`rows_cut_before`), where that
    is a ce-ray output or in one's results/, so that eval knows the rows for an earlier reranker's choice."""
    job = job_summary(uri) or job_of_results(uri)
    cut = rows_cut_before(job) if job else None
    return {INPUT_CUT: cut} if cut else {}


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
            said.append(f"{name(path)} is missing ({plural(rows, 'row')})")
        elif held[path] is None:
            said.append(f"{name(path)} cannot be read as parquet (cut short?; {plural(rows, 'row')} written)")
        elif held[path] != rows:
            said.append(f"{name(path)} holds {plural(held[path], 'row')} of the {rows:,} written")
    return said + [f"{name(path)} was not written by {job}" for path in sorted(held.keys() - counted.keys())]


def changed_parts(counted: Dict[str, int], rows: Dict[str, Optional[int]]) -> List[str]:
    """The parts that a finished job's `_SUCCESS` counts (`counted`: path -> rows) and that hold other rows now
    (`rows`, from their footers): rewritten since."""
    return sorted(path for path, now in rows.items() if path in counted and now != counted[path])
