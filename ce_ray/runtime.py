"""Ray as a job uses it: joined or started, the cluster's GPUs, and a failed job's leftovers and errors dealt
with, so that ce-ray's own error reaches the command line as one line.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys

from .config import ConfigError
from .io import InputError


# Where its output is no terminal (a file, a Ray Job's log), Ray Data logs a job's progress as a block of 10-20
# lines every 10 s: 4,000-6,000 lines an hour, nearly all of a long job's log. Once a minute still says how far
# each stage is; the variable is Ray Data's own, and a value the user sets is kept.
LOGGED_PROGRESS_INTERVAL_VAR = "RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL"
LOGGED_PROGRESS_INTERVAL_S = "60"


def pace_logged_progress() -> None:
    """Ray Data's progress, where it is logged rather than drawn, once a minute unless the user says otherwise.
    Ray Data reads the variable when a job first runs a Dataset, so this comes before any."""
    os.environ.setdefault(LOGGED_PROGRESS_INTERVAL_VAR, LOGGED_PROGRESS_INTERVAL_S)


def ensure_ray(dashboard: bool = False) -> None:
    """Joins the Ray cluster (`RAY_ADDRESS`, or one `ray start` runs on this machine) or starts a local one.

    A local Ray started here serves one job and ends with it. For scoring it starts without the dashboard,
    which took 0.6-0.7 s more of each job's start on a 2-core CPU (2.4-3.4 s against 3.0-4.1) and a process
    beside the job's. Training asks for it (`dashboard`): Ray Train watches its controller through Ray's
    state API, which the dashboard serves, and without it warns every few seconds for the whole run. To watch
    any job in the dashboard, `ray start --head` first: the commands join that cluster.
    Jobs call it where they first need Ray, after their input and output checks, so that a bad input fails
    without waiting for Ray's start.
    """
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=None if dashboard else False)  # ignored when joining a cluster


def started_here() -> bool:
    """Whether this process started the Ray it uses (a local one for this job alone, which cannot grow),
    rather than joining a cluster (which an autoscaler may grow)."""
    import ray._private.worker

    node = getattr(ray._private.worker, "_global_node", None)
    return bool(node is not None and node.is_head())


def refuse_or_wait(refusal: str, note: str) -> None:
    """A job that needs what the cluster lacks: a local Ray started for it cannot grow, and the job would wait
    forever, so it is refused (`refusal`); a joined cluster may grow (an autoscaler), so it is said (`note`)."""
    if started_here():
        raise ConfigError(refusal)
    print(note, file=sys.stderr, flush=True)


def cluster_resources() -> dict:
    """The resources of the cluster, joined or started: {"CPU": ..., "GPU": ...}."""
    import ray

    ensure_ray()
    return ray.cluster_resources()


def free_failed_actors() -> None:
    """Frees the actors of an earlier failed Ray Data execution in this process, before a new job asks for
    CPUs or GPUs.

    Ray Data lets a failed execution's actors go by reference counting, but its error and the executor's
    state reference each other: the actors live, holding their resources, until the garbage collector
    breaks that cycle, and on a small cluster the next job would wait for them forever. (While something
    still holds the error, such as a logging handler that keeps records, nothing can free them.)
    """
    gc.collect()


@contextlib.contextmanager
def surfaced_errors():
    """Re-raises ce-ray's own error (ModelError, InputError, ConfigError) that failed a task or a replica of
    the job as itself, with its message alone, instead of inside Ray's report of it.

    Ray Data wraps an exception of a task or an actor call in a UserCodeException and carries the original
    across processes only as traceback text, so a user would see a page of Ray's frames for an error such
    as a float16 overflow or on_invalid=fail. Blocks whose column types Ray Data cannot make one (a number in
    one JSON or CSV file, text in another; parquet inputs are checked before the job) fail as an InputError
    naming the column. Any other failure goes through as Ray reports it.
    """
    try:
        yield
    except Exception as e:
        text = getattr(e, "traceback_str", None) or str(e)
        found = re.findall(r"^ce_ray\.\w+\.(ModelError|InputError|ConfigError): (.+)$", text, re.MULTILINE)
        clash = re.search(r"Unable to merge: Field (\S+) has incompatible types: (.+?) vs (.+?)$", text, re.MULTILINE)
        if not found and clash:
            column, one, other = clash.groups()
            raise InputError(f"column {column!r} is {one} in some rows and {other} in others (a number in one file, "
                             "text in another): rows of both cannot be put together; write it as one type in "
                             "every file") from None
        if not found:
            raise
        from .model_folder import ModelError

        kind, message = found[0]  # the root cause: a chain prints its first exception first
        error = {"ModelError": ModelError, "InputError": InputError, "ConfigError": ConfigError}[kind]
        raise error(message) from None
