"""What a job's log holds where its output is no terminal (a file, a Ray Job's log): Ray Data's progress once a
minute, not a block of lines every 10 s, unless the user asks for another pace."""

import os
import subprocess
import sys
from pathlib import Path

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
