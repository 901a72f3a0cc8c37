"""A long job's progress as ce-ray's own line: the pairs scored of those to score, the rate, the time left.

Where its output is no terminal (a file, a Ray Job's log), Ray Data logs a block of lines per stage once a minute
(`runtime.pace_logged_progress`), each stage's rows against its own estimate of the total, with no rate and no time
left. Here the scoring replicas add the rows they finish to a counter, an actor of the job (a CPU replica every
`Progress.tell_every` seconds of a call and as it ends, a GPU one after each call), and the driver reads it every
`PROGRESS_EVERY_S` seconds and prints one line:

    ce-ray score: 1,234,567 of 5,000,000 pairs scored (24.7%) in 2m10s, 98,765 pairs/s, ~38s left

A rerank then ranks the scored rows within each query: Ray Data shuffles them by query id, and rank tasks, which start
once every row was scored, rank and write a partition each, telling the counter as they start and then the rows they
took in (kept, cut by the top k, rejected). From the last row scored (where the total is known; else from the first
rank task's start) the lines say the ranking:

    ce-ray rerank: all 5,000,000 pairs scored; 2,500,000 ranked (50.0%) in 1m05s

The count is of rows out of the replicas (scored or rejected), so a replica restarted after a failure, whose rows
are scored again, may count some twice: the line never says more than the total.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from typing import Iterator, Optional, Tuple

# Seconds between two lines; 0 for none. A 30 s job says nothing, an hour's job 120 lines.
PROGRESS_EVERY_VAR = "CE_RAY_PROGRESS_SECONDS"
PROGRESS_EVERY_S = 30.0
# Seconds between a CPU replica's tells of the rows it scored within a call (it tells the rest as the call ends), at
# most: twice a line where lines come more often.
TELL_EVERY_S = 1.0


class RowsDone:
    """The job's counter of rows the replicas finished: a Ray actor without resources, one per job."""

    def __init__(self):
        self.rows = 0
        self.ranked: Optional[int] = None  # rows ranked (a rerank's); None until its first rank task started

    def add(self, rows: int) -> None:
        self.rows += rows

    def add_ranked(self, rows: int) -> None:
        self.ranked = (self.ranked or 0) + rows

    def counts(self) -> Tuple[int, Optional[int]]:
        return self.rows, self.ranked


# Seconds from which the lines are off, as 0 turns them off: `inf` (or NaN) said "never", and Python's waits take no
# timeout past ~9e9 s (an OverflowError as the job's work ended).
NEVER_S = 365 * 24 * 3600.0


def progress_every() -> float:
    """The seconds between two progress lines (`CE_RAY_PROGRESS_SECONDS`, else 30); 0 (or `inf`) turns them off."""
    given = os.environ.get(PROGRESS_EVERY_VAR, "")
    try:
        every = float(given) if given else PROGRESS_EVERY_S
    except ValueError:
        print(f"ce-ray: note: {PROGRESS_EVERY_VAR}={given!r} is not a number of seconds: progress every "
              f"{PROGRESS_EVERY_S:.0f} s", file=sys.stderr, flush=True)
        return PROGRESS_EVERY_S
    return max(every, 0.0) if every < NEVER_S else 0.0


def bars_a_line_breaks() -> bool:
    """Whether Ray Data draws tqdm's own bars in this terminal (`RAY_TQDM=0`), which a line printed among them breaks:
    Ray's bars, its default, are kept whole by the `print` it puts in the driver's place."""
    from ray.data import DataContext

    context = DataContext.get_current()
    return sys.stdout.isatty() and context.enable_progress_bars and not context.use_ray_tqdm


def duration(seconds: float) -> str:
    """Seconds as a person reads them: 42s, 3m05s, 2h07m (a training run's lines say them so too)."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(title: str, done: int, total: Optional[int], seconds: float, rate: float) -> str:
    """One line of progress: `done` pairs of `total` (None: a text file's rows, counted only as read) in `seconds`
    since the job's work began, at `rate` pairs/s lately."""
    if total is not None:
        done = min(done, total)
        said = f"{done:,} of {total:,} pairs scored ({100 * done / total if total else 100:.1f}%)"
    else:
        said = f"{done:,} pairs scored"
    said += f" in {duration(seconds)}"
    if rate > 0:
        said += f", {rate:,.0f} pairs/s"
        if total is not None and done < total:
            said += f", ~{duration((total - done) / rate)} left"
    return f"{title}: {said}"


def ranking_line(title: str, scored: int, ranked: int, seconds: float) -> str:
    """One line of a rerank's progress once every row was scored: `ranked` of the `scored` rows in `seconds` since
    the job's work began."""
    ranked = min(ranked, scored)
    return (f"{title}: all {scored:,} pairs scored; {ranked:,} ranked ({100 * ranked / scored if scored else 100:.1f}%)"
            f" in {duration(seconds)}")


class Progress:
    """A job's progress lines: `name` goes to the replicas (None where no line is to be printed), and `lines()`
    runs the job's counter under that name and prints a line every `every` seconds while the job's work runs;
    with `ranks` (a rerank), its lines go on once every row was scored, saying the rows ranked."""

    def __init__(self, title: str, total: Optional[int], ranks: bool = False):
        self.title, self.total, self.ranks = title, total, ranks
        self.every = progress_every()
        # In a terminal too, above Ray Data's bars: at the widths terminals have (80 to 200 columns), the scoring
        # stage's bar showed its name and its resources alone, cut before its count, rate and time left, and the job's
        # bar counted the rows written, none until a rerank ended.
        on = self.every > 0 and not bars_a_line_breaks()
        # By name, created only as the work begins: a job refused before it leaves no counter behind.
        self.name = f"ce-ray-progress-{uuid.uuid4().hex}" if on else None
        self.tell_every = min(TELL_EVERY_S, self.every / 2)

    @contextlib.contextmanager
    def lines(self) -> Iterator[None]:
        if self.name is None:
            yield
            return
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # Beside the driver, which asks it every line; no CPU, so that it never waits for one. A named actor is
        # registered before `remote()` returns, so every replica finds it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        counter = ray.remote(RowsDone).options(name=self.name, num_cpus=0, scheduling_strategy=here).remote()
        stop = threading.Event()
        thread = threading.Thread(target=self._report, args=(counter, stop), name="ce-ray-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=self.every)  # it waits for the counter at most that long
            with contextlib.suppress(Exception):  # a Ray already shut down (an interrupted job) took it with it
                ray.kill(counter)

    def _report(self, counter, stop: threading.Event) -> None:
        import ray

        start = then = time.monotonic()
        before = 0
        while not stop.wait(self.every):
            try:
                done, ranked = ray.get(counter.counts.remote(), timeout=self.every)
            except Exception:  # progress is no part of the job: a line missed is no failure of it
                continue
            now = time.monotonic()
            if self.ranks and ranked is None and self.total is not None and done >= self.total:
                ranked = 0  # every row scored: the shuffle of the rows by query runs before the rank tasks start
            if ranked is not None:  # a rerank's rows are all scored, and ranked
                scored = done if self.total is None else min(done, self.total)
                print(ranking_line(self.title, scored, ranked, now - start), flush=True)
                if ranked >= scored:
                    return  # all ranked: the summary follows
                continue
            # Between two lines that both counted rows: the time before the first row is the replicas' start.
            rate = (done - before) / (now - then) if before else 0.0
            print(progress_line(self.title, done, self.total, now - start, rate), flush=True)
            if self.total is not None and done >= self.total:
                return  # all scored: what is left (writing) ends with the summary
            before, then = done, now


def job_counter(name: Optional[str]):
    """In a replica: the counter of its job's progress (`Progress.name`); None where there is none."""
    if name is None:
        return None
    import ray

    try:
        return ray.get_actor(name)
    except Exception:  # no counter costs the job its progress lines, not its work
        return None


def count_ranked(counter, rows: int) -> None:
    """A rank task started (`rows` 0) or ranked and wrote its partition's `rows`: told to the job's counter."""
    _tell(counter, "add_ranked", rows)


def count_rows(counter, rows: int) -> None:
    """A replica finished `rows` (a call's, or a batch's): told to the job's counter (`job_counter`), without waiting
    for it."""
    if rows:
        _tell(counter, "add", rows)


def _tell(counter, method: str, rows: int) -> None:
    """Calls the counter's `method` with `rows`, waiting for nothing."""
    if counter is not None:
        try:
            getattr(counter, method).remote(rows)
        except Exception:  # a counter gone (its node lost) costs the job its progress lines, not its work
            pass
