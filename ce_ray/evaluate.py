"""`ce-ray eval`: NDCG@k, MRR@k, MAP and Recall@k of a scored or ranked output, per query and averaged, for the
reranked order and a baseline order (`bm25_rank`, an original position, ...) side by side.

Grades come from a BEIR qrels file (documents the first stage missed then count against Recall and MAP, and
the ideal NDCG ranks all judged documents) or from the rows' `label` column. The reranked order is the `rank`
column when present, else the score, highest first, ties in file order. A query with no relevant document
counts 0, as in sentence-transformers' `CrossEncoderRerankingEvaluator`; with `only_with_relevant` such
queries are left out instead (WikiQA's usual protocol). Only the needed columns are read, and every query is
measured at once (numpy), so a million pairs evaluate in about a second. The input may also be a TREC run file
of any system (with qrels), so that a first stage's run and ce-ray's output are measured alike. A rerank's
output cut to each query's top k gets no baseline (its rows are the reranker's choice, not the first stage's
list): the first stage is measured on the rerank's input. An output of ce-ray is read as its job wrote it
(`_following_the_job`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .config import ConfigError, EvalConfig, require
from .io import (REJECTS, InputError, check_s3_access, detect_format, filesystem, glob_base, is_glob, is_output,
                 is_remote, job_summary, join, list_files, missing_values)
from .metrics import dcg, lists_metrics, mean_metrics, metric_names


def read_columns(uri: str, wanted: List[str], required: List[str], ids: List[str]) -> pd.DataFrame:
    """The wanted columns (those present) of an output folder's results/ (`list_files`), or of parquet files."""
    files, _, fs = list_files(uri, "parquet")
    tables = []
    for file in files:
        with fs.open_input_file(file) as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            missing = [c for c in required if c not in names]
            if missing and parquet.metadata.num_rows:
                raise InputError(f"{file}: missing column(s) {', '.join(map(repr, missing))} "
                                 f"(columns: {', '.join(names[:12])})")
            tables.append(parquet.read(columns=[c for c in wanted if c in names]))
    table = pa.concat_tables([t for t in tables if t.num_rows] or tables, promote_options="default")
    # A row without an id belongs to no query (or matches no judgment); dropped here, in Arrow, so that integer
    # ids stay integers (pandas would make them floats around a null, and `1` would become `1.0`).
    identified = pa.array(np.ones(table.num_rows, dtype=bool))
    for name in ids:
        identified = pc.and_(identified, pc.invert(missing_values(table.column(name))))
    kept = table.filter(identified)
    for name in ids:
        kept = kept.set_column(kept.schema.get_field_index(name), name, _whole_numbers(kept.column(name)))
    df = kept.to_pandas()
    df.attrs["rows_without_ids"] = table.num_rows - len(df)
    return df


def _whole_numbers(ids: pa.ChunkedArray) -> pa.ChunkedArray:
    """Float ids that are all whole numbers (how pandas writes an integer id column with a missing value) as
    integers, so that `1.0` matches the qrels' `1`."""
    if not pa.types.is_floating(ids.type) or not len(ids):
        return ids
    values = ids.to_numpy()
    return pa.chunked_array([values.astype(np.int64)]) if np.array_equal(values, np.round(values)) else ids


def is_trec_run(uri: str) -> bool:
    """A single file whose name is not that of a data format (`run.txt`, `bm25.trec`): a TREC run."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File and detect_format(path) is None


def read_trec_run(uri: str, c: EvalConfig) -> pd.DataFrame:
    """A TREC run (`query Q0 document rank score tag` a line, any system's) as rows of query id, doc id and
    score; its order is the score's, highest first, as trec_eval takes it (the rank field is not read), equal
    scores in file order, where trec_eval orders them by document id, descending (`tied_pairs` counts them)."""
    from .candidates import numbered_lines

    rows = []
    for number, line in numbered_lines(uri):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise InputError(f"{uri} line {number}: a TREC run line has 6 fields (query Q0 document rank score "
                             f"tag), got {len(fields)}")
        try:
            rows.append((fields[0], fields[2], float(fields[4])))
        except ValueError:
            raise InputError(f"{uri} line {number}: score {fields[4]!r} is not a number") from None
    return pd.DataFrame(rows, columns=[c.query_id_column, c.doc_id_column, c.score_column])


def _ranked(lists: np.ndarray, values: pd.Series, descending: bool) -> np.ndarray:
    """Row positions with each list's rows together (lists in ascending number) in the order of `values`,
    missing ones last, equal ones in file order."""
    if not pd.api.types.is_numeric_dtype(values):  # a rank or score that came as text (a CSV's column)
        values = pd.to_numeric(values, errors="coerce")
    frame = pd.DataFrame({"list": lists, "value": values.to_numpy(), "row": np.arange(len(lists))})
    frame = frame.sort_values(["list", "value", "row"], ascending=[True, not descending, True],
                              na_position="last")
    return frame["row"].to_numpy()


def _first_of_each_pair(rows: np.ndarray, lists: np.ndarray, docs: pd.Series) -> np.ndarray:
    """Ranked rows (`_ranked`) less the later copies of each (query, document) pair: a document counts once,
    at its best rank, whatever the file's order (a document scored passage by passage counts as its best)."""
    ranked = pd.DataFrame({"list": lists[rows], "doc": docs.astype(str).to_numpy()[rows]})
    return rows[~ranked.duplicated().to_numpy()]


def _tied_pairs(lists: np.ndarray, scores: np.ndarray) -> int:
    """Rows whose score another row of their query shares: ce-ray keeps their order (the rank column's, else the
    file's), trec_eval orders them by document id (descending) and other tools otherwise, so only there can
    their figures differ."""
    return int(pd.DataFrame({"list": lists, "score": scores}).duplicated(keep=False).sum())


def _reranked_by(df: pd.DataFrame, c: EvalConfig) -> tuple:
    """The column that gives the reranked order, and whether higher comes first: the rank, else the score."""
    ranked_by, descending = (c.rank_column, False) if c.rank_column in df.columns else (c.score_column, True)
    if ranked_by not in df.columns:
        raise InputError(f"neither {c.rank_column!r} nor {c.score_column!r} is a column of the input: name the "
                         "order's column with --rank-column (1 is best) or --score-column (higher is better)")
    return ranked_by, descending


def evaluate_frame(df: pd.DataFrame, config: EvalConfig, qrels: Optional[Dict[str, Dict[str, int]]] = None) -> dict:
    """Per-query and mean metrics of the reranked and baseline orders of a frame of scored pairs."""
    c = config
    ranked_by, descending = _reranked_by(df, c)
    baseline = c.baseline_column if c.baseline_column and c.baseline_column in df.columns else None
    if c.baseline_column and baseline is None:
        print(f"ce-ray eval: note: no {c.baseline_column!r} column, no baseline", file=sys.stderr)
    if baseline == ranked_by:
        print(f"ce-ray eval: note: {baseline!r} gives the reranked order: no baseline", file=sys.stderr)
        baseline = None
    notes = {}
    if qrels is not None:
        # As trec_eval: a query the qrels do not judge is not evaluated (TREC DL judges a few of its queries).
        # A document listed twice for a query (candidates merged from two retrievers, passages of one document)
        # counts once, at its best rank in each order (`_first_of_each_pair`), where trec_eval refuses the run.
        judged_rows = df[c.query_id_column].astype(str).isin(qrels.keys())
        notes["queries_not_in_qrels"] = int(df.loc[~judged_rows, c.query_id_column].nunique())
        notes["queries_in_qrels"] = int(df.loc[judged_rows, c.query_id_column].nunique())
        df = df[judged_rows].reset_index(drop=True)
        repeated = df.duplicated([c.query_id_column, c.doc_id_column]).to_numpy()
        notes["repeated_pairs_dropped"] = int(repeated.sum())
    else:
        repeated = np.zeros(len(df), dtype=bool)  # without qrels each row is a candidate, as in the evaluator
    keys = df[c.query_id_column].astype(str)
    lists, query_ids = pd.factorize(keys, sort=False)  # queries numbered in the order they first come
    if qrels is not None:
        grades = pd.DataFrame([(q, d, g) for q, judged in qrels.items() for d, g in judged.items()],
                              columns=["query", "doc", "grade"])
        pairs = pd.DataFrame({"query": keys.to_numpy(), "doc": df[c.doc_id_column].astype(str).to_numpy()})
        graded = pairs.merge(grades, how="left", on=["query", "doc"])["grade"]
        notes["judged_pairs"] = int(graded.notna().sum())
        gains = graded.fillna(0).to_numpy(np.float64)
        judged = [list(qrels.get(q, {}).values()) for q in query_ids]
        total = np.array([sum(g > 0 for g in grades) for grades in judged])
        ideal = np.array([dcg(sorted(grades, reverse=True), c.k) for grades in judged])
    else:
        gains = pd.to_numeric(df[c.label_column], errors="coerce").fillna(0).to_numpy(dtype=np.float64)
        total, ideal = np.bincount(lists, weights=gains > 0, minlength=len(query_ids)), None
    orders = {"reranked": (ranked_by, descending)} | ({"baseline": (baseline, c.baseline_descending)}
                                                      if baseline else {})
    metrics = {}
    for name, (column, higher_first) in orders.items():
        rows = _ranked(lists, df[column], higher_first)
        if repeated.any():
            rows = _first_of_each_pair(rows, lists, df[c.doc_id_column])
        if name == "reranked":  # the scores a run of this order gets (`write_trec_run`), as trec_eval sees them
            notes["tied_pairs"] = _tied_pairs(lists[rows], _run_scores(df, rows, lists[rows], c, ranked_by)[0])
        metrics[name] = lists_metrics(lists[rows], gains[rows], len(query_ids), c.k, c.recall_k, total, ideal)
    has_relevant = total > 0
    counted = np.flatnonzero(has_relevant | (not c.only_with_relevant))
    skipped = len(query_ids) - len(counted)
    without_relevant = int((~has_relevant).sum()) - skipped
    candidates = np.bincount(lists[~repeated], minlength=len(query_ids))
    per_query = [{"query_id": query_ids[q], "candidates": int(candidates[q]),
                  **{name: {m: float(values[q]) for m, values in metrics[name].items()} for name in orders}}
                 for q in counted]
    result = {
        "queries": len(per_query),
        "queries_skipped_without_relevant": skipped,
        "queries_without_relevant": without_relevant,  # counted, at 0
        "counted": ("queries with a relevant document" if c.only_with_relevant
                    else "all queries, those without a relevant document at 0"),
        "pairs": int((~repeated).sum()),
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


def write_trec_run(uri: str, df: pd.DataFrame, c: EvalConfig) -> bool:
    """The reranked order as a TREC run file, one line per pair: `query_id Q0 doc_id rank score ce-ray`,
    queries in input order. trec_eval orders a query's documents by score and breaks ties by document id,
    where ce-ray keeps the input order: only equal scores can rank differently there. True where the scores
    written are the negated ranks (`_run_scores`)."""
    ranked_by, descending = _reranked_by(df, c)
    lists, query_ids = pd.factorize(df[c.query_id_column], sort=False)  # a missing query id is -1: left out
    rows = _ranked(lists, df[ranked_by], descending)
    rows = rows[lists[rows] >= 0]
    ranks = np.arange(len(rows)) - np.searchsorted(lists[rows], lists[rows]) + 1
    scores, by_rank = _run_scores(df, rows, lists[rows], c, ranked_by)
    lines = [f"{query_id} Q0 {doc_id} {rank} {score:.9g} ce-ray" for query_id, doc_id, rank, score
             in zip(query_ids[lists[rows]], df[c.doc_id_column].to_numpy()[rows], ranks, scores)]
    write_file(uri, ("\n".join(lines) + "\n").encode())
    return by_rank


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
    head = f"  {'metric':<12}" + (f"{'baseline':>12}" if base else "") + f"{'reranked':>12}" + ("  change" if base else "")
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


def default_output(uri: str) -> str:
    """`eval.json` in an output folder of ce-ray, beside its results/ (which later jobs read); else
    `<input>.eval.json` beside the input file, folder or glob's folder, where no job reads it as pairs."""
    if is_glob(uri):
        return glob_base(uri) + ".eval.json"
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory and is_output(fs, path):
        return join(uri, "eval.json")
    return uri.rstrip("/") + ".eval.json"


def write_file(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    if not is_remote(uri):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def _following_the_job(config: EvalConfig) -> tuple:
    """Where the input is the output of a ce-ray job, the settings made to follow what the job wrote, and
    notes to print and keep in eval.json (name -> line).

    - The job's query id, score and rank columns, where eval's are left at their defaults: a rerank grouped
      by `--query-id-column QuestionID` is measured by that column.
    - A score job writes no rank: a `rank` column there is the input's own (a first stage's), so its order is
      the job's scores.
    - A rerank that kept each query's top k: no baseline (its order of the reranker's choice is not the first
      stage's list), and without qrels no metric at all, since the cut rows' labels are gone: recall, MAP and
      NDCG's ideal order would count only the relevant documents the reranker kept.
    """
    job = job_summary(config.input)
    if job is None:
        return config, {}
    settings, defaults = job.get("settings", {}), EvalConfig()
    changes = {name: settings[name] for name in ("query_id_column", "score_column", "rank_column")
               if settings.get(name) and getattr(config, name) == getattr(defaults, name) != settings[name]}
    notes = {"columns_of_the_job": ", ".join(f"{name} {value!r}" for name, value in changes.items())
             + f": as the job that wrote {config.input}"} if changes else {}
    if "rows_cut" not in job and config.rank_column == defaults.rank_column:  # a score job's: rerank's counts cuts
        changes["rank_column"] = ""
    cut = job.get("rows_cut")
    if cut and not config.qrels:
        raise ConfigError(f"{config.input} holds the reranker's top {job.get('top_k')} of each query ({cut:,} rows "
                          "cut): the cut rows' labels are gone, so recall, MAP and NDCG would count only the "
                          "relevant documents it kept; give --qrels, or evaluate a rerank without --top-k")
    if cut and config.baseline_column:
        notes["baseline_left_out"] = (
            f"no baseline: {config.input} holds the reranker's top {job.get('top_k')} of each query ({cut:,} rows "
            f"cut), so {config.baseline_column} would rank the reranker's choice, not the first stage's list; "
            "evaluate the baseline on the rerank's input")
        changes["baseline_column"] = ""
    if job.get("rows_rejected"):
        notes["rejected_rows_left_out"] = (f"left out {job['rows_rejected']:,} row(s) the job rejected (its "
                                           f"{REJECTS}/)" + ("" if config.qrels else ": their labels not counted"))
    return dataclasses.replace(config, **changes), notes


def _queries(count: int) -> str:
    return f"{count:,} query" if count == 1 else f"{count:,} queries"


def run_eval(config: EvalConfig, title: str = "ce-ray eval") -> dict:
    from .candidates import read_qrels

    require(config, "input")
    c, job_notes = _following_the_job(config)
    output = c.output or default_output(c.input)
    for uri in (output, c.run_output):
        check_s3_access(uri)  # before any work, naming the bucket (s3fs's error names none)
    qrels = read_qrels(c.qrels) if c.qrels else None
    required = [c.query_id_column] + ([c.doc_id_column] if qrels is not None or c.run_output else []) + (
        [c.label_column] if qrels is None else [])
    wanted = [name for name in required + [c.rank_column, c.score_column, c.baseline_column] if name]
    if is_trec_run(c.input):
        if qrels is None:
            raise ConfigError(f"{c.input} is a TREC run, which holds no grades: give --qrels")
        df = read_trec_run(c.input, c)
    else:
        df = read_columns(c.input, list(dict.fromkeys(wanted)), required,
                          [name for name in required if name in (c.query_id_column, c.doc_id_column)])
    if not len(df):
        raise InputError(f"{c.input} has no scored rows")
    result = evaluate_frame(df, c, qrels) | {"rows_without_ids": df.attrs.get("rows_without_ids", 0)} | job_notes
    if qrels is not None and not result["queries_in_qrels"]:
        example = df[c.query_id_column].astype(str).iloc[0]
        raise InputError(f"none of the {result['queries_not_in_qrels']:,} query ids of {c.input} is in the qrels "
                         f"{c.qrels} ({example!r} there, {next(iter(qrels))!r} in the qrels): check the files and "
                         f"the query id column ({c.query_id_column})")
    if not result["queries"]:
        raise ConfigError("no query to evaluate (none has a relevant document)")
    write_file(output, json.dumps(result, indent=2).encode())
    run_by_rank = bool(c.run_output) and write_trec_run(c.run_output, df, c)
    counted = result["counted"]
    lines = [f"{title}: {result['queries']:,} queries ({counted}), {result['pairs']:,} pairs"]
    if result["queries_skipped_without_relevant"]:
        lines.append(f"  left out {_queries(result['queries_skipped_without_relevant'])} without a relevant document")
    if result["queries_without_relevant"]:
        lines.append(f"  {_queries(result['queries_without_relevant'])} without a relevant document: counted as 0")
    if result.get("queries_not_in_qrels"):
        lines.append(f"  left out {_queries(result['queries_not_in_qrels'])} the qrels do not judge (as trec_eval)")
    if result.get("repeated_pairs_dropped"):
        lines.append(f"  counted once {result['repeated_pairs_dropped']:,} repeated (query, document) pair(s)")
    if result.get("tied_pairs"):
        lines.append(f"  {result['tied_pairs']:,} pairs share a score with another of their query: ce-ray keeps their "
                     f"order ({result['reranked_by']}, then input order), trec_eval orders them by document id, "
                     "descending, so its figures can differ")
    if result.get("rows_without_ids"):
        lines.append(f"  left out {result['rows_without_ids']:,} rows without a query or document id")
    if qrels is not None and not result.get("judged_pairs"):
        lines.append(f"  warning: the qrels judge none of the input's (query, document) pairs, so every metric is 0: "
                     f"check the document id column ({c.doc_id_column})")
    if result.get("qrels_queries_without_candidates"):
        examples = ", ".join(result["qrels_queries_without_candidates_examples"][:5])
        lines.append(f"  qrels name {result['qrels_queries_without_candidates']:,} queries with no candidates, "
                     f"not evaluated, as by trec_eval (with -c it and ir_measures count them at 0): {examples}")
    lines += [f"  {note}" for note in job_notes.values()]
    lines.append(f"  reranked by {result['reranked_by']}" + (f", baseline by {result['baseline_by']}"
                                                             if result["baseline_by"] else ""))
    lines += table_lines(result, c)
    if run_by_rank:
        lines.append(f"  the run's scores are the negated {result['reranked_by']} (its order): {c.score_column} does "
                     "not follow it, and trec_eval orders a run by its scores")
    lines.append(f"  written to {output}" + (f", the run to {c.run_output}" if c.run_output else ""))
    print("\n".join(lines), flush=True)
    return result
