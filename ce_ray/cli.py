"""The `ce-ray` command: a thin layer over the Python API. Flags are generated from the config
dataclasses, so a flag and a YAML key always name the same setting; flags override the file."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Literal

from .config import ConfigError, RerankConfig, ScoreConfig, load_config


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


def _score(args) -> int:
    from .score import run_score

    run_score(config_from_args(ScoreConfig, args))
    return 0


COMMANDS = {
    "score": (ScoreConfig, _score, "score (query, document) pairs into parquet with a score column"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ce-ray", description="Cross-encoder rerankers at cluster scale, on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _, help_text) in COMMANDS.items():
        add_config_flags(sub.add_parser(name, help=help_text, description=help_text), cls)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _, run, _ = COMMANDS[args.command]
    try:
        return run(args)
    except (ConfigError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"ce-ray {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
