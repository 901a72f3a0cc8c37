"""The docs name what the code has: every ce-ray command line they show parses with its command's flags, every
flag they name is one of a ce-ray command's, and every setting the example configs show (commented out too) and
the docs write as YAML is one the commands take. No Ray, no model: the parsers and the config classes alone."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from ce_ray.cli import COMMANDS
from conftest import ROOT

MARKDOWN = ["README.md", "docs/inputs.md", "docs/scoring.md", "docs/evaluation.md", "docs/training.md",
            "docs/python.md", "docs/results.md", "docs/reliability.md", "cluster/README.md", "bench/README.md"]
# The docs a user reads, whose flags and YAML settings are all ce-ray's (bench/README.md names its scripts' too).
USER_DOCS = [path for path in MARKDOWN if path != "bench/README.md"]
# Flags of the other tools the docs show beside ce-ray's: ray start, ray job submit/logs, kubectl, git, pip, docker,
# hf download.
OTHER_TOOLS_FLAGS = {"--head", "--num-cpus", "--port", "--dashboard-port", "--dashboard-host", "--working-dir",
                     "--runtime-env-json", "--follow", "--from-literal", "--prefix", "--format", "--no-cache-dir",
                     "--chown", "--local-dir"}
# How a command line starts: `ce-ray <command>`, or a job's entrypoint, `python jobs/<command>.py`.
COMMAND_LINE = re.compile(rf"(?:(?:ce-ray|python -m ce_ray\.cli) (?P<command>{'|'.join([*COMMANDS, 'submit'])})\b|"
                          r"python jobs/(?P<job>[a-z]+)\.py)(?P<rest>(?: [^ ]+)*)")


def markdown_code(text: str) -> list:
    """The code of a Markdown text, each piece with whether it is a whole command line: each line of its fenced
    blocks (a line that ends in a backslash joined to the next, a comment cut), and each inline code span that
    starts as a command (its lines joined), which may name a flag alone (`ce-ray eval --run-output`)."""
    pieces = []
    for block in re.findall(r"^ *```[a-z]*\n(.*?)^ *```", text, flags=re.S | re.M):
        pieces += [(line.split("  #")[0], True) for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines()]
    prose = re.sub(r"^ *```.*?^ *```", "", text, flags=re.S | re.M)
    spans = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return pieces + [(span, False) for span in spans if COMMAND_LINE.match(span)]


def code_of(path) -> list:
    """The lines that may show a command, each with whether it is a whole command line: Markdown's code, or every
    line of a job's script or an example config (its comments say how to run it), cut where prose starts after the
    command (two spaces, a backtick)."""
    text = (ROOT / path).read_text()
    if path.endswith(".md"):
        return markdown_code(text)
    # A line that ends in `\` is joined to the next, whose indent lstrip took.
    lines = "\n".join(line.lstrip("# ") for line in text.splitlines()).replace("\\\n", "").splitlines()
    return [(re.split(r"`| {2,}|;", line)[0], True) for line in lines]


def command_lines(path) -> list:
    """(command, arguments, whole) of each ce-ray command that `path` shows: not one with a placeholder
    (`<command>`, `...`, `[--address URL]`), nor a job's line (`ce-ray score: error: ...`)."""
    found = []
    for piece, whole in code_of(path):
        for match in COMMAND_LINE.finditer(piece):
            if re.match(r" [a-z]+:", match["rest"]):  # a job's line, `ce-ray score: done`
                continue
            words = shlex.split(match["rest"])
            if any(re.search(r"<(?!=)|\[|\.\.\.|…", w) for w in words):  # `<=` of a requirement is none
                continue
            found.append((match["command"] or match["job"], words, whole))
    return found


def doc_paths() -> list:
    return MARKDOWN + [str(p.relative_to(ROOT)) for p in sorted((ROOT / "jobs").rglob("*")) if p.suffix in
                       (".py", ".yaml")] + [str(p.relative_to(ROOT)) for p in sorted((ROOT / "cluster").glob("*.yaml"))]


def parsers() -> dict:
    """Each command's parser, `submit`'s too, by its name."""
    import argparse

    from ce_ray.cli import build_parser

    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("path", doc_paths())
def test_every_command_line_the_docs_show_parses_with_its_commands_flags(path):
    """`ce-ray rerank --model ... --top-k 10` in a doc is a command that runs as written: each flag is one its
    command has (a `ce-ray submit` line's command flags checked against that command), each value one it takes."""
    commands = parsers()
    for command, args, whole in command_lines(path):
        assert command in commands, f"{path}: `ce-ray {command}` is no command"
        if not whole or "--help" in args:  # a flag named in prose: one the command has
            flags = {option for action in commands[command]._actions for option in action.option_strings}
            assert {w for w in args if w.startswith("--")} <= flags, f"{path}: `ce-ray {command} {shlex.join(args)}`"
            continue
        known, unknown = commands[command].parse_known_args(args)
        if command == "submit":  # the job's own flags follow its config and override it
            known, unknown = commands[known.job].parse_known_args(unknown)
        assert unknown == [], f"{path}: `ce-ray {command} {shlex.join(args)}`: {unknown} are no flags of it"


@pytest.mark.parametrize("path", USER_DOCS)
def test_every_flag_the_docs_name_is_a_flag_of_a_command(path):
    """A flag named in prose (`--rows-per-block`, `--mode resume`) is one that a ce-ray command has, spelled as
    it has it; the other tools' flags shown beside them (ray start's, kubectl's) are listed above."""
    flags = {option for parser in parsers().values() for action in parser._actions for option in action.option_strings}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", (ROOT / path).read_text()))
    assert named - flags - OTHER_TOOLS_FLAGS == set()


def commented_settings(text: str) -> list:
    """The settings an example config shows commented out (`# rows_per_call: 32768`), each as the YAML it would
    be uncommented, with a section's keys under it (`# deepspeed:` then `#   stage: 2`)."""
    settings, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        key = re.match(r"# ?([a-z][a-z0-9_]*):(.*)$", line)
        if not key:
            continue
        body = [f"{key[1]}: {key[2]}"]
        if not key[2].split(" #")[0].strip():  # a section: its keys follow, indented
            for nested in lines[i + 1:]:
                if not re.match(r"# {2,}[a-z][a-z0-9_]*:", nested):
                    break
                body.append(nested[1:])
        settings.append("\n".join(body))
    return settings


def test_every_setting_of_the_example_configs_is_one_their_command_takes():
    """jobs/configs/*.yaml's settings, and those they show commented out for a user to turn on, load with
    their command's config, each value of the type it takes."""
    from ce_ray.cli import COMMANDS
    from ce_ray.config import from_dict

    checked = 0
    for path in sorted((ROOT / "jobs" / "configs").glob("*.yaml")):
        config = COMMANDS[path.stem][0]
        from_dict(config, yaml.safe_load(path.read_text()))
        for setting in commented_settings(path.read_text()):
            if re.match(r"[a-z_]+: *(ce-ray|python) ", setting):  # `# locally: ce-ray score ...`: how to run it
                continue
            from_dict(config, yaml.safe_load(setting))
            checked += 1
    assert checked >= 10


def test_every_yaml_setting_the_docs_write_is_a_setting():
    """A setting written as YAML in the docs (`batch_tokens: 65536`, `compile_mode: reduce-overhead`) is one that
    a command's config takes, with that value."""
    from ce_ray.config import COMMAND_CONFIGS, ConfigError, from_dict

    for path in USER_DOCS:
        for span in re.findall(r"`([a-z_]+: [^`:\s]+)`", (ROOT / path).read_text()):
            setting = yaml.safe_load(span)
            if set(setting) <= {"limits"}:  # a Kubernetes pod's
                continue
            taken = []
            for config in COMMAND_CONFIGS.values():
                try:
                    taken.append(from_dict(config, setting))
                except ConfigError:
                    pass
            assert taken, f"{path}: `{span}` is no setting of a ce-ray command"


def test_every_name_of_ce_ray_the_docs_give_is_there():
    """`ce_ray.surfaced_errors`, `ce_ray.config.TrainConfig`, `ce_ray.replica.Scorer`: each name of the package the
    docs give imports, as written."""
    import importlib

    footer_keys = {"ce_ray.input_rows", "ce_ray.row_runs"}  # keys of the parts' parquet footers, not names of it
    for path in MARKDOWN:
        for dotted in set(re.findall(r"\bce_ray(?:\.[A-Za-z_]\w*)+", (ROOT / path).read_text())) - footer_keys:
            found, prefix = importlib.import_module("ce_ray"), "ce_ray"
            for name in dotted.split(".")[1:]:
                prefix += f".{name}"
                if not hasattr(found, name):
                    try:  # a module that `import ce_ray` does not import (ce_ray.replica)
                        importlib.import_module(prefix)
                    except ImportError:
                        pass
                assert hasattr(found, name), f"{path}: {dotted}: {getattr(found, '__name__', found)} has no {name}"
                found = getattr(found, name)


def test_every_flag_of_a_command_is_named_in_the_docs():
    """Each setting a command takes is in the docs a user reads, as its flag (`--recall-k`) or its YAML key
    (`recall_k`), not in `--help` alone: eval's `--baseline-column` and `--recall-k`, candidates' `--max-queries`
    and train's `--train-split` were named nowhere else."""
    text = "\n".join((ROOT / path).read_text() for path in USER_DOCS)
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)) | set(re.findall(r"\b[a-z][a-z0-9_]*\b", text))
    missing = set()
    for command, parser in parsers().items():
        for action in parser._actions:
            flags = [option for option in action.option_strings if not option.startswith("--no-")]
            if not flags or flags[0] in ("-h", "--help", "--config"):
                continue
            if flags[0] not in named and action.dest not in named:
                missing.add(f"ce-ray {command} {flags[0]}")
    assert missing == set()
