"""`ce-ray eval`: NDCG@k, MRR@k, MAP and Recall@k of a scored or ranked output, per query and averaged, for the
reranked order and a baseline order (`bm25_rank`, an original position, ...) side by side.

Grades come from a BEIR qrels file (documents the first stage missed then count against Recall and MAP, and
the ideal NDCG ranks all judged documents) or from the rows' `label` column. The reranked order is the `rank`
column when present, else the score, highest first, ties in file order. A query with no relevant document
counts 0, as in sentence-transformers' `CrossEncoderRerankingEvaluator` and trec_eval; with
`only_with_relevant` such queries are left out instead (WikiQA's usual protocol). Only the needed columns are
read, and every query is measured at once (numpy), so a million pairs evaluate in about a second. The input
may also be a TREC run file of any system (with qrels), so that a first stage's run and ce-ray's output are
measured alike, its equal scores ranked as trec_eval ranks them (`read_trec_run`). A rerank's output cut to
each query's top k gets no baseline (its rows are the reranker's choice, not the first stage's list): the
first stage is measured on the rerank's input. An output of ce-ray is read as its job wrote it
(`_following_the_job`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .arrow_types import is_text, missing_values, whole_number_id, whole_number_text
from .config import ConfigError, EvalConfig, given_settings, require
from .input_files import (FileCheck, agreed_schema, compression_of, detect_format, eval_beside, list_files,
                          partition_values)
from .messages import InputError, column_list, lookalikes_hint, plural, setting_and_flag, settings_hint
from .metrics import dcg, lists_metrics, mean_metrics, metric_names
from .output_state import (EVAL, REJECTS, RESULTS, SUCCESS, in_unfinished_results, job_of_results, job_summary,
                           refuse_changed_output, rows_cut_before)
from .storage import (check_s3_access, file_in_the_way, filesystem, glob_base, is_glob, is_inside, is_remote, join,
                      named_as_a_folder, same_place, try_local_folder, write_bytes_atomic)
from .train_data import numeric_labels


def read_columns(uri: str, wanted: List[str], required: List[str], ids: List[str], needed_ids: List[str],
                 job: Optional[dict] = None, settings: Optional[Dict[str, str]] = None) -> pd.DataFrame:
    """The wanted columns (those present) of an output folder's results/ (`list_files`; `job`, the summary of the job
    that wrote it, where the caller read it), or of parquet files; a row without one of `needed_ids` is left out, and
    `ids` columns of whole floats are integers. `settings`: the setting that names each required column, which a
    file without it is told to give."""
    listing = list_files(uri, "parquet", summary=job)
    tables, rows, lacking = [], {}, []  # lacking: a file that misses a required column, and what it says
    for file in listing.files:
        try:
            with listing.fs.open_input_file(file) as f:
                parquet = pq.ParquetFile(f)
                rows[file], own = parquet.metadata.num_rows, parquet.schema_arrow.names
                keys = {k: v for k, v in partition_values(file).items() if k in wanted and k not in own}
                names = [*own, *keys]
                missing = [c for c in required if c not in names]
                if missing and rows[file]:
                    lacking.append(f"{file}: missing column(s) {', '.join(map(repr, missing))} "
                                   f"(columns: {column_list(names)})" + settings_hint(missing, settings or {})
                                   + lookalikes_hint(missing, names))
                table = parquet.read(columns=[c for c in wanted if c in own])
                for key, value in keys.items():  # a hive-style folder's key, as the jobs read it: text
                    table = table.append_column(key, pa.repeat(pa.scalar(value, pa.string()), table.num_rows))
                tables.append(table)
        except pa.ArrowInvalid as e:  # a file cut short, or not parquet: pyarrow's message names no file
            raise InputError(f"cannot read {file}: {e}" + _parquet_only(file)) from None
    refuse_changed_output(uri, listing.finished, rows)  # first: a part lost or rewritten says more than its columns
    if lacking:
        raise InputError(lacking[0])
    # One type per column, as the jobs widen their input's (docs/inputs.md): an int64 label in one file and a double
    # in another make a double; kinds of no one type (a number and text) are refused naming both files.
    schema = agreed_schema([FileCheck(file, t.column_names, t.num_rows, dict(zip(t.column_names, t.schema.types)))
                            for file, t in zip(listing.files, tables)])
    typed = [t.cast(pa.schema([schema.field(name) for name in t.column_names])) for t in tables if t.num_rows]
    table = pa.concat_tables(typed or tables, promote_options="permissive")
    # A row without an id belongs to no query (or matches no judgment); dropped here, in Arrow, so that integer
    # ids stay integers (pandas would make them floats around a null, and `1` would become `1.0`).
    identified = pa.array(np.ones(table.num_rows, dtype=bool))
    for name in needed_ids:
        identified = pc.and_(identified, pc.invert(missing_values(table.column(name))))
    kept = table.filter(identified)
    for name in ids:
        if name in kept.column_names:
            kept = kept.set_column(kept.schema.get_field_index(name), name, _whole_numbers(kept.column(name)))
    df = kept.to_pandas()
    for name in ids:  # integer ids around a null (a document's, kept without qrels): as Arrow holds them, where pandas
        # made them floats, written in a run as `1.2345678901e+10`, and of 2**53 or more, two ids as one
        if name in df.columns and pa.types.is_integer(kept.schema.field(name).type) and kept.column(name).null_count:
            df[name] = kept.column(name).to_pandas(types_mapper=pd.ArrowDtype)
    df.attrs["rows_without_ids"] = table.num_rows - len(df)
    return df


def _whole_numbers(ids: pa.ChunkedArray) -> pa.ChunkedArray:
    """Float ids that are all whole numbers (how pandas writes an integer id column with a missing value) as
    integers, so that `1.0` matches the qrels' `1`; a missing one stays missing. Text ids so written (a CSV's, through
    rerank) as the integer's text."""
    if is_text(ids.type) and not pa.types.is_dictionary(ids.type):
        return whole_number_text(ids)
    if not pa.types.is_floating(ids.type) or not len(ids):
        return ids
    missing = missing_values(ids)
    values = ids.filter(pc.invert(missing)).to_numpy()
    if not np.array_equal(values, np.round(values)):
        return ids
    return pc.cast(pc.if_else(missing, pa.scalar(None, ids.type), ids), pa.int64())


def _parquet_only(file: str) -> str:
    """What to do where eval was given a file of a text format: it reads scored rows as the jobs write them."""
    kind = detect_format(file)
    if kind in (None, "parquet"):
        return ""
    return (f" (a {kind.upper()} file: eval reads parquet, a score or rerank output or its files, or a TREC run "
            f"file; score or rerank these pairs first, or write them as parquet)")


def _whole_number_qrels(qrels: Dict[str, Dict[str, int]]) -> Dict[str, Dict[str, int]]:
    """The qrels with their ids as `_whole_numbers` reads an input's: `7.0` as `7`, so that an id written so in both
    files is one (a TREC run's ids are read as written, as the qrels')."""
    whole: Dict[str, Dict[str, int]] = {}
    for query, judged in qrels.items():
        grades = whole.setdefault(whole_number_id(query), {})
        grades.update((whole_number_id(doc), grade) for doc, grade in judged.items())
    return whole


def is_trec_run(uri: str, job: Optional[dict] = None) -> bool:
    """A single file whose name is not that of a data format (`run.txt`, `bm25.trec`) and that is no parquet file
    (a Spark-style `part-00000`, which it was taken for): a TREC run; never the output of a job (`job`, its summary:
    `job_summary`)."""
    if job is not None:
        return False
    fs, path = filesystem(uri)
    if named_as_a_folder(uri) or fs.get_file_info(path).type != pafs.FileType.File or detect_format(path) is not None:
        return False
    with fs.open_input_stream(path) as f:
        return f.read(len(PARQUET_MAGIC)) != PARQUET_MAGIC


PARQUET_MAGIC = b"PAR1"  # a parquet file's first bytes


def read_trec_run(uri: str, c: EvalConfig) -> pd.DataFrame:
    """A TREC run (`query Q0 document rank score tag` a line, any system's) as rows of query id, doc id and
    score; its order is the score's, highest first, as trec_eval takes it (the rank field is not read), and
    equal scores are ordered as trec_eval orders them, by document id, descending (a BM25 run ties often): each
    query's rows come so, and the ranking keeps the rows' order among equal scores (`_ranked`)."""
    names = [c.query_id_column, c.doc_id_column, c.score_column]
    run = _single_spaced_run(uri, names)
    if run is None:
        run = pd.DataFrame(_run_lines(uri), columns=names)
    query = pd.factorize(run[c.query_id_column])[0]  # queries stay in the file's order
    scores = run[c.score_column].to_numpy()
    tied = pd.DataFrame({"query": query, "score": scores}).duplicated(keep=False).to_numpy()
    if not tied.any():
        return run
    doc = np.zeros(len(run), dtype=np.int64)
    doc[tied] = pd.factorize(run[c.doc_id_column].to_numpy()[tied], sort=True)[0]  # only ties need the ids' order
    return run.iloc[np.lexsort((-doc, query))].reset_index(drop=True)


def _single_spaced_run(uri: str, names: List[str]) -> Optional[pd.DataFrame]:
    """A run whose fields are separated by single spaces (as ce-ray and most systems write them) and whose scores
    are all numbers, read by Arrow: a million lines in a fraction of a second, where `_run_lines` takes seconds
    and a tuple a line. None for any other (tabs, a bad line), which `_run_lines` reads, naming a bad line."""
    fields = ["query", "q0", "doc", "rank", "score", "tag"]
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path, compression=compression_of(path)) as f:
            table = pcsv.read_csv(f, read_options=pcsv.ReadOptions(column_names=fields),
                                  parse_options=pcsv.ParseOptions(delimiter=" ", quote_char=False),
                                  convert_options=pcsv.ConvertOptions(
                                      column_types={"query": pa.string(), "doc": pa.string(), "score": pa.float64()},
                                      include_columns=["query", "doc", "score"]))
    except (pa.ArrowInvalid, OSError):
        return None
    empty = pc.any(pc.or_(pc.equal(table.column("query"), ""), pc.equal(table.column("doc"), ""))).as_py()
    # `a Q0  1 0.9 x`, its document id lost, and a score `nan`: `_run_lines` refuses them, naming the line
    if table.column("score").null_count or empty or pc.any(pc.is_nan(table.column("score"))).as_py():
        return None
    return table.rename_columns(names).to_pandas()


def _run_lines(uri: str):
    """(query id, document id, score) of each line of a TREC run, read line by line."""
    from .candidates import numbered_lines

    for number, line in numbered_lines(uri):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise InputError(f"{uri} line {number}: a TREC run line has 6 fields (query Q0 document rank score "
                             f"tag), got {len(fields)}")
        try:
            score = float(fields[4])
        except ValueError:
            score = math.nan
        if math.isnan(score):  # `nan` too: trec_eval ranks it nowhere in particular (its comparisons all false)
            raise InputError(f"{uri} line {number}: score {fields[4]!r} is not a number")
        yield fields[0], fields[2], score


def _ranked(lists: np.ndarray, values: pd.Series, descending: bool, docs: Optional[pd.Series] = None) -> np.ndarray:
    """Row positions with each list's rows together (lists in ascending number) in the order of `values`,
    missing ones last, equal ones in file order (numpy's lexsort is stable), or with `docs` by document id,
    descending, as trec_eval orders them."""
    key = _as_numbers(values).to_numpy(np.float64, na_value=np.nan)  # NaN sorts last, negated too
    ties = () if docs is None else (-pd.factorize(docs.astype(str), sort=True)[0],)
    return np.lexsort((*ties, -key if descending else key, lists))


def _as_numbers(values: pd.Series) -> pd.Series:
    """A rank or score column as numbers: one that came as text (a CSV's column) read so, other text missing."""
    return values if pd.api.types.is_numeric_dtype(values) else pd.to_numeric(values, errors="coerce")


def _refuse_text_order(df: pd.DataFrame, column: str, setting: str) -> None:
    """An order's column of text (`--baseline-column document`) has no number to order by: its every row was
    left out as one without a score, or the baseline was the document ids' order, said to be the column's."""
    values = df[column].dropna() if column in df.columns else ()
    if len(values) and _as_numbers(values).isna().all():
        example = str(values.iloc[0])[:40]
        raise InputError(f"{setting_and_flag(setting, column)}: the column holds no numbers ({example!r}): name a "
                         "column of ranks (1 is best) or of scores (higher is better)")


def _holds_fractions(df: pd.DataFrame, column: str) -> bool:
    """Whether `column`, read as a rank, holds numbers no rank has: a score's, whose order read so is upside down,
    its metrics quietly the worst."""
    if column not in df.columns:
        return False
    values = _as_numbers(df[column]).dropna().to_numpy(dtype=np.float64)
    return bool((values != np.round(values)).any())


def _ordered_rows(df: pd.DataFrame, c: EvalConfig) -> pd.DataFrame:
    """The rows that have the value that orders them, a score or a rank. A row of a caller's Dataset that ce-ray
    could not score has a null score (its `reject_reason` says why), and a NaN ranks nowhere in particular in
    trec_eval's order: they ranked last, and the run held `nan`. They are left out, as a job's rejected rows are
    (its rejects/), and counted (`rows_without_order`)."""
    ranked_by, _ = _order_column(df, c)
    _refuse_text_order(df, ranked_by, "rank_column" if ranked_by == c.rank_column else "score_column")
    missing = _as_numbers(df[ranked_by]).isna().to_numpy() if ranked_by in df.columns else None
    if missing is None or not missing.any():
        return df
    kept = df[~missing].reset_index(drop=True)
    kept.attrs = df.attrs | {"rows_without_order": int(missing.sum())}
    return kept


def _first_of_each_pair(rows: np.ndarray, lists: np.ndarray, docs: pd.Series) -> np.ndarray:
    """Ranked rows (`_ranked`) less the later copies of each (query, document) pair: a document counts once,
    at its best rank, whatever the file's order (a document scored passage by passage counts as its best)."""
    codes, documents = pd.factorize(docs)  # pairs as numbers, which hash faster than text
    pairs = lists.astype(np.int64) * (len(documents) + 1) + codes + 1  # a missing id (-1) is a document of its own
    return rows[~pd.Series(pairs[rows]).duplicated().to_numpy()]


def _tied_pairs(lists: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Which rows have a score that another row of their query shares: ce-ray keeps their order (the rank column's,
    else the file's; a TREC run's, read, is trec_eval's), trec_eval orders them by document id (descending) and other
    tools otherwise, so only there can their figures differ. The rows come ranked, a query's scores never rising
    (`_run_scores`): equal ones are neighbours."""
    equal = (scores[1:] == scores[:-1]) | (np.isnan(scores[1:]) & np.isnan(scores[:-1]))
    tie = (lists[1:] == lists[:-1]) & equal
    tied = np.zeros(len(lists), dtype=bool)
    tied[1:] |= tie
    tied[:-1] |= tie
    return tied


def rank_queries(df: pd.DataFrame, c: EvalConfig) -> tuple:
    """The reranked order of a frame, measured (`evaluate_frame`) and written as a run (`write_trec_run`) alike,
    so ranked once: each row's query number (queries numbered in the order they first come, by the id's text,
    as rerank groups them), the query ids, and the rows ranked (`_ranked`)."""
    ranked_by, descending = _reranked_by(df, c)
    lists, query_ids = pd.factorize(df[c.query_id_column].astype(str), sort=False)
    return lists, np.asarray(query_ids, dtype=object), _ranked(lists, df[ranked_by], descending)


def _order_column(df: pd.DataFrame, c: EvalConfig) -> tuple:
    """`_reranked_by`'s choice, the score's name where the input has neither (which it refuses)."""
    return (c.rank_column, False) if c.rank_column in df.columns else (c.score_column, True)


def _reranked_by(df: pd.DataFrame, c: EvalConfig) -> tuple:
    """The column that gives the reranked order, and whether higher comes first: the rank, else the score."""
    ranked_by, descending = _order_column(df, c)
    if ranked_by not in df.columns:
        # A first stage's output (`ce-ray candidates`') holds its own order, the baseline: say which flag reads it.
        setting = "score_column" if c.baseline_column and c.baseline_descending else "rank_column"
        first_stage = (f", e.g. {setting_and_flag(setting, c.baseline_column)} for the input's first-stage order"
                       if c.baseline_column in df.columns else "")
        named = (f"neither {c.rank_column!r} nor {c.score_column!r} is" if c.rank_column
                 else f"{c.score_column!r} is not")
        raise InputError(f"{named} a column of the input: name the "
                         f"order's column, a rank (1 is best) with {setting_and_flag('rank_column')} or a score "
                         f"(higher is better) with {setting_and_flag('score_column')}" + first_stage)
    return ranked_by, descending


def evaluate_frame(df: pd.DataFrame, config: EvalConfig, qrels: Optional[Dict[str, Dict[str, int]]] = None,
                   ranking: Optional[tuple] = None) -> dict:
    """Per-query and mean metrics of the reranked and baseline orders of a frame of scored pairs; `ranking` is
    the reranked order (`rank_queries`) where the caller has it."""
    c = config
    ranked_by, _ = _reranked_by(df, c)
    baseline = c.baseline_column if c.baseline_column and c.baseline_column in df.columns else None
    if c.baseline_column and baseline is None:
        print(f"ce-ray eval: note: no {c.baseline_column!r} column, no baseline", file=sys.stderr)
    if baseline == ranked_by:
        print(f"ce-ray eval: note: {baseline!r} gives the reranked order: no baseline", file=sys.stderr)
        baseline = None
    lists, query_ids, reranked = ranking or rank_queries(df, c)
    notes = {}
    if qrels is not None:
        # As trec_eval: a query the qrels do not judge is not evaluated (TREC DL judges a few of its queries).
        # A document listed twice for a query (candidates merged from two retrievers, passages of one document)
        # counts once, at its best rank in each order (`_first_of_each_pair`), where trec_eval refuses the run.
        judged_query = np.array([q in qrels for q in query_ids], dtype=bool)
        in_qrels = judged_query[lists]
        notes["queries_not_in_qrels"] = int((~judged_query).sum())
        notes["queries_in_qrels"] = int(judged_query.sum())
        repeated = in_qrels & df.duplicated([c.query_id_column, c.doc_id_column]).to_numpy()
        notes["repeated_pairs_dropped"] = int(repeated.sum())
        grades = pd.DataFrame([(q, d, g) for q, judged in qrels.items() for d, g in judged.items()],
                              columns=["query", "doc", "grade"])
        pairs = pd.DataFrame({"query": query_ids[lists], "doc": df[c.doc_id_column].astype(str).to_numpy()})
        graded = pairs.merge(grades, how="left", on=["query", "doc"])["grade"]
        notes["judged_pairs"] = int(graded.notna().to_numpy()[~repeated].sum())  # each pair once, as measured
        gains = graded.fillna(0).to_numpy(np.float64)
        judged = [list(qrels.get(q, {}).values()) for q in query_ids]
        total = np.array([sum(g > 0 for g in grades) for grades in judged])
        ideal = np.array([dcg(sorted(grades, reverse=True), c.k) for grades in judged])
    else:
        judged_query, in_qrels = np.ones(len(query_ids), dtype=bool), np.ones(len(df), dtype=bool)
        repeated = np.zeros(len(df), dtype=bool)  # without qrels each row is a candidate, as in the evaluator
        # As training reads labels: text (a CSV's, through rerank) as numbers, `True` and `False` as 1 and 0, and
        # a column where none is a number refused, where it was read as 0 everywhere.
        try:
            labels = numeric_labels(pa.table({c.label_column: pa.array(df[c.label_column])}), c.label_column)
        except InputError as e:
            raise InputError(f"{c.input}: {e}: name the grades' column with {setting_and_flag('label_column')}, or "
                             f"give {setting_and_flag('qrels')}") from None
        gains = np.nan_to_num(labels.to_numpy(zero_copy_only=False).astype(np.float64), nan=0.0)
        soft = gains[gains != np.round(gains)]
        if len(soft):  # a teacher's scores, say: every row above 0 was relevant, MAP and Recall near 1
            raise InputError(f"{c.input}: evaluation takes labels as grades, which documents are relevant, and "
                             f"{c.label_column} {soft[0]:g} is none: give a column of 0 and 1 (or whole grades) with "
                             f"{setting_and_flag('label_column')}, or {setting_and_flag('qrels')}")
        total, ideal = np.bincount(lists, weights=gains > 0, minlength=len(query_ids)), None
    orders = {"reranked": (ranked_by, None)} | ({"baseline": (baseline, c.baseline_descending)} if baseline else {})
    metrics = {}
    for name, (column, higher_first) in orders.items():
        # A baseline's equal values rank as trec_eval ranks them, by document id: in the file's order they took the
        # reranker's (a rerank's output is written in it), and a tied first stage (BM25 scores) borrowed its figures.
        rows = reranked if name == "reranked" else _ranked(lists, df[column], higher_first,
                                                           df.get(c.doc_id_column))
        rows = rows[in_qrels[rows]]
        if repeated.any():
            rows = _first_of_each_pair(rows, lists, df[c.doc_id_column])
        if name == "reranked":  # the scores a run of this order gets (`write_trec_run`), as trec_eval sees them
            tied = lists[rows][_tied_pairs(lists[rows], _run_scores(df, rows, lists[rows], c, ranked_by)[0])]
        # Queries the qrels do not judge are lists without rows here, and are not counted below.
        metrics[name] = lists_metrics(lists[rows], gains[rows], len(query_ids), c.k, c.recall_k, total, ideal)
    has_relevant = total > 0
    counted = np.flatnonzero(judged_query & (has_relevant | (not c.only_with_relevant)))
    without_relevant = int((judged_query & ~has_relevant).sum())
    # Those of the counted queries: a tie in a query left out (no relevant document) was said to change its figures.
    notes["tied_pairs"] = int(np.isin(tied, counted).sum())
    skipped = without_relevant if c.only_with_relevant else 0
    candidates = np.bincount(lists[~repeated], minlength=len(query_ids))
    per_query = [{"query_id": query_ids[q], "candidates": int(candidates[q]),
                  **{name: {m: float(values[q]) for m, values in metrics[name].items()} for name in orders}}
                 for q in counted]
    result = {
        "queries": len(per_query),
        "queries_skipped_without_relevant": skipped,
        "queries_without_relevant": without_relevant - skipped,  # counted, at 0
        # One candidate ranks first in any order: such a query scores alike before and after reranking.
        "queries_with_one_candidate": int((candidates[counted] == 1).sum()),
        "counted": ("queries with a relevant document" if c.only_with_relevant
                    else "all queries, those without a relevant document at 0"),
        "pairs": int(candidates[counted].sum()),  # those of the counted queries
        "reranked_by": ranked_by,
        "baseline_by": baseline,
        "reranked": mean_metrics(e["reranked"] for e in per_query),
        "baseline": mean_metrics(e["baseline"] for e in per_query) if baseline else None,
        "per_query": per_query,
    } | notes
    if qrels is not None:
        present = set(query_ids)
        missing = [q for q in qrels if q not in present]
        result["qrels_queries_without_candidates"] = len(missing)
        result["qrels_queries_without_candidates_examples"] = missing[:10]
    return result


def write_trec_run(uri: str, df: pd.DataFrame, c: EvalConfig, ranking: Optional[tuple] = None) -> dict:
    """The reranked order (`rank_queries`) as a TREC run file, one line per pair: `query_id Q0 doc_id rank score
    ce-ray`, queries in input order, each score as its column holds it (shortest form), so that the run orders
    as the column does. trec_eval orders a query's documents by score and breaks ties by document id, where
    ce-ray keeps the input order: only equal scores can rank differently there. A row without a document id
    is left out, and a repeated (query, document) pair written once, at its best rank: trec_eval refuses a run
    that repeats one. Returns those counts, and whether the scores written are the negated ranks
    (`_run_scores`)."""
    ranked_by, _ = _reranked_by(df, c)
    lists, query_ids, rows = ranking or rank_queries(df, c)
    docs = df[c.doc_id_column]
    present = docs.notna().to_numpy() & (docs.astype(str) != "").to_numpy()  # an empty id is none, as a null
    identified = rows[present[rows]]
    kept = _first_of_each_pair(identified, lists, docs)
    ranks = np.arange(len(kept)) - np.searchsorted(lists[kept], lists[kept]) + 1
    scores, by_rank = _run_scores(df, kept, lists[kept], c, ranked_by)
    if not by_rank and c.score_column in df.columns and df[c.score_column].dtype == np.float32:
        scores = scores.astype(np.float32)  # exact: written as float32's shortest form, "0.1", not "0.100000001"
    fields = [_run_field(pa.array(query_ids).take(lists[kept]), "query"), "Q0",
              _run_field(pa.array(docs).take(kept), "document"), pa.array(ranks), pa.array(scores), "ce-ray\n"]
    write_file(uri, _joined_lines(fields))
    return {"by_rank": by_rank, "rows_without_doc_id": len(rows) - len(identified),
            "repeated_pairs": len(identified) - len(kept)}


def _joined_lines(fields: list) -> pa.Buffer:
    """Each row's fields as text joined by spaces, the last ending the line. Joined by Arrow, not written as CSV:
    its writer refused an id holding a quote (`"Weird Al" Yankovic`), which a run's blank-separated fields hold as
    any other character; a number's text is the CSV writer's, its cast. Large strings throughout: a run of ~50M
    lines passes 2 GiB, a string array's most, and the fields of several files come in chunks."""
    def large(field):
        if isinstance(field, str):
            return pa.scalar(field, pa.large_string())
        return (field if isinstance(field, pa.ChunkedArray) else pa.chunked_array([field])).cast(pa.large_string())

    lines = pc.binary_join_element_wise(*map(large, fields), large(" ")).combine_chunks()
    run = pc.binary_join(pa.LargeListArray.from_arrays(pa.array([0, len(lines)], pa.int64()), lines), large(""))
    return run[0].as_buffer()


def _run_field(ids: pa.Array, what: str) -> pa.Array:
    """Ids as a run's field: text without blanks, which would split it into other fields, and not empty, which
    would leave the line a field short (trec_eval refuses both lines). A blank is any character that Python's
    `str.split` splits at (ir_measures reads a run so, as `_run_lines` does): a vertical tab, Unicode's spaces. RE2's
    `\\s` is ASCII's alone: a run with a no-break space in an id was written, then read as a line of 7 fields."""
    text = ids.cast(pa.string())
    blank = pc.match_substring_regex(text, r"^$|[\pZ\t\n\v\f\r\x1c-\x1f\x85]")
    if pc.any(blank).as_py():
        example = text.filter(blank)[0].as_py()
        said = "is empty" if example == "" else f"{example!r} holds a blank"
        raise InputError(f"{what} id {said}: a TREC run's fields are separated by blanks")
    return text


def _run_scores(df: pd.DataFrame, rows: np.ndarray, lists: np.ndarray, c: EvalConfig, ranked_by: str) -> tuple:
    """The scores of the ranked rows, and whether they are the negated ranks: trec_eval and ir_measures read a
    run's order from its scores alone, so a score column that the rank column's order does not follow (a first
    stage's rank beside a reranker's score) would have them measure another order than ce-ray's."""
    ranks = pd.to_numeric(df[ranked_by], errors="coerce").to_numpy(np.float64)[rows]
    if c.score_column not in df.columns:
        return -ranks, False
    scores = pd.to_numeric(df[c.score_column], errors="coerce").to_numpy(np.float64)[rows]
    same_list = lists[1:] == lists[:-1]
    follows = ranked_by == c.score_column or not np.any(same_list & ~(scores[1:] <= scores[:-1]))
    return (scores, False) if follows else (-ranks, True)


def table_lines(result: dict, config: EvalConfig) -> List[str]:
    names = metric_names(config.k, config.recall_k)
    base = result.get("baseline")
    head = (f"  {'metric':<12}" + (f"{'baseline':>12}" if base else "") + f"{'reranked':>12}"
            + ("  change" if base else ""))
    lines = [head]
    for name in names:
        value = result["reranked"].get(name, 0.0)
        line = f"  {name:<12}"
        if base:
            line += f"{base[name]:>12.4f}"
        line += f"{value:>12.4f}"
        if base:
            line += f"  {value - base[name]:+.4f}"
        lines.append(line)
    return lines


def default_output(uri: str, of_a_job: bool) -> str:
    """`eval.json` in an output folder of ce-ray (`of_a_job`: `job_summary` found one), beside its results/ (which
    later jobs read); else beside the input file, folder or glob's folder (`eval_beside`), where no job reads it as
    pairs."""
    if of_a_job:
        return join(uri, EVAL)
    return eval_beside(glob_base(uri) if is_glob(uri) else uri)


def write_file(uri: str, data: bytes) -> None:
    """Whole or not at all: written in place, a disk that filled left a run file cut short for trec_eval to read,
    or an empty eval.json over the last one."""
    fs, path = filesystem(uri)
    if not is_remote(uri):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_bytes_atomic(fs, path, data, is_remote(uri), through_links=True)


def _following_the_job(config: EvalConfig) -> tuple:
    """Where the input is the output of a ce-ray job, the settings made to follow what the job wrote, and
    notes to print and keep in eval.json (name -> line); and the job's summary (`job_summary`: None for another
    input), which the reads of the input take as it is, its `_SUCCESS` read once.

    - The job's query id, score and rank columns, where eval's are not given (`given_settings`; from Python, where
      they are at their defaults): a rerank grouped by `--query-id-column QuestionID` is measured by that column.
    - A score job writes no rank: a `rank` column there is the input's own (a first stage's), so its order is
      the job's scores, unless the rank column is given.
    - A rerank that kept each query's top k, or a job over such a rerank's output (a cascade): no baseline (its
      order of the reranker's choice is not the first stage's list), and without qrels no metric at all, since the
      cut rows' labels are gone: recall, MAP and NDCG's ideal order would count only the relevant documents kept.

    The same where the input is in a job's results/ (`job_of_results`), though its files are read as they are.
    """
    job = job_summary(config.input)
    wrote = job or job_of_results(config.input)
    if wrote is None:
        if in_unfinished_results(config.input):  # measured 1,459 of a rerank's 3,000 pairs without a word
            return config, {"unfinished_job": f"note: {config.input} is in the {RESULTS}/ of a job that did not "
                                              f"finish (no {SUCCESS}): its rows as they are, which may be some of "
                                              "the job's only"}, None
        return config, {}, None
    settings, defaults, given = wrote.get("settings", {}), EvalConfig(), given_settings(config)

    def left_alone(name: str) -> bool:  # given at the default value (`--rank-column rank`), it is given all the same
        return name not in given if given is not None else getattr(config, name) == getattr(defaults, name)

    changes = {name: settings[name] for name in ("query_id_column", "score_column", "rank_column")
               if settings.get(name) and left_alone(name) and getattr(config, name) != settings[name]}
    notes = {"columns_of_the_job": ", ".join(f"{name} {value!r}" for name, value in changes.items())
             + f": as the job that wrote {config.input}"} if changes else {}
    if "rows_cut" not in wrote and left_alone("rank_column"):  # a score job's: rerank's counts cuts
        changes["rank_column"] = ""
    elif (left_alone("rank_column") and not left_alone("score_column") and settings.get("rank_column")
          and settings.get("score_column") not in (None, config.score_column)):
        # `--score-column score` over a cascade's output: the job's rank (by its own score) gives the order, as over
        # any input with a rank, where the score named changed nothing without a word.
        job_rank = f"the job's {settings['rank_column']} column's (its rank by {settings['score_column']})"
        notes["rank_before_score"] = _rank_before_score(job_rank, config.score_column)
    cut = rows_cut_before(wrote)
    if cut:
        whose = "the reranker's" if wrote.get("rows_cut") else "an earlier reranker's (the job's input's)"
        holds = f"{config.input} holds {whose} top {cut['top_k']} of each query ({plural(cut['rows_cut'], 'row')} cut)"
    if cut and not config.qrels:
        raise ConfigError(f"{holds}: the cut rows' labels are gone, so recall, MAP and NDCG would count only the "
                          f"relevant documents it kept; give {setting_and_flag('qrels')}, or evaluate a rerank "
                          f"without {setting_and_flag('top_k')}")
    if cut and config.baseline_column:
        notes["baseline_left_out"] = (
            f"no baseline: {holds}, so {config.baseline_column} would rank the reranker's choice, not the first "
            "stage's list; evaluate the baseline on the rerank's input")
        changes["baseline_column"] = ""
    if wrote.get("rows_rejected"):
        notes["rejected_rows_left_out"] = (f"left out {wrote['rows_rejected']:,} row(s) the job rejected (its "
                                           f"{REJECTS}/)" + ("" if config.qrels else ": their labels not counted"))
    return dataclasses.replace(config, **changes), notes, job


def _rank_before_score(order: str, score_column: str) -> str:
    """The note that a rank column (`order`: whose) orders the rows where a score column was named, as documented."""
    return (f"note: the order is {order}, which comes before the score's ({score_column}): give "
            f"{setting_and_flag('rank_column')} '' to measure the score's order")


def _refuse_overwriting(c: EvalConfig, output: str) -> None:
    """The files eval writes are neither what it reads nor each other: `--output` naming the input parquet
    file replaced it with JSON, a `--run-output` naming the qrels replaced them, and one path for both files
    kept the last."""
    def same(a: str, b: str) -> bool:
        return bool(a and b) and same_place(a, b)

    if same(output, c.run_output):
        raise ConfigError(f"{setting_and_flag('output')} and {setting_and_flag('run_output')} name one file, "
                          f"{output}: give each its own path")
    for setting, written in (("output", output), ("run_output", c.run_output)):
        for read in ("input", "qrels"):
            if same(written, getattr(c, read)):
                raise ConfigError(f"{setting_and_flag(setting)} {written} is the {read} that eval reads, which "
                                  "writing it would replace: give another path")
        # One of a folder's files (a job's results/ part): it was replaced with JSON, exit 0, the output unreadable.
        # A path the user named (eval's own beside the results is none), listed where it is in the input alone.
        named = getattr(c, setting)
        if named and is_inside(named, c.input) and any(same(named, file) for file in _files_read(c.input)):
            raise ConfigError(f"{setting_and_flag(setting)} {written} is a file of the input {c.input}, which eval "
                              "reads and writing it would replace: give another path")


def _files_read(uri: str) -> List[str]:
    """The parquet files eval reads of the input `uri` (a job's results/ parts), as paths or `s3://` URIs; none where
    it cannot be read, which reading it says next."""
    try:
        listing = list_files(uri, "parquet", note_skipped=False)
    except InputError:
        return []
    return [f"s3://{file}" if is_remote(uri) else file for file in listing.files]


def run_eval(config: EvalConfig, title: str = "ce-ray eval") -> dict:
    from .candidates import read_qrels

    require(config)
    config.validate()  # as the command's config is: from Python, k=0 and the settings eval does not use passed
    for uri in (config.input, config.qrels):  # first: the input's job is looked up on the store next
        check_s3_access(uri)
    defaults = EvalConfig()
    c, job_notes, job = _following_the_job(config)
    output = c.output or default_output(c.input, job is not None)
    _refuse_overwriting(c, output)
    for setting, uri in (("output", output), ("run_output", c.run_output)):
        check_s3_access(uri)  # before any work, naming the bucket (s3fs's error names none)
        # A path the user named may be a folder (it failed once written); ce-ray's own eval.json is not looked up.
        fs, path = filesystem(uri) if uri and getattr(c, setting) else (None, "")
        if fs is not None and fs.get_file_info(path).type == pafs.FileType.Directory:
            raise ConfigError(f"{setting_and_flag(setting)} {uri} is a folder: give the path of a file")
        # found as the file was written, after the measures (a run's file written first: the measures' not)
        if uri and (blocker := file_in_the_way(os.path.dirname(uri) or ".")):
            raise ConfigError(f"{setting_and_flag(setting)} {uri}: {blocker} is a file, not a folder")
        try:  # a folder that cannot be made or written (`--input .` under a folder of another user's): found as well
            if uri:
                try_local_folder(os.path.dirname(uri) or ".")
        except OSError as e:
            raise ConfigError(f"{setting_and_flag(setting)} {uri} cannot be written ({e}): give another path") from None
    qrels = read_qrels(c.qrels) if c.qrels else None
    required = [c.query_id_column] + ([c.doc_id_column] if qrels is not None or c.run_output else []) + (
        [c.label_column] if qrels is None else [])
    # the document ids where they are there, for a baseline's equal values (`evaluate_frame`): read for a baseline only
    ties = c.doc_id_column if c.baseline_column else ""
    wanted = [name for name in required + [c.rank_column, c.score_column, c.baseline_column, ties] if name]
    from_run = is_trec_run(c.input, job)
    if from_run:
        if qrels is None:
            raise ConfigError(f"{c.input} is a TREC run, which holds no grades: give {setting_and_flag('qrels')}")
        df = read_trec_run(c.input, c)
        if c.baseline_column == EvalConfig.baseline_column:  # the default, which no run holds: not looked for
            c = dataclasses.replace(c, baseline_column="")  # (its note said so on every run's eval)
    else:
        # A row without a document id is measured by its label (the run alone leaves it out); with qrels it
        # matches no judgment, so it is left out as one without a query id.
        needed_ids = [c.query_id_column] + ([c.doc_id_column] if qrels is not None else [])
        df = read_columns(c.input, list(dict.fromkeys(wanted)), required,
                          [name for name in required if name in (c.query_id_column, c.doc_id_column)], needed_ids,
                          job, {c.label_column: "label_column", c.doc_id_column: "doc_id_column",
                                c.query_id_column: "query_id_column"})
        df = _ordered_rows(df, c)
        qrels = qrels and _whole_number_qrels(qrels)  # its ids read as the input's (`_whole_numbers`)
    if not len(df):
        without = df.attrs.get("rows_without_ids", 0)  # all of them: say so, not that the input is empty
        ids = "a query id" if qrels is None else "a query and a document id"
        unordered = df.attrs.get("rows_without_order", 0)
        raise InputError(f"{c.input} has no scored rows" + (f" with {ids} ({without:,} without)" if without else "")
                         + (f" ({unordered:,} without a {_reranked_by(df, c)[0]})" if unordered else ""))
    if c.baseline_column:
        _refuse_text_order(df, c.baseline_column, "baseline_column")
    if c.rank_column not in ("", defaults.rank_column, *df.columns) and not from_run:  # not the scores' order
        raise InputError(f"{setting_and_flag('rank_column')} {c.rank_column!r} is no column of {c.input}: name the "
                         f"order's column, a rank (1 is best), or leave it out for the scores' order "
                         f"({setting_and_flag('score_column')} {c.score_column})")
    ordered_by = _order_column(df, c)[0]
    if (ordered_by == c.rank_column == defaults.rank_column and config.score_column != defaults.score_column
            and job is None):  # (a job's output: its rank is its scores', or a score job's input's, not read)
        # `--score-column score_l12` over a cascade's output: its `rank` (the first reranker's) gives the order, as
        # documented, where the score named changed nothing without a word.
        job_notes["rank_before_score"] = _rank_before_score(f"the input's {c.rank_column} column's", c.score_column)
    if ordered_by == c.rank_column and _holds_fractions(df, c.rank_column):  # `--rank-column score`
        job_notes["rank_read_as_rank"] = (
            f"warning: the rank column {c.rank_column} holds fractions, as a score does, but is read as a rank (1 "
            f"is best): name it with {setting_and_flag('score_column')} instead if higher is better")
    if (not c.baseline_descending and c.baseline_column != ordered_by  # then no baseline, said
            and _holds_fractions(df, c.baseline_column)):  # `bm25_score` for `bm25_rank`
        job_notes["baseline_read_as_rank"] = (
            f"warning: the baseline {c.baseline_column} holds fractions, as a score does, but is read as a rank (1 "
            f"is best): give {setting_and_flag('baseline_descending')} if higher is better")
    ranking = rank_queries(df, c)  # measured and written as a run alike
    result = evaluate_frame(df, c, qrels, ranking) | {name: df.attrs.get(name, 0)
                                                      for name in ("rows_without_ids", "rows_without_order")}
    result |= job_notes
    if qrels is not None and not result["queries_in_qrels"]:
        example = df[c.query_id_column].astype(str).iloc[0]
        raise InputError(f"none of the {result['queries_not_in_qrels']:,} query ids of {c.input} is in the qrels "
                         f"{c.qrels} ({example!r} there, {next(iter(qrels))!r} in the qrels): check the files and "
                         f"the query id column ({c.query_id_column})")
    if not result["queries"]:
        raise ConfigError("no query to evaluate (none has a relevant document)")
    run = write_trec_run(c.run_output, df, c, ranking) if c.run_output else {}
    if run:
        result["run"] = run
    write_file(output, json.dumps(result, indent=2).encode())
    lines = [f"{title}: {plural(result['queries'], 'query')} ({result['counted']}), {plural(result['pairs'], 'pair')}"]
    if result["queries_skipped_without_relevant"]:
        lines.append(f"  left out {plural(result['queries_skipped_without_relevant'], 'query')} without a relevant "
                     "document")
    if result["queries_without_relevant"]:
        lines.append(f"  {plural(result['queries_without_relevant'], 'query')} without a relevant document: "
                     "counted as 0")
    if result.get("queries_not_in_qrels"):
        lines.append(f"  left out {plural(result['queries_not_in_qrels'], 'query')} the qrels do not judge "
                     "(as trec_eval)")
    if result.get("repeated_pairs_dropped"):
        lines.append(f"  counted once {result['repeated_pairs_dropped']:,} repeated (query, document) pair(s)")
    if result.get("tied_pairs") and from_run:
        lines.append(f"  {result['tied_pairs']:,} pairs share a score with another of their query: ordered by "
                     "document id, descending, as trec_eval orders them")
    elif result.get("tied_pairs"):
        lines.append(f"  {result['tied_pairs']:,} pairs share a score with another of their query: ce-ray keeps their "
                     f"order ({result['reranked_by']}, then input order), trec_eval orders them by document id, "
                     "descending, so its figures can differ")
    if result["queries_with_one_candidate"]:
        lines.append(f"  {plural(result['queries_with_one_candidate'], 'query')} with a single candidate: "
                     "counted, alike in any order")
    if result.get("rows_without_ids"):
        lines.append(f"  left out {result['rows_without_ids']:,} row(s) without a query"
                     + (" or document id" if qrels is not None else " id"))
    if result.get("rows_without_order"):
        lines.append(f"  left out {result['rows_without_order']:,} row(s) without a {result['reranked_by']} (null or "
                     "not a number: rows that could not be scored)" + ("" if qrels else ": their labels not counted"))
    if qrels is not None and not result.get("judged_pairs"):
        lines.append(f"  warning: the qrels judge none of the input's (query, document) pairs, so every metric is 0: "
                     f"check the document id column ({c.doc_id_column})")
    if result.get("qrels_queries_without_candidates"):
        shown = result["qrels_queries_without_candidates_examples"][:5]
        # The ids shown are a few of them: say so where there are more, or they read as the whole list.
        more = ", ..." if result["qrels_queries_without_candidates"] > len(shown) else ""
        examples = ", ".join(shown) + more
        lines.append(f"  qrels name {plural(result['qrels_queries_without_candidates'], 'query')} with no candidates, "
                     f"not evaluated, as by trec_eval (with -c it and ir_measures count them at 0): {examples}")
    lines += [f"  {note}" for note in job_notes.values()]
    lines.append(f"  reranked by {result['reranked_by']}" + (f", baseline by {result['baseline_by']}"
                                                             if result["baseline_by"] else ""))
    lines += table_lines(result, c)
    if run.get("rows_without_doc_id"):
        lines.append(f"  the run leaves out {run['rows_without_doc_id']:,} row(s) without a document id")
    if run.get("repeated_pairs"):
        lines.append(f"  the run holds each (query, document) pair once, at its best rank (trec_eval refuses a "
                     f"repeated one): left out {run['repeated_pairs']:,} row(s)")
    if run.get("by_rank"):
        lines.append(f"  the run's scores are the negated {result['reranked_by']} (its order): {c.score_column} does "
                     "not follow it, and trec_eval orders a run by its scores")
    lines.append(f"  written to {output}" + (f", the run to {c.run_output}" if c.run_output else ""))
    print("\n".join(lines), flush=True)
    return result
