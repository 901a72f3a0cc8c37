"""Ray as a job uses it: joined or started, the cluster's GPUs, and a failed job's leftovers and errors dealt
with, so that ce-ray's own error reaches the command line as one line.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import re
import sys
import threading
from typing import Callable, Optional

from .config import ConfigError
from .messages import InputError


# Where its output is no terminal (a file, a Ray Job's log), Ray Data logs a job's progress as a block of 10-20
# lines every 10 s: 4,000-6,000 lines an hour, nearly all of a long job's log. Once a minute still says how far
# each stage is; the variable is Ray Data's own, and a value the user sets is kept.
LOGGED_PROGRESS_INTERVAL_VAR = "RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL"
LOGGED_PROGRESS_INTERVAL_S = "60"

LOCAL_MIN_CPUS = 2  # of a local Ray a job starts: a scoring replica's, and one to read with


def pace_logged_progress() -> None:
    """Ray Data's progress, where it is logged rather than drawn, once a minute unless the user says otherwise.
    Ray Data reads the variable when a job first runs a Dataset, so this comes before any."""
    os.environ.setdefault(LOGGED_PROGRESS_INTERVAL_VAR, LOGGED_PROGRESS_INTERVAL_S)
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        # Ray colours its workers' lines' prefixes, `(RayTrainWorker pid=…)`, in a file or a pipe too: 45 terminal
        # codes in a training run's log, one a line.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def ensure_ray(dashboard: bool = False) -> None:
    """Joins the Ray cluster (`RAY_ADDRESS`, or one `ray start` runs on this machine) or starts a local one.

    A local Ray started here serves one job and ends with it. For scoring it starts without the dashboard,
    which took 0.6-0.7 s more of each job's start on a 2-core CPU (2.4-3.4 s against 3.0-4.1) and a process
    beside the job's. Training asks for it (`dashboard`): Ray Train watches its controller through Ray's
    state API, which the dashboard serves, and without it warns every few seconds for the whole run. To watch
    any job in the dashboard, `ray start --head` first: the commands join that cluster.
    Jobs call it where they first need Ray, after their input and output checks, so that a bad input fails
    without waiting for Ray's start. A cluster address where nothing answers, or a Ray that fails to start,
    is a RayStartError: an error before any work, that no resume finishes.
    """
    import ray

    # Two threads' first calls at once (a service's first requests) each found Ray down and started one.
    with _STARTING:
        if not ray.is_initialized():
            _in_a_lasting_thread(lambda: _start_or_join(dashboard))


_STARTING = threading.Lock()


def _in_a_lasting_thread(start: Callable[[], None]) -> None:
    """Runs `start` in the main thread, or else in a thread that lasts as long as the process. A local Ray's
    processes die with the thread that started them (Linux's parent-death signal, which Ray asks for, follows the
    thread): started by a service's request thread, they were killed as it ended, and the process with them at
    its next call, with exit status 0 and no word."""
    if threading.current_thread() is threading.main_thread():
        return start()
    started, failed = threading.Event(), []

    def keep() -> None:
        try:
            start()
        except BaseException as e:  # raised again in the caller's thread
            failed.append(e)
        started.set()
        threading.Event().wait()  # parked for the process's life

    threading.Thread(target=keep, name="ce-ray: Ray's start", daemon=True).start()
    started.wait()
    if failed:
        raise failed[0]


def _start_or_join(dashboard: bool) -> None:
    import ray

    address = _cluster_address()
    given = os.environ.get("RAY_ADDRESS", "")
    if _through_ray_client():
        where = f"join the Ray cluster at {given} through Ray Client"
        _refuse_silent(_client_server(given))
    else:
        where = f"join the Ray cluster at {address}" if address else "start a local Ray"
        if address:
            if given != address and given.rpartition(":")[2].isdigit():
                # As written too: Ray takes a loopback address (a local `ray start`'s dashboard, on 127.0.0.1 by
                # default) for the machine's own, where nothing answers, and it was said to start the cluster.
                _refuse_dashboard(given)
            _refuse_silent(address)
            _refuse_dashboard(address)
    # A local Ray takes the machine's cores as its CPUs: on a machine of one (a 1-CPU VM, a pod limited to one
    # CPU) that is one, which a scoring replica holds for the whole job, none left to read its rows (refused,
    # `score._check_room`). Two CPUs of Ray's then share the core. A cluster joined (here or through Ray Client)
    # has CPUs of its own, and ray.init refuses them.
    local = not address and not _through_ray_client()
    num_cpus = LOCAL_MIN_CPUS if local and usable_cpus() < LOCAL_MIN_CPUS else None
    command = _COMMAND["sigterm"] is not None
    try:
        # (include_dashboard is ignored when joining a cluster)
        with _sigterm_kept() if command else contextlib.nullcontext():
            ray.init(include_dashboard=None if dashboard else False, num_cpus=num_cpus)
    except Exception as e:  # Ray's own frames say no more than its message
        raise RayStartError(f"cannot {where}: {type(e).__name__}: {_joined(str(e))}") from None
    if command:
        _note_sigterm()


@contextlib.contextmanager
def _sigterm_kept():
    """A command's ray.init, where a SIGTERM during it is not lost. Ray's handler raises SystemExit wherever Python
    runs, and a signal that came during a fork (ray.init forks its processes) was handled in the fork's hooks
    (filelock's), where Python said `Exception ignored in ...` and a traceback, and went on: the job went on
    (seen once in a test suite's run). That exit is raised once ray.init returns, and what the fork's other
    hook said of the state the first left (filelock's KeyError) is dropped with it."""
    import signal

    lost = []
    said = sys.unraisablehook

    def keep(unraisable) -> None:
        if lost or (unraisable.exc_type is SystemExit and unraisable.exc_value.code == signal.SIGTERM):
            lost.append(unraisable.exc_value)
        else:
            said(unraisable)

    sys.unraisablehook = keep
    try:
        yield
    finally:
        sys.unraisablehook = said
    if lost:
        raise SystemExit(signal.SIGTERM)


# A command's (`as_a_command`): whether SIGTERM came once Ray started (None: no command, the process is a user's).
_COMMAND = {"sigterm": None}


def ray_is_up() -> bool:
    """Whether this process has joined or started Ray (without importing Ray where nothing did)."""
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def shut_ray_down() -> None:
    """Ray's shutdown, which its atexit hook makes as the process exits where nothing made it before."""
    if ray_is_up():
        sys.modules["ray"].shutdown()


def as_a_command() -> None:
    """This process runs a ce-ray command: a SIGTERM that stops its job is told (`stopped_by_sigterm`)."""
    _COMMAND["sigterm"] = False


def stopped_by_sigterm() -> bool:
    return bool(_COMMAND["sigterm"])


def _note_sigterm() -> None:
    """Ray's handler of SIGTERM in the driver (ray.init's: `sys.exit`, which shuts Ray down as the process exits,
    and which Ray's waits raise as SystemExit(1)) kept, the signal noted so that the command says it was stopped.

    Before it, Ray's failure signal handler (abseil's) arms a 3 s alarm that aborts the process, core dump and all
    (ray-project/ray#64830): a job whose Ray took longer to shut down (a training run, ~3-5 s on 2 cores) died of
    SIGABRT, exit 134, with no word. The alarm is cancelled as the signal is handled; a second SIGTERM arms it again.
    """
    import signal
    import threading

    rays = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(rays):
        return

    def stopped(signum, frame):
        _COMMAND["sigterm"] = True
        signal.alarm(0)
        rays(signum, frame)

    signal.signal(signal.SIGTERM, stopped)


class RayStartError(RuntimeError):
    """Ray could not be joined or started: the job did no work, and is run again as it was once Ray can be."""


# How long a job waits for the cluster it joins to answer at all. Ray retries a cluster address where nothing
# listens for many minutes: ray.init on a loopback port without a cluster had not given up after 5 minutes
# (2-core CPU, 2026-12-02).
CONNECT_TIMEOUT_S = 10.0


def _address_source() -> str:
    """Where the address of the cluster to join came from, as the user gave it (Ray writes a loopback address as
    the machine's own)."""
    given = os.environ.get("RAY_ADDRESS", "")
    return f"RAY_ADDRESS={given}" if given else "the cluster `ray start` ran on this machine"


def _through_ray_client() -> bool:
    """Whether ray.init() joins through Ray Client (`RAY_ADDRESS=ray://host:port`)."""
    return "://" in os.environ.get("RAY_ADDRESS", "")


def _client_server(address: str) -> str:
    """The `host:port` of a Ray Client address (`ray://host:10001`); a dashboard's (`http://host:8265`), which
    `ce-ray submit` takes and `ray.init` does not, is refused (Ray's own message blamed a local Ray's start)."""
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    scheme, netloc = parts.scheme, parts.netloc
    if scheme in ("http", "https"):
        raise RayStartError(f"cannot join a Ray cluster (RAY_ADDRESS={address}): that is a dashboard's address, which "
                            f"`ce-ray submit --address {address}` sends the job to; a job run here joins a cluster by "
                            "its GCS address (`host:6379`) or through Ray Client (`ray://host:10001`)")
    return netloc if ":" in netloc else f"{netloc}:10001"  # Ray Client's default port


def _cluster_address() -> str:
    """The address of the cluster that ray.init() joins as `host:port` (RAY_ADDRESS, or the one `ray start`
    recorded on this machine); "" where it starts a local Ray or joins through Ray Client (`ray://`)."""
    from ray._private.services import canonicalize_bootstrap_address

    if _through_ray_client():
        return ""
    try:
        return canonicalize_bootstrap_address(None) or ""
    except (ValueError, ConnectionError) as e:  # an address that is none
        raise RayStartError(f"cannot join a Ray cluster ({_address_source()}): {e}") from None


def _refuse_silent(address: str) -> None:
    """Fails at once where nothing answers at the cluster's address, rather than in Ray's retries."""
    import socket

    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise RayStartError(f"cannot join the Ray cluster at {address} ({_address_source()}): no port (`host:6379`)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise RayStartError(f"cannot join the Ray cluster at {address} ({_address_source()}): nothing answers there "
                            f"({e}); start it (`ray start --head`), or set RAY_ADDRESS=local to start a local Ray "
                            "for the job") from None


def _refuse_dashboard(address: str) -> None:
    """Fails at once where a GCS address (`host:port`, something answering there) answers HTTP, as a dashboard does:
    Ray waited minutes for a GCS there."""
    from .submit import answers_http

    host, _, port = address.rpartition(":")
    if answers_http(host.strip("[]"), int(port)):
        raise RayStartError(f"cannot join the Ray cluster at {address} ({_address_source()}): it answers HTTP, as "
                            "a dashboard does, where a cluster's GCS address is asked (`ray start --port`, 6379 by "
                            f"default); to send the job to the cluster through its dashboard: `ce-ray submit` with "
                            f"`--address http://{address}`")


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


def cpu_nodes() -> list:
    """The CPUs (Ray's CPU resource) of each live node of the cluster that has any: a head started with
    `--num-cpus 0`, which runs drivers alone, is none."""
    import ray

    ensure_ray()
    return [node["Resources"]["CPU"] for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) > 0]


CGROUP = "/sys/fs/cgroup"


def cgroup_cpu_limit(root: str = CGROUP) -> Optional[float]:
    """The CPUs a container's CPU limit gives this process (a Kubernetes pod's `limits: cpu`), from its cgroup's
    quota: cgroup v2's `cpu.max` ("400000 100000": 4 CPUs; "max 100000": none), else v1's `cpu.cfs_quota_us`
    over `cpu.cfs_period_us` (-1: none). None where there is no limit, or no cgroup file says one."""
    v2 = _first_line(os.path.join(root, "cpu.max"))
    if v2:
        quota, period = (v2.split() + ["100000"])[:2]
    else:
        quota, period = (_first_line(os.path.join(root, "cpu", name)) for name in ("cpu.cfs_quota_us",
                                                                                  "cpu.cfs_period_us"))
    try:
        return float(quota) / float(period) if quota not in ("max", "-1") and float(quota) > 0 else None
    except (TypeError, ValueError, ZeroDivisionError):  # no such file, or a value that says nothing
        return None


def _first_line(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.readline().strip() or None
    except OSError:
        return None


def usable_cpus(cgroup: str = CGROUP) -> int:
    """The cores this process may keep busy: those it may run on (`sched_getaffinity`, all the machine's in a
    container), within its container's CPU limit (a pod's 4 CPUs of a 64-core machine) and, in a Ray worker,
    within its Ray node's CPU resource (`ray start --num-cpus`: several nodes on one machine share its cores)."""
    cpus = float(len(os.sched_getaffinity(0)))
    limit = cgroup_cpu_limit(cgroup)
    if limit is not None:
        cpus = min(cpus, limit)
    node = _ray_node_cpus()
    if node:
        cpus = min(cpus, node)
    return max(int(cpus), 1)  # a fraction of a core more would only be throttled


def _ray_node_cpus() -> float:
    """The CPU resource of the Ray node this process runs on; 0 outside Ray or on a node without CPUs."""
    ray = sys.modules.get("ray")  # a process that has not imported Ray is none of its workers
    if ray is None or not ray.is_initialized():
        return 0.0
    here = ray.get_runtime_context().get_node_id()
    return next((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["NodeID"] == here), 0.0)


def free_failed_actors() -> None:
    """Frees the actors of an earlier failed Ray Data execution in this process, before a new job asks for
    CPUs or GPUs.

    Ray Data lets a failed execution's actors go by reference counting, but its error and the executor's
    state reference each other: the actors live, holding their resources, until the garbage collector
    breaks that cycle, and on a small cluster the next job would wait for them forever. An error that
    `surfaced_errors` let through holds none of them, kept or not (`_release_frames`), nor does, from here, the
    last error of an interactive session (a notebook's, the REPL's), which a Dataset consumed without it raised.
    """
    _release_frames(getattr(sys, "last_value", None))
    gc.collect()


# The mark of an error raised during a job's work (`work`), which the command line tells from one found before it.
_DURING_WORK = "ce_ray_during_work"


@contextlib.contextmanager
def work():
    """A job's work, after its checks: an error raised in it failed the job, whatever its type. ce-ray's own
    errors and the usage errors' types (an InputError on a bad row and pyarrow's ArrowInvalid are ValueErrors,
    a file gone mid-way a FileNotFoundError) also fail a job that has done work, which the command line
    ends with the way to finish it (`failed_during_work`)."""
    try:
        yield
    except Exception as e:
        setattr(e, _DURING_WORK, True)
        raise


def failed_during_work(error: BaseException) -> bool:
    """Whether `error` failed a job during its work: raised in `work`, or by Ray for its tasks and workers."""
    return getattr(error, _DURING_WORK, False) or from_ray(error)


@contextlib.contextmanager
def surfaced_errors():
    """Re-raises ce-ray's own error (ModelError, InputError, ConfigError) that failed a task or a replica of
    the job as itself, with its message alone, instead of inside Ray's report of it.

    Ray Data wraps an exception of a task or an actor call in a UserCodeException and carries the original
    across processes only as traceback text, so a user would see a page of Ray's frames for an error such
    as a float16 overflow or on_invalid=fail. Blocks whose column types Ray Data cannot make one in a stage of
    ce-ray's (`CE_RAY_STAGES`: a number in one part of a caller's Dataset, text in another; input files are checked
    before the job) fail as an InputError naming the column and the stage. Any other failure goes through as Ray
    reports it, such a clash in a caller's own stage too. Around a job's `work`, either is a failure of it; around
    its checks (train's of its data), ce-ray's own is an error found before the work. Either way the error holds
    none of the failed execution's actors (`_release_frames`), whose frames a debugger's post-mortem finds empty.

    It is public (`ce_ray.surfaced_errors`) for a caller of `score` or `rerank`, whose Dataset runs where the
    caller consumes it (`write_parquet`, `take`, `iter_batches`): there Ray raises a RayTaskError of its own
    UserCodeException, whatever the UDF raised, which no `except ce_ray.InputError` catches (Ray makes a task's
    error an instance of its cause's class, but Ray Data's cause is always that wrapper, and Ray Data's setting
    that raises the original instead, `raise_original_map_exception`, has Ray log it as a bug of Ray's own).
    """
    try:
        yield
    except Exception as e:
        surfaced = _surfaced(e)
        _release_frames(e)  # the caller may keep the error, which chains Ray's
        if surfaced is None:
            raise
        raise surfaced from None


def _surfaced(e: Exception) -> Optional[Exception]:
    """ce-ray's own error that `e` (an error of a job's work) carries, or the InputError of a column's types that
    cannot be made one in a stage of ce-ray's; None for any other."""
    text = getattr(e, "traceback_str", None) or str(e)
    found = re.findall(r"^ce_ray\.\w+\.(ModelError|InputError|ConfigError): (.+)$", text, re.MULTILINE)
    stage = _ce_ray_stage(text) if from_ray(e) and not found else None
    if stage:
        return column_type_clash(text, stage)
    if not found:
        return None
    from .model_folder import ModelError

    kind, message = found[0]  # the root cause: a chain prints its first exception first
    return {"ModelError": ModelError, "InputError": InputError, "ConfigError": ConfigError}[kind](message)


GENERATOR_CODE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _release_frames(error: Optional[BaseException]) -> None:
    """Clears the local variables of the ended frames that `error` and the errors it chains went through, and of
    their callers'. Among them are those of the thread of Ray Data's execution (an error it handled there is in the
    chain), which hold the job's executor and so its actors: Ray Data lets them go by reference counting alone, so
    while a caller kept the error (pytest does, a notebook keeps the last one, a service may log it) the actors held
    their CPUs, and the next job in the process waited for them forever. The printed traceback is the same."""
    errors, seen = [error], set()
    while errors:
        error = errors.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            while frame is not None and id(frame) not in seen:
                seen.add(id(frame))
                # A generator's frame is left as it is: clearing a paused one closes the generator.
                if not frame.f_code.co_flags & GENERATOR_CODE:
                    with contextlib.suppress(RuntimeError):  # a frame still running (the caller's) keeps its variables
                        frame.clear()
                frame = frame.f_back
            tb = tb.tb_next
        errors += [error.__cause__, error.__context__]


def column_type_clash(text: str, stage: Optional[str] = None) -> Optional[InputError]:
    """The InputError naming the column, where `text` (an error's) says that Arrow cannot make a column's types one;
    None where it says nothing of the kind. `stage`: the task of ce-ray's that met the clash, where one did (a
    Dataset's schema, read at the call, meets it before any task)."""
    clash = re.search(r"Unable to merge: Field (\S+) has incompatible types: (.+?) vs (.+?)$", text, re.MULTILINE)
    if clash is None:
        return None
    column, one, other = clash.groups()
    where = f" (in {stage})" if stage else ""
    return InputError(f"the rows' column {column!r} is {one} in some blocks of the Dataset and {other} in others, "
                      f"which Ray Data cannot put together in one batch{where}: make it one type in every row, file "
                      "and part of the Dataset (a text column, text in every row: str(value), or None for a missing "
                      "one)")


# The stages of ce-ray's pipelines, as the Ray task or actor that runs them is named in a task's error (`ray::MapWorker(
# MapBatches(_tokenize_block)->MapBatches(ScoringReplica)).submit()`): the cut into blocks, tokenize and scoring
# stages of score and rerank, rerank's ranking stages, train's. A clash of column types in a caller's own stage
# (their union of Datasets, consumed in their own map_batches) is no error of ce-ray's, and goes through as it is.
CE_RAY_STAGES = ("_cut_into_blocks", "_tokenize_block", "ScoringReplica", "shuffle_input", "rank_queries",
                 "_tokenize_train_block", "training_pairs", "_block_stats", "_kept_rows")


def _ce_ray_stage(text: str) -> Optional[str]:
    """The Ray task or actor of ce-ray's that a task's error (its printed report, `text`) failed in, as Ray names
    it; None where it failed in another stage."""
    for task in re.findall(r"ray::(\S+?)(?:\.submit)?\(\)", text):
        if any(re.search(rf"\b{name}\b", task) for name in CE_RAY_STAGES):
            return task
    return None


# How Python prints a chain of exceptions: each one after the one that caused it.
_CAUSED = "\nThe above exception was the direct cause of the following exception:\n"
_DURING = "\nDuring handling of the above exception, another exception occurred:\n"


def from_ray(error: BaseException) -> bool:
    """Whether Ray raised `error` for work that failed in its tasks, actors or Ray Train workers: a failure
    of the job, whatever the original error's type (Ray's RayTaskError is also of its cause's type, so that a
    worker's FileNotFoundError would pass for one of the command's own)."""
    if "ray" not in sys.modules:  # a job that failed before Ray was imported
        return False
    from ray.exceptions import RayError

    train = sys.modules.get("ray.train")
    return isinstance(error, (RayError, getattr(train, "TrainingFailedError", RayError)))


def failure_cause(error: BaseException) -> str:
    """The error that failed a job, in one line (`OSError: ...`): the original error of a task, an actor or a
    Ray Train worker, out of Ray's wrappers (RayTaskError, Ray Data's UserCodeException, Ray Train's
    WorkerGroupError and ControllerError), with the notes added to it (which file was being read)."""
    if not from_ray(error):
        return _one_line(error)
    from ray.exceptions import RayActorError, RayTaskError, UserCodeException

    printed = ""  # the last worker's traceback passed, as Ray prints it
    for _ in range(16):  # wrappers within wrappers: a few at most
        if isinstance(error, RayTaskError):
            printed, error = str(error), error.cause
        elif isinstance(error, UserCodeException) and error.__cause__ is not None:
            error = error.__cause__
        elif getattr(error, "worker_failures", None):  # Ray Train: each failed worker's error, by rank
            error = error.worker_failures[min(error.worker_failures)]
        elif getattr(error, "controller_failure", None) is not None:
            error = error.controller_failure
        elif isinstance(error, RayActorError) and error.actor_init_failed:
            # An actor that failed as it started (a replica whose model does not load): its error is in Ray's
            # text alone, as a UDF's below.
            return _original_printed(str(error)) or _one_line(error)
        else:
            break
    if isinstance(error, UserCodeException):
        # Ray Data's wrapper of a UDF's error came from the worker without the error, which it only printed.
        return _original_printed(printed) or _one_line(error)
    return _one_line(error)


# What Ray Data adds to the message of an error it retried (`_annotate_exception_with_retry_context`): `Failed to
# <what> after <n>/<m> attempts (total backoff <s>s).` and which of its settings retry more; after the message, or
# after an OSError's arguments. The traceback keeps it; the error's own line goes without.
_RETRIED = re.compile(r" after \d+/\d+ attempts \(total backoff [\d.]+s\)\.")


RAY_MEMORY_USERS = "Top 10 memory users:"


def _without_retries(text: str) -> str:
    retried = _RETRIED.search(text)
    start = text.rfind("Failed to ", 0, retried.start()) if retried else -1
    return text[:start].rstrip(" \n:,'\"") if start > 0 else text


def _one_line(error: BaseException) -> str:
    notes = [str(note) for note in getattr(error, "__notes__", ())]
    return f"{type(error).__name__}: {_joined(str(error))}" + (f" ({'; '.join(notes)})" if notes else "")


def _joined(text: str) -> str:
    """The lines of an error's message as one, without what Ray Data added to it, nor the list of a node's largest
    users of memory that Ray's memory monitor adds to its error (its traceback above holds it): a line of 5.7 KB."""
    text = _without_retries(text).split(RAY_MEMORY_USERS, 1)[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _original_printed(traceback_text: str) -> str:
    """The error that a UDF raised, from the worker's printed chain: the last of the chain that is not Ray's
    own (an error raised while handling another is its own start)."""
    errors = [_error_lines(part.split(_DURING)[-1]) for part in traceback_text.split(_CAUSED)]
    original = [lines for lines in errors if lines and not lines[0].startswith("ray.")]
    return _joined("\n".join(original[-1])) if original else ""


def _error_lines(printed: str) -> list:
    """The lines of a printed exception after its frames: its type, message and notes."""
    lines = printed.strip("\n").splitlines()[1:]  # after the header (`Traceback ...`, or Ray's `ray::task()`)
    while lines and (lines[0].startswith(" ") or not lines[0].strip()):
        lines.pop(0)
    return [line for line in lines if line.strip()]
