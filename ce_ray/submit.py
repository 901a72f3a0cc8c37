"""`ce-ray submit <job> --config F`: run a command as a Ray Job on a cluster and follow it to the end.

Submission goes through Ray's `JobSubmissionClient`. What travels with the job (its runtime_env):
- working_dir: a small folder with the job's entrypoint (`jobs/<job>.py`) and the config file;
- py_modules: the `ce_ray` package this command runs from (a source checkout or an installed package),
  so the cluster runs the same code; its dependencies must be on the cluster's image (or `--pip`);
- env_vars: only variables named with `--env`, their values taken from this environment. Secrets never
  go into config files: prefer the cluster's own credentials (instance role, Kubernetes Secret).
The address is `--address`, else `RAY_ADDRESS`, else a local cluster's dashboard. A cluster with token
authentication needs `RAY_AUTH_MODE=token` here (the token from `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH`
or ~/.ray/auth_token), as for `ray job submit`.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

PACKAGE_DIR = Path(__file__).resolve().parent
JOBS_DIR = PACKAGE_DIR.parent / "jobs"  # present in a source checkout
EXCLUDES = ["__pycache__", "*.pyc"]


def stage_job(job: str, config: str, into: Path) -> str:
    """Fills `into` (the job's working_dir) with the entrypoint and the config; returns the entrypoint."""
    config_name = Path(config).name
    shutil.copy(config, into / config_name)
    script = JOBS_DIR / f"{job}.py"
    if script.is_file():
        (into / "jobs").mkdir()
        shutil.copy(script, into / "jobs" / script.name)
        command = ["python", f"jobs/{script.name}"]
    else:
        command = ["python", "-m", "ce_ray.cli", job]
    return shlex.join(command + ["--config", config_name])


def runtime_env(working_dir: Path, pip: Sequence[str] = (), env: Sequence[str] = ()) -> dict:
    missing = [name for name in env if name not in os.environ]
    if missing:
        raise ValueError(f"--env names variable(s) not set here: {', '.join(missing)}")
    out = {"working_dir": str(working_dir), "py_modules": [str(PACKAGE_DIR)], "excludes": EXCLUDES}
    if env:
        out["env_vars"] = {name: os.environ[name] for name in env}
    if pip:
        out["pip"] = list(pip)
    return out


# The settings that name files or folders.
PATH_SETTINGS = ("input", "output", "model", "train_data", "eval_data", "storage_path", "qrels", "data", "run_output")


def check_config(job: str, config: str) -> None:
    """Builds the job's config here first, so that a typo fails before anything is submitted; and says which
    of its paths are relative: on the cluster they are read in the job's own working directory, a copy of
    the config's folder that Ray deletes after the job, so an output written there is lost."""
    from .cli import COMMANDS
    from .config import load_config

    settings = load_config(COMMANDS[job][0], config)
    relative = [f"{name}: {value}" for name in PATH_SETTINGS if isinstance(value := getattr(settings, name, ""), str)
                and value and "://" not in value and not os.path.isabs(value)
                and (name != "model" or os.path.exists(value))]  # else a hub id
    if relative:
        print(f"ce-ray submit: warning: relative path(s) in {config} ({'; '.join(relative)}): the job reads them "
              "in its working directory on the cluster, which Ray deletes after the job; give absolute paths on "
              "the cluster's shared storage, or s3://", file=sys.stderr, flush=True)


def _follow(client, job_id: str) -> None:
    async def tail():
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except RuntimeError as e:  # the log stream broke: fall back to asking for the status
        print(f"ce-ray submit: lost the log stream ({e}); waiting for the job to end", file=sys.stderr)
    while not client.get_job_status(job_id).is_terminal():
        time.sleep(2)


def submit(job: str, config: str, address: Optional[str] = None, pip: Sequence[str] = (),
           env: Sequence[str] = (), submission_id: Optional[str] = None,
           entrypoint_num_cpus: Optional[float] = None, wait: bool = True) -> int:
    """Submits the job; with `wait`, prints its logs as they come and returns 0 if it succeeded, else 1."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    if not os.path.isfile(config):
        raise FileNotFoundError(f"config file {config} does not exist")
    check_config(job, config)
    client = JobSubmissionClient(address)
    with tempfile.TemporaryDirectory(prefix=f"ce-ray-{job}-") as staging:
        entrypoint = stage_job(job, config, Path(staging))
        job_id = client.submit_job(
            entrypoint=entrypoint, runtime_env=runtime_env(Path(staging), pip, env),
            submission_id=submission_id, entrypoint_num_cpus=entrypoint_num_cpus,
            metadata={"ce_ray_job": job, "ce_ray_config": Path(config).name},
        )
    where = client.get_address()
    print(f"ce-ray submit: job {job_id} submitted to {where}: {entrypoint}", flush=True)
    if not wait:
        print(f"  follow it with: ray job logs --follow {job_id} --address {where}")
        return 0
    try:
        _follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nce-ray submit: job {job_id} keeps running; stop it with: "
              f"ray job stop {job_id} --address {where}", file=sys.stderr)
        return 130
    info = client.get_job_info(job_id)
    print(f"ce-ray submit: job {job_id} {info.status}" + (f": {info.message}" if info.message else ""),
          file=sys.stdout if info.status == JobStatus.SUCCEEDED else sys.stderr, flush=True)
    return 0 if info.status == JobStatus.SUCCEEDED else 1


def add_submit_parser(sub, jobs: Sequence[str]) -> None:
    help_text = "run a command (score, rerank, ...) as a Ray Job on a cluster and follow its logs"
    p = sub.add_parser("submit", help=help_text, description=help_text)
    p.add_argument("job", choices=list(jobs))
    p.add_argument("--config", required=True, help="YAML config of the job (the same file works locally)")
    p.add_argument("--address", help="dashboard URL of the cluster (default: RAY_ADDRESS, else local)")
    p.add_argument("--pip", action="append", default=[], metavar="REQ",
                   help="a pip requirement installed for the job (repeatable; needs a package index)")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="pass this environment variable's value to the job (repeatable)")
    p.add_argument("--submission-id", help="the job's id (default: generated)")
    p.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the job's driver")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="return once submitted")


def run_submit(args) -> int:
    from ray.exceptions import AuthenticationError

    try:
        return submit(args.job, args.config, args.address, args.pip, args.env, args.submission_id,
                      args.entrypoint_num_cpus, args.wait)
    except AuthenticationError as e:
        print(f"ce-ray submit: error: {e}\nThe cluster uses token authentication: set RAY_AUTH_MODE=token here, "
              "with the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.",
              file=sys.stderr)
        return 2
    except (ConnectionError, RuntimeError) as e:  # cluster unreachable, or the job server refused the request
        print(f"ce-ray submit: error: {e}", file=sys.stderr)
        return 2
