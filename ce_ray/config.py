"""Typed configs: every setting of a job, validated, loaded from YAML and overridden by flags.

One dataclass per command. `load_config(cls, path, overrides)` is the one way configs are built, so the
CLI, the YAML files and the Ray Job entrypoints always agree.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range."""


@dataclass
class ModelConfig:
    """Where the reranker comes from and how it runs."""

    model: str = ""  # local folder, Hugging Face hub id, or s3:// folder
    max_length: Optional[int] = None  # None: the model's own (CrossEncoder's rule)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    allow_pickle: bool = False  # load .bin/.pt weights (pickle) when no safetensors are present
    trust_remote_code: bool = False
    tokenizer: Literal["auto", "fast", "hf"] = "auto"  # fast: nanotoken WordPiece; hf: Hugging Face


@dataclass
class ScoreConfig(ModelConfig):
    """`ce-ray score`: pairs in, the same rows with a `score` column out."""

    input: str = ""  # file, folder or glob; local or s3://
    output: str = ""  # folder; local or s3://
    input_format: Literal["auto", "parquet", "jsonl", "csv"] = "auto"
    query_column: str = "query"
    document_column: str = "document"
    batch_tokens: Optional[int] = None  # token budget of one forward pass; None: 65536 on GPU, 8192 on CPU
    rows_per_block: int = 4096  # rows handed to a scoring replica at once
    replicas: Optional[int] = None  # max scoring replicas; None: one per GPU, or 1 on CPU
    min_replicas: int = 1
    tokenize_cpus: float = 1.0  # CPUs per tokenizing task
    use_gpu: Optional[bool] = None  # None: when the cluster has GPUs
    on_invalid: Literal["reject", "fail"] = "reject"
    mode: Literal["error", "overwrite", "resume"] = "error"  # what to do when the output has results


@dataclass
class RerankConfig(ScoreConfig):
    """`ce-ray rerank`: score, then rank within each query."""

    query_id_column: str = "query_id"
    top_k: Optional[int] = None


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Checks (and mildly coerces, int -> float) a YAML or flag value against a dataclass annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(name, value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_type(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)] if args else value
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__} {value!r}")
        return value
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{name}: expected {annotation.__name__}, got a boolean {value!r}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__} {value!r}")
        return from_dict(annotation, value, prefix=f"{name}.")
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{name}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, values: dict, prefix: str = "") -> Any:
    """Builds a config dataclass from a mapping; unknown keys and wrong types fail with the key's name."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown setting {prefix}{key!r}{hint}")
        kwargs[key] = _check_type(f"{prefix}{key}", value, hints[key])
    return cls(**kwargs)


def load_config(cls: type, path: Optional[str] = None, overrides: Optional[dict] = None) -> Any:
    """YAML file (optional) first, then overrides (flags that were given) on top."""
    values: dict = {}
    if path:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        config = from_dict(cls, values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    validate = getattr(config, "validate", None)
    if validate:
        validate()
    return config


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def require(config: Any, *names: str) -> None:
    missing = [n for n in names if not getattr(config, n)]
    if missing:
        raise ConfigError(f"missing required setting(s): {', '.join(missing)}")


__all__ = [
    "ConfigError",
    "ModelConfig",
    "ScoreConfig",
    "RerankConfig",
    "load_config",
    "from_dict",
    "to_dict",
    "require",
    "field",
]
