"""`ce-ray submit <job> --config F`: run a command as a Ray Job on a cluster and follow it to the end.

Submission goes through Ray's `JobSubmissionClient`. What travels with the job (its runtime_env):
- working_dir: a small folder with the job's entrypoint (`jobs/<job>.py`) and the config file;
- py_modules: the `ce_ray` package this command runs from (a source checkout or an installed package),
  so the cluster runs the same code; its dependencies must be on the cluster's image (or `--pip`);
- env_vars: only variables named with `--env`, their values taken from this environment. Secrets never
  go into config files: prefer the cluster's own credentials (instance role, Kubernetes Secret).
The address is `--address`, else `RAY_ADDRESS`, else a local cluster's dashboard. A cluster with token
authentication needs `RAY_AUTH_MODE=token` here (the token from `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH`
or ~/.ray/auth_token), as for `ray job submit`. The command's own flags after the config override it, as
they do locally (`--mode resume`, `--use-gpu`): checked here, and passed to the job's entrypoint.
Exit status: 0 the job succeeded, 1 it failed or was stopped, 2 nothing was submitted, 3 its end was not
seen (the connection to the cluster was lost), 130 Ctrl-C (the job keeps running).
"""

from __future__ import annotations

import asyncio
import os
import re
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


def stage_job(job: str, config: str, into: Path, overrides: Sequence[str] = ()) -> str:
    """Fills `into` (the job's working_dir) with the entrypoint and the config; returns the entrypoint, the
    config's overriding flags (`overrides`) after it."""
    config_name = Path(config).name
    shutil.copy(config, into / config_name)
    script = JOBS_DIR / f"{job}.py"
    if script.is_file():
        (into / "jobs").mkdir()
        shutil.copy(script, into / "jobs" / script.name)
        command = ["python", f"jobs/{script.name}"]
    else:
        command = ["python", "-m", "ce_ray.cli", job]
    return shlex.join(command + ["--config", config_name, *overrides])


def check_env(env: Sequence[str]) -> None:
    """Variables of --env that are not set here: said before the cluster is asked anything."""
    # `--env ''` said `not set here: ` and no name; a value given is not printed (a token's)
    wrong = [repr(name.split("=", 1)[0] + ("=…" if "=" in name else "")) for name in env if not name or "=" in name]
    if wrong:
        raise ValueError(f"--env takes a variable's name, whose value is this environment's: got {', '.join(wrong)}")
    missing = [name for name in env if name not in os.environ]
    if missing:
        raise ValueError(f"--env names variable(s) not set here: {', '.join(missing)}")


def runtime_env(working_dir: Path, pip: Sequence[str] = (), env: Sequence[str] = ()) -> dict:
    out = {"working_dir": str(working_dir), "py_modules": [str(PACKAGE_DIR)], "excludes": EXCLUDES}
    if env:
        out["env_vars"] = {name: os.environ[name] for name in env}
    if pip:
        out["pip"] = list(pip)
    return out


def check_config(job: str, config: str, overrides: Sequence[str] = ()) -> None:
    """Builds the job's config here first, with its overriding flags, so that a typo fails before anything is
    submitted; and says which of its paths are relative: on the cluster they are read in the job's own working
    directory, which holds the config file alone and which Ray deletes after the job."""
    import argparse

    from .cli import COMMANDS, add_config_flags, config_from_args, other_commands_hint
    from .config import PATH_SETTINGS, require

    parser = argparse.ArgumentParser(prog=f"ce-ray submit {job} --config {config}", add_help=False, allow_abbrev=False)
    add_config_flags(parser, COMMANDS[job][0])
    args, unknown = parser.parse_known_args(["--config", config, *overrides])
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{other_commands_hint(job, unknown)}")
    settings = config_from_args(COMMANDS[job][0], args)
    require(settings)  # a config without its model failed on the cluster alone
    flags = {given.split("=")[0] for given in overrides}

    def named(name: str, value: str) -> str:  # where the path was written: the file, or a flag after it
        flag = "--" + name.replace("_", "-")
        return f"{name}: {value}" + (f" (from {flag})" if flag in flags else f" (in {config})")

    relative = [named(name, value) for name in PATH_SETTINGS if isinstance(value := getattr(settings, name, ""), str)
                and value and "://" not in value and not os.path.isabs(value)
                and (name != "model" or os.path.exists(value))]  # else a hub id
    if relative:
        print(f"ce-ray submit: warning: relative path(s) ({'; '.join(relative)}): on the cluster the "
              "job reads them in its working directory, which holds the config file alone (and which Ray deletes "
              "after the job); give absolute paths on the cluster's shared storage, or s3://", file=sys.stderr,
              flush=True)


# While the cluster does not answer, the job's status is asked again for this long before giving up on it.
UNANSWERED_SECONDS = 60.0
PENDING_SAID_AFTER = 10.0  # seconds a job may wait to start before its status message is shown


class LostContact(Exception):
    """The cluster stopped answering while the job was followed: its end is unknown here."""


def _status(client, job_id: str):
    """The job's status, asked again while the cluster does not answer (a port-forward restarting) or answers an
    HTTP error (Ray's client raises a RuntimeError for one: a proxy's 502 while the head restarts)."""
    deadline = time.monotonic() + UNANSWERED_SECONDS
    while True:
        try:
            return client.get_job_status(job_id)
        except (OSError, RuntimeError) as e:  # requests' connection errors are OSErrors, not ConnectionErrors
            if time.monotonic() > deadline:
                raise LostContact(str(e)) from None
            time.sleep(2)


# A log stream that breaks (a port-forward restarting, a proxy's idle timeout) is opened again while the job runs;
# after this many breaks in a row with nothing new between them (an ingress that passes no websockets), the job's
# status alone is followed.
STREAM_TRIES = 3


def _follow(client, job_id: str, job: str) -> Optional[str]:
    """Prints the job's logs as they come, until it ends; returns the last line of them that its command wrote
    (`ce-ray <job>: ...`), the one that says how it ended, where the logs were followed to their end."""
    import aiohttp

    said, partial, printed = None, "", 0

    async def tail():  # a stream opened again gives the logs from their start: what was printed is skipped
        nonlocal said, partial, printed
        seen = 0
        async for lines in client.tail_job_logs(job_id):
            new, seen = lines[max(0, printed - seen):], seen + len(lines)
            if new:
                print(new, end="", flush=True)
                printed += len(new)
                *whole, partial = (partial + new).split("\n")
                said = next((line for line in reversed(whole) if line.startswith(f"ce-ray {job}: ")), said)

    from ray.job_submission import JobStatus

    waited, pending_said = time.monotonic(), False
    while _status(client, job_id) == JobStatus.PENDING:  # nothing to tail yet: say why, where it waits a while
        if not pending_said and time.monotonic() - waited > PENDING_SAID_AFTER:
            print(f"ce-ray submit: job {job_id} is pending: {client.get_job_info(job_id).message}", flush=True)
            pending_said = True
        time.sleep(1)
    tries = 0
    while True:
        before = printed
        try:
            asyncio.run(tail())
            break
        # requests' and aiohttp's errors: a refused handshake (a proxy's 502) is an aiohttp.ClientError alone
        except (RuntimeError, OSError, aiohttp.ClientError) as e:
            tries = 1 if printed > before else tries + 1
            if tries >= STREAM_TRIES:
                print(f"ce-ray submit: lost the log stream ({e}); waiting for the job to end", file=sys.stderr)
                said = None  # the job's last lines were not seen
                break
            print(f"ce-ray submit: lost the log stream ({e}); opening it again", file=sys.stderr, flush=True)
            _status(client, job_id)  # a cluster that does not answer for a while is said as such (LostContact)
            time.sleep(2)
    while not _status(client, job_id).is_terminal():
        time.sleep(2)
    if partial:  # the logs ended mid-line: what submit says next starts a line of its own
        print(flush=True)
    return partial if partial.startswith(f"ce-ray {job}: ") else said


# The variables through which Ray's job client takes its address over the one it is given.
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class AddressError(Exception):
    """An address that is no dashboard's: the message says what it was taken for."""


def not_a_dashboard(what: str, dashboard: str = "http://HOST:PORT") -> str:
    """What an address given was taken for, then how a dashboard's is written: submit talks to the Ray Jobs API,
    which the dashboard serves."""
    return f"{what}; its dashboard's is {dashboard} (`--dashboard-port`, 8265 by default)"


BARE_IS_GCS = "an address without http:// is a cluster's GCS address (`ray start --port`)"


def gcs_not_answering(error: str, address: str) -> str:
    return not_a_dashboard(f"{error.rstrip('.')} at {address}; {BARE_IS_GCS}")


def check_address(address: Optional[str]) -> None:
    """Refuses before Ray's client tries it: a Ray Client address (`ray://HOST:10001`, which `ray.init` takes and
    the Jobs API does not: Ray's client tried it for ~30 s, then said `ray client connection timeout`), and a bare
    HOST:PORT, a GCS address, where nothing answers or a dashboard does (Ray waited ~35 s for a GCS there)."""
    import socket
    from urllib.parse import urlsplit

    from .runtime import CONNECT_TIMEOUT_S

    if not address:
        return
    if address.startswith("ray://"):
        netloc = urlsplit(address).netloc
        host, _, port = netloc.rpartition(":")
        raise AddressError(not_a_dashboard(
            f"{address} is a Ray Client address (`ray.init`), and submit talks to the Ray Jobs API that the cluster's "
            "dashboard serves", f"http://{host if port.isdigit() else netloc}:8265"))
    host, _, port = address.rpartition(":")
    if "://" in address or not port.isdigit():  # http(s)://, or an address Ray resolves itself (auto)
        return
    where = (host.strip("[]"), int(port))
    try:
        socket.create_connection(where, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:  # refused, no such host, no answer: said as it is
        raise AddressError(gcs_not_answering(f"nothing answers ({e})", address)) from None
    if answers_http(*where):  # the dashboard's HOST:8265 without http://: no GCS answers there
        raise AddressError(not_a_dashboard(f"{address} answers HTTP, as a dashboard does; {BARE_IS_GCS}",
                                           f"http://{address}"))


def answers_http(host: str, port: int) -> bool:
    """Whether an HTTP/1.1 server answers at host:port (any status): a GCS speaks gRPC, which answers no such
    request."""
    import http.client

    connection = http.client.HTTPConnection(host, port, timeout=3)
    try:
        connection.request("GET", "/api/version")
        connection.getresponse()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def job_client(address: Optional[str] = None):
    """Ray's JobSubmissionClient for `address`, else for RAY_ADDRESS. Ray's client lets RAY_ADDRESS override
    the address it is given: `--address` would be ignored wherever RAY_ADDRESS is set (an earlier cluster's,
    or `local`), and the job sent to that cluster, so the given address is passed with those variables unset."""
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    # `local` starts a Ray for a job run here (the hint of runtime.py); to Ray's client it meant any Ray running on
    # the machine (another job's own, or, with two, `Found multiple active Ray instances`): a cluster is asked for.
    saved = {name: os.environ.pop(name) for name in ADDRESS_VARIABLES if name in os.environ}
    try:
        if not address or address == "local":
            address = started_on_this_machine()
        check_address(address)
        return JobSubmissionClient(address)
    finally:
        os.environ.update(saved)


def started_on_this_machine() -> str:
    """The address of the cluster `ray start` runs on this machine, as recorded: Ray's client, given none, took any
    Ray it found running where there was no record, a local one that another job started for itself among them."""
    from ray._private.services import canonicalize_bootstrap_address

    address = canonicalize_bootstrap_address(None)
    if not address:
        raise AddressError("no cluster to submit to: give its dashboard's address, --address http://HOST:8265 "
                           "(or RAY_ADDRESS), or run `ray start --head` on this machine")
    return address


def submit(job: str, config: str, address: Optional[str] = None, pip: Sequence[str] = (),
           env: Sequence[str] = (), submission_id: Optional[str] = None,
           entrypoint_num_cpus: Optional[float] = None, wait: bool = True, overrides: Sequence[str] = ()) -> int:
    """Submits the job; with `wait`, prints its logs as they come and returns its exit status (above)."""
    from ray.job_submission import JobStatus

    from .cli import FAILED, finishing_hint, finishing_said

    if not os.path.isfile(config):
        raise FileNotFoundError(f"config file {config} does not exist")
    check_config(job, config, overrides)
    check_env(env)
    client = job_client(address)
    with tempfile.TemporaryDirectory(prefix=f"ce-ray-{job}-") as staging:
        entrypoint = stage_job(job, config, Path(staging), overrides)
        job_id = client.submit_job(
            entrypoint=entrypoint, runtime_env=runtime_env(Path(staging), pip, env),
            submission_id=submission_id, entrypoint_num_cpus=entrypoint_num_cpus,
            metadata={"ce_ray_job": job, "ce_ray_config": Path(config).name},
        )
    where = client.get_address()
    print(f"ce-ray submit: job {job_id} submitted to {where}: {entrypoint}", flush=True)
    if not wait:
        print(f"  follow it with: {ray_job_command('logs --follow', job_id, where)}")
        return 0
    try:
        last = _follow(client, job_id, job)
        info = client.get_job_info(job_id)
    except KeyboardInterrupt:
        print(f"\nce-ray submit: job {job_id} keeps running; stop it with: "
              f"{ray_job_command('stop', job_id, where)}", file=sys.stderr)
        return 130
    except (LostContact, OSError, RuntimeError) as e:  # RuntimeError: the Jobs API's HTTP error, past submission
        print(f"ce-ray submit: lost the connection to {where} ({e}); job {job_id} may still be running: follow "
              f"it with: {ray_job_command('logs --follow', job_id, where)}", file=sys.stderr)
        return 3
    message = job_message(info.message or "")
    # How to finish it: as the line that ended the job's command said (after a float16 overflow, whose cause says
    # to overwrite in another dtype, or a training run that a NaN stopped, nothing more); where its logs hold no
    # such line (killed before it said one), a stopped job's way, and that of one that failed during its work (its
    # command's exit status FAILED); one refused before any work has nothing to finish.
    hint = finishing_said(job, last) if last and info.status != JobStatus.SUCCEEDED else None
    if hint is None:
        stopped_mid_way = info.status == JobStatus.STOPPED or (
            info.status == JobStatus.FAILED and info.driver_exit_code == FAILED)
        hint = finishing_hint(job) if stopped_mid_way else ""
    print(f"ce-ray submit: job {job_id} {info.status}" + (f": {message}" if message else "") + hint,
          file=sys.stdout if info.status == JobStatus.SUCCEEDED else sys.stderr, flush=True)
    return 0 if info.status == JobStatus.SUCCEEDED else 1


def job_message(message: str) -> str:
    """The line of a finished job's message that says why. A failed job's message repeats the end of its logs,
    which were just printed: its first line is enough, its closing period gone (the line goes on with how to
    finish the job: it read `stopped.; --mode resume`). A runtime environment that failed to install (`--pip`)
    says why in pip's last `ERROR:` line, below a first line that says only that it failed."""
    first = message.split("\n", 1)[0].split(", last available logs", 1)[0].rstrip(".")
    errors = [line.strip() for line in message.splitlines()[1:] if line.strip().startswith("ERROR:")]
    if message.startswith("runtime_env setup failed") and errors:
        return f"{first}: {errors[-1]}"
    return first


def add_submit_parser(sub, jobs: Sequence[str]) -> None:
    help_text = "run a command (score, rerank, ...) as a Ray Job on a cluster and follow its logs"
    p = sub.add_parser("submit", help=help_text, description=help_text, allow_abbrev=False,
                       epilog="The command's own flags (ce-ray <command> --help) may follow: they override the config "
                              "there, as locally. Exit status: 0 succeeded, 1 failed or stopped, 2 not submitted, "
                              "3 the job's end not seen (the cluster stopped answering), 130 Ctrl-C.")
    p.add_argument("job", choices=list(jobs))
    p.add_argument("--config", required=True, help="YAML config of the job (the same file works locally)")
    p.add_argument("--address", help="dashboard URL of the cluster (default: RAY_ADDRESS, "
                   "else that of the cluster `ray start` runs on this machine)")
    p.add_argument("--pip", action="append", default=[], metavar="REQ",
                   help="a pip requirement installed for the job (repeatable; needs a package index)")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="pass this environment variable's value to the job (repeatable)")
    p.add_argument("--submission-id", help="the job's id (default: generated)")
    p.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the job's driver")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="return once submitted")


def ray_job_command(action: str, job_id: str, where: str) -> str:
    """The `ray job <action>` line of the job submitted to `where`, to run in this shell: Ray's CLI takes
    RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, over its `--address`, so where either is set here to another address
    (another cluster's, `local`), the line sets the first to the job's."""
    command = f"ray job {action} {job_id} --address {shlex.quote(where)}"
    elsewhere = any(os.environ.get(name) not in (None, "", where) for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"))
    return f"RAY_API_SERVER_ADDRESS={shlex.quote(where)} {command}" if elsewhere else command


def run_submit(args, overrides: Sequence[str] = ()) -> int:
    from ray.exceptions import AuthenticationError, RpcError

    try:
        return submit(args.job, args.config, args.address, args.pip, args.env, args.submission_id,
                      args.entrypoint_num_cpus, args.wait, overrides)
    except AuthenticationError as e:
        # Ray's message is a paragraph of generic advice after its own (what the cluster answered, or that no token
        # was found here), which its `str` appends on the same line: its own first line, then what to do here.
        answer = (getattr(e, "message", None) or str(e)).strip().splitlines()[0].rstrip(".")
        if "Forbidden" in answer:  # a token was sent, not the cluster's
            what = ("the token found here is not the cluster's: RAY_AUTH_TOKEN is read first, then the file "
                    "RAY_AUTH_TOKEN_PATH names, then ~/.ray/auth_token")
        elif os.environ.get("RAY_AUTH_MODE", "").lower() == "token":  # on here, and no token found
            what = ("RAY_AUTH_MODE=token is set here: put the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
                    "or ~/.ray/auth_token (a cluster without token authentication needs none: unset RAY_AUTH_MODE)")
        else:
            what = ("the cluster uses token authentication: set RAY_AUTH_MODE=token here, with the cluster's token "
                    "in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")
        print(f"ce-ray submit: error: {answer}; {what}", file=sys.stderr)
        return 2
    except AddressError as e:
        print(f"ce-ray submit: error: {e}", file=sys.stderr)
        return 2
    except RpcError as e:  # an address without a scheme is a GCS address: no GCS answered there
        at = args.address or os.environ.get("RAY_ADDRESS")
        print(f"ce-ray submit: error: {gcs_not_answering(str(e), at)}", file=sys.stderr)
        return 2
    except (ConnectionError, RuntimeError) as e:  # cluster unreachable, or the job server refused the request
        print(f"ce-ray submit: error: {refusal_reason(str(e))}", file=sys.stderr)
        return 2


def refusal_reason(message: str) -> str:
    """Why the job server refused a request. Its refusal carries the tracebacks of the head and of its agent,
    the agent's error last: that line says why (an id already taken), without its type; the lines after it
    are the periods that close each wrapping message (the reason was `.` alone)."""
    if "Traceback" not in message:
        return message
    errors = re.findall(r"^\w+(?:Error|Exception): (.+)$", message, flags=re.MULTILINE)
    return errors[-1] if errors else message
