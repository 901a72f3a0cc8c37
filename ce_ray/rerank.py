"""Rerank: score, then rank within each query (1 = best) and optionally keep the top k.

Ray Data shuffles the scored rows by query id into partitions, as `groupby(...).map_groups` does: each partition
holds all rows of its queries and is ranked in one task, in one sort (`rank_queries`), so many queries stream
through many tasks and no process ever holds all pairs. With a top k, each scored block keeps only its best k
rows of each query before the shuffle (`keep_block_top_k`): the shuffle then moves a fraction of the rows (a
tenth for 10 of 100 candidates in one block; little less than all where a block holds few of each query's rows,
as files split by document shard do), and the ranks are the same.

Ties are broken by input order, deterministically. Every row read by `ce_ray.readers.read_dataset` carries
its input file's key and its position in that file (`_ce_input`, `_ce_row`); the input order is the
order of the files as listed (sorted paths), then the row's position in its file. Both are set by the
reader (a parquet file's ranges of row groups start at the rows their footer gives), so they hold however
Ray splits the files into tasks and blocks and whichever task a row's group lands in. A caller's Dataset that
Ray holds (from pandas, materialized) is tagged alike, its blocks in order (`in_row_order`); the rows of a
lazy one come in no set order, and break ties by the document text instead.
"""

from __future__ import annotations

import dataclasses
import time
from typing import List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrow_types import missing_values, whole_number_text
from .batching import REJECT
from .config import MAX_RANK_PARTITIONS, RerankConfig, refuse_unused, require, with_settings
from .messages import InputError
from .output_state import OVERWRITE, input_cut_record
from .progress import Progress, count_ranked, job_counter
from .readers import ROW_INDEX, ROW_INPUT, TAGS, plain_columns
from .score import (FILE_SETTINGS, SCORE, add_scores, check_columns, check_known_columns, column_settings,
                    known_schema, of_a_jobs_files, summary_lines)
from .sink import PairsSink

RANK = "rank"
CUT = "_ce_cut"  # rows top-k cut from the query, on its best row (0 elsewhere); the sink counts and drops it
# 1 on the best row of a query id whose rows carry more than one query text (two sources' ids colliding): its rows
# are ranked as one list, which the summary says; the sink counts and drops it.
SHARED = "_ce_shared_id"
_FILE = "_ce_file"
# The query id as the group-by hashes it: its text, "" where missing. Ray Data hashes each block's key in that block's
# own type, so 7 hashed as int64 differs from 7 in a block whose ids hold a null (hashed as a float), or from 7.0 of a
# file that pandas wrote as floats: one query's rows went to two partitions and were ranked as two lists.
GROUP = "_ce_group"
PARTITION_BYTES = 256 << 20  # about the most that one rank partition's rows take in memory


def _reject_null_query_ids(table: pa.Table, query_id_column: str) -> pa.Table:
    """Rows without a query id (null, NaN or empty) belong to no query: they are rejected, not ranked together."""
    if query_id_column not in table.column_names:
        return table
    column = table.column(query_id_column)
    missing = missing_values(column)
    if not pc.any(missing).as_py():
        return table
    reasons = table.column(REJECT) if REJECT in table.column_names else pa.nulls(table.num_rows, pa.string())
    kind = "NaN" if pa.types.is_floating(column.type) else "empty"
    why = pc.if_else(column.is_null(), f"{query_id_column} is null", f"{query_id_column} is {kind}")
    reasons = pc.if_else(pc.and_(missing, reasons.is_null()), why, reasons)
    table = table.drop_columns([REJECT]) if REJECT in table.column_names else table
    return table.append_column(REJECT, reasons)


def _rankable(table: pa.Table, query_id_column: str, score_column: str) -> pa.Array:
    """The rows that get a rank: a score, no reject reason, a query id."""
    valid = table.column(score_column).is_valid()
    if query_id_column in table.column_names:
        valid = pc.and_(valid, pc.invert(missing_values(table.column(query_id_column))))
    if REJECT in table.column_names:
        valid = pc.and_(valid, table.column(REJECT).is_null())
    return valid


def _ranking_order(table: pa.Table, input_order: Optional[List[str]], document_column: str, score_column: str):
    """(table, sort keys) of the ranking order: score descending, ties by input order (the files as listed, then
    the row in its file, as `_FILE` and `_ce_row`), or by document text in rows without the reader's tags."""
    keys = [(score_column, "descending")]
    if ROW_INPUT in table.column_names and ROW_INDEX in table.column_names:
        files = table.column(ROW_INPUT)
        if input_order is not None:
            files = pc.index_in(files, value_set=pa.array(input_order, pa.string()))
        table = table.append_column(_FILE, files)
        keys += [(_FILE, "ascending"), (ROW_INDEX, "ascending")]
    elif document_column in table.column_names:
        keys.append((document_column, "ascending"))
    return table, keys


def _column_sum(tables: List[pa.Table], column: str) -> int:
    return sum(int(pc.sum(t.column(column)).as_py() or 0) for t in tables if column in t.column_names)


def _several_texts(table: pa.Table, query_column: Optional[str], starts: np.ndarray) -> np.ndarray:
    """1 for each query (its rows from `starts[i]` to the next start) whose rows carry more than one query text."""
    if query_column is None or query_column not in table.column_names or not len(starts):
        return np.zeros(len(starts), dtype=np.int64)
    texts = table.column(query_column)
    firsts = np.repeat(starts, np.diff(np.append(starts, table.num_rows)))
    differs = pc.fill_null(pc.not_equal(texts, texts.take(pa.array(firsts))), False).to_numpy(zero_copy_only=False)
    return np.maximum.reduceat(differs.astype(np.int64), starts)


def _query_starts(keys) -> np.ndarray:
    """The first row of each query in rows sorted by query (`keys`: their query ids, or `GROUP`)."""
    rows = len(keys)
    first = np.ones(rows, dtype=bool)
    if rows > 1:
        first[1:] = pc.not_equal(keys.slice(1), keys.slice(0, rows - 1)).to_numpy(zero_copy_only=False)
    return np.flatnonzero(first)


def _per_query(table: pa.Table, column: str, starts: np.ndarray, reduce) -> np.ndarray:
    """`reduce` (np.add, np.maximum) of a count column over each query's rows (0 where the column is absent)."""
    if column not in table.column_names or not len(starts):
        return np.zeros(len(starts), dtype=np.int64)
    return reduce.reduceat(table.column(column).to_numpy().astype(np.int64), starts)


def rank_queries(table: pa.Table, top_k: Optional[int] = None, input_order: Optional[List[str]] = None,
                 document_column: str = "document", count_cut: bool = False, query_id_column: str = "query_id",
                 score_column: str = SCORE, rank_column: str = RANK, query_column: Optional[str] = None) -> pa.Table:
    """Ranks the rows of each query in a table that holds all rows of its queries (a rank partition), in one
    sort of the whole table: ranking each query in a call of its own took a millisecond a query (40 s of a
    1M-pair job on 2 CPUs). Queries are told apart by `GROUP` (the shuffle's key), else by the query id's text.
    Rejected rows (no score) are kept, unranked, for the rejects output. With `count_cut`, the rows cut by the
    top k are counted on each query's best row (`CUT`), and a query id whose rows carry more than one
    `query_column` text is marked there (`SHARED`), also where keep_block_top_k saw it."""
    table = _reject_null_query_ids(table, query_id_column)
    valid = _rankable(table, query_id_column, score_column)
    # A filter or a take copies every column, the documents' text too: the rows are copied once, those kept, in
    # the ranking's order (the order of a partition's file); the sort and the counts read a few columns.
    every = pc.all(valid).as_py() is not False
    scored = table if every else table.filter(valid)
    rejected = table.slice(0, 0) if every else table.filter(pc.invert(valid))
    if GROUP not in scored.column_names:
        scored = scored.append_column(GROUP, group_key(scored.column(query_id_column)))
    scored, keys = _ranking_order(scored, input_order, document_column, score_column)
    order = pc.sort_indices(scored, sort_keys=[(GROUP, "ascending")] + keys)  # a stable sort
    counted = scored.select([c for c in (GROUP, CUT, SHARED, query_column) if c and c in scored.column_names])
    counted = counted.take(order)
    starts = _query_starts(counted.column(GROUP))
    sizes = np.diff(np.append(starts, scored.num_rows))
    position = np.arange(scored.num_rows) - np.repeat(starts, sizes)  # the row's place in its query's order
    keep = position < (top_k or scored.num_rows)
    ranked = scored.drop_columns([c for c in (CUT, SHARED) if c in scored.column_names])
    ranked = ranked.take(order if keep.all() else order.filter(pa.array(keep)))
    ranked = ranked.append_column(rank_column, pa.array((position[keep] + 1).astype(np.int32)))
    # A rejected row has no score either: a row without a query id was scored before it was rejected here.
    rejected = rejected.drop_columns([c for c in (CUT, SHARED) if c in rejected.column_names])
    rejected = rejected.set_column(rejected.schema.get_field_index(score_column), score_column,
                                   pa.nulls(rejected.num_rows, rejected.schema.field(score_column).type))
    rejected = rejected.append_column(rank_column, pa.nulls(rejected.num_rows, pa.int32()))
    if count_cut:
        # Every query keeps its best row, which carries the query's counts; rows cut before the shuffle
        # (keep_block_top_k) count with those cut here.
        cut, shared = np.zeros(scored.num_rows, dtype=np.int64), np.zeros(scored.num_rows, dtype=np.int64)
        cut[starts] = sizes - np.minimum(sizes, top_k or scored.num_rows) + _per_query(counted, CUT, starts, np.add)
        shared[starts] = np.maximum(_per_query(counted, SHARED, starts, np.maximum),
                                    _several_texts(counted, query_column, starts))
        ranked = ranked.append_column(CUT, pa.array(cut[keep])).append_column(SHARED, pa.array(shared[keep]))
        none = pa.array(np.zeros(rejected.num_rows, dtype=np.int64))
        rejected = rejected.append_column(CUT, none).append_column(SHARED, none)
    out = pa.concat_tables([ranked, rejected], promote_options="default")
    return out.drop_columns([c for c in TAGS + (GROUP, _FILE) if c in out.column_names])


def check_key(table: pa.Table, column: str) -> None:
    """A query id that is no single value (a list, a struct) fails the job here, naming the column, rather
    than in the group-by."""
    check_columns(table.column_names, {column: "query_id_column"})  # a Dataset that did not know its columns
    dtype = table.schema.field(column).type
    if pa.types.is_nested(dtype):
        raise InputError(f"{column} is {dtype}: a query id is one value (text or a number) per row")


def check_known_key(ds, column: str) -> None:
    """`check_key` at the call, where the Dataset knows its columns' Arrow types without running (read from
    parquet, from Arrow), rather than in a task once its rows were scored."""
    schema = known_schema(ds)
    if schema is not None and isinstance(schema.base_schema, pa.Schema):
        check_key(schema.base_schema.empty_table(), column)


def keep_block_top_k(table: pa.Table, top_k: int, query_id_column: str = "query_id",
                     input_order: Optional[List[str]] = None, document_column: str = "document",
                     count_cut: bool = False, score_column: str = SCORE,
                     query_column: Optional[str] = None) -> pa.Table:
    """The best `top_k` rows of each query in one block, and every row that will not be ranked (no score, a
    reject reason, no query id). A row that k rows of its query beat in its block is beaten by them in the
    whole query too (the same order, `_ranking_order`), so the query's top k is among the rows kept. With
    `count_cut`, the rows cut are counted on their query's best row of the block (`_ce_cut`), and
    `rank_queries` adds them to its own; so is a query of several texts marked (`SHARED`)."""
    if query_id_column not in table.column_names:
        return table
    valid = _rankable(table, query_id_column, score_column)
    scored, other = table.filter(valid), table.filter(pc.invert(valid))
    scored, keys = _ranking_order(scored, input_order, document_column, score_column)
    scored = scored.take(pc.sort_indices(scored, sort_keys=[(query_id_column, "ascending")] + keys))
    rows = scored.num_rows
    starts = _query_starts(scored.column(query_id_column))  # each query's first (best) row in the sorted block
    position = np.arange(rows) - np.repeat(starts, np.diff(np.append(starts, rows)))  # the row's place in its query
    keep = position < top_k
    if count_cut:
        cut = np.zeros(rows, dtype=np.int64)
        cut[starts] = np.maximum(np.diff(np.append(starts, rows)) - top_k, 0)
        shared = np.zeros(rows, dtype=np.int64)
        shared[starts] = _several_texts(scored, query_column, starts)
        scored = scored.append_column(CUT, pa.array(cut)).append_column(SHARED, pa.array(shared))
        none = pa.array(np.zeros(other.num_rows, dtype=np.int64))
        other = other.append_column(CUT, none).append_column(SHARED, none)
    scored = scored.filter(pa.array(keep)).drop_columns([c for c in (_FILE,) if c in scored.column_names])
    return pa.concat_tables([scored, other], promote_options="default")


def group_key(column) -> pa.Array:
    """The query ids as one type in every block (`GROUP`): their text (7 and 7.0 alike, as numbers and as a CSV's
    text: two lists of one query, each with its rank 1, where one file held `7.0`), "" where missing (those rows are
    rejected), and binary ids as they are."""
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return column
    return pc.fill_null(whole_number_text(pc.cast(column, pa.string())), "")


def shuffle_input(table: pa.Table, column: str, top_k: Optional[int] = None, **ranking) -> pa.Table:
    """A scored block as the group-by's shuffle takes it: plain columns (a caller's Dataset may hold string
    views, which Arrow's sorts and takes refuse, and a categorical key, which Ray Data's group-by cannot hash),
    a single-valued key, with a top k only each query's best k, and the key that the shuffle hashes (`GROUP`)."""
    table = plain_columns(table)
    check_key(table, column)
    table = table if top_k is None else keep_block_top_k(table, top_k, column, **ranking)
    return table.append_column(GROUP, group_key(table.column(column)))


def rank(ds, query_id_column: str = "query_id", top_k: Optional[int] = None,
         input_order: Optional[List[str]] = None, document_column: str = "document", count_cut: bool = False,
         partitions: Optional[int] = None, score_column: str = SCORE, rank_column: str = RANK,
         query_column: Optional[str] = None):
    """Adds `rank` (`rank_column`) within each query to a scored Dataset (and keeps the top k when given)."""
    ranking = dict(input_order=input_order, document_column=document_column, count_cut=count_cut,
                   score_column=score_column, query_column=query_column)
    ds = ds.map_batches(shuffle_input, fn_kwargs=dict(column=query_id_column, top_k=top_k, **ranking),
                        batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
                        udf_modifying_row_count=top_k is not None)
    return _partitions_by_query(ds, partitions).map_batches(
        rank_queries, fn_kwargs=dict(top_k=top_k, query_id_column=query_id_column, rank_column=rank_column, **ranking),
        batch_format="pyarrow", batch_size=None, zero_copy_batch=True, udf_modifying_row_count=top_k is not None)


def _partitions_by_query(ds, partitions: Optional[int]):
    """The scored rows in blocks that each hold all rows of their queries, as `groupby(GROUP).map_groups` shuffles
    them before it calls its function on each query's rows of a block: a hash shuffle by `GROUP` into `partitions`
    blocks (never split), or where the Dataset's shuffle strategy is a sort, a sort by it."""
    from ray.data.context import ShuffleStrategy

    if ds.context.shuffle_strategy in (ShuffleStrategy.HASH_SHUFFLE, ShuffleStrategy.SHUFFLE_V2,
                                       ShuffleStrategy.GPU_SHUFFLE):
        return ds.repartition(partitions or ds.context.default_hash_shuffle_parallelism, keys=[GROUP])
    return ds.sort(GROUP)


def _tag_block(table, key: str) -> pa.Table:
    """A block of a caller's Dataset with the tags of its rows' order (`ROW_INPUT`: the block, `ROW_INDEX`: the
    row in it), as the reader tags a file's rows."""
    from ray.data.block import BlockAccessor

    table = BlockAccessor.for_block(table).to_arrow()
    return table.append_column(ROW_INPUT, pa.array([key] * table.num_rows, pa.string())).append_column(
        ROW_INDEX, pa.array(np.arange(table.num_rows, dtype=np.int64)))


def in_row_order(ds):
    """(Dataset, input order) that ranks equal scores in the order of the Dataset's rows, as CrossEncoder.rank's
    stable sort keeps the documents' order: for a Dataset whose blocks Ray holds in order (from_pandas,
    from_items, from_arrow, materialize()), each row tagged with its block and place, as the reader tags a file's.
    A lazy Dataset has no order that Ray Data keeps (its blocks come as their tasks end): it stays as it is, and
    equal scores go by document text (`_ranking_order`)."""
    import ray
    from ray.data.dataset import MaterializedDataset

    if not isinstance(ds, MaterializedDataset):
        return ds, None
    tag = ray.remote(_tag_block)
    blocks = [tag.remote(block, str(number)) for number, block in enumerate(ds.to_arrow_refs())]
    return ray.data.from_arrow_refs(blocks), [str(number) for number in range(len(blocks))]


def rerank(ds, config: Optional[RerankConfig] = None, input_order: Optional[List[str]] = None, **settings):
    """Scores a Dataset of pairs and ranks them within each query: adds `score`, `rank` (1 = best; named by
    `score_column` and `rank_column`) and keeps every input column; with `top_k`, only the best k of each
    query. Rejected rows keep a null score and rank and say why in `reject_reason`. Equal scores keep the rows'
    order, as CrossEncoder.rank keeps the documents', in a Dataset that Ray holds (`ray.data.from_pandas(frame)`,
    `from_items`, `materialize()`); in a lazy one, whose blocks come in no set order, they go by document text.
    Example: `ce_ray.rerank(ray.data.read_parquet(...), model="cross-encoder/ms-marco-MiniLM-L6-v2", top_k=10)`.
    """
    config = with_settings(config, settings, RerankConfig)
    refuse_unused(config, FILE_SETTINGS, of_a_jobs_files("ce_ray.run_rerank",
                                                         "rerank takes a Dataset and returns it ranked"))
    config.validate()
    check_known_columns(ds, {config.query_id_column: "query_id_column"})
    check_known_key(ds, config.query_id_column)
    if input_order is None:
        ds, input_order = in_row_order(ds)
    return rank(add_scores(ds, config), config.query_id_column, config.top_k, input_order, config.document_column,
                partitions=config.rank_partitions or _dataset_partitions(ds), score_column=config.score_column,
                rank_column=config.rank_column)


def _dataset_partitions(ds) -> int:
    """The group-by's partitions for a caller's Dataset, as `ce-ray rerank` sizes them for its input (Ray's default,
    200, took 40 s to rank a few rows on 2 CPUs): by its size where Ray holds it; for a lazy one, whose size is
    known only once it has run (running it here would run it twice), one per CPU of the cluster."""
    from ray.data.dataset import MaterializedDataset

    return default_partitions(ds.size_bytes() if isinstance(ds, MaterializedDataset) else 0)


class RankedSink(PairsSink):
    """The pairs sink, also counting the rows top-k cut and the query ids of several query texts (the `CUT` and
    `SHARED` columns, dropped here), and telling when the rank stage started (`rank_started`); each rank task tells
    the job's progress counter (`progress`: its name) that it started and then the rows it ranked."""

    def __init__(self, output: str, written, schema=None, progress: Optional[str] = None):
        super().__init__(output, written, schema, finish=OVERWRITE)
        self.progress = progress
        self.counts |= {"rows_cut": 0, "shared_query_ids": 0}
        self.rank_started: Optional[float] = None  # time.time() at the first rank task's start

    def write(self, blocks, ctx) -> dict:
        from ray.data.block import BlockAccessor

        # Ray fuses this write into the group-by's reduce tasks, which never call on_write_start. A reduce task
        # starts once every row was scored (its partition takes rows of every scored block) and calls this before
        # its rows are ranked: `blocks` runs rank_queries as it is read.
        started = time.time()  # a wall clock: the tasks run on other nodes than the driver
        counter = job_counter(self.progress)
        count_ranked(counter, 0)
        self.on_write_start()
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        added = {"rows_cut": _column_sum(tables, CUT), "shared_query_ids": _column_sum(tables, SHARED)}
        tables = [t.drop_columns([c for c in (CUT, SHARED) if c in t.column_names]) for t in tables]
        written = super().write(tables, ctx) | added | {"rank_started": started}
        count_ranked(counter, sum(t.num_rows for t in tables) + added["rows_cut"])  # every row it took in
        return written

    def on_write_complete(self, write_result) -> None:
        super().on_write_complete(write_result)
        starts = [returned["rank_started"] for returned in write_result.write_returns]
        self.rank_started = min(starts) if starts else None


@dataclasses.dataclass
class RerankSummary:
    rows_in: int
    rows_kept: int  # written to results/, ranked
    rows_cut: int  # scored, below the top k
    rows_rejected: int
    seconds: float
    output: str
    files_in: int
    top_k: Optional[int]
    shared_query_ids: int = 0  # query ids whose rows carry more than one query text, each ranked as one list
    # of `seconds`, those from the first rank task's start, once every row was scored, to the end: taking in,
    # sorting, ranking and writing the partitions; the rest is the start, reading, tokenizing and scoring
    rank_seconds: float = 0.0

    @property
    def rows_scored(self) -> int:
        return self.rows_kept + self.rows_cut

    @property
    def pairs_per_second(self) -> float:
        """Every row in per second, rejected ones too (each was read, checked and written), as `ce-ray score`
        counts them and as the job's first line counts the pairs it has to score."""
        return self.rows_in / self.seconds if self.seconds else 0.0

    def lines(self, title: str = "ce-ray rerank") -> list:
        return summary_lines(title, [
            ("files in", f"{self.files_in:,}"),
            ("rows in", f"{self.rows_in:,}"),
            ("rows scored", f"{self.rows_scored:,}"),
            ("rows kept", f"{self.rows_kept:,}" + (f"  (top {self.top_k} of each query)" if self.top_k else "")),
            ("rows rejected", f"{self.rows_rejected:,}" + ("  (see rejects/)" if self.rows_rejected else "")),
        ] + ([("query ids", f"{self.shared_query_ids:,} with more than one query text, each ranked as one query")]
             if self.shared_query_ids else []) + [
            # the first figure holds the job's start (Ray's, the replicas'), which Ray Data's stats cannot place
            ("seconds", f"{self.seconds:.1f}  ({self.seconds - self.rank_seconds:.1f} starting, reading and "
                        f"scoring, {self.rank_seconds:.1f} ranking and writing)"),
            ("pairs/s", f"{self.pairs_per_second:,.1f}"),
            ("output", self.output),
        ])


def default_partitions(input_bytes: int) -> int:
    """The group-by's partitions for an input of this size in memory: one per CPU of the cluster, so that
    ranking runs on all of them, and more for a large input, so that none holds much more than
    `PARTITION_BYTES`, up to `MAX_RANK_PARTITIONS`, as a setting may give (past 2.5 TB in memory, larger
    partitions: 100,000 ranked 3 rows for minutes without an end). Each partition is gathered, sorted and ranked
    in one task and written as its own file(s). (Ray's default, 200, gave a small input 200 files of a few rows,
    and a large one partitions that grow with it.)"""
    from .runtime import cluster_resources

    wanted = max(int(cluster_resources().get("CPU", 1)), -(-input_bytes // PARTITION_BYTES), 1)
    return min(wanted, MAX_RANK_PARTITIONS)


def run_rerank(config: RerankConfig, title: str = "ce-ray rerank") -> RerankSummary:
    """The `ce-ray rerank` job: read, score, rank per query, keep the top k, write results and rejects."""
    from .input_files import job_row_bytes, parse_names
    from .readers import input_key, input_sources, read_dataset
    from .runtime import surfaced_errors, work
    from .score import job_listing, job_settings, resolved_settings, say_input, scoring_model_ahead, written_columns
    from .sink import check_output, prepare_output
    from .storage import check_apart, check_s3_access

    require(config)
    config.validate()  # refuses mode resume, saying why
    start = time.perf_counter()
    check_apart(config.input, config.output)
    check_s3_access(config.output)  # a bucket that is not there is an error, where writing would create it
    check_output(config.output, config.mode, resumable=False)
    listing = job_listing(config)
    checking = scoring_model_ahead(config, listing)  # its tokenizer's facts asked while Ray starts, in `read_dataset`
    # The query id may be text or a number: present, of any type.
    ds, files, input_bytes, schema, listed = read_dataset(
        config.input, config.input_format, [config.query_column, config.document_column],
        rows_per_block=config.rows_per_block, column_names=parse_names(config.column_names),
        present=[config.query_id_column], written=written_columns(config),
        settings=column_settings(config) | {config.query_id_column: "query_id_column"})
    # The files' types, from their footers and first lines: a query id that cannot be ranked is refused before any work.
    check_key(schema.empty_table(), config.query_id_column)
    cut_before = input_cut_record(config.input)  # read before the work: a store's failure then fails no work
    job = job_settings(config, listing) | {"query_id_column": config.query_id_column, "top_k": config.top_k} | (
        {"rank_column": config.rank_column} if config.rank_column != RANK else {})
    checked = checking()
    job |= resolved_settings(checked)
    progress = Progress(title, say_input(title, files), ranks=True)
    scored = add_scores(ds, config, title, checked, input_sources(files), progress, job_row_bytes(files))
    sink = RankedSink(config.output, written_columns(config), schema, progress.name)
    prepare_output(config.output, config.mode, job=job, resumable=False, checked=True, run=sink.run)
    partitions = config.rank_partitions or default_partitions(input_bytes)
    print(f"{title}: ranks the rows of each {config.query_id_column} in {partitions} partition(s)"
          + (f", keeping the best {config.top_k}" if config.top_k else ""), flush=True)
    ranked = rank(scored, config.query_id_column, config.top_k, [input_key(f.path) for f in files],
                  config.document_column, count_cut=True, partitions=partitions, score_column=config.score_column,
                  rank_column=config.rank_column, query_column=config.query_column)
    with progress.lines(), work(), surfaced_errors():
        ranked.write_datasink(sink)
    seconds, ended = time.perf_counter() - start, time.time()
    counts = sink.counts
    summary = RerankSummary(
        rows_in=counts["rows_scored"] + counts["rows_cut"] + counts["rows_rejected"],
        rows_kept=counts["rows_scored"],
        rows_cut=counts["rows_cut"],
        rows_rejected=counts["rows_rejected"],
        seconds=seconds,
        output=config.output,
        files_in=listed,
        top_k=config.top_k,
        shared_query_ids=counts["shared_query_ids"],
        rank_seconds=min(max(ended - sink.rank_started, 0.0), seconds) if sink.rank_started else 0.0,
    )
    sink.write_success(dataclasses.asdict(summary) | {"rows_scored": summary.rows_scored,
                                                      "pairs_per_second": summary.pairs_per_second}
                       | cut_before)
    print("\n".join(summary.lines(title)), flush=True)
    return summary
