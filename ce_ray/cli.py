"""The `ce-ray` command: a thin layer over the Python API. Flags are generated from the config
dataclasses, so a flag and a YAML key always name the same setting; flags override the file."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing
from typing import Literal

from .config import CandidatesConfig, ConfigError, EvalConfig, RerankConfig, ScoreConfig, TrainConfig, load_config


def _flag_type(annotation):
    """argparse type and choices for a config field's annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union:
        annotation = args[0]
        args = list(typing.get_args(annotation))
    if typing.get_origin(annotation) is Literal:
        return str, list(typing.get_args(annotation))
    return annotation, None


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One --flag per field; every default is None so that only given flags override the YAML file."""
    parser.add_argument("--config", help="YAML file with settings (flags override it)")
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        kind, choices = _flag_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = f"(default: {default})" if default not in (None, "") else None
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif kind in (int, float, str):
            parser.add_argument(flag, dest=field.name, type=kind, choices=choices, default=None, help=help_text)


def config_from_args(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return load_config(cls, args.config, overrides)


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
    parser = argparse.ArgumentParser(prog="ce-ray", description="Cross-encoder rerankers at cluster scale, on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _, help_text) in COMMANDS.items():
        add_config_flags(sub.add_parser(name, help=help_text, description=help_text), cls)
    from .submit import add_submit_parser

    add_submit_parser(sub, list(COMMANDS))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "submit":
            from .submit import run_submit

            return run_submit(args)
        return run_command(args.command, args)
    except (ConfigError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"ce-ray {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
