"""The `ce-ray` command: a thin layer over the Python API. Flags are generated from the config
dataclasses, so a flag and a YAML key always name the same setting; flags override the file."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import inspect
import io
import re
import signal
import sys
import threading
import tokenize
import typing
from typing import Literal, Optional

from .config import (COMMAND_CONFIGS, CandidatesConfig, ConfigError, EvalConfig, RerankConfig, ScoreConfig,
                     TrainConfig, commands_with_setting, load_config, setting_for_trainer_name)
from .messages import UNSCORABLE
from .output_state import OVERWRITE, RESUME
from .runtime import RayStartError


# What an optional number's flag takes to leave the setting unset where the --config file sets it (`--top-k none`
# over a file's `top_k: 10`): the file's value is dropped, the setting's default (unset) kept.
UNSET = "none"
# What `_or_unset` gives for it: not the text, which a text flag's own value equals (`--baseline-column none`, a column
# of that name, as YAML's `baseline_column: none` is), and which unset it, its default taken, without a word.
UNSET_GIVEN = object()


def _or_unset(kind):
    """argparse's type of an optional number's flag: the number, or `UNSET_GIVEN` for `UNSET` (any case)."""
    def parse(text: str):
        return UNSET_GIVEN if text.strip().lower() == UNSET else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error: `invalid int value: 'x'`
    return parse


def _flag_type(annotation):
    """argparse type and choices for a config field's annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union:
        annotation = args[0]
        args = list(typing.get_args(annotation))
    if typing.get_origin(annotation) is Literal:
        return str, list(typing.get_args(annotation))
    return annotation, None


@functools.lru_cache(maxsize=None)
def _field_comments() -> dict:
    """(config class, field) -> the field's comment in config.py: the comment lines right above it, then the
    one at the end of its line. Each flag's --help is the comment that documents the setting there."""
    from . import config as config_module

    try:
        source = inspect.getsource(config_module)
    except (OSError, TypeError):  # no source at hand: flags without descriptions
        return {}
    lines = source.splitlines()
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    found = {}
    for node in ast.walk(ast.parse(source)):
        for item in node.body if isinstance(node, ast.ClassDef) else []:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                above, line = [], item.lineno - 1
                while line in comments and lines[line - 1].lstrip().startswith("#"):
                    above.insert(0, comments[line])
                    line -= 1
                own = [comments[item.end_lineno]] if item.end_lineno in comments else []
                found[(node.name, item.target.id)] = " ".join(above + own)
    return found


def _help(cls, field: dataclasses.Field) -> Optional[str]:
    """A flag's help: the setting's comment in config.py (from the class that declares it) and its default."""
    comments = _field_comments()
    text = next((comments[(c.__name__, field.name)] for c in cls.__mro__ if (c.__name__, field.name) in comments), "")
    default = field.default if field.default is not dataclasses.MISSING else None
    if default not in (None, ""):
        text += f" (default: {default})"
    return text.strip().replace("%", "%%") or None  # argparse formats help with %


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One --flag per field; every default is None so that only given flags override the YAML file."""
    parser.add_argument("--config", help="YAML file with settings (flags override it)")
    hints = typing.get_type_hints(cls)
    sections = []
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        kind, choices = _flag_type(hints[field.name])
        help_text = _help(cls, field)
        if dataclasses.is_dataclass(kind):  # a section of settings: YAML only
            keys = ", ".join(f.name for f in dataclasses.fields(kind))
            sections.append(f"{field.name}: {help_text} (its keys: {keys})")
        elif kind is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif kind in (int, float, str):
            unsettable = kind is not str and field.default is None
            if unsettable:
                help_text += f" ({UNSET}: unset, over the --config file's)"
            refused = getattr(cls, "REFUSED", {}).get(field.name, {})
            parser.add_argument(flag, dest=field.name, type=_or_unset(kind) if unsettable else kind,
                                choices=_Choices(choices, refused) if choices else None, default=None, help=help_text)
    if sections:
        parser.epilog = "Sections of the YAML file (--config), without flags: " + "; ".join(sections)


class _Choices(list):
    """A flag's choices as the usage and an invalid choice's message list them: not an empty one (best_metric's
    "none", which would show as a leading comma or ''), nor one the command refuses (rerank's mode resume: a typo
    of it was answered with a list that offered it). Those are taken all the same, the refused ones for the command
    to say why."""

    def __init__(self, choices, refused):
        super().__init__(c for c in choices if c and c not in refused)
        self.taken = set(choices)

    def __contains__(self, value) -> bool:
        return value in self.taken


def config_from_args(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    unset = [k for k, v in overrides.items() if v is UNSET_GIVEN]
    return load_config(cls, args.config, {k: v for k, v in overrides.items() if k not in unset}, unset)


# command: (config class, "module:function" that runs it, help); the module is imported when the command runs.
COMMANDS = {
    "score": (ScoreConfig, "score:run_score", "score (query, document) pairs into parquet with a score column"),
    "candidates": (CandidatesConfig, "candidates:run_candidates",
                   "BM25 top-k candidates of a BEIR split, as pairs parquet"),
    "rerank": (RerankConfig, "rerank:run_rerank",
               "score pairs, then rank them within each query (rank, optional top-k)"),
    "eval": (EvalConfig, "evaluate:run_eval",
             "NDCG@10, MRR@10, MAP, Recall@k of a reranked output beside a baseline order"),
    "train": (TrainConfig, "train:train",
              "fine-tune a reranker on Ray Train (DDP or DeepSpeed); save a CrossEncoder folder"),
}


def run_command(name: str, args: argparse.Namespace) -> int:
    cls, target, _ = COMMANDS[name]
    module, function = target.split(":")
    run = getattr(importlib.import_module(f".{module}", __package__), function)
    run(config_from_args(cls, args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    # No abbreviated flags: `ce-ray train --mode resume` (a flag of the other commands) was taken for `--model
    # resume`, and `--k 10` (eval's) for `--keep-checkpoints 10`, without a word.
    parser = argparse.ArgumentParser(prog="ce-ray", description="Cross-encoder rerankers at cluster scale, on Ray",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _, help_text) in COMMANDS.items():
        add_config_flags(sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False), cls)
    from .submit import add_submit_parser

    add_submit_parser(sub, list(COMMANDS))
    return parser


def command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The subcommand's own parser, whose error shows that command's usage rather than ce-ray's."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def other_commands_hint(command: str, unknown: list) -> str:
    """Which other commands take the flags `command` does not (rerank's --top-k given to score), as a hint; a
    flag of its own written as its YAML key is (--query_column for --query-column), its dashed spelling."""
    hints = []
    for flag in (a.split("=", 1)[0] for a in unknown if a.startswith("--")):
        setting = flag[2:].replace("-", "_")
        dashed = "--" + setting.replace("_", "-")
        if dashed != flag and command in commands_with_setting(setting):
            hints.append(f"did you mean {dashed}? flags take dashes where YAML keys take underscores")
            continue
        ours = setting_for_trainer_name(COMMAND_CONFIGS.get(command), setting)
        if ours:
            hints.append(f"{flag} is CrossEncoderTrainer's name: ce-ray's is --{ours.replace('_', '-')}")
            continue
        owners = [c for c in commands_with_setting(setting) if c != command]
        if owners:
            hints.append(f"{flag} is a setting of {' and '.join(f'ce-ray {c}' for c in owners)}, not of ce-ray "
                         f"{command}")
    return f" ({'; '.join(hints)})" if hints else ""


# How a job of each command that stopped mid-way is finished. A score job's output holds the parts of the input
# files it completed, which resume keeps; ranking and BM25 regroup rows across files, so their jobs start over.
# A training run resumes from its last checkpoint where it has one (`training_finish` says which), else the same
# command starts it over; this is said where the run's record cannot be read.
HOW_TO_FINISH = {
    "score": f"{RESUME} (the input files completed are kept, and the rows written of parquet files)",
    "rerank": f"{OVERWRITE} (ranking groups rows across files: it cannot resume)",
    "candidates": OVERWRITE,
    "train": "the same command resumes it from its last checkpoint, or starts it over where it wrote none",
}
RESUMES_AT = "the same command resumes it from its last checkpoint"  # then `, step N`
STARTS_OVER = "it has no checkpoint yet: the same command starts it over"
# A job that on_invalid=fail stopped at a row would stop there again: the rows are mended, or set aside, first (a
# resume takes --on-invalid reject after fail: the rows written are the same, `sink.resume_state`).
MEND_ROWS = "mend those rows, or pass --on-invalid reject to set them aside in rejects/; then "
FAILED = 1  # the exit status of a job that failed during its work; 2 is a usage error, found before any work
STOPPED = 128 + signal.SIGTERM  # a job stopped by SIGTERM, as a shell gives it
INTERRUPTED = 128 + signal.SIGINT  # by Ctrl-C: 130
# The errors of a usage, found before any work; the same types raised during the work fail the job (`runtime.work`).
# Ray that cannot be joined or started is one too: no work was done, and a resume would have nothing to keep.
USAGE_ERRORS = (ConfigError, ValueError, FileExistsError, FileNotFoundError, RayStartError)
# A package that the command imports and this Python lacks (a cluster's image without ce-ray's dependencies) is
# found before any work too: a resume would fail the same way.
MISSING_PACKAGES = ("ce-ray's dependencies are not all installed where the command runs: pip install this project "
                    "there, or build the cluster's image with them (cluster/README.md), or pass them with `ce-ray "
                    "submit --pip`")
# Those packages (pyproject.toml's, and theirs that ce-ray imports): another import error (a package a model's own
# code needs, a name that cannot be imported) is no missing dependency, and keeps its traceback.
DEPENDENCIES = ("ray", "torch", "transformers", "safetensors", "tokenizers", "huggingface_hub", "pyarrow", "numpy",
                "pandas", "yaml", "s3fs", "fsspec", "botocore", "bm25s", "nanotoken", "deepspeed", "hjson")


def missing_dependency(error: BaseException) -> bool:
    return isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in DEPENDENCIES


def finishing_hint(command: str, cause: str = "", args: Optional[argparse.Namespace] = None,
                   running: bool = False) -> str:
    """How a job of this command that was interrupted or failed is finished, for the line that says so; nothing
    where the error's `cause` names a mode already (a score job's output that lost a part: `--mode resume finishes
    it`; a float16 overflow, whose other dtype a resume would refuse: `--mode overwrite`). A training run's, with
    the command's `args`, says whether it has a checkpoint to resume from; `running`: its run may still record one
    (SIGTERM)."""
    if command not in HOW_TO_FINISH or "--mode " in cause:
        return ""
    if command == "train" and args is not None:
        return f"; {training_finish(args, running)}"
    return f"; {MEND_ROWS if UNSCORABLE in cause else ''}{HOW_TO_FINISH[command]}"


def training_finish(args: argparse.Namespace, running: bool = False) -> str:
    """What the same `ce-ray train` command does with the run: resume it from the step of its last checkpoint
    that Ray Train recorded, or start it over where there is none (stopped before its first checkpoint). After a
    SIGTERM (`running`) the run goes on until Ray shuts down, and may record a later checkpoint meanwhile (it
    resumed at step 100 where the line, said as it stopped, named step 95)."""
    from .checkpoints import NOT_KNOWN, resumed_step

    try:
        config = config_from_args(TrainConfig, args)
    except Exception:  # settings that do not build: either may be true
        return HOW_TO_FINISH["train"]
    try:
        step = resumed_step(config)
    except ConfigError as e:  # its record of checkpoints does not read (emptied by a disk that filled)
        return str(e)
    except Exception:  # a store that does not answer: either may be true
        return HOW_TO_FINISH["train"]
    if step is None:
        return STARTS_OVER
    return RESUMES_AT + ("" if step == NOT_KNOWN else f", step {step:,}" + (" or later" if running else ""))


COMMAND_ENDS = ("failed: ", "interrupted", "stopped (", "error: ")  # how the line that ends a command goes on
WORK_DONE = "; it had done its work: its output is whole"


def finishing_said(command: str, line: str) -> Optional[str]:
    """The way to finish a job that its command's last line said (`ce-ray score: failed: ...; <how>`), '' where
    that line said none (a float16 overflow's, whose cause says it; an error found before any work), None where
    the line is not one that ends the command (the job was killed before it said one). A job stopped, or whose
    process died, after its summary (`ce-ray score: done`, said once its output is whole) has nothing to finish:
    a stop that came as it shut down said `--mode resume finishes it`, and the resume kept every file."""
    if line == f"ce-ray {command}: done":
        return WORK_DONE
    if not line.startswith(tuple(f"ce-ray {command}: {end}" for end in COMMAND_ENDS)):
        return None
    forms = [f"(?:{re.escape(MEND_ROWS)})?{re.escape(HOW_TO_FINISH[command])}"] if command in HOW_TO_FINISH else []
    if command == "train":
        forms += [re.escape(RESUMES_AT) + r"(?:, step [\d,]+(?: or later)?)?", re.escape(STARTS_OVER)]
    said = re.search(rf"; (?:{'|'.join(forms)})$", line) if forms else None
    return said.group(0) if said else ""


def report_failure(command: str, error: BaseException, args: Optional[argparse.Namespace] = None) -> None:
    """Prints a job's failure: its traceback, then one line with the error that caused it and how to finish the
    job. A failure in Ray's tasks or workers is printed without the driver's chain of Ray's own exceptions
    (which ones it was handling, a bare marker of Ray Data's), which repeats nothing of the worker's error.
    ce-ray's own errors (a row that cannot be scored, a float16 overflow, a part the output lost) are the
    line alone: their message says all, and the traceback would be the driver's wait for the work."""
    import traceback

    from .checkpoints import IncompleteCheckpoint
    from .runtime import failure_cause, from_ray

    # (a training run's stop at a loss or weights not finite too: ce-ray's own, though Python's type, whose
    # traceback was the driver's raise of it, its message said twice)
    if not type(error).__module__.startswith(f"{__package__}.") and not isinstance(error, FloatingPointError):
        traceback.print_exception(error, chain=not from_ray(error), file=sys.stderr)
    cause = failure_cause(error)
    # A training run that a loss or weights not finite stopped would stop at the same step again from its last
    # checkpoint: no way to finish it is said, its cause says what to change. Nor where the checkpoint it resumes
    # from lacks files, which the same command would refuse again: its cause says how to start afresh.
    hint = ("" if isinstance(error, FloatingPointError) or cause.startswith(f"{IncompleteCheckpoint.__name__}: ")
            else finishing_hint(command, cause, args))
    print(f"ce-ray {command}: failed: {cause}{hint}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    from .runtime import ray_is_up, shut_ray_down

    joined = ray_is_up()  # a caller's own Ray (a notebook's, a test's) is left up
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run_main(argv)
    except KeyboardInterrupt:  # outside the command's own handling: as its imports load, or a second one before it
        return INTERRUPTED
    finally:
        # Ray's shutdown, made here with Ctrl-C and SIGTERM ignored: one sent meanwhile (a second, impatient one, or
        # one just after `done`) printed a page of the traceback of Ray's shutdown as the process exited (its atexit
        # hook), and the command ended with status 1, not 130, after the line that said how to finish it; a SIGTERM
        # just after `done` ended it with Ray's `sys.exit(15)`, the output whole. (Ray's shutdown puts SIGTERM's
        # default action back as its core worker stops: one in the second after that still ends the process, 143.)
        _handle_signals(signal.SIG_IGN)
        try:
            if not joined:
                shut_ray_down()
        finally:
            for signum, handler in handlers.items():
                _handle_signals(handler, signum)


def command(argv=None) -> int:
    """The `ce-ray` command (its console script, `python -m ce_ray.cli`): `main`, and Ctrl-C and SIGTERM ignored
    once it returns, as the process exits (a second or two): one sent then, just after `done`, ended the command by
    the signal, status 130 or 143, its work done and said. (`main` gives a caller in process its own handlers back.)"""
    try:
        return main(argv)
    finally:
        _handle_signals(signal.SIG_IGN)


def _handle_signals(handler, *signums) -> None:
    """The `handler` of each of `signums` (by default SIGINT and SIGTERM) set, in the main thread (which signals
    reach; a command run in another thread has none)."""
    if handler is not None and threading.current_thread() is threading.main_thread():
        for signum in signums or (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, handler)


def run_main(argv=None) -> int:
    parser = build_parser()
    # `ce-ray submit <command>` takes the command's own flags too, which override its config (checked there).
    args, overrides = parser.parse_known_args(argv)
    if overrides and args.command != "submit":
        command_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(overrides)}"
                                                   f"{other_commands_hint(args.command, overrides)}")
    from .runtime import as_a_command, pace_logged_progress

    pace_logged_progress()  # the commands and the Ray Jobs' entrypoints, not a user's own pipeline in Python
    as_a_command()
    try:
        if args.command == "submit":
            from .submit import run_submit

            return run_submit(args, overrides)
        return run_command(args.command, args)
    except KeyboardInterrupt:  # Ctrl-C: a line, not the traceback of wherever the driver was waiting
        _handle_signals(signal.SIG_IGN, signal.SIGINT)  # from here to the end of Ray's shutdown (`main`)
        print(f"\nce-ray {args.command}: interrupted{finishing_hint(args.command, args=args)}", file=sys.stderr)
        return INTERRUPTED
    except SystemExit as e:
        # SIGTERM (a scheduler's stop, Kubernetes', `kill`, `ray job stop`): ray.init makes it `sys.exit` in the driver,
        # so that Ray shuts down as the process exits (`runtime.as_a_command`). It ended the job with no word and exit
        # 15 or 1, where a shell or a scheduler reads 143 (128 + 15) as the signal's; before Ray starts, the signal's
        # own default ends it so. One during ray.init, before the signal is noted, is Ray's `sys.exit(15)`.
        from .runtime import stopped_by_sigterm

        if not (stopped_by_sigterm() or e.code == signal.SIGTERM):
            raise
        print(f"\nce-ray {args.command}: stopped (SIGTERM){finishing_hint(args.command, args=args, running=True)}",
              file=sys.stderr)
        return STOPPED
    except Exception as e:
        return report_error(f"ce-ray {args.command}", args.command, e, args)


def report_error(program: str, command: str, error: Exception, args: Optional[argparse.Namespace] = None,
                 usage_errors: tuple = USAGE_ERRORS) -> int:
    """How a command (or the demo, `program` its name) that raised `error` ends: a wrong setting or input, or a
    missing package, said in one line before any work (exit 2); a failure with its cause and how to finish the job
    (`report_failure`, exit 1)."""
    from .runtime import failed_during_work

    if (isinstance(error, usage_errors) or missing_dependency(error)) and not failed_during_work(error):
        missing = f"; {MISSING_PACKAGES}" if missing_dependency(error) else ""
        print(f"{program}: error: {error}{missing}", file=sys.stderr)
        return 2
    report_failure(command, error, args)
    return FAILED


if __name__ == "__main__":
    sys.exit(command())
