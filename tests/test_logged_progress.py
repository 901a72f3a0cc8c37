"""What a job's log holds where its output is no terminal (a file, a Ray Job's log): Ray Data's progress once a
minute, not a block of lines every 10 s, unless the user asks for another pace; and ce-ray's own progress lines,
in a terminal too."""

import os
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A command that ends before Ray starts (its input does not exist), then the pace that Ray Data's logged progress
# takes in that process: the class reads the variable when Ray Data first imports it, at a Dataset's first run.
PACE_AFTER_A_COMMAND = """
from ce_ray.cli import main
main(["eval", "--input", "/nonexistent/ce-ray-input"])
from ray.data._internal.progress.logging_progress import LoggingExecutionProgressManager
print("interval", LoggingExecutionProgressManager.LOG_REPORT_INTERVAL_SEC)
"""


def _pace(env_interval=None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if env_interval is not None:
        env["RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL"] = env_interval
    out = subprocess.run([sys.executable, "-c", PACE_AFTER_A_COMMAND], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return int(out.split("interval")[-1])


def test_commands_log_progress_once_a_minute():
    # Every 10 s (Ray Data's default) a 1.5M-pair score logged 66 progress lines of its 86, a rerank 153 of 175.
    assert _pace() == 60


def test_users_pace_for_logged_progress_is_kept():
    assert _pace("5") == 5


class _StopAfter:
    """A `threading.Event` whose waits time out `n` times, then say it was set."""

    def __init__(self, n: int):
        self.n = n

    def wait(self, timeout=None) -> bool:
        self.n -= 1
        return self.n < 0


def _progress_lines(monkeypatch, capsys, title, total, counts, times, ranks=False) -> list:
    """The lines that `Progress._report` prints where the job's counter says `counts` (done, ranked) at the clock's
    `times` (the first: the start); no Ray started."""
    import ray

    from ce_ray import progress

    said = iter(counts)

    class Counter:
        class counts:
            @staticmethod
            def remote():
                return next(said)

    clock = iter(times)
    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: ref)
    # The clock of `progress` alone: `time.monotonic` itself is every thread's (a Ray left up by earlier tests, its
    # asyncio loops), which a clock of a few readings stopped, and later jobs of the suite waited for good.
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    job = progress.Progress(title, total, ranks=ranks)
    job.every = 10.0
    capsys.readouterr()
    job._report(Counter(), _StopAfter(len(counts)))
    return capsys.readouterr().out.splitlines()


def test_the_rate_is_that_between_the_last_two_lines_and_the_time_left_from_it(monkeypatch, capsys):
    lines = _progress_lines(monkeypatch, capsys, "ce-ray score", 10_000, [(1_000, None), (3_000, None), (4_000, None)],
                            [0.0, 10.0, 20.0, 40.0])
    assert lines == ["ce-ray score: 1,000 of 10,000 pairs scored (10.0%) in 10s",
                     "ce-ray score: 3,000 of 10,000 pairs scored (30.0%) in 20s, 200 pairs/s, ~35s left",
                     "ce-ray score: 4,000 of 10,000 pairs scored (40.0%) in 40s, 50 pairs/s, ~2m00s left"]


def test_the_lines_end_with_the_one_that_says_every_pair_scored(monkeypatch, capsys):
    """Not again and again while the job writes its last parts."""
    lines = _progress_lines(monkeypatch, capsys, "ce-ray score", 100, [(60, None), (100, None), (100, None)],
                            [0.0, 10.0, 20.0, 30.0])
    assert lines == ["ce-ray score: 60 of 100 pairs scored (60.0%) in 10s",
                     "ce-ray score: 100 of 100 pairs scored (100.0%) in 20s, 4 pairs/s"]


def test_a_reranks_lines_say_its_ranking_once_every_row_is_scored_and_end_once_all_are_ranked(monkeypatch, capsys):
    lines = _progress_lines(monkeypatch, capsys, "ce-ray rerank", 100,
                            [(100, None), (100, 40), (100, 100), (100, 100)], [0.0, 10.0, 20.0, 30.0, 40.0],
                            ranks=True)
    assert lines == ["ce-ray rerank: all 100 pairs scored; 0 ranked (0.0%) in 10s",
                     "ce-ray rerank: all 100 pairs scored; 40 ranked (40.0%) in 20s",
                     "ce-ray rerank: all 100 pairs scored; 100 ranked (100.0%) in 30s"]


def test_the_ranking_line_never_says_more_ranked_than_scored_and_durations_read_as_a_person_reads_them():
    """A replica restarted counts its rows again: the line said more rows ranked than scored (over 100%)."""
    from ce_ray.progress import duration, ranking_line

    assert ranking_line("ce-ray rerank", 100, 120, 65) == ("ce-ray rerank: all 100 pairs scored; 100 ranked (100.0%) "
                                                           "in 1m05s")
    assert ranking_line("ce-ray rerank", 0, 0, 3) == "ce-ray rerank: all 0 pairs scored; 0 ranked (100.0%) in 3s"
    assert [duration(s) for s in (59.6, 185, 3599, 3600, 7620, 7659)] == ["1m00s", "3m05s", "59m59s", "1h00m",
                                                                         "2h07m", "2h07m"]


@pytest.mark.parametrize("given, every", [("0.5", 0.5), ("", 30.0), ("0", 0.0), ("-3", 0.0), ("inf", 0.0),
                                          ("1e12", 0.0), ("nan", 0.0), ("soon", 30.0)])
def test_progress_every_as_given(monkeypatch, given, every):
    from ce_ray.progress import progress_every

    monkeypatch.setenv("CE_RAY_PROGRESS_SECONDS", given)
    assert progress_every() == every


def test_a_job_in_a_terminal_prints_its_progress_lines_above_ray_datas_bars(tmp_path, tiny_model):
    """In a terminal of 120 columns Ray Data's scoring bar showed its stage's name and resources alone, cut before its
    count, rate and time left, and the job's bar counted the rows written: ce-ray's own lines, which said them, were
    off wherever Ray Data drew its bars. They are printed there too."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    import pandas as pd

    pd.DataFrame({"query": ["what is ray"] * 20_000, "document": [f"ray is a framework {i}" for i in range(20_000)]}
                 ).to_parquet(tmp_path / "pairs.parquet")
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != "RAY_DATA_DISABLE_PROGRESS_BARS"}
    env |= {"CE_RAY_PROGRESS_SECONDS": "1", "TERM": "xterm", "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "local",
            "RAY_TMPDIR": tempfile.mkdtemp(prefix="cer-", dir="/tmp")}  # a Ray of its own, as conftest's jobs
    job = subprocess.Popen([sys.executable, "-m", "ce_ray.cli", "score", "--model", str(tiny_model), "--input",
                            str(tmp_path / "pairs.parquet"), "--output", str(tmp_path / "out"), "--rows-per-block",
                            "1024"], stdin=terminal, stdout=terminal, stderr=terminal, env=env, cwd=tmp_path)
    os.close(terminal)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([main], [], [], 300)
            if not ready:
                break
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal closed with the job
                break
            if not chunk:
                break
            seen += chunk
    finally:
        job.wait(timeout=60)
        os.close(main)
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", seen.decode(errors="replace")).replace("\r", "\n")  # as shown
    assert job.returncode == 0, text[-3000:]
    assert "Running Dataset" in text and "- MapBatches(_tokenize_block)" in text, text[-3000:]  # Ray Data's bars
    assert re.search(r"^ce-ray score: [\d,]+ of 20,000 pairs scored \(", text, re.MULTILINE), text[-3000:]


def test_no_line_is_printed_among_tqdms_own_bars(monkeypatch):
    """With `RAY_TQDM=0` Ray Data draws tqdm's own bars, which a line printed among them broke (`… in 2sResource…`,
    overwritten by the bars); Ray's bars, its default, are kept whole."""
    from ray.data import DataContext

    from ce_ray.progress import Progress

    context = DataContext.get_current()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(context, "enable_progress_bars", True)
    monkeypatch.setattr(context, "use_ray_tqdm", False)
    assert Progress("ce-ray score", 10).name is None
    monkeypatch.setattr(context, "use_ray_tqdm", True)
    assert Progress("ce-ray score", 10).name is not None
