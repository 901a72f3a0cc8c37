"""Typed configs: every setting of a job, validated, loaded from YAML and overridden by flags.

One dataclass per command. `load_config(cls, path, overrides)` is the one way configs are built, so the
CLI, the YAML files and the Ray Job entrypoints always agree.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Literal, Optional, Sequence

import yaml

from .input_files import OWN_COLUMNS
from .messages import setting_and_flag
from .storage import local_path


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range."""


def _require_names(config, *settings: str) -> None:
    """The output columns the settings name: each a name, all different."""
    names = [getattr(config, s) for s in settings]
    for setting, name in zip(settings, names):
        if not name:
            raise ConfigError(f"{setting_and_flag(setting)} must name a column")
        if name == "reject_reason" or name.startswith(OWN_COLUMNS):  # the columns ce-ray itself adds to the rows
            raise ConfigError(f"{setting_and_flag(setting)} {name!r} is a column ce-ray uses itself: name another")
    if len(set(names)) < len(names):
        raise ConfigError(f"{' and '.join(map(setting_and_flag, settings))} must name different columns, got {names}")


def _require_file_names(config, *settings: str, empty: bool = False) -> None:
    """Settings that become a file's or a folder's name (a split's, a run's): one name, not a path, and not empty
    unless `empty` (a run's: its default). `--run-name ../x` put the checkpoints outside the storage path, and
    `--split sub/x` failed writing its file once the index was built."""
    for setting in settings:
        name = getattr(config, setting)
        if "/" in name or "\\" in name or name in (".", "..") or not (name or empty):
            raise ConfigError(f"{setting_and_flag(setting)} {name!r} becomes a file's or a folder's name: give a name "
                              "without / or \\, not . or .." + ("" if empty else ", nor empty"))


def _require_finite(config) -> None:
    """Every number of a float setting finite. YAML's .nan and .inf, a flag's nan, a float("inf") given in
    Python pass every range check (a NaN is neither <= 0 nor > 0): a NaN lr failed a worker after Ray
    started, a NaN weight_decay or an infinite pos_weight trained a model of NaN weights to the end."""
    for setting in dataclasses.fields(config):
        value = getattr(config, setting.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{setting_and_flag(setting.name)}: expected a finite number, got {value!r}")


def _require_types(config) -> None:
    """Every setting of its annotated type, as a YAML key's or a flag's is checked (`_check_type`, which takes a
    whole number for a float and a settings section's mapping): a config built in Python skipped that check, and a
    float batch_tokens failed the job in its replicas (`slice indices must be integers`). A path may be a
    `pathlib.Path`, as a keyword's may: it becomes text."""
    hints = typing.get_type_hints(type(config))
    for setting in dataclasses.fields(config):
        value = getattr(config, setting.name)
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        setattr(config, setting.name, _check_type(setting.name, value, hints[setting.name]))


def _require_s3_keys(config) -> None:
    """An S3 place a job writes whose key begins with `/` (`s3://bkt//out`, a script's empty prefix between the
    two): the objects were written under keys that s3fs's listing does not show, and the job, its work done,
    failed as if they were lost (and `--mode resume` again), or a candidates job wrote a file no job could read."""
    for name in ("output", "storage_path", "run_output"):
        value = getattr(config, name, "")
        scheme, _, place = value.partition("://")
        bucket, _, key = place.partition("/")
        if scheme in ("s3", "s3a") and key.startswith("/"):
            raise ConfigError(f"{setting_and_flag(name)} {value}: its key begins with / (an empty name after the "
                              f"bucket), which S3 stores but s3fs does not list: the job could not read back what it "
                              f"wrote. Give {scheme}://{bucket}/{key.lstrip('/')}")


MIN_MAX_LENGTH = 8
MAX_RANK_PARTITIONS = 10_000  # 2.5 TB of input at the default's 256 MiB a partition


@dataclass
class ModelConfig:
    """Where the reranker comes from and how it runs."""

    model: str = ""  # local folder, Hugging Face hub id, or s3:// folder
    # tokens of a pair at most, a longer pair truncated longest_first as CrossEncoder truncates it; unset: the
    # model's own (CrossEncoder's rule), within its position table
    max_length: Optional[int] = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: fp16 on GPU, fp32 on CPU
    allow_pickle: bool = False  # load .bin/.pt weights (pickle) when no safetensors are present
    trust_remote_code: bool = False  # run the model folder's own code (auto_map): only for a folder you trust
    tokenizer: Literal["auto", "fast", "hf"] = "auto"  # fast: nanotoken WordPiece; hf: Hugging Face
    # auto: ce-ray's own forward pass (ce_ray/bert.py) for a BERT classifier it reproduces, transformers' for
    # any other model; transformers: always transformers'. Scoring replicas then start without importing
    # transformers, and training steps dispatch fewer operations.
    implementation: Literal["auto", "transformers"] = "auto"

    def validate(self) -> None:
        _require_types(self)
        _require_s3_keys(self)
        _require_finite(self)
        # A pair needs its special tokens ([CLS] q [SEP] d [SEP], four for RoBERTa) and some of each text; below
        # that the tokenizers truncate nothing, and the pair runs past the positions the model was given.
        if self.max_length is not None and self.max_length < MIN_MAX_LENGTH:
            raise ConfigError(f"{setting_and_flag('max_length')} must be >= {MIN_MAX_LENGTH} (a pair's special tokens "
                              f"and some of each text), got {self.max_length}")


def _check_activation(dotted: str, trust_remote_code: bool) -> None:
    """An activation names a class that makes the function with no argument (torch.nn.Identity, Sigmoid): of
    torch, as CrossEncoder loads a saved one, or of other code where trust_remote_code runs it."""
    module, _, name = dotted.rpartition(".")
    if not module:  # CrossEncoder's habit names the class (`sigmoid` was sent to trust_remote_code, then failed)
        import torch.nn

        like = next((f"torch.nn.{n}" for n in dir(torch.nn) if n.lower() == name.lower()), None)
        raise ConfigError(f"{setting_and_flag('activation')} {dotted!r} is no class's dotted path: "
                          + (f"did you mean {like}?" if like and not _activation_error(like) else
                             "give one, as torch.nn.Sigmoid (the default) or torch.nn.Identity (the logit)"))
    if not (dotted.startswith("torch.") or trust_remote_code):
        raise ConfigError(f"{setting_and_flag('activation')} {dotted!r} is not torch's (torch.nn.Identity for the "
                          "logit, torch.nn.Sigmoid): code from elsewhere runs only with "
                          f"{setting_and_flag('trust_remote_code')}")
    error = _activation_error(dotted)
    if error:
        raise ConfigError(f"{setting_and_flag('activation')} {dotted!r} is no class that makes a function with no "
                          f"argument (torch.nn.Identity, torch.nn.Sigmoid): {error}")


def _activation_error(dotted: str) -> Optional[str]:
    """Why the class `dotted` names makes no function of a reranker's logits, or None where it does."""
    import importlib
    import warnings

    import torch

    module, _, name = dotted.rpartition(".")
    try:
        with warnings.catch_warnings():  # Softmax's of its implicit dimension, said as it is refused
            warnings.simplefilter("ignore")
            made = getattr(importlib.import_module(module), name)()
            scores = made(logits := torch.tensor([[-2.0], [0.0], [2.0]]))
        # A class that builds with no argument but is no function of the logits (torch.Tensor, torch.nn.Module,
        # torch.Generator) failed every replica's first batch, after Ray started and the model loaded.
        if not (isinstance(made, torch.nn.Module) and scores.shape == logits.shape):
            raise TypeError(f"{type(made).__name__} gives no scores of the logits")
        # A softmax over a reranker's one logit is 1 for every pair (Softmax, Softmin; LogSoftmax's 0): no order.
        if torch.unique(scores).numel() == 1:
            raise TypeError(f"{type(made).__name__} gives every logit one score, {scores[0].item():g}")
    except Exception as e:  # an import, attribute or constructor error: all say the name is wrong
        return f"{type(e).__name__}: {e}"
    return None


def _require_two_texts(config) -> None:
    """A query and a document column that are one: each query would be scored or trained against itself."""
    if config.query_column == config.document_column:
        raise ConfigError(f"{setting_and_flag('query_column')} and {setting_and_flag('document_column')} are both "
                          f"{config.query_column!r}: name the query's column and the document's")


@dataclass
class ScoreConfig(ModelConfig):
    """`ce-ray score`: pairs in, the same rows with a `score` column out."""

    REQUIRED: ClassVar[tuple] = ("model", "input", "output")  # the command's, checked by `require`

    input: str = ""  # file, folder or glob; local or s3://
    output: str = ""  # folder; local or s3://
    input_format: Literal["auto", "parquet", "jsonl", "csv", "tsv"] = "auto"  # auto: from the files' names
    column_names: str = ""  # CSV or TSV files without a header line: their columns, "query_id,doc_id,query,document"
    query_column: str = "query"  # the query's text
    document_column: str = "document"  # the document's text
    # the output column of the scores: an input column of that name fails the job before it starts (score
    # an earlier output with another model under another name, score_l12)
    score_column: str = "score"
    # text put before each query, as CrossEncoder.predict's prompt; unset: the model's default prompt
    # (default_prompt_name in its config_sentence_transformers.json), if any; "" for none
    prompt: Optional[str] = None
    prompt_name: Optional[str] = None  # instead: one of the model's saved prompts, by name, as predict's prompt_name
    # the function of the logit the scores are, a torch class (torch.nn.Identity: the logit itself), as predict's
    # activation_fn; unset: the model's own, as CrossEncoder (its saved activation_fn, else sigmoid)
    activation: str = ""
    batch_tokens: Optional[int] = None  # token budget of one forward pass; unset: 65536 on GPU, 2048 on CPU
    # rows tokenized in one batch (on CPU, also scored in one replica call) and read from a parquet file at a time;
    # not Ray Data's blocks, into which a read task gathers its rows up to 128 MiB
    rows_per_block: int = 4096
    # rows a scoring replica takes per call; unset: 32768 on GPU, rows_per_block on CPU
    rows_per_call: Optional[int] = None
    # max scoring replicas; unset: one per GPU, or on CPUs one per node with CPUs, each running on all its node's
    # cores (within a pod's CPU limit); several replicas of a node share its cores
    replicas: Optional[int] = None
    # replicas the pool starts with; it grows up to replicas as resources allow; unset: 1 on GPUs (an autoscaler
    # adds GPU nodes as replicas wait for them), all of them on CPUs
    min_replicas: Optional[int] = None
    # CPUs per tokenizing task; on CPUs, 1 (the CPU a replica holds) has each replica tokenize its own rows before
    # it scores them, another value runs tokenize tasks beside the replicas, on the cores they score on
    tokenize_cpus: float = 1.0
    # torch.compile the model in each replica, which compiles first (seconds to a minute): fused kernels for long
    # jobs on a GPU, where what they gain is not measured yet (on a CPU they gained nothing, bench/README.md)
    compile: bool = False
    use_gpu: Optional[bool] = None  # unset: when the cluster has GPUs
    on_invalid: Literal["reject", "fail"] = "reject"  # a row that cannot be scored: to rejects/, or stop the job
    mode: Literal["error", "overwrite", "resume"] = "error"  # what to do when the output has results

    def validate(self) -> None:
        super().validate()
        for name in ("batch_tokens", "rows_per_block", "rows_per_call", "replicas", "min_replicas"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{setting_and_flag(name)} must be >= 1, got {value}")
        if self.tokenize_cpus <= 0:
            raise ConfigError(f"{setting_and_flag('tokenize_cpus')} must be > 0, got {self.tokenize_cpus}")
        if None not in (self.replicas, self.min_replicas) and self.min_replicas > self.replicas:
            raise ConfigError(f"{setting_and_flag('min_replicas')} {self.min_replicas} is more than "
                              f"{setting_and_flag('replicas')} {self.replicas}, the most the job starts")
        _require_names(self, "score_column")
        _require_two_texts(self)
        if self.activation:
            _check_activation(self.activation, self.trust_remote_code)


@dataclass
class RerankConfig(ScoreConfig):
    """`ce-ray rerank`: score, then rank within each query."""

    query_id_column: str = "query_id"  # the rows of one query are ranked together
    rank_column: str = "rank"  # the output column of the ranks (1 = best); as score_column, a name no input column has
    top_k: Optional[int] = None  # keep the best k of each query; unset: all, ranked
    # Hash partitions of the group-by query id, each ranked in one task and written as its own file(s); unset: one per
    # CPU of the cluster, and one per 256 MiB of input beyond (from Python, for a lazy Dataset: one per CPU)
    rank_partitions: Optional[int] = None
    # Values of score's settings that ranking refuses, each with the reason: --help does not offer them, and a job
    # given one is refused before any work, saying why.
    REFUSED: ClassVar[Dict[str, Dict[str, str]]] = {"mode": {
        "resume": f"{setting_and_flag('mode', 'resume')} works per input file, but ranking groups rows across files; "
                  f"use {setting_and_flag('mode', 'overwrite')}"}}

    def validate(self) -> None:
        super().validate()
        for name, reasons in self.REFUSED.items():
            if getattr(self, name) in reasons:
                raise ConfigError(reasons[getattr(self, name)])
        if self.top_k is not None and self.top_k < 1:
            # CrossEncoder.rank's top_k=0 gives no document (ce_ray.rank's too); a rerank job that keeps no row of
            # any query writes an empty output, which no one means: it is refused, saying how to keep every row.
            raise ConfigError(f"{setting_and_flag('top_k')} must be >= 1, got {self.top_k}: a rerank keeps the best "
                              "top_k rows of each query; leave it unset to keep every row, ranked (--top-k none over a "
                              "--config file's)")
        if self.rank_partitions is not None and not 1 <= self.rank_partitions <= MAX_RANK_PARTITIONS:
            # Each partition is a task of every block's shuffle and a file of its own: 100,000 of them ranked 3 rows
            # for minutes without an end, where the default makes one per 256 MiB of input.
            raise ConfigError(f"{setting_and_flag('rank_partitions')} must be from 1 to {MAX_RANK_PARTITIONS:,}, got "
                              f"{self.rank_partitions:,}")
        _require_names(self, "score_column", "rank_column")


@dataclass
class CandidatesConfig:
    """`ce-ray candidates`: BM25 top-k of each query of a BEIR split, as pairs parquet."""

    REQUIRED: ClassVar[tuple] = ("data", "output")

    data: str = ""  # BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv, each or its .gz; local or s3://
    split: str = "test"  # the qrels file, qrels/<split>.tsv, whose queries are searched
    output: str = ""  # folder; writes candidates-<split>.parquet
    top_k: int = 100  # BM25 candidates per query
    max_queries: Optional[int] = None  # the first n queries of the qrels
    # what to do when the output holds candidates (candidates-<split>.parquet of any split, or _SUCCESS); other files
    # stay
    mode: Literal["error", "overwrite"] = "error"

    def validate(self) -> None:
        _require_types(self)
        _require_s3_keys(self)
        _require_file_names(self, "split")
        if self.top_k < 1:
            raise ConfigError(f"{setting_and_flag('top_k')} must be >= 1, got {self.top_k}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ConfigError(f"{setting_and_flag('max_queries')} must be >= 1, got {self.max_queries}")


@dataclass
class EvalConfig:
    """`ce-ray eval`: NDCG, MRR, MAP and Recall of a scored or ranked output, beside a baseline order."""

    REQUIRED: ClassVar[tuple] = ("input",)

    input: str = ""  # rerank/score output folder (its results/), parquet files, or a TREC run file (with qrels)
    qrels: str = ""  # BEIR qrels TSV or TREC qrels (MS MARCO's); empty: the label column gives the grades
    # JSON file; default <output folder>/eval.json, else beside the input: _<file>.eval.json, <folder>.eval.json
    output: str = ""
    # also the reranked order as a TREC run file (`query_id Q0 doc_id rank score ce-ray`), for trec_eval
    run_output: str = ""
    query_id_column: str = "query_id"  # the rows of one query are evaluated together
    doc_id_column: str = "doc_id"  # matched against the qrels' document ids
    label_column: str = "label"  # the grade of each row, without qrels
    score_column: str = "score"  # higher is better
    rank_column: str = "rank"  # used when present ("": never), else the order of score_column
    baseline_column: str = "bm25_rank"  # empty: no baseline
    baseline_descending: bool = False  # False: 1 is best (a rank); True: higher is better (a score)
    k: int = 10  # NDCG@k, MRR@k
    recall_k: int = 100  # Recall@k
    only_with_relevant: bool = False  # skip queries without a relevant document instead of counting 0

    def validate(self) -> None:
        _require_types(self)
        _require_s3_keys(self)
        if self.k < 1 or self.recall_k < 1:
            raise ConfigError(f"{setting_and_flag('k')} and {setting_and_flag('recall_k')} must be >= 1")
        # Each was taken and changed nothing, without a word: the qrels' grades are used, and no baseline is measured.
        if self.qrels:
            refuse_unused(self, ["label_column"], f"gives the grades without qrels: with qrels {self.qrels} the grades "
                                                  "are theirs; leave it out", flags=True)
        if not self.baseline_column:
            refuse_unused(self, ["baseline_descending"], f"orders the baseline, which an empty "
                          f"{setting_and_flag('baseline_column')} leaves out: name the baseline's column", flags=True)


@dataclass
class DeepSpeedConfig:
    """`deepspeed:` section of a training config: ZeRO instead of DDP."""

    stage: Literal[1, 2, 3] = 2  # ZeRO stage: 1 optimizer states, 2 and gradients, 3 and parameters
    bf16: Optional[bool] = None  # unset: on GPU
    offload_optimizer: bool = False  # optimizer states in CPU memory
    offload_params: bool = False  # parameters in CPU memory (stage 3)


@dataclass
class TrainConfig(ModelConfig):
    """`ce-ray train`: fine-tune a reranker on Ray Train. Defaults are the seeds' recipe."""

    REQUIRED: ClassVar[tuple] = ("model", "train_data", "output")

    train_data: str = ""  # pairs (parquet/jsonl/csv/tsv: query, document, label in [0, 1]) or a BEIR folder
    input_format: Literal["auto", "parquet", "jsonl", "csv", "tsv"] = "auto"  # auto: from the files' names
    column_names: str = ""  # CSV or TSV files without a header line: their columns, "query,document,label"
    query_column: str = "query"  # the query's text
    # The document's text (with negative_columns, the positive's), or a list of texts: a pair for each, with
    # label_column's list of as many labels (sentence-transformers' labeled-list) or its one label
    document_column: str = "document"
    label_column: str = "label"  # the relevance label, in [0, 1]
    # Rows of a query, a positive and its negatives (MS MARCO's triples, sentence-transformers' (anchor,
    # positive, negative) sets): the negatives' columns, comma-separated. Each row then gives a pair of the
    # query and document_column (the positive) labelled 1, and one labelled 0 per negative; no label column.
    # Each column may hold lists of texts ({"query": ..., "pos": [...], "neg": [...]}).
    negative_columns: str = ""
    train_split: str = "train"  # qrels split when train_data is a BEIR folder
    hard_negatives: int = 4  # BM25 hard negatives per positive (BEIR training data)
    # Evaluated during training: a BEIR folder, whose split's queries rerank their BM25 top-k, or rows in
    # train_data's shape and columns, each query's rows (by its text) its candidates, their labels its grades
    eval_data: str = ""
    eval_split: str = "test"  # the qrels file of eval_data, qrels/<split>.tsv
    eval_top_k: int = 100  # BM25 candidates per evaluated query (BEIR)
    eval_max_queries: Optional[int] = None  # the first n queries (with a relevant document); unset: all
    output: str = ""  # final model folder; local or s3://
    storage_path: str = ""  # checkpoints; default: <output>/checkpoints
    run_name: str = ""  # a run started again with this name and storage_path resumes; default: the output's name
    num_workers: int = 1  # data-parallel workers, one GPU each on a GPU cluster
    use_gpu: Optional[bool] = None  # unset: when the cluster has GPUs
    cpus_per_worker: float = 1.0  # CPUs each training worker holds
    epochs: int = 1  # passes over the training pairs
    max_steps: Optional[int] = None  # optimizer steps; overrides epochs
    batch_size: int = 16  # per device
    # Padded tokens of one forward pass at most: a larger batch runs in several passes (gradients summed
    # before the step), so a large batch_size fits in memory and long and short pairs pad little. Unset:
    # 65,536 on GPU, 8,192 on CPU (the seeds' batch of 16 stays one pass); DeepSpeed runs whole batches.
    batch_tokens: Optional[int] = None
    grad_accum: int = 1  # batches per optimizer step
    lr: float = 5e-5  # AdamW's peak learning rate, linear decay to 0
    weight_decay: float = 0.0  # AdamW's, not on biases and LayerNorm weights
    warmup_ratio: float = 0.0  # share of the steps the learning rate rises over
    max_grad_norm: float = 1.0  # gradient clipping; 0: none
    pos_weight: Optional[float] = None  # BCE weight of positives
    seed: int = 42  # the order of the batches, and dropout (seed + rank on each worker)
    bf16: Optional[bool] = None  # autocast; unset: on GPU
    dtype: Literal["auto"] = "auto"  # auto only: training keeps float32 weights (bf16 sets the autocast)
    # torch.compile the training forward pass (and so its backward) in each worker: fewer, fused kernels per
    # step after a one-off compile of a minute or so; not with DeepSpeed, which wraps the model its own way.
    compile: bool = False
    # default: Inductor's fused kernels; reduce-overhead: also CUDA graphs (on a GPU), which replay a pass's
    # launches at once, with the passes' widths padded to multiples of 32 so that a few graphs serve them all.
    compile_mode: Literal["default", "reduce-overhead"] = "default"
    group_by_length: bool = True  # batches of pairs of similar lengths, which pad little
    length_window: int = 50  # batches sorted by length together
    save_every: int = 0  # steps between checkpoints; 0: at each epoch end and the last step only
    keep_checkpoints: int = 2  # the latest ones; with best_metric, the best ones (and the latest, to resume from)
    # The output is the checkpoint with the best eval metric (each checkpoint is then evaluated), as
    # CrossEncoderTrainer's load_best_model_at_end; empty: the last one
    best_metric: Literal["", "ndcg@10", "mrr@10", "map"] = ""
    eval_every: int = 0  # steps between evaluations; 0: at each epoch end and the last step only
    log_every: int = 10  # steps between log lines
    max_failures: int = 0  # worker failures the run recovers from (from its last checkpoint)
    deepspeed: Optional[DeepSpeedConfig] = None  # ZeRO instead of DDP
    # The names of CrossEncoderTrainer's (transformers') training arguments that a user of it writes, with the
    # setting of ce-ray that does their job: an unknown key's error says it (eval_steps was said to be
    # max_steps, the closest spelling, and a user who followed it cut the run short).
    TRAINER_NAMES: ClassVar[Dict[str, str]] = {
        "learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
        "gradient_accumulation_steps": "grad_accum", "warmup_steps": "warmup_ratio",
        "eval_steps": "eval_every", "save_steps": "save_every", "logging_steps": "log_every",
        "save_total_limit": "keep_checkpoints", "load_best_model_at_end": "best_metric",
        "metric_for_best_model": "best_metric", "output_dir": "output", "fp16": "bf16",
    }

    @property
    def cuda_graphs(self) -> bool:
        """Whether the training passes run under CUDA graphs (on a GPU): compiled with reduce-overhead."""
        return self.compile and self.compile_mode == "reduce-overhead"

    def validate(self) -> None:
        super().validate()
        _require_file_names(self, "run_name", empty=True)
        if not self.run_name.isascii():  # the run failed once Ray Train had started, and the same command again
            other = next(c for c in self.run_name if not c.isascii())
            raise ConfigError(f"{setting_and_flag('run_name')} {self.run_name!r}: Ray Train takes a run's name in "
                              f"ASCII alone (it tags its metrics with it): give one without {other!r}")
        _require_file_names(self, "train_split", "eval_split")  # a split's is qrels/<split>.tsv
        for name in ("num_workers", "epochs", "batch_size", "grad_accum", "log_every", "eval_top_k",
                     "length_window", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{setting_and_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "eval_every", "max_failures", "hard_negatives"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{setting_and_flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ConfigError(f"{setting_and_flag('batch_tokens')} must be >= 1, got {self.batch_tokens}")
        if self.batch_tokens and self.deepspeed:
            raise ConfigError(f"{setting_and_flag('batch_tokens')} works with DDP only: DeepSpeed steps after a fixed "
                              f"number of passes; use {setting_and_flag('grad_accum')} with a smaller "
                              f"{setting_and_flag('batch_size')} instead")
        # Each of these measures on eval_data: without it a run did nothing of what they asked, and said nothing.
        for name in ("best_metric", "eval_every", "eval_max_queries"):
            if getattr(self, name) and not self.eval_data:
                raise ConfigError(f"{setting_and_flag(name)} {getattr(self, name)} needs "
                                  f"{setting_and_flag('eval_data')}, which it is measured on")
        _require_two_texts(self)
        if self.negative_columns:  # it was taken and read no column: the positive is labelled 1, each negative 0
            refuse_unused(self, ["label_column"], f"names no column of rows of {setting_and_flag('negative_columns')}, "
                          "whose positive is labelled 1 and each negative 0: leave it out", flags=True)
        if self.deepspeed and None not in (self.bf16, self.deepspeed.bf16) and self.bf16 != self.deepspeed.bf16:
            # the section's wins (`train.uses_bf16`): the other was taken and changed nothing
            raise ConfigError(f"{setting_and_flag('bf16')} {self.bf16} and deepspeed.bf16 {self.deepspeed.bf16} "
                              "disagree: set one of them")
        if self.deepspeed and self.deepspeed.offload_params and self.deepspeed.stage != 3:
            # ZeRO-1 and -2 keep every parameter on each device: DeepSpeed reads offload_param at stage 3 alone
            raise ConfigError(f"deepspeed.offload_params works with ZeRO stage 3 alone, which partitions the "
                              f"parameters: set deepspeed.stage 3 (it is {self.deepspeed.stage})")
        if self.compile and self.deepspeed:
            raise ConfigError(f"{setting_and_flag('compile')} works with DDP only: DeepSpeed wraps the model its "
                              "own way")
        if self.compile_mode != "default" and not self.compile:
            raise ConfigError(f"{setting_and_flag('compile_mode')} {self.compile_mode!r} needs "
                              f"{setting_and_flag('compile')}")
        for name in ("max_steps", "eval_max_queries"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{setting_and_flag(name)} must be >= 1, got {getattr(self, name)}")
        # Ray Data's shuffle seeds numpy with the seed plus a block's number, which must stay below 2**32: 2**32
        # failed the run after its data was read, in a task, saying to run it again.
        if not 0 <= self.seed < 2**31 or self.cpus_per_worker <= 0:
            raise ConfigError(f"{setting_and_flag('seed')} must be from 0 to 2**31 - 1 and "
                              f"{setting_and_flag('cpus_per_worker')} > 0, got {self.seed} and {self.cpus_per_worker}")
        if self.lr <= 0:
            raise ConfigError(f"{setting_and_flag('lr')} must be > 0, got {self.lr}")
        for name in ("weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{setting_and_flag(name)} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"{setting_and_flag('warmup_ratio')} must be in [0, 1), got {self.warmup_ratio}")
        if self.pos_weight is not None and self.pos_weight <= 0:
            raise ConfigError(f"{setting_and_flag('pos_weight')} must be > 0, got {self.pos_weight}")


# The config of each command, for saying which command takes a setting that another was given.
COMMAND_CONFIGS = {"score": ScoreConfig, "candidates": CandidatesConfig, "rerank": RerankConfig, "eval": EvalConfig,
                   "train": TrainConfig}


def commands_with_setting(name: str) -> list:
    """The commands whose config has the setting `name` (rerank's top_k given to score: rerank, candidates)."""
    return [command for command, cls in COMMAND_CONFIGS.items() if name in {f.name for f in dataclasses.fields(cls)}]


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _named(name: str) -> str:
    """A setting as a type error names it: a command's setting by its key and flag, a key of a YAML section
    (`deepspeed.stage`), which has no flag, by its key alone."""
    return setting_and_flag(name) if name.isidentifier() else name


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Checks (and mildly coerces: int -> float, `1e-4` text -> float) a YAML or flag value against a dataclass
    annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(name, value, inner[0])
    if value is None and (annotation is str or (origin is Literal and "" in args)):
        return ""  # YAML's empty value (`qrels:`) of a text whose empty means none: refused as NoneType
    if origin is Literal:
        if not any(value == choice and type(value) is type(choice) for choice in args):  # true == 1, 2.0 == 2
            raise ConfigError(f"{_named(name)}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)  # YAML reads 1e-4 (an exponent without a dot) as text
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{_named(name)}: expected {annotation.__name__}, got a boolean {value!r}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):  # a section, which has no flag
            raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__} {value!r}")
        return from_dict(annotation, value, prefix=f"{name}.")
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{_named(name)}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def setting_for_trainer_name(cls: type, key: str) -> Optional[str]:
    """The setting of a config of `cls` (`lr`) that a training argument of transformers (`learning_rate`) names,
    for the hint that says so (a YAML key's or a flag's); else None."""
    return getattr(cls, "TRAINER_NAMES", {}).get(key)


# The settings that name files or folders.
PATH_SETTINGS = ("input", "output", "model", "train_data", "eval_data", "storage_path", "qrels", "data", "run_output")


def _home_expanded(name: str, value: Any) -> Any:
    """A local path's leading `~` as the shell's: `output: ~/scored` wrote into a folder named `~` in the working
    directory, and `input: ~/pairs` did not exist. A `file://` URI as its path (`local_path`): a job given one and
    resumed with the path (or the other way) was refused as a job of other settings."""
    if name not in PATH_SETTINGS or not isinstance(value, str):
        return value
    if value.startswith("file://"):
        return local_path(value)
    return os.path.expanduser(value) if value == "~" or value.startswith("~/") else value


def _checked(cls: type, values: dict, prefix: str = "") -> dict:
    """`values` as settings of `cls`; unknown keys and wrong types fail with the key's name."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if not isinstance(key, str):  # YAML's `1:`, or `on:` and `yes:`, which it reads as True
            read_as = " (YAML reads on, off, yes and no as true or false)" if isinstance(key, bool) else ""
            raise ConfigError(f"unknown setting {prefix}{key!r}: a setting's name is text{read_as}")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            owners = [] if prefix else commands_with_setting(key)
            ours = setting_for_trainer_name(cls, key)
            section = [name for name, kind in hints.items() for a in typing.get_args(kind)
                       if dataclasses.is_dataclass(a) and key in {f.name for f in dataclasses.fields(a)}]
            # another command's setting, or a section's key (`stage: 3` beside `deepspeed:`), is said before a close
            # spelling: qrels given to score was "did you mean 'replicas'", and batch_size "did you mean
            # 'batch_tokens'", a budget of tokens, not of rows
            hint = (f" (CrossEncoderTrainer's name: ce-ray's is {ours!r})" if ours else
                    f" (a key of the {section[0]}: section)" if section and not prefix else
                    f" (a setting of {' and '.join(f'ce-ray {c}' for c in owners)})" if owners else
                    f" (did you mean {close[0]!r}?)" if close else "")
            raise ConfigError(f"unknown setting {prefix + key!r}{hint}")
        kwargs[key] = _home_expanded(key, _check_type(f"{prefix}{key}", value, hints[key]))
    return kwargs


def from_dict(cls: type, values: dict, prefix: str = "") -> Any:
    """Builds a config dataclass from a mapping; unknown keys and wrong types fail with the key's name."""
    return cls(**_checked(cls, values, prefix))


def refuse_loaded_model(model: Any) -> None:
    """A model comes by name, since each replica or worker loads it itself: a loaded CrossEncoder (or transformers
    model) is refused, saying so, rather than printed whole in a type error."""
    if hasattr(model, "forward"):
        raise ConfigError(f"model: a folder, a hub id or an s3:// folder, which each replica or worker loads itself, "
                          f"not a loaded {type(model).__name__}: save it (model.save(path)) and give the path")


def settings_set(config: Any, names) -> list:
    """Those of the settings `names` that `config` has and sets to another value than its default."""
    defaults = type(config)()
    return [name for name in names if hasattr(config, name) and getattr(config, name) != getattr(defaults, name)]


def refuse_unused(config: Any, names, why: str, flags: bool = False) -> None:
    """Fails naming the first of the settings `names` that `config` sets, which the function it was given to does
    nothing with (`why` says so): `score(ds, config=RerankConfig(top_k=5))` scored every row, and
    `score(ds, output="scored/")` wrote nothing, without a word. `flags`: the settings are a command's, named with
    their flags too (a Python function's have none)."""
    given = settings_set(config, names)
    if given:
        raise ConfigError(f"{setting_and_flag(given[0]) if flags else given[0]} {why}")


def with_settings(config: Any, settings: dict, kind: type) -> Any:
    """`config` (a `kind`; None: its defaults) with the Python API's keyword settings on top, checked as YAML keys
    are; a path may be a `pathlib.Path`, as sentence-transformers takes one. A config of another kind is refused:
    a dict failed in dataclasses' words (`must be called with a dataclass type or instance`), and rerank's
    missing settings in a ScoreConfig as an AttributeError."""
    if config is None:
        config = kind()
    if not isinstance(config, kind):
        raise ConfigError(f"config: a {kind.__module__}.{kind.__name__}, not a {type(config).__name__}: give the "
                          f"settings as keywords, or as {kind.__name__}(**settings)")
    settings = {key: os.fspath(value) if isinstance(value, os.PathLike) else value for key, value in settings.items()}
    refuse_loaded_model(settings.get("model"))
    return dataclasses.replace(config, **_checked(type(config), settings))


class _UniqueKeysLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: the last one won without a word, and a line
    added to an example config (which sets mode at its end) changed nothing."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`, whose keys a key given may override
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # PyYAML's own error says so
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_error(e: yaml.YAMLError) -> str:
    """PyYAML's error on one line: its problem and where (its own text runs over several lines)."""
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"{getattr(e, 'problem', None) or ' '.join(str(e).split())}{where}"


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            loaded = yaml.load(f, Loader=_UniqueKeysLoader)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_error(e)}") from e
    if loaded is None:  # an empty file, or comments alone
        return {}
    if not isinstance(loaded, dict):  # `false` and `[]` too, which `or {}` took for an empty file
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(loaded).__name__} "
                          f"{loaded!r}")
    return loaded


def _refuse_empty_sections(cls: type, loaded: dict, path: str) -> None:
    """A section's key with nothing under it (`deepspeed:` uncommented alone, its keys left commented) is YAML's
    null, which means no section: the run was DDP without a word."""
    hints = typing.get_type_hints(cls)
    for key, value in loaded.items():
        if value is None and any(dataclasses.is_dataclass(a) for a in typing.get_args(hints.get(key))):
            raise ConfigError(f"config file {path}: the section {key}: is empty: write `{key}: {{}}` for its "
                              f"defaults, or leave it out")


def load_config(cls: type, path: Optional[str] = None, overrides: Optional[dict] = None,
                unset: Sequence[str] = ()) -> Any:
    """YAML file (optional) first, then overrides (flags that were given) on top; the settings `unset` (flags given
    `none`) left at their defaults, whatever the file sets."""
    values: dict = {}
    if path:  # `--config ""` is none (a script's `--config "${CONFIG:-}"`)
        values.update(_read_yaml(path))
        _refuse_empty_sections(cls, values, path)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for name in unset:
        values.pop(name, None)
    try:
        config = from_dict(cls, values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    validate = getattr(config, "validate", None)
    if validate:
        validate()
    config._given = frozenset(values)  # (`given_settings`)
    return config


def given_settings(config: Any) -> Optional[frozenset]:
    """The settings that a config's file and flags gave (`load_config`), a setting given at its default value among
    them; None for a config built in Python, whose settings at their defaults cannot be told from those given."""
    return getattr(config, "_given", None)


def require(config: Any, *names: str) -> None:
    """Fails naming the settings of `names` (default: the command's REQUIRED) that `config` leaves empty."""
    names = names or config.REQUIRED
    missing = [n for n in names if not getattr(config, n)]
    if missing:
        raise ConfigError(f"missing required setting(s): {', '.join(map(setting_and_flag, missing))}")


__all__ = [
    "ConfigError",
    "ModelConfig",
    "ScoreConfig",
    "RerankConfig",
    "CandidatesConfig",
    "EvalConfig",
    "TrainConfig",
    "DeepSpeedConfig",
    "load_config",
    "given_settings",
    "from_dict",
    "require",
]
