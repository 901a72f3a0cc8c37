"""The scoring pipeline on Ray Data: tokenize on CPU tasks, score in an actor pool of model replicas.

`score(ds, config)` takes and returns a `ray.data.Dataset`, so it drops into a user's own pipeline.
`run_score(config)` is the whole job: read, check, score, write, summarise.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import sys
import threading
import time
from collections.abc import Mapping
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.compute as pc

from .arrow_types import is_text
from .batching import REJECT, PairEncoder, default_batch_tokens, pair_encoder, tokenize_table
from .config import ConfigError, ScoreConfig, refuse_loaded_model, refuse_unused, require, with_settings
from .input_files import (BLOCK_BYTES, DELIMITED, detect_format, job_row_bytes, refuse_reasons_of, refuse_written,
                          rows_within)
from .messages import UNSCORABLE, InputError, column_list, plural, setting_and_flag
from .output_state import (ACTIVATION_SCORED, DTYPE_SCORED, MAX_LENGTH_SCORED, MODEL_VERSION, RESOLVED_LATE,
                           input_cut_record)
from .progress import TELL_EVERY_S, Progress, count_rows, job_counter
from .runtime import (cluster_resources, column_type_clash, cpu_nodes, ensure_ray, free_failed_actors,
                      surfaced_errors, work)
from .storage import absolute
from .tokenizer_facts import facts_ahead

# torch is imported by the replica (ce_ray.replica, ce_ray.model) alone: the driver (whose tokenizer's facts
# another process asks, `tokenizer_facts.facts_ahead`) and the read, tokenize and write tasks import this module
# and the package, and would otherwise each load it for nothing.

SCORE = "score"
# Rows a GPU replica scores per call. Each call ends by waiting for its scores, and its table goes back
# through Ray Data, so a call should hold many batches: 32,768 MS MARCO-length pairs are ~36 64k-token batches.
GPU_ROWS_PER_CALL = 32768
GPU_CALL_BYTES = 512 << 20  # what a replica call's rows take in memory at most on a GPU (`rows_that_fit`)
# CPUs a replica holds: one, so that the others stay free to read and tokenize. On a CPU the model still runs on
# all its node's cores (`replica.Scorer`): scoring is most of the work there.
REPLICA_CPUS = 1


def written_columns(config: ScoreConfig) -> Dict[str, str]:
    """The columns a job adds to the rows, each with what to do about an input column of that name, which the
    job would overwrite: it fails before any work instead (`check_inputs`), or at the block that has it (a
    JSON line's own keys, a caller's Dataset)."""
    columns = {config.score_column: f"name the scores otherwise with {setting_and_flag('score_column')}"}
    if getattr(config, "rank_column", None):  # rerank
        columns[config.rank_column] = f"name the ranks otherwise with {setting_and_flag('rank_column')}"
    return columns


def column_settings(config: ScoreConfig) -> Dict[str, str]:
    """The setting that names each text column the job reads, which an input without that column is told to give."""
    return {config.query_column: "query_column", config.document_column: "document_column"}


def _tokenize_block(table: pa.Table, encoder: PairEncoder, query_column: str, document_column: str,
                    max_length: int, on_invalid: str, written: Dict[str, str],
                    sources: Optional[Dict[str, str]] = None, input_format: str = "auto") -> pa.Table:
    refuse_written(table.column_names, written, "the input")
    # a caller's Dataset that did not know its columns (a job's input check found them in every file)
    check_columns(table.column_names, {query_column: "query_column", document_column: "document_column"})
    out = tokenize_table(table, encoder, query_column, document_column, max_length)
    if on_invalid == "fail" and out.column(REJECT).null_count < out.num_rows:
        raise InputError(_unscorable(out, sources or {}, input_format, (query_column, document_column)))
    return out


def _unscorable(table: pa.Table, sources: Dict[str, str], input_format: str, texts: Sequence[str]) -> str:
    """What on_invalid=fail stops at: how many rows of the block cannot be scored, and the first one's reason,
    with its row and input file where the rows were read from files (`sources`: path by `readers.input_key`; a CSV
    row by its `texts` and file), else its `texts` (a caller's Dataset has no file to name): what the user fixes."""
    from .readers import ROW_INDEX, ROW_INPUT

    reasons = table.column(REJECT)
    first = pc.index(reasons.is_valid(), True).as_py()
    reason = reasons[first].as_py()
    path = sources.get(table.column(ROW_INPUT)[first].as_py()) if ROW_INPUT in table.column_names else None
    shown = ", ".join(f"{name} {_cut(table.column(name)[first].as_py())}" for name in texts)
    if not path:
        reason += f", in the row of {shown}"
    elif path not in reason:  # a reader's reason names the file and line already
        kind = detect_format(path) if input_format == "auto" else input_format
        if kind in DELIMITED:
            # A CSV row's place is no line number: a header, blank lines and quoted line breaks come between, and
            # Arrow's reader gives no line and puts a row of the wrong field count after its chunk: its texts say it.
            reason += f", in the row of {shown} of {path}"
        else:
            reason += f", in row {table.column(ROW_INDEX)[first].as_py() + 1:,} of {path}"
        if kind == "jsonl":
            # A JSON Lines file's rows are its lines that are not blank: where it has blank lines, the row's line
            # is further down, and a user who opens the file at that line finds another row.
            reason += " (blank lines not counted)"
    # A job's rows come from files (`sources`), and its setting is a flag too; a caller's Dataset is Python's.
    stop = setting_and_flag("on_invalid", "fail") if sources else 'on_invalid="fail"'
    return f"{table.num_rows - reasons.null_count} {UNSCORABLE}, e.g. {reason} ({stop})"


def _cut(text: Optional[str], most: int = 40) -> str:
    return repr(text if text is None or len(text) <= most else text[:most] + "...")


def check_columns(names: List[str], needed: Dict[str, str]) -> None:
    """Fails naming a needed column (name -> the setting that names it) that is not among `names`."""
    for column, setting in needed.items():
        if column not in names:
            raise InputError(f"the rows have no column {column!r} (columns: {column_list(names)}): name the "
                             f"column with {setting}")


def require_dataset(ds) -> None:
    if not hasattr(ds, "map_batches"):
        raise InputError(f"pairs to score come as a Ray Dataset (ray.data.from_pandas(frame), ray.data.read_parquet"
                         f"(...)), not a {type(ds).__name__}; ce_ray.predict takes a list of pairs")


def check_known_columns(ds, needed: Dict[str, str], texts: Sequence[str] = (),
                        written: Optional[Dict[str, str]] = None) -> None:
    """That `ds` is a Dataset, and `check_columns` now where it knows its columns without running (read from
    files, from pandas), rather than in a task's traceback once its rows were scored; that it has none of the
    columns the job writes (`written`, `written_columns`: a first stage's `score`), which `_tokenize_block` refuses
    only once the replicas started; and that those of `needed` in `texts` hold text where it knows their types: a
    column of numbers or of lists would have every row rejected, or stop at its first block with on_invalid=fail,
    once the rows were read."""
    require_dataset(ds)
    schema = known_schema(ds)
    if schema is None:
        return
    check_columns(list(schema.names), needed)
    refuse_written(list(schema.names), written or {}, "the Dataset")
    reasons = _known_non_text(schema.base_schema, REJECT) if REJECT in schema.names else None
    if reasons:  # taken for an earlier job's reasons, as a job's input's is
        refuse_reasons_of(reasons, "the Dataset")
    for column in texts:
        kind = _known_non_text(schema.base_schema, column)
        if kind:
            raise InputError(f"the rows' column {column!r} is {kind}, not text: name the column of texts with "
                             f"{needed[column]}, or make it text")


def known_schema(ds):
    """The Dataset's schema where it knows it without running, else None. Where its blocks' known types cannot be
    made one (`ray.data.from_items` of rows that hold a number in a column and text in another row gives each
    block the types of its own rows), fails naming the column: Ray raised pyarrow's ArrowTypeError at the call."""
    try:
        return ds.schema(fetch_if_missing=False)
    except (pa.ArrowTypeError, pa.ArrowInvalid) as e:
        clash = column_type_clash(str(e))
        if clash is None:
            raise
        raise clash from None


def _known_non_text(schema, column: str) -> Optional[str]:
    """The type of a column that a Dataset's schema knows to hold no text (numbers, lists), as it names it; None
    where it holds text or nothing (all null), or values of any kind (a pandas object column: checked by row)."""
    names = list(schema.names)
    dtype = schema.types[names.index(column)]
    if isinstance(schema, pa.Schema):  # Arrow blocks (read from files, from_arrow, ...)
        return None if is_text(dtype) or pa.types.is_null(dtype) else str(dtype)
    # pandas blocks (from_pandas): numpy's kinds of numbers, booleans, dates and durations
    return str(dtype) if getattr(dtype, "kind", "O") in "iufcbmM" else None


@dataclasses.dataclass
class ScoringModel:
    """A checked model, as a job's tasks and replicas take it."""
    config: ScoreConfig  # the model as the workers load it, the max length set
    encoder: PairEncoder
    prompt: str
    activation: str  # the function of the logit the scores are (dotted class name), as the replicas apply it
    files: Optional[dict] = None  # an `s3://` model's objects as listed once (`model_folder.model_files`)


def scoring_model(config: ScoreConfig) -> ScoringModel:
    """Checks the model (its folder, weights, classifier, max length) and reads its tokenizer's facts: a job
    does it before it starts Ray or touches its output, so that a bad model fails at once."""
    return scoring_model_ahead(config)()


def scoring_model_ahead(config: ScoreConfig, files: Optional[dict] = None) -> Callable[[], ScoringModel]:
    """`scoring_model` in two parts: the model's checks now, and the function that gives it. A first job with a
    model's tokenizer asks for its facts in another process meanwhile (`tokenizer_facts.facts_ahead`), so that a
    job checks the model, starts Ray, then takes the model: a tokenizer that cannot be loaded fails it then.
    `files`: an `s3://` model's listing (`model_files`), where the job listed it already (`job_listing`)."""
    from .model_folder import (activation_path, check_max_length, check_pair_cutting, check_safe, check_scores,
                               local_model_path, model_files, model_loading, model_source, query_prompt,
                               usable_max_length)

    config = dataclasses.replace(config, model=model_source(config.model))
    files = files or model_files(config.model)  # the one listing of an s3:// model: the replicas copy these objects
    path = local_model_path(config.model, files)
    check_safe(path, config.allow_pickle, config.trust_remote_code)
    check_scores(path, config.model)
    check_max_length(path, config.model, config.max_length)
    check_pair_cutting(path, config.model)
    prompt = query_prompt(path, config.prompt, config.prompt_name)
    # the copy checked, not a listing of now
    asked = model_loading(config.model, lambda: facts_ahead(path, config.trust_remote_code))

    def checked() -> ScoringModel:
        facts = model_loading(config.model, asked)
        encoder = pair_encoder(config.model, config.tokenizer, config.trust_remote_code, facts, prompt, files)
        max_length = (usable_max_length(path, config.model, facts.max_length) if config.max_length is None
                      else config.max_length)
        # the replica's own choice (`Scorer`, `model.load_scoring_model`): the user's, else the model's
        activation = config.activation or activation_path(path, 1, config.trust_remote_code)
        return ScoringModel(dataclasses.replace(config, max_length=max_length), encoder, prompt, activation, files)

    return checked


# ScoreConfig's settings of a job's files, which a function that takes a Dataset and returns one has none of.
FILE_SETTINGS = ("input", "output", "input_format", "column_names", "mode")


def of_a_jobs_files(job: str, takes: str) -> str:
    """Why a setting of a job's files (`FILE_SETTINGS`) is refused by a function that has none: `job` is the one that
    has them, `takes` what the function takes and gives instead."""
    return f"is a setting of a job's files ({job} reads and writes them): {takes}"

# RerankConfig's settings of ranking, which score (a RerankConfig is a ScoreConfig) has nothing to do with.
RANK_SETTINGS = ("query_id_column", "rank_column", "top_k", "rank_partitions")


def score(ds, config: Optional[ScoreConfig] = None, announce: str = "", **settings):
    """Adds a float32 `score` (`score_column`) to every row of a Dataset of (query, document) pairs.

    Rows that cannot be scored (null or non-text query or document) keep a null score and say why in
    `reject_reason` (null for scored rows); with `on_invalid="fail"` they fail the job instead.
    The rows reach tokenizing and scoring in blocks of at most `rows_per_block` rows (`in_blocks_of`), however the
    Dataset comes: a job's files, or a caller's DataFrame made one block.
    Example: `ce_ray.score(ray.data.read_parquet(...), model="cross-encoder/ms-marco-MiniLM-L6-v2")`.
    With `announce` (a job's title), one line says how the pairs will be scored: the device, the replicas,
    the tokenizer, the forward passes' dtype and token budget, the activation (as `CrossEncoder.predict`'s).
    The settings of a job's files (`FILE_SETTINGS`) and of ranking (`RANK_SETTINGS`, a RerankConfig's) are refused
    where set, naming the first: score does nothing with them.
    """
    ranking = "is a setting of ranking (ce_ray.rerank): score adds the scores alone"
    given = [name for name in RANK_SETTINGS if name in settings]  # as keywords: no ScoreConfig setting holds them
    if given:
        raise ConfigError(f"{given[0]} {ranking}")
    config = with_settings(config, settings, ScoreConfig)
    refuse_unused(config, FILE_SETTINGS, of_a_jobs_files("ce_ray.run_score",
                                                         "score takes a Dataset and returns it scored"))
    refuse_unused(config, RANK_SETTINGS, ranking)
    return add_scores(ds, config, announce)


def add_scores(ds, config: ScoreConfig, announce: str = "", checked: Optional[ScoringModel] = None,
               sources: Optional[Dict[str, str]] = None, progress: Optional[Progress] = None, row_bytes: float = 0.0):
    """`score` of a Dataset by a config whose other settings its caller uses (a job's files, a rerank's ranking).
    `checked`: `scoring_model(config)`, where a job checked it (its config is then the one used). `sources`: a job's
    input files by their key (`readers.input_sources`), so that a row that on_invalid=fail stops at names its file.
    `progress`: a job's progress lines, whose counter the replicas tell the rows they finish. `row_bytes`: what a
    row takes in memory, a job's estimate from its files (`job_row_bytes`), which bounds the rows of a block and a call.
    """
    from .model_folder import dtype_name, half_precision_on_cpu

    require_dataset(ds)
    require(config, "model")
    config.validate()
    texts = column_settings(config)
    check_known_columns(ds, texts, texts=list(texts), written=written_columns(config))
    checked = checked or scoring_model(config)
    config, encoder, prompt = checked.config, checked.encoder, checked.prompt

    free_failed_actors()
    resources = cluster_resources()
    gpus = int(resources.get("GPU", 0))
    use_gpu = on_gpus(config, resources)
    cpus = int(resources.get("CPU", 0))  # none where no node has any yet (a head of `--num-cpus 0`, an autoscaler)
    node_cpus = cpu_nodes()
    _check_room(config, use_gpu, gpus, max(node_cpus, default=cpus), cpus)
    nodes = 0 if use_gpu else max(len(node_cpus), 1)
    min_replicas, max_replicas, per_node = _replica_counts(config, use_gpu, gpus, cpus, nodes)
    dtype = dtype_name(config.dtype, use_gpu)
    slow = "" if use_gpu else half_precision_on_cpu(dtype, f"dtype {dtype}", "dtype auto: float32 on CPUs")
    if slow:
        print(slow, file=sys.stderr, flush=True)
    if announce:  # before Ray Data's own lines, which follow the run
        budget = config.batch_tokens or default_batch_tokens(use_gpu)
        print(f"{announce}: {config.model} on {_replicas_said(config, use_gpu, max_replicas, nodes)}, tokenizer "
              f"{'nanotoken' if encoder.fast is not None else 'Hugging Face'}, forward passes in {dtype} of at most "
              f"{budget:,} tokens, activation {checked.activation.rsplit('.', 1)[-1]}"
              + (f", each query after the prompt {prompt!r}" if prompt else ""), flush=True)
    block_rows, call_rows = rows_that_fit(config, use_gpu, row_bytes)
    if announce and block_rows < config.rows_per_block:
        size = f"{row_bytes / 2**20:,.1f} MiB" if row_bytes >= 2**20 else f"{row_bytes / 2**10:,.0f} KiB"
        print(f"{announce}: note: rows of ~{size} in memory (the input's longest on average): "
              f"blocks of {plural(block_rows, 'row')} and replica calls of {call_rows:,}, where "
              f"{setting_and_flag('rows_per_block')} asks {config.rows_per_block:,}, so that a block holds at most "
              f"{BLOCK_BYTES >> 20} MiB", file=sys.stderr, flush=True)
    tokenized = in_blocks_of(ds, block_rows).map_batches(
        _tokenize_block,
        fn_kwargs=dict(
            encoder=encoder, query_column=config.query_column, document_column=config.document_column,
            max_length=config.max_length, on_invalid=config.on_invalid, written=written_columns(config),
            sources=sources, input_format=config.input_format,
        ),
        batch_format="pyarrow",
        batch_size=block_rows,
        num_cpus=config.tokenize_cpus,
        udf_modifying_row_count=False,
    )
    return tokenized.map_batches(
        ScoringReplica,
        fn_constructor_kwargs=dict(config=config, device="cuda" if use_gpu else "cpu",
                                   replicas_per_node=per_node, files=checked.files,
                                   progress=progress.name if progress else None,
                                   tell_every=progress.tell_every if progress else TELL_EVERY_S),
        batch_format="pyarrow",
        batch_size=call_rows,
        compute=replica_pool(config, use_gpu, min_replicas, max_replicas),
        num_gpus=1 if use_gpu else 0,
        num_cpus=REPLICA_CPUS,
        udf_modifying_row_count=False,
        # A replica that dies (node lost, OOM) is restarted and its blocks are redone: Ray Data's actor
        # pools default to max_restarts=-1 and max_task_retries=-1.
    )


def rows_that_fit(config: ScoreConfig, use_gpu: bool, row_bytes: float) -> Tuple[int, int]:
    """The rows of a block (`rows_per_block`) and of a replica's call (`rows_per_call`; by default 32,768 on a GPU,
    a block's on CPUs), fewer where rows of `row_bytes` would take more than `BLOCK_BYTES` a block (`GPU_CALL_BYTES` a
    call on a GPU). Ray Data batches by rows alone: 300 rows of 2.1 MB documents came to a replica as one call of
    625 MiB, 4 GiB of its memory, and at the default 4,096 rows a call would have held ~8 GiB."""
    block = rows_within(config.rows_per_block, row_bytes, BLOCK_BYTES)
    call = config.rows_per_call or (GPU_ROWS_PER_CALL if use_gpu else config.rows_per_block)
    return block, rows_within(call, row_bytes, GPU_CALL_BYTES if use_gpu else BLOCK_BYTES)


def on_gpus(config: ScoreConfig, resources: Optional[dict] = None) -> bool:
    """Whether the replicas score on GPUs: `use_gpu` where set, else where the cluster has GPUs."""
    if config.use_gpu is not None:
        return config.use_gpu
    return int((resources if resources is not None else cluster_resources()).get("GPU", 0)) > 0


def scored_dtype(config: ScoreConfig) -> str:
    """The dtype the replicas compute in (`dtype_name`): for `auto`, it asks the cluster whether they run on GPUs."""
    from .model_folder import dtype_name

    return config.dtype if config.dtype != "auto" else dtype_name("auto", on_gpus(config))


def in_blocks_of(ds, rows: int):
    """The Dataset's blocks cut to at most `rows` rows each, so that a large block spreads over tokenize tasks and
    replicas: a stage gives each block whole to one task. A job's read task merges the chunks it reads into Ray Data's
    blocks of up to 128 MiB (`DataContext.target_max_block_size`), and a caller's Dataset comes as it was made
    (`ray.data.from_pandas(frame)`: one block): a file of 500,000 short pairs reached tokenizing and scoring as one
    block, one replica of two scoring all its rows, the other none (bench/README.md, "Blocks of a large file").

    The rows go in batches of `rows` (`_cut_into_blocks`), each kept a block of its own by Ray Data's streaming
    repartition, which runs in the same task. The repartition alone cuts as well, but where it puts a task's blocks
    together, a clash of column types met it in a stage that names nothing of ce-ray's (`StreamingRepartition[...]`,
    as a caller's own is named), and where the caller's Dataset ended in a map_batches that keeps its rows
    (`udf_modifying_row_count=False`), Ray Data fused the repartition into it and the tokenize and scoring stages
    after them: one task, one replica call again. A stage that may change its rows' count is not fused into one that
    takes batches of a set size, hence `udf_modifying_row_count=True` here, though every row is kept.
    A byte target sized for `rows` (the Dataset's own context) missed it: a parquet footer's sizes are of the encoded
    pages, far below the rows' in memory where texts repeat."""
    return ds.map_batches(_cut_into_blocks, batch_size=rows, batch_format=None,
                          udf_modifying_row_count=True).repartition(target_num_rows_per_block=rows)


def _cut_into_blocks(batch):
    """A batch of `in_blocks_of`'s cut, as it came (in its own format: nothing is converted)."""
    return batch


def _replica_counts(config: ScoreConfig, use_gpu: bool, gpus: int, cpus: int, nodes: int) -> tuple:
    """The pool's (min, max) replicas and the replicas of a node: by default up to one per GPU, starting with one,
    or on CPUs one per node that has CPUs (`nodes`), each on its node's cores, so that every node of a CPU cluster
    scores; `replicas` and `min_replicas` where given. Said where a setting cannot be met as given."""
    max_replicas = config.replicas or (max(gpus, 1) if use_gpu else nodes)
    # GPU nodes may come as replicas wait for them (an autoscaler); CPU nodes are there, and each would otherwise
    # only read: all the replicas at once.
    wanted = config.min_replicas or (1 if use_gpu else max_replicas)
    min_replicas = min(wanted, max_replicas)
    if config.min_replicas and min_replicas < config.min_replicas:
        print(f"ce-ray: note: {setting_and_flag('min_replicas', str(config.min_replicas))} is more than the "
              f"{max_replicas} replica(s) the job may start ({setting_and_flag('replicas')}; by default one per GPU, "
              f"or one per node on CPUs): starting {min_replicas}",
              file=sys.stderr, flush=True)
    if not use_gpu and min_replicas >= cpus > 1:
        # Each CPU replica holds a CPU for the whole job: replicas on all of them would leave none to read
        # the rows they wait for, and the job would never start.
        asked = (setting_and_flag("min_replicas", str(config.min_replicas)) if config.min_replicas else
                 setting_and_flag("replicas", str(config.replicas)) if config.replicas else f"{wanted} replicas")
        # Nor may the pool grow to them: its replicas' threads are sized for those it starts with, and grown it
        # would hold every CPU again (the announce line said `up to 2`, on both cores each).
        min_replicas = max_replicas = cpus - 1
        print(f"ce-ray: note: {asked} would hold all {cpus} CPUs of the cluster, leaving none to read the input: "
              f"starting {min_replicas}", file=sys.stderr, flush=True)
    # The replicas started share their nodes' cores; on CPUs a pool rarely grows past them (Ray Data's did not
    # on two nodes of 2 and 1 CPUs).
    per_node = 1 if use_gpu else math.ceil(min_replicas / nodes)
    if per_node > 1:
        print(f"ce-ray: note: {min_replicas} replicas on {nodes} node(s) with CPUs: the replicas of a node share its "
              f"cores (1/{per_node} each), where one replica a node (the default) runs on them all",
              file=sys.stderr, flush=True)
    return min_replicas, max_replicas, per_node


def _replicas_said(config: ScoreConfig, use_gpu: bool, max_replicas: int, nodes: int) -> str:
    """Where the job scores, for its announce line; on CPUs, who tokenizes: the replicas themselves where a
    tokenize task asks for the replica's CPU (Ray Data then runs both steps in the replica, one after the other,
    as one), else tokenize tasks beside the replicas, on the cores the replicas run on."""
    if use_gpu:
        return f"GPU, up to {max_replicas} replica(s)"
    shared = max_replicas > nodes
    cores = "sharing their nodes' cores" if shared else "each on its node's cores"
    tokenizing = (f" and tokenizing {'their' if shared else 'its'} own rows" if config.tokenize_cpus == REPLICA_CPUS
                  else f", which tokenize tasks of {config.tokenize_cpus:g} CPU share")
    return f"CPU, up to {max_replicas} replica(s) on {nodes} node(s), {cores}{tokenizing}"


def _check_room(config: ScoreConfig, use_gpu: bool, gpus: int, node_cpus: float, cpus: int) -> None:
    """A GPU, and the CPUs of a tokenize task, that the cluster does not have (`runtime.refuse_or_wait`). A task
    runs on one node: its CPUs are bounded by the largest node's (`node_cpus`), not the cluster's. A cluster of
    one CPU (`cpus`) has none to read the rows once a replica holds it: the job waited forever."""
    from .runtime import refuse_or_wait

    short = ([f"a GPU ({setting_and_flag('use_gpu', True)}; the cluster has none)"] if use_gpu and not gpus else []) + (
        [f"{REPLICA_CPUS + 1} CPUs (a replica holds {REPLICA_CPUS} for the whole job, and reading the rows takes "
         f"another; the cluster has {cpus})"] if cpus < REPLICA_CPUS + 1 else []) + (
        [f"{config.tokenize_cpus:g} CPU{'' if config.tokenize_cpus == 1 else 's'} a tokenize task "
         f"({setting_and_flag('tokenize_cpus')}; the cluster's largest node has {node_cpus:g})"]
        if config.tokenize_cpus > node_cpus else [])
    if not short:
        return
    refuse_or_wait(f"the job needs {' and '.join(short)}, which the local Ray it started cannot give",
                   f"ce-ray: note: the job needs {' and '.join(short)}: it waits until the cluster has them")


def predict(model: str, pairs=None, **settings):
    """`CrossEncoder(model).predict(pairs)` on the Ray cluster: (query, document) pairs in, their float32
    scores out as a numpy array, in order, scored by the cluster's replicas (its GPUs where it has them).
    One pair, `(query, document)`, gives its score alone, as predict does; no pairs give predict's empty array
    (`np.array([])`, float64), the model and the settings checked as for any pairs (without starting Ray). The
    pairs may come by predict's names for them, `inputs=` (or `sentences=`).

    For pairs that fit in the driver's memory; `score` (a Dataset) or `run_score` (files) for more. A pair
    that cannot be scored (a query or document that is None or not text) fails the call, as in CrossEncoder,
    naming why. Settings are `ScoreConfig`'s (`batch_tokens`, `dtype`, `prompt`, `prompt_name`, ...), and
    predict's own where they mean something here: `activation_fn` (a torch module built with no argument:
    `torch.nn.Identity()` gives the logits), `convert_to_tensor`, `convert_to_numpy=False` (a list of
    tensors) and `show_progress_bar` (True or False shows or hides Ray Data's progress for this call; by default
    Ray Data's setting decides); `apply_softmax` (for several labels) and `num_workers` are taken and change
    nothing. `batch_size`, `device`, `pool`, `chunk_size` and `processing_kwargs` are refused, naming the
    setting that does their work here (`batch_tokens`: batches of tokens bound their memory, where a number
    of pairs does not), and so are the settings of a job's files (`JOB_SETTINGS`). Starts a local Ray if none is.
    """
    import numpy as np
    import ray

    refuse_loaded_model(model)
    pairs = _given_pairs(pairs, settings)
    settings, returned, progress = _predict_arguments(settings)

    if isinstance(pairs, Mapping) or hasattr(pairs, "columns"):  # iterated, they give their keys
        raise InputError(f"pairs must be (query, document) pairs, not a {type(pairs).__name__}: a DataFrame's are "
                         "df[[query, document]].itertuples(index=False), or score it with ce_ray.score(Dataset)")
    if isinstance(pairs, (str, bytes, set, frozenset)) or not hasattr(pairs, "__iter__"):
        # A text iterated gives its characters ("qd" passed as the pair ("q", "d"); CrossEncoder.predict scores it
        # as one text), a set's pairs come in no order that the scores could be matched to, and of a number
        # Python's "'int' object is not iterable" said no more.
        raise InputError(f"pairs must be (query, document) pairs, not a {type(pairs).__name__}: one pair is "
                         "(query, document), several a list of them")
    given, pairs = pairs, list(pairs)
    # One pair, as CrossEncoder.predict takes it (its score alone comes back): two members of which neither is a pair
    # itself, texts or not, so that ("q", None) is named as the pair it is, not read as the pairs "q" and None.
    single = len(pairs) == 2 and not any(hasattr(text, "__len__") and not isinstance(text, (str, bytes))
                                         for text in pairs)
    if single:
        pairs = [given if isinstance(given, (list, tuple)) else pairs]
    settings = {"on_invalid": "fail", "query_column": "query", "document_column": "document", **settings}
    column = settings.setdefault("score_column", SCORE)
    config = with_settings(None, {"model": model, **settings}, ScoreConfig)
    config.validate()
    if not pairs:  # the model checked as for any pairs: a wrong call fails whatever it is given
        scoring_model(config)
        return _as_returned(np.zeros(0, np.float32), returned)
    for number, pair in enumerate(pairs):
        # A dict's two keys or a set's two texts would pass as a pair: keys, and in no set order.
        if (isinstance(pair, (str, bytes, Mapping, set, frozenset)) or not hasattr(pair, "__len__")
                or len(pair) != 2):
            raise InputError(f"pairs must be (query, document) pairs: pair {number} is {str(pair)[:80]!r}")
        if isinstance(pair[0], bytes) or isinstance(pair[1], bytes):  # Arrow would take UTF-8 bytes for text
            raise InputError(f"pairs must be (query, document) texts: pair {number} is {str(pair)[:80]!r}: "
                             f"{_not_text(pair)}: decode it (CrossEncoder.predict refuses it too)")
    queries, documents = (list(column) for column in zip(*pairs))
    try:
        columns = {"query": pa.array(queries, pa.large_string(), from_pandas=True),
                   "document": pa.array(documents, pa.large_string(), from_pandas=True)}
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError) as e:
        bad = next((n for n, pair in enumerate(pairs) if not all(map(_is_text_or_missing, pair))), None)
        which = f"pair {bad} is {str(pairs[bad])[:80]!r}: {_not_text(pairs[bad])}" if bad is not None else f"{e}"
        raise InputError(f"pairs must be (query, document) texts: {which}") from None
    if config.on_invalid == "fail":
        _refuse_missing_texts(columns, pairs)
    checking = scoring_model_ahead(config)  # before Ray starts, as in a job: a model that cannot be had fails at once
    ensure_ray()
    checked = checking()
    # Each pair's position travels with it: Ray Data may hand blocks back in any order.
    table = pa.table(columns | {"position": np.arange(len(pairs))})
    rows = ray.data.from_arrow(table)
    if progress is not None:  # this call's Dataset alone: Ray Data's setting stays as it is for the others
        rows.context.enable_progress_bars = bool(progress)
    with _ONE_CALL_AT_A_TIME, surfaced_errors():
        scored = add_scores(rows, config, checked=checked).select_columns(["position", column])
        out = pa.concat_tables(ray.get(scored.to_arrow_refs()))
    scores = np.empty(len(pairs), np.float32)
    scores[out.column("position").to_numpy()] = out.column(column).to_numpy(zero_copy_only=False)
    scores = _as_returned(scores, returned)
    return scores[0] if single else scores


# A call's replicas each hold a CPU for its whole run, and its rows need another to be read: calls from several
# threads at once (a service's requests) each held a replica and waited for the CPUs the others held, for ever and
# without a word, where the Ray had fewer CPUs than twice the calls. One at a time in a process: each call's
# replicas already spread over the cluster's GPUs or CPUs (`add_scores`).
_ONE_CALL_AT_A_TIME = threading.Lock()


# CrossEncoder.rank's arguments that it takes and that change nothing there: its scores are Python floats.
RANK_ARGUMENTS_WITHOUT_EFFECT = ("convert_to_numpy", "convert_to_tensor")


def rank(model: str, query: str, documents, top_k: Optional[int] = None, return_documents: bool = False,
         **settings) -> List[dict]:
    """`CrossEncoder(model).rank(query, documents)` on the Ray cluster: the documents' scores from `predict`, as
    rank's list of `{"corpus_id": the document's place in documents, "score": a float}` (and `"text"`: the
    document, with `return_documents`), the best first, of equal scores the earlier document first, as rank's
    stable sort orders them, a document not scored (on_invalid="reject": NaN) last; the best `top_k` where given
    (0: none). Settings are `predict`'s (it refuses and takes the same); rank's `convert_to_numpy` and
    `convert_to_tensor` are taken and change nothing, as in rank.
    """
    if top_k is not None and (not isinstance(top_k, numbers.Integral) or top_k < 0):
        # checked before the scoring, which a float (1.5) or a text ("3") only failed after, in Python's words
        raise ConfigError(f"top_k must be a whole number >= 0 (None: all the documents), got {top_k!r}")
    if isinstance(documents, (str, bytes, Mapping, set, frozenset)) or not hasattr(documents, "__iter__"):
        # A text was ranked as its characters, a dict as its keys, a set in no order that corpus_id could name.
        raise InputError(f"documents must be a list of texts, not a {type(documents).__name__}: one document is "
                         "[document]")
    documents = list(documents)  # a generator's documents are given back with return_documents
    settings = {name: value for name, value in settings.items() if name not in RANK_ARGUMENTS_WITHOUT_EFFECT}
    # Each text scored once, its copies given its score: scored in batches of other widths, two copies of a
    # document differed in their ninth digit, and ranked by that, not in their order as rank's equal scores are.
    firsts: dict = {}
    first = [firsts.setdefault(d, n) if isinstance(d, str) else n for n, d in enumerate(documents)]
    distinct = sorted(set(first))
    try:
        scored = dict(zip(distinct, predict(model, [(query, documents[n]) for n in distinct], **settings).tolist()))
    except InputError as e:  # predict numbers the pairs it was given: a pair of a document after a copy came sooner
        named = re.sub(r"\bpair (\d+)", lambda m: f"pair {distinct[int(m.group(1))]}", str(e), count=1)
        raise type(e)(named) from None
    scores = [scored[n] for n in first]
    ranked = [{"corpus_id": number, "score": value} | ({"text": document} if return_documents else {})
              for number, (value, document) in enumerate(zip(scores, documents))]
    # sorted() keeps equal scores in their order, as in rank. A document that on_invalid="reject" left unscored (NaN)
    # goes last: NaN compares neither above nor below a score, and sorted among them it misplaced the others too.
    return sorted(ranked, key=_best_first)[:top_k]


def _best_first(row: dict) -> tuple:
    """rank's sort key: the highest score first, a NaN (a document not scored) after every score."""
    unscored = math.isnan(row["score"])
    return unscored, 0.0 if unscored else -row["score"]


def _as_returned(scores, returned: str):
    """The scores as predict returns them: a numpy array, a tensor, or a list of one tensor each."""
    import numpy as np

    if returned == "numpy":
        return scores if len(scores) else np.array([])  # predict's array of no scores is numpy's default, float64
    import torch

    return torch.from_numpy(scores) if returned == "tensor" else list(torch.from_numpy(scores))


def _refuse_missing_texts(columns: Dict[str, pa.Array], pairs: list) -> None:
    """A pair without a query or document (None, NaN) fails the call before Ray starts, naming the pair."""
    for name, column in columns.items():
        if column.null_count:
            number = column.is_null().to_pylist().index(True)
            raise InputError(f"pair {number} has no {name}: {str(pairs[number])[:80]!r}")


# CrossEncoder.predict's names for its pairs, which a caller may give by name: `inputs`, and `sentences` before it.
PAIRS_NAMES = ("inputs", "sentences")
# CrossEncoder.predict's arguments that change nothing here: a reranker has one label (apply_softmax is for
# several), and num_workers changes nothing in predict either.
PREDICT_ARGUMENTS_WITHOUT_EFFECT = ("apply_softmax", "num_workers")
# CrossEncoder.predict's arguments that ce-ray's settings replace, each with what to give instead.
PREDICT_ARGUMENTS_REPLACED = {
    "batch_size": "predict's batches here are of tokens, which bound their memory where a number of pairs does "
                  "not: give batch_tokens (a forward pass's tokens) or leave its default",
    "device": "the replicas run on the cluster's GPUs where it has them: use_gpu=False keeps them on CPUs, "
              "replicas sets how many",
    "pool": "the cluster's replicas (a Ray actor pool) score the pairs: replicas sets how many",
    "chunk_size": "the pairs go to the replicas in batches: rows_per_block sets their rows (rows_per_call on a GPU)",
    "processing_kwargs": "the tokenizer's settings are the model's: max_length sets the truncation",
}


# ScoreConfig's settings of a job's files, which predict (pairs in, scores out) has none of: taken, they changed
# nothing (an `output` wrote no file) or failed on a column the pairs do not have (`query_column`).
JOB_SETTINGS = FILE_SETTINGS + ("query_column", "document_column", "score_column")


def _given_pairs(pairs, settings: dict):
    """The pairs, given as `pairs` or by one of CrossEncoder.predict's names for them (taken from `settings`)."""
    given = ({"pairs": pairs} if pairs is not None else {}) | {
        name: settings.pop(name) for name in PAIRS_NAMES if name in settings}
    if len(given) != 1:
        raise TypeError("predict() takes the pairs once, as its second argument or as pairs, inputs or sentences: "
                        + (f"got {', '.join(given)}" if given else "none given"))
    return next(iter(given.values()))


def _predict_arguments(settings: dict) -> tuple:
    """predict's settings as ScoreConfig's, from CrossEncoder.predict's arguments where given; how the scores
    come back: "numpy", "tensor" (convert_to_tensor) or "list" (of tensors, convert_to_numpy=False), as predict's;
    and `show_progress_bar` (None: Ray Data's setting)."""
    for name, instead in PREDICT_ARGUMENTS_REPLACED.items():
        if name in settings:
            raise ConfigError(f"{name}: {instead}")
    for name in JOB_SETTINGS:
        if name in settings:
            raise ConfigError(f"{name} " + of_a_jobs_files("ce_ray.run_score", "predict takes (query, document) pairs "
                                                                                "and returns their scores"))
    settings = {name: value for name, value in settings.items() if name not in PREDICT_ARGUMENTS_WITHOUT_EFFECT}
    function = settings.pop("activation_fn", settings.pop("activation_fct", None))  # predict's old name too
    if function is not None:
        settings["activation"] = _activation_name(function)
    as_tensor, as_numpy = settings.pop("convert_to_tensor", False), settings.pop("convert_to_numpy", True)
    progress = settings.pop("show_progress_bar", None)
    return settings, "tensor" if as_tensor else "numpy" if as_numpy else "list", progress


def _activation_name(function) -> str:
    """The dotted class name of predict's `activation_fn`, as the replicas build it: with no argument. A function
    that this would not give (a lambda, a module built with arguments) is refused, not replaced by another."""
    import torch

    kind = type(function)
    if not isinstance(function, torch.nn.Module) or repr(function) != repr(_built_alone(kind)):
        raise ConfigError(f"activation_fn {str(function)[:80]}: each replica builds its activation from a class, with "
                          "no argument (torch.nn.Identity(), torch.nn.Sigmoid(), torch.nn.Tanh()); for another "
                          "function, take the logits (activation_fn=torch.nn.Identity()) and apply it to them")
    return f"{kind.__module__}.{kind.__qualname__}"


def _built_alone(kind: type):
    try:
        return kind()
    except Exception:  # a module that needs arguments: no replica could build it
        return None


def _not_text(pair) -> str:
    """What of a pair is not text (`_is_text_or_missing`): `its document is int, not text`."""
    name, text = next((name, text) for name, text in zip(("query", "document"), pair)
                      if not _is_text_or_missing(text))
    if isinstance(text, str):
        return f"its {name} holds a lone surrogate ({_cut(text)}), which UTF-8 cannot write"
    return f"its {name} is {type(text).__name__}, not text"


def _is_text_or_missing(text) -> bool:
    """What a pair may hold: text that UTF-8 can write (not a lone surrogate), or what Arrow takes for a missing
    value (None, NaN, pandas' NA: rejected)."""
    if isinstance(text, str):
        return text.encode("utf-8", errors="ignore").decode("utf-8") == text
    try:
        return pa.array([text], from_pandas=True).null_count == 1
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # an object Arrow cannot read at all
        return False


class ScoringReplica:
    """The actor pool's class: a `replica.Scorer`, whose module (and torch with it) is imported in the
    replica's process alone. Imported here, it would cost the driver seconds (torch and the CUDA libraries)."""

    def __init__(self, config: ScoreConfig, device: str, replicas_per_node: int = 1, files: Optional[dict] = None,
                 progress: Optional[str] = None, tell_every: float = TELL_EVERY_S):
        from .replica import Scorer

        self.scorer = Scorer(config, device, replicas_per_node, files)
        self.counter = job_counter(progress)
        # A CPU replica's call of 4,096 pairs runs a minute or more with a real reranker: it counts its batches as
        # they end. A GPU's batches run in milliseconds, and end only as the call waits for its scores: it counts calls.
        self.by_batch = device == "cpu" and self.counter is not None
        self.tell_every = tell_every

    def __call__(self, table: pa.Table) -> pa.Table:
        done = counted = 0
        told = time.monotonic()

        def batch_done(rows: int) -> None:
            # Told every `tell_every` seconds, not every batch: a small model's batches end every millisecond or
            # so on a CPU, and a tell each (a Ray call) took 30% of its job's time.
            nonlocal done, counted, told
            done += rows
            if time.monotonic() - told >= self.tell_every:
                count_rows(self.counter, done - counted)
                counted, told = done, time.monotonic()

        scored = self.scorer(table, batch_done if self.by_batch else None)
        count_rows(self.counter, table.num_rows - counted)  # the rest: all its rows, or the rejected ones
        return scored


def replica_pool(config: ScoreConfig, use_gpu: bool, min_replicas: int, max_replicas: int):
    """The scoring replicas' actor pool.

    A GPU replica runs two calls at once. A call queues all its batches on the GPU and then waits for its
    scores; meanwhile the other call, in the actor's second thread, queues its own, so the GPU's queue does
    not drain between calls (returning a table and taking the next rows would otherwise leave the GPU idle
    once a call). The Scorer keeps no state between calls; GPU memory holds the batches of two calls. A
    compiled model runs one call at a time (torch.compile does not promise thread safety), as does a CPU
    replica, where the model already uses every core.
    """
    from ray.data import ActorPoolStrategy

    overlap = use_gpu and not config.compile
    return ActorPoolStrategy(
        min_size=min_replicas, max_size=max_replicas,
        # Ray Data also gathers a call's rows while the call before runs.
        max_concurrent_calls_per_actor=2 if use_gpu else None,
        enable_true_multi_threading=overlap,
    )


@dataclasses.dataclass
class Summary:
    rows_in: int
    rows_scored: int
    rows_rejected: int
    seconds: float
    output: str
    files_in: int
    files_kept: int = 0  # --mode resume: inputs whose parts an earlier run wrote are kept, not redone
    rows_kept: int = 0  # their rows (scored and rejected), counted in rows_in
    files_kept_in_part: int = 0  # of files_kept, parquet files left unfinished: only their rows missing were scored

    @property
    def pairs_per_second(self) -> float:
        return (self.rows_in - self.rows_kept) / self.seconds if self.seconds else 0.0

    def lines(self, title: str = "ce-ray score") -> list:
        return summary_lines(title, [
            ("files in", f"{self.files_in:,}"),
            ("rows in", f"{self.rows_in:,}"),
            ("rows scored", f"{self.rows_scored:,}"),
            ("rows rejected", f"{self.rows_rejected:,}" + ("  (see rejects/)" if self.rows_rejected else "")),
        ] + ([("kept", f"{self.files_kept:,} file(s), {plural(self.rows_kept, 'row')} (resumed"
                           + (f"; {self.files_kept_in_part} of them in part)" if self.files_kept_in_part else ")"))]
             if self.files_kept else []) + [
            ("seconds", f"{self.seconds:.1f}"),
            ("pairs/s", f"{self.pairs_per_second:,.1f}"),
            ("output", self.output),
        ])


def _scored_again(keys: list, in_part: dict) -> str:
    """What a resume scores of the input files `keys`: all their rows, or those that their parts left lack (parquet
    files whose parts say which rows they hold: `in_part`)."""
    partly = sum(key in in_part for key in keys)
    if not partly:
        return "they are scored again"
    if partly == len(keys):
        return "their rows missing are scored again"
    return f"they are scored again ({partly} of them only their rows missing)"


def summary_lines(title: str, fields: list) -> list:
    """A job's closing summary: its title, then one aligned (label, value) line per field."""
    return [f"{title}: done"] + [f"  {label:<13} {value}" for label, value in fields]


def job_listing(config: ScoreConfig) -> Optional[dict]:
    """An `s3://` model's objects, listed once for the job (None for any other model): the version its output
    records (`job_settings`) and the objects its replicas copy (`scoring_model_ahead`) are one listing's. Listed
    twice, a model written again between the two was recorded as the one version and scored as the other."""
    from .model_folder import model_files, model_source

    return model_files(model_source(config.model))


def job_settings(config: ScoreConfig, files: Optional[dict] = None) -> dict:
    """The settings that decide an output's rows and scores: a resumed run must share them. `files`: the job's
    listing of an `s3://` model (`job_listing`)."""
    from .model_folder import model_source, model_version

    names = ("input_format", "query_column", "document_column", "max_length", "dtype",
             "tokenizer", "on_invalid", "allow_pickle", "trust_remote_code")
    # The model and the input as they are wherever the job runs from: a relative path is the same folder
    # from another working directory only when it is written out.
    where = {"model": model_source(config.model), "input": absolute(config.input)}
    # And which version of the model: a folder trained again in place, a hub repository's new commit, is another.
    where[MODEL_VERSION] = model_version(where["model"], files)
    # column_names and score_column only when set, so that outputs written before they existed still resume
    return where | {name: getattr(config, name) for name in names} | (
        {"column_names": config.column_names} if config.column_names else {}) | (
        {"score_column": config.score_column} if config.score_column != SCORE else {}) | {
        name: getattr(config, name) for name in ("prompt", "prompt_name") if getattr(config, name) is not None} | (
        {"activation": config.activation} if config.activation else {})


def resolved_settings(checked: ScoringModel) -> dict:
    """What a job's record holds of the settings its replicas resolve from the model, where none was given
    (`output_state.RESOLVED_LATE`): the tokens its pairs are cut at, the activation applied."""
    return {MAX_LENGTH_SCORED: checked.config.max_length, ACTIVATION_SCORED: checked.activation}


def say_input(title: str, files, held: int = 0) -> Optional[int]:
    """Says the pairs a job is to score, and returns them (known from parquet footers; None where a text file's rows
    are counted only as it is read), for its progress lines: Ray Data's progress gives the scoring stage's rows
    against its own estimate of the total, which may be far from it (1,769,472 for a file of 1,200,000 rows).
    `held`: rows of those files that a resumed output holds already, not read."""
    rows = [f.rows for f in files]
    total = sum(rows) - held if rows and None not in rows else None
    print(f"{title}: {'' if total is None else f'{total:,} pairs in '}{len(files)} file(s) to score", flush=True)
    return total


def run_score(config: ScoreConfig, transform=None, title: str = "ce-ray score") -> Summary:
    """The `ce-ray score` job: check the input, score it, write results and rejects, print a summary.

    `transform` (Dataset -> Dataset), when given, runs between scoring and writing.
    Outputs are named per input file; `mode="resume"` keeps the inputs an earlier run completed (and that are
    not rewritten since), and the parts of parquet files it left unfinished, whose rows missing alone it reads
    (`ResumeState.held_rows`); it redoes the rest. A transform regroups rows across files, so its jobs cannot resume.
    """
    from .input_files import parse_names
    from .output_state import OVERWRITE, RESUME
    from .readers import input_key, input_sources, read_dataset
    from .sink import (CPU_PART_BYTES, PART_BYTES, WRITE_REMOTE_ARGS, PairsSink, ResumeState, check_output,
                       lost_or_rewritten, prepare_output, refuse_other_columns, refuse_other_settings, resume_state)
    from .storage import check_apart, check_s3_access

    require(config)
    config.validate()
    if config.mode == "resume" and transform is not None:
        raise ConfigError("mode resume works per input file, but this job groups rows across "
                          "files; use mode overwrite")
    start = time.perf_counter()
    check_apart(config.input, config.output)
    check_s3_access(config.output)
    check_output(config.output, config.mode, resumable=transform is None)
    listing = job_listing(config)
    job = job_settings(config, listing)
    if config.mode == "resume":  # compared with the dtype the earlier run scored in: asks the cluster for `auto`
        job[DTYPE_SCORED] = scored_dtype(config)
    earlier = resume_state(config.output, job) if config.mode == "resume" else ResumeState({}, [])
    done = earlier.complete
    # The model is checked before Ray starts, except where an earlier run completed inputs: a resume with nothing
    # left needs no model (checked in score(), where there is).
    # (its tokenizer's facts asked while Ray starts, in `read_dataset`)
    checking = None if done else scoring_model_ahead(config, listing)

    def to_score(check) -> bool:  # an input that no earlier run completed as it is now
        return not earlier.done(input_key(check.path), check.stamp)

    def held(check) -> list:  # the rows of a parquet file (rows known) that the output holds and keeps
        if check.rows is None or not to_score(check):
            return []
        return earlier.held_rows(input_key(check.path), check.stamp, check.rows) or []

    ds, files, _, schema, listed = read_dataset(
        config.input, config.input_format, [config.query_column, config.document_column], keep=to_score,
        rows_per_block=config.rows_per_block, column_names=parse_names(config.column_names),
        written=written_columns(config), settings=column_settings(config), held=held)
    cut_before = input_cut_record(config.input)  # read before the work: a store's failure then fails no work
    in_part = {input_key(f.path): runs for f in files if (runs := held(f))}  # parquet files resumed in part
    kept_inputs = [input_key(f.path) for f in files if not to_score(f)] + list(in_part)
    refuse_other_columns(config.output, earlier, kept_inputs, schema, written_columns(config))
    rows_held = sum(stop - start for runs in in_part.values() for start, stop in runs)
    unsaid = [key for f in files if (key := input_key(f.path)) not in in_part and f.rows is not None and to_score(f)
              and earlier.rows_unsaid(key)]
    if unsaid:
        print(f"{title}: note: {len(unsaid)} parquet file(s) left unfinished are scored again whole: their parts were "
              f"written by an earlier ce-ray, which did not record the rows each holds (e.g. {unsaid[0]})",
              file=sys.stderr, flush=True)
    # A text file's rows are counted only as it is read: its parts are deleted (`prepare_output`) and it is read again.
    text = [key for f in files if f.rows is None and to_score(f) and (key := input_key(f.path)) in earlier.parts
            and not earlier.parts[key].complete and earlier.parts[key].files]
    if text:
        print(f"{title}: note: {len(text)} JSON Lines, CSV or TSV file(s) left unfinished are scored again whole, "
              f"their parts written replaced: a resume keeps the rows written of a parquet file alone (e.g. {text[0]})",
              file=sys.stderr, flush=True)
    if checking is None and ds is not None:  # a resume of inputs left to score: the model is checked now
        checking = scoring_model_ahead(config, listing)
    checked = checking() if checking else None
    # Known now, the model checked; a run with nothing left to score keeps the earlier run's.
    job |= resolved_settings(checked) if checked else {k: v for k, v in earlier.record.items() if k in RESOLVED_LATE}
    if earlier.record:
        refuse_other_settings(config.output, earlier.record, job)
    progress = None if ds is None else Progress(title, say_input(title, [f for f in files if to_score(f)], rows_held))
    scored = None if ds is None else add_scores(ds, config, title, checked, input_sources(files), progress,
                                                job_row_bytes([f for f in files if to_score(f)]))
    if scored is not None and transform is not None:
        scored = transform(scored)
    stamps = {input_key(f.path): f.stamp for f in files}
    gone = sorted(key for key in done if key not in stamps)
    if gone:
        print(f"{title}: note: {len(gone)} input file(s) that an earlier run completed are no longer in the input "
              f"(e.g. {gone[0]}): their results are removed", file=sys.stderr, flush=True)
    if earlier.damaged:
        print(f"{title}: note: {len(earlier.damaged)} part(s) of the output cannot be read (cut short, or not parquet; "
              f"e.g. {earlier.damaged[0]}): their input files are scored again", file=sys.stderr, flush=True)
    lost, rewritten_parts = lost_or_rewritten(config.output, earlier, stamps)
    if lost:
        print(f"{title}: note: the output of the finished job lost parts of {len(lost)} input file(s) since (deleted "
              f"or lost by the store; e.g. {lost[0]}-r*.parquet): {_scored_again(lost, in_part)}",
              file=sys.stderr, flush=True)
    if rewritten_parts:
        part, (_, then, now) = min(rewritten_parts.items())
        inputs = len({key for key, _, _ in rewritten_parts.values()})
        print(f"{title}: note: {len(rewritten_parts)} part(s) of the finished job's output were rewritten since with "
              f"other rows (e.g. {part}: {plural(then, 'row')}, now {now:,}): their {inputs} input file(s) are scored "
              "again",
              file=sys.stderr, flush=True)
    rewritten = sorted(key for key in done if key in stamps and not earlier.done(key, stamps[key]))
    if rewritten:
        print(f"{title}: note: {len(rewritten)} input file(s) that an earlier run completed were rewritten since "
              f"(another size, time or ETag, e.g. {rewritten[0]}): they are scored again", file=sys.stderr, flush=True)
    if DTYPE_SCORED not in job:  # (a resume asked already) Ray has started: `auto`'s device is known
        job[DTYPE_SCORED] = scored_dtype(config)
    # On CPUs a write task gathers less (`CPU_PART_BYTES`), so that a killed job keeps the files it finished. So
    # many small write tasks then ran at once (a quarter of a CPU each, each in a worker process of its own) that the
    # workers' memory grew by 450-720 MiB over 500,000 short pairs on 2 cores: a write task a node keeps up with CPUs.
    on_cpus = scored is not None and not on_gpus(config)
    sink = PairsSink(config.output, written_columns(config), schema,
                     finish=RESUME if transform is None else OVERWRITE,
                     part_bytes=CPU_PART_BYTES if on_cpus else PART_BYTES)
    kept = prepare_output(config.output, config.mode, job=job, resume=earlier, stamps=stamps,
                          resumable=transform is None, checked=True, in_part=in_part, run=sink.run)
    if scored is not None:
        with progress.lines(), work(), surfaced_errors():
            scored.write_datasink(sink, ray_remote_args=WRITE_REMOTE_ARGS,
                                  concurrency=max(1, len(cpu_nodes())) if on_cpus else None)
    counts = sink.counts
    kept_scored = sum(p.rows_scored for p in kept.parts.values())
    kept_rejected = sum(p.rows_rejected for p in kept.parts.values())
    summary = Summary(
        rows_in=counts["rows_scored"] + counts["rows_rejected"] + kept_scored + kept_rejected,
        rows_scored=counts["rows_scored"] + kept_scored,
        rows_rejected=counts["rows_rejected"] + kept_rejected,
        seconds=time.perf_counter() - start,
        output=config.output,
        files_in=listed,
        files_kept=len(kept.parts),
        rows_kept=kept_scored + kept_rejected,
        files_kept_in_part=len(in_part.keys() & kept.parts.keys()),
    )
    sink.write_success(dataclasses.asdict(summary) | {"pairs_per_second": summary.pairs_per_second}
                       | cut_before, kept=kept)
    print("\n".join(summary.lines(title)), flush=True)
    return summary
