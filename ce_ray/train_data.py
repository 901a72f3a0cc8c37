"""Training data, from files to a worker's forward passes.

The driver reads the pairs (or builds them from a BEIR split with BM25 hard negatives, or from rows of a query
with positives and negatives: `training_pairs`), tokenizes them in Ray Data tasks and counts what it kept and
rejected (`prepare_data`), and reads the eval data. Each Ray Train worker then takes its part in spans of
rows (`worker_spans`), in another order each epoch (the few rows past the workers' equal parts in place of
others drawn each epoch), deals each span's rows into windows of batches afresh,
groups each window's rows by length into batches, and cuts each batch into passes of at most `batch_tokens`
padded tokens (`micro_batches`), in an order that depends only on the seed, the epoch, the worker and the
span, so that a resumed run sees the batches it had not seen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrow_types import is_text
from .batching import (IDS, REJECT, TYPES, PairEncoder, list_parts, pad, text_column, token_budget_batches,
                       tokenize_table)
from .config import ConfigError, TrainConfig, refuse_unused, settings_set
from .input_files import Listing, list_files, parse_names
from .messages import InputError, plural, setting_and_flag
from .readers import ROW_INPUT, CheckedInput
from .storage import filesystem, list_tree
from .training_pairs import LABEL_OF_NEGATIVES, training_pairs

LABEL = "_ce_label"
QUERY_CHARS = "_ce_query_chars"
DOCUMENT_CHARS = "_ce_document_chars"


# ---------------------------------------------------------------- driver: read, tokenize, check


# Token budget of a training pass when batch_tokens is not set. A pass keeps every layer's activations for
# the backward pass (on a CPU also the attention weights, rows x heads x width^2): an uncut batch of 256
# WikiQA pairs grew the shared L12's worker past 20 GB on a CPU before Ray's memory monitor killed it. 8,192
# holds the seeds' batch of 16 at 512 tokens in one pass, as CrossEncoderTrainer runs it; 65,536 is the
# scoring budget of a GPU.
GPU_TRAIN_BATCH_TOKENS = 65536
CPU_TRAIN_BATCH_TOKENS = 8192


def training_batch_tokens(config: TrainConfig, use_gpu: bool) -> Optional[int]:
    """Padded tokens of one training pass at most: the setting, or the device's default; None with DeepSpeed,
    which steps after a fixed number of passes (each worker then runs its batches whole)."""
    if config.batch_tokens or config.deepspeed:
        return config.batch_tokens
    return GPU_TRAIN_BATCH_TOKENS if use_gpu else CPU_TRAIN_BATCH_TOKENS


def numeric_labels(table: pa.Table, label_column: str, files: Optional[Dict[str, str]] = None) -> pa.Array:
    """The label column as float32 (null stays null). A CSV's labels come as text: each is read as a number
    (`True` and `False`, as pandas writes booleans, as 1 and 0, as parquet's and JSON's booleans are), and one
    that is none (`NA`) becomes null, its row rejected (`_tokenize_train_block`); a column of other kinds, or
    of text where no value is a number, fails naming it and the block's files (`files`: each input key's
    path, `_block_files`)."""
    column = table.column(label_column)
    try:
        return pc.cast(column, pa.float32())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if is_text(column.type):
        encoded = pc.dictionary_encode(column).combine_chunks()
        values = np.array([_number(text) for text in encoded.dictionary.to_pylist()] + [np.nan], np.float32)
        if not np.isnan(values).all():
            indices = encoded.indices.fill_null(len(values) - 1).to_numpy(zero_copy_only=False)
            numbers = values[indices]
            return pa.array(numbers, pa.float32(), mask=np.isnan(numbers))
    kind = "text" if is_text(column.type) else column.type
    raise InputError(f"{_block_files(table, files)}label column {label_column!r} is {kind}, not a number")


BOOLEAN_TEXTS = {"true": 1.0, "false": 0.0}


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return BOOLEAN_TEXTS.get(text.strip().lower(), np.nan)


def _tokenize_train_block(table: pa.Table, encoder: PairEncoder, query_column: str, document_column: str,
                          label_column: Optional[str], max_length: int,
                          files: Optional[Dict[str, str]] = None) -> pa.Table:
    """Token ids, the label as float32, text lengths for the card, and why a row cannot be trained on. A label
    column that is no number fails naming the block's files (`files`: each input key's path)."""
    out = tokenize_table(table, encoder, query_column, document_column, max_length)
    reasons = out.column(REJECT).combine_chunks()
    columns = {IDS: out.column(IDS)}
    if TYPES in out.column_names:
        columns[TYPES] = out.column(TYPES)
    if label_column is not None:
        labels = numeric_labels(out, label_column, files)
        values = labels.to_numpy(zero_copy_only=False)
        bad = np.isnan(values) | (values < 0) | (values > 1)
        given = out.column(label_column).is_valid().to_numpy(zero_copy_only=False)
        label_reason = np.where(~np.isnan(values), np.char.add(f"{label_column} outside [0, 1]: ", values.astype(str)),
                                np.where(given, f"{label_column} is not a number", f"{label_column} is null"))
        reason = np.where(reasons.is_null().to_numpy(zero_copy_only=False) & bad, label_reason, None)
        reasons = pc.coalesce(reasons, pa.array(reason, pa.string()))
        columns[LABEL] = labels
    else:  # eval candidates keep their ids
        columns["query_id"] = out.column("query_id")
        columns["doc_id"] = out.column("doc_id")
    columns[QUERY_CHARS] = pc.utf8_length(out.column(query_column).fill_null(""))
    columns[DOCUMENT_CHARS] = pc.utf8_length(out.column(document_column).fill_null(""))
    columns[REJECT] = reasons
    return pa.table(columns)


def _block_files(table: pa.Table, files: Optional[Dict[str, str]]) -> str:
    """`<path>, <path>: ` of the input files whose rows the block holds, where it knows them; else nothing."""
    if not files or ROW_INPUT not in table.column_names:
        return ""
    return ", ".join(files[key] for key in pc.unique(table.column(ROW_INPUT)).to_pylist() if key in files) + ": "


def _block_stats(table: pa.Table) -> pa.Table:
    """One row per block: counts, sums, minima and maxima that the driver combines into the card's figures."""
    valid = table.column(REJECT).is_null()
    kept = table.filter(valid)
    tokens = np.diff(list_parts(kept.column(IDS))[1]) if kept.num_rows else np.zeros(0)
    labels = kept.column(LABEL).to_numpy(zero_copy_only=False) if kept.num_rows else np.zeros(0)
    reasons = table.column(REJECT).drop_null().to_pylist()
    row = {"rows": table.num_rows, "kept": kept.num_rows, "positives": int((labels >= 0.5).sum()),
           "label_sum": float(labels.sum()), "label_min": float(labels.min()) if len(labels) else None,
           "label_max": float(labels.max()) if len(labels) else None,
           "reasons": json.dumps(dict(zip(*np.unique(reasons, return_counts=True))) if reasons else {},
                                 default=int)}
    for name, values in (("tokens", tokens), ("query_chars", kept.column(QUERY_CHARS).to_numpy()),
                         ("document_chars", kept.column(DOCUMENT_CHARS).to_numpy())):
        row[f"{name}_sum"] = int(np.sum(values))
        row[f"{name}_min"] = int(np.min(values)) if len(values) else None
        row[f"{name}_max"] = int(np.max(values)) if len(values) else None
    return pa.Table.from_pylist([row])


def _combine_stats(rows: List[dict]) -> dict:
    kept = sum(r["kept"] for r in rows)
    reasons: Dict[str, int] = {}
    for r in rows:
        for reason, count in json.loads(r["reasons"]).items():
            reasons[reason] = reasons.get(reason, 0) + count
    stats = {"rows": sum(r["rows"] for r in rows), "pairs": kept, "rejected": sum(reasons.values()),
             "reject_reasons": reasons, "positives": sum(r["positives"] for r in rows),
             "label_mean": sum(r["label_sum"] for r in rows) / kept if kept else 0.0}
    for name in ("label", "tokens", "query_chars", "document_chars"):
        lows = [r[f"{name}_min"] for r in rows if r[f"{name}_min"] is not None]
        highs = [r[f"{name}_max"] for r in rows if r[f"{name}_max"] is not None]
        stats[f"{name}_min"] = min(lows) if lows else None
        stats[f"{name}_max"] = max(highs) if highs else None
        if name != "label":
            stats[f"{name}_mean"] = sum(r[f"{name}_sum"] for r in rows) / kept if kept else 0.0
    return stats


def _negative_columns(config: TrainConfig, beir: bool) -> List[str]:
    names = parse_names(config.negative_columns, "negative_columns") or []
    if names and beir:
        raise ConfigError(f"{setting_and_flag('negative_columns')} is for rows of a query, a positive and negatives; "
                          f"a BEIR folder's negatives are BM25's ({setting_and_flag('hard_negatives')})")
    if config.document_column in names or config.query_column in names:
        raise ConfigError(f"{setting_and_flag('negative_columns')} must name other columns than the query and the "
                          f"positive, got {config.negative_columns!r}")
    return names


def _kept_rows(table: pa.Table) -> pa.Table:
    """Rows a model can learn from (or score), with only the columns the workers read."""
    kept = table.filter(table.column(REJECT).is_null())
    return kept.select([c for c in (IDS, TYPES, LABEL, "query_id", "doc_id") if c in kept.column_names])


def _is_beir(uri: str) -> bool:
    """Whether `uri` is a BEIR folder: one with a `corpus.jsonl`, or a gzipped one (`find_beir_file`)."""
    from .candidates import find_beir_file

    return find_beir_file(uri, "corpus.jsonl") is not None


def refuse_missing_split(uri: str, split: str, setting: str) -> None:
    """A BEIR folder (`setting`'s: train_data or eval_data) without the qrels of the split asked: refused before Ray
    starts, naming the splits it has (it failed once Ray had started, 20 s in). Files of pairs pass."""
    import pyarrow.fs as pafs

    from .candidates import find_beir_file
    from .storage import join

    if not _is_beir(uri) or find_beir_file(uri, f"qrels/{split}.tsv") is not None:
        return
    fs, qrels = filesystem(join(uri, "qrels"))
    splits = sorted({info.base_name.split(".")[0] for info in fs.get_file_info(pafs.FileSelector(
        qrels, allow_not_found=True)) if info.type == pafs.FileType.File})
    split_setting = setting_and_flag(setting.replace("_data", "_split"))
    raise InputError(f"{setting_and_flag(setting)} {uri}: {join(uri, f'qrels/{split}.tsv')} does not exist"
                     + (f" (its qrels' splits: {', '.join(splits)}; {split_setting} names one)" if splits else ""))


@dataclasses.dataclass(frozen=True)
class TrainingInput:
    """`train_data` as a run reads it, listed once (it was listed twice, its files' ETags asked after each listing):
    a BEIR folder or files of pairs (their listing, which the run reads), and the files the pairs come from, each
    with its stamp, which the run's record holds (`checkpoints.claim_run`)."""
    beir: bool
    listing: Optional[Listing]  # None for a BEIR folder
    files: Dict[str, str]
    # "train_data" and "eval_data" -> their files of rows checked before the run starts Ray (`checked_columns`)
    checked: Dict[str, CheckedInput] = dataclasses.field(default_factory=dict)


def checked_columns(config: TrainConfig, data: TrainingInput) -> TrainingInput:
    """`data` with the columns and types of the training and eval rows in files (not BEIR folders) checked, which
    a run does before Ray starts: a column missing failed once Ray had started, ~30 s in (score and rerank checked
    theirs first). The rows are read then (`prepare_data`) without a second look at the files."""
    negatives = _negative_columns(config, data.beir)
    checked = {}
    if not data.beir:
        checked["train_data"] = _checked_rows(config.train_data, config, negatives, listing=data.listing)
    if config.eval_data and not _is_beir(config.eval_data):
        checked["eval_data"] = _checked_eval_rows(config, negatives)
    return dataclasses.replace(data, checked=checked)


def refuse_settings_of_beir(config: TrainConfig, beir: bool) -> None:
    """The settings of a BEIR folder's training pairs given for files of pairs, and of a BEIR folder's eval candidates
    for eval rows: a run did nothing with them and said nothing (`hard_negatives 8` trained on the file's pairs as
    they are, `eval_top_k 10` evaluated every candidate of each query). `beir`: whether train_data is a folder.
    negative_columns for a BEIR folder too, here before any work (it was refused where the pairs were read)."""
    _negative_columns(config, beir)
    if not beir:
        refuse_unused(config, ("train_split", "hard_negatives"), "is a setting of a BEIR folder's training pairs (its "
                      f"qrels' positives and BM25's negatives): {setting_and_flag('train_data')} {config.train_data} "
                      "is files of pairs", flags=True)
    if config.eval_data and settings_set(config, ("eval_split", "eval_top_k")) and not _is_beir(config.eval_data):
        refuse_unused(config, ("eval_split", "eval_top_k"), "is a setting of a BEIR folder's eval candidates (its "
                      f"qrels and BM25's top k): {setting_and_flag('eval_data')} {config.eval_data} is rows, each "
                      "query's its candidates", flags=True)


def unused_settings(config: TrainConfig, beir: bool) -> List[str]:
    """The settings a run did not use, which its model card leaves out (the card of a model trained on a file of
    pairs listed `hard_negatives: 4` among them): a BEIR folder's training pairs' for files of pairs, a BEIR folder's
    eval candidates' for eval rows, the evaluation's without eval_data, and those of rows (their format and columns)
    where no rows are read: a BEIR folder's pairs, evaluated on a BEIR folder or not at all. `beir`: whether
    train_data is a folder."""
    unused = [] if beir else ["train_split", "hard_negatives"]
    eval_rows = bool(config.eval_data) and not _is_beir(config.eval_data)
    if beir and not eval_rows:
        unused += ["input_format", "column_names", "query_column", "document_column", "label_column",
                   "negative_columns"]
    if not config.eval_data:
        return unused + ["eval_split", "eval_top_k", "eval_max_queries", "eval_every", "best_metric"]
    return unused + (["eval_split", "eval_top_k"] if eval_rows else [])


def training_input(config: TrainConfig, note_skipped: bool = True) -> TrainingInput:
    """The files the training pairs come from, each with its stamp (`storage.size_and_stamp`: its size and
    modification time, or its S3 ETag): those of `train_data` that the run reads (`input_files.list_files`), or a BEIR
    folder's corpus, queries and the training split's qrels. One listing (a look-up for a file named alone)."""
    if _is_beir(config.train_data):
        fs, folder = filesystem(config.train_data)
        folder = folder.rstrip("/")
        files = list_tree(fs, folder)
        # each file as the run reads it (`beir_file`): plain where there, else gzipped
        read = {f"{folder}/{name}" if f"{folder}/{name}" in files else f"{folder}/{name}.gz"
                for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{config.train_split}.tsv")}
        return TrainingInput(True, None, {path: stamp for path, (_, stamp) in files.items() if path in read})
    listing = list_files(config.train_data, config.input_format, parse_names(config.column_names), note_skipped)
    # every file's stamp from the listing: a folder's, or a file named alone's look-up
    return TrainingInput(False, listing, {path: listing.stamps[path][1] for path in listing.files})


def training_files(config: TrainConfig) -> Dict[str, str]:
    """`training_input`'s files and stamps."""
    return training_input(config, note_skipped=False).files  # said as the pairs are read


def beir_training_pairs(folder: str, split: str, hard_negatives: int) -> Tuple[pa.Table, Dict[str, int]]:
    """(query, document, label): every judged positive, and `hard_negatives` BM25 negatives per positive
    (the highest-ranked documents of the query that the qrels do not mark relevant); and the judged positives
    that give no pair, by reason (their query or document is not in the folder), counted as rejected pairs: they
    were left out without a word."""
    from .candidates import beir_file, bm25_tokens, bm25_top_k, read_corpus, read_qrels, read_queries

    qrels = read_qrels(beir_file(folder, f"qrels/{split}.tsv"))
    queries, corpus = read_queries(folder), read_corpus(folder)
    judged_positives = [(q, d) for q, judged in qrels.items() for d, g in judged.items() if g > 0]
    dropped = {reason: n for reason, n in (
        ("query not in queries.jsonl", sum(q not in queries for q, _ in judged_positives)),
        ("document not in corpus.jsonl", sum(q in queries and d not in corpus for q, d in judged_positives))) if n}
    positives = {q: [d for d, g in judged.items() if g > 0 and d in corpus]
                 for q, judged in qrels.items() if q in queries}
    positives = {q: docs for q, docs in positives.items() if docs}
    if not positives:
        raise InputError(f"{folder}: qrels/{split}.tsv has no positive pair of a known query and document")
    query_ids = list(positives)
    doc_ids = list(corpus)
    rows = [(q, d, 1.0) for q in query_ids for d in positives[q]]
    if hard_negatives:
        most = max(len(p) for p in positives.values())
        indices, scores = bm25_top_k(bm25_tokens(corpus, beir_file(folder, "corpus.jsonl")),
                                     [queries[q] for q in query_ids], most * (hard_negatives + 1))
        for q, ranked, ranked_scores in zip(query_ids, indices, scores):
            judged = qrels[q]
            # Only documents BM25 retrieved (score > 0): where fewer match, bm25s fills the k with documents
            # that share no term with the query, in arbitrary order, which are no hard negatives.
            negatives = [doc_ids[i] for i, score in zip(ranked, ranked_scores)
                         if score > 0 and judged.get(doc_ids[i], 0) <= 0]
            rows.extend((q, d, 0.0) for d in negatives[: hard_negatives * len(positives[q])])
    return pa.table({"query": [queries[q] for q, _, _ in rows], "document": [corpus[d] for _, d, _ in rows],
                     "label": pa.array([label for _, _, label in rows], pa.float32())}), dropped


def _eval_candidates(config: TrainConfig, negatives: List[str], checked: Optional[CheckedInput] = None):
    """The eval queries' candidates as (query_id, doc_id, query, document), their qrels, and what they are.
    `checked`: eval rows' files checked already (`checked_columns`)."""
    if not _is_beir(config.eval_data):
        return _eval_rows(config, negatives, checked)
    from .candidates import beir_file, bm25_tokens, candidates_table, read_corpus, read_qrels, read_queries

    qrels = read_qrels(beir_file(config.eval_data, f"qrels/{config.eval_split}.tsv"))
    queries, corpus = read_queries(config.eval_data), read_corpus(config.eval_data)
    with_relevant = [q for q, judged in qrels.items() if q in queries and any(g > 0 for g in judged.values())]
    query_ids = with_relevant[: config.eval_max_queries]
    if not query_ids:
        raise InputError(f"{config.eval_data}: no query of qrels/{config.eval_split}.tsv has a relevant document")
    table = candidates_table(corpus, queries, qrels, query_ids, config.eval_top_k,
                             bm25_tokens(corpus, beir_file(config.eval_data, "corpus.jsonl")))
    # A query that shares no term with any document has no candidate: it is not evaluated, as `ce-ray eval` and
    # trec_eval leave out a query the ranking lacks, so that the run's figures are ce-ray eval's of its candidates.
    found = set(table.column("query_id").to_pylist())
    evaluated = [q for q in query_ids if q in found]
    if not evaluated:
        raise InputError(f"{config.eval_data}: BM25 finds no candidate for any eval query of "
                         f"qrels/{config.eval_split}.tsv (none shares a term with a document)")
    # The queries left out are counted, as for eval rows, so that the line adds up to the split's queries.
    without_text = sum(q not in queries for q in qrels)  # were said to have no relevant document
    without_relevant = len(qrels) - len(with_relevant) - without_text
    without_candidates = len(query_ids) - len(evaluated)
    return (table, {q: qrels[q] for q in evaluated},
            f"the BM25 top {config.eval_top_k} of `{config.eval_data}` ({config.eval_split} split, "
            f"{plural(len(evaluated), 'query')}, {plural(table.num_rows, 'candidate')}"
            f"{_past_the_first(with_relevant, query_ids)}"
            + (f"; {plural(without_relevant, 'query')} without a relevant document left out"
               if without_relevant else "")
            + (f"; {plural(without_text, 'query')} not in queries.jsonl left out" if without_text else "")
            + (f"; {plural(without_candidates, 'query')} without a BM25 candidate left out"
               if without_candidates else "")
            + ")")


def _past_the_first(with_relevant: list, query_ids: list) -> str:
    """`; N queries past the first M left out (eval_max_queries)` for an eval line, so that the queries it counts
    add up to the data's; '' where none is."""
    past = len(with_relevant) - len(query_ids)
    return f"; {plural(past, 'query')} past the first {len(query_ids):,} left out (eval_max_queries)" if past else ""


def _checked_eval_rows(config: TrainConfig, negatives: List[str]) -> CheckedInput:
    try:
        return _checked_rows(config.eval_data, config, negatives, own_columns=False)
    except InputError as e:  # eval_data has no columns of its own to name: say whose they are
        names = ", ".join(repr(c) for c in [config.query_column, config.document_column,
                                            *(negatives or [config.label_column])])
        raise InputError(f"{setting_and_flag('eval_data')} {e} (eval rows are read in the training data's columns: "
                         f"{names})") from None


def _eval_rows(config: TrainConfig, negatives: List[str], checked: Optional[CheckedInput] = None):
    """eval_data in train_data's shape (the same columns): the rows of a query (by its text) are its candidates
    and their labels its grades, as CrossEncoderRerankingEvaluator ranks a sample's positives and negatives.
    A document given twice for a query (triples repeat the positive on each row) is one candidate, of its
    highest label. Queries without a row labelled above 0 are left out, as from a BEIR split; rows that cannot
    be scored too. Labels must be grades (whole numbers): of soft ones (0.1, 0.9), every row above 0 would be
    relevant."""
    import ray

    ds, config, files = _labelled_rows(config.eval_data, config, negatives,
                                       checked=checked or _checked_eval_rows(config, negatives))
    # In the files' order, as the training rows: the first eval_max_queries queries and the candidates' ids are
    # the same in every run. Read as their tasks ended, several files came in another order from run to run
    # (other queries evaluated, other metrics).
    ds.context.execution_options.preserve_order = True
    table = pa.concat_tables(ray.get(ds.to_arrow_refs()), promote_options="permissive")
    queries, query_reasons = text_column(table, config.query_column)
    documents, document_reasons = text_column(table, config.document_column)
    labels = numeric_labels(table, config.label_column, files).to_numpy(zero_copy_only=False)
    # A row without a label (null, no number) is a candidate of grade 0, as `ce-ray eval` counts it: left out as a
    # row that "cannot be scored", it raised the figures above those of eval of the same rows.
    unlabelled = np.isnan(labels)
    labels = np.where(unlabelled, 0.0, labels)
    usable = (query_reasons == "") & (document_reasons == "")
    if REJECT in table.column_names:
        usable &= table.column(REJECT).is_null().to_numpy(zero_copy_only=False)
    soft = labels[usable & (labels != np.round(labels))]
    if len(soft):
        raise InputError(f"{config.eval_data}: evaluation takes labels as grades, which documents are relevant, "
                         f"and {soft[0]:g} is none: give eval_data labels of 0 and 1 (or whole grades), or a BEIR "
                         "folder")
    qrels: Dict[str, Dict[str, float]] = {}
    first_row: Dict[tuple, str] = {}  # (query, document) -> the row that stands for it
    query_of, document_of = queries.to_pylist(), documents.to_pylist()
    for row in np.flatnonzero(usable):
        query = query_of[row]
        doc_id = first_row.setdefault((query, document_of[row]), str(row))
        judged = qrels.setdefault(query, {})
        judged[doc_id] = max(judged.get(doc_id, float(labels[row])), float(labels[row]))
    with_relevant = [q for q, judged in qrels.items() if any(g > 0 for g in judged.values())]
    query_ids = with_relevant[: config.eval_max_queries]
    if not query_ids:
        raise InputError(f"{config.eval_data}: no query has a row labelled above 0 to evaluate")
    rows = np.array([int(d) for q in query_ids for d in qrels[q]], dtype=np.int64)
    candidates = pa.table({"query_id": queries.take(rows), "doc_id": pa.array(rows.astype(str)),
                           "query": queries.take(rows), "document": documents.take(rows)})
    left_out = table.num_rows - int(usable.sum())
    unlabelled_kept = int((unlabelled & usable).sum())
    without_relevant = len(qrels) - len(with_relevant)
    return (candidates, {q: qrels[q] for q in query_ids},
            f"each query's rows of `{config.eval_data}` "
            f"({plural(len(query_ids), 'query')}, {plural(len(rows), 'candidate')}"
            + _past_the_first(with_relevant, query_ids)
            + (f"; {plural(without_relevant, 'query')} without a row labelled above 0 left out"
               if without_relevant else "")
            + (f"; {left_out:,} row(s) that cannot be scored left out" if left_out else "")
            + (f"; {unlabelled_kept:,} row(s) without a label taken as not relevant" if unlabelled_kept else "") + ")")


def _tokenized(ds, config: TrainConfig, encoder: PairEncoder, max_length: int, labels: bool,
               files: Optional[Dict[str, str]] = None):
    return ds.map_batches(
        _tokenize_train_block,
        fn_kwargs=dict(encoder=encoder,
                       query_column=config.query_column if labels else "query",
                       document_column=config.document_column if labels else "document",
                       label_column=config.label_column if labels else None, max_length=max_length, files=files),
        batch_format="pyarrow", batch_size=4096,
    ).materialize()


def _column_settings(config: TrainConfig, negatives: List[str]) -> Dict[str, str]:
    """The setting that names each column a training input is read by, which an input without it is told to give."""
    named = {column: "negative_columns" for column in negatives}
    return named | {config.query_column: "query_column", config.document_column: "document_column"} | (
        {} if negatives else {config.label_column: "label_column"})


def _row_columns(config: TrainConfig, negatives: List[str]) -> dict:
    """The columns training rows are read by, as `readers.check_input` and `read_dataset` take them: the query's and
    the documents' texts (a document column's may be lists of texts) and the label's. Only these are read: the
    files' other columns may differ from file to file (`training_pairs`)."""
    documents = [config.document_column, *negatives]
    labels = [] if negatives else [config.label_column]
    return dict(required=[config.query_column, *documents], column_names=parse_names(config.column_names),
                lists=documents, present=labels, read=[config.query_column, *documents, *labels])


def _checked_rows(uri: str, config: TrainConfig, negatives: List[str], own_columns: bool = True,
                  listing: Optional[Listing] = None) -> CheckedInput:
    """The files of rows at `uri` checked (`readers.check_input`) for the columns `training_pairs` reads.
    `own_columns`: the settings name the columns of these rows (a missing one's error says which setting gives it),
    not of other rows (eval_data's are read in the training data's). `listing`: `uri`'s, where it was listed
    already."""
    from .readers import check_input

    return check_input(uri, config.input_format, **_row_columns(config, negatives),
                       settings=_column_settings(config, negatives) if own_columns else None, listing=listing)


def _labelled_rows(uri: str, config: TrainConfig, negatives: List[str], listing: Optional[Listing] = None,
                   checked: Optional[CheckedInput] = None):
    """The rows at `uri`, in any shape `training_pairs` takes, as labelled pairs; the config naming their
    label column; and the files' paths by their input keys (`ROW_INPUT`). `checked`: the files' `_checked_rows`,
    where they were checked already; `listing`: `uri`'s, where it was listed already."""
    from .readers import input_sources, read_dataset

    read = read_dataset(uri, config.input_format, **_row_columns(config, negatives),
                        checked=checked or _checked_rows(uri, config, negatives, listing=listing))
    # Whole blocks: a column may be text in one block and lists in another, which no batch could hold.
    ds = read.dataset.map_batches(training_pairs, fn_kwargs=dict(
        query_column=config.query_column, document_column=config.document_column, negative_columns=negatives,
        label_column=config.label_column), batch_format="pyarrow", batch_size=None)
    if negatives:
        config = dataclasses.replace(config, label_column=LABEL_OF_NEGATIVES)
    return ds, config, input_sources(read.checks)


def top_reasons(stats: dict, count: int = 3) -> str:
    """The most frequent reasons rows were rejected, with how many: `label is null (12), ...`, and how many reasons
    more (their counts did not add up to the rows rejected, and nothing said why)."""
    reasons = sorted(stats["reject_reasons"].items(), key=lambda item: -item[1])
    more = len(reasons) - count
    return ", ".join(f"{reason} ({rows:,})" for reason, rows in reasons[:count]) + (
        f", and {more} reason(s) more ({sum(rows for _, rows in reasons[count:]):,})" if more > 0 else "")


def prepare_data(config: TrainConfig, encoder: PairEncoder, max_length: int,
                 eval_encoder: Optional[PairEncoder] = None, data: Optional[TrainingInput] = None):
    """The tokenized training set (materialized: every epoch reads it again), its statistics, the eval set
    (tokenized by `eval_encoder` where given: the saved model's default prompt before each query). `data`: the
    run's `training_input`, where it was looked up already."""
    import ray.data

    data = data or training_input(config)
    negatives = _negative_columns(config, data.beir)
    eval_config = config
    if data.beir:
        table, dropped = beir_training_pairs(config.train_data, config.train_split, config.hard_negatives)
        source = (f"{config.train_data} (qrels/{config.train_split}.tsv, {config.hard_negatives} BM25 hard negatives "
                  "per positive)")
        ds, files = ray.data.from_arrow(table), None
        config = dataclasses.replace(config, query_column="query", document_column="document", label_column="label")
    else:
        ds, config, files = _labelled_rows(config.train_data, config, negatives, listing=data.listing,
                                           checked=data.checked.get("train_data"))
        source, dropped = config.train_data, {}
    eval_ds, qrels = None, None
    if config.eval_data:  # read before the training data's tokenizing, so that its errors come before that work
        eval_table, qrels, eval_source = _eval_candidates(eval_config, negatives, data.checked.get("eval_data"))
    # The same rows in the same order in every run of these settings, for the shuffle below and for a resumed
    # run's place in the data (this set's own setting, shared by the sets made from it).
    ds.context.execution_options.preserve_order = True
    tokenized = _tokenized(ds, config, encoder, max_length, labels=True, files=files)
    stats = _combine_stats(tokenized.map_batches(_block_stats, batch_format="pyarrow", batch_size=None).take_all())
    for reason, pairs in dropped.items():  # a BEIR folder's judged positives that give no pair
        stats["reject_reasons"][f"qrels positive's {reason}"] = pairs
        stats["rejected"] += pairs
    stats["source"] = source
    stats["columns"] = [config.query_column, config.document_column, *(negatives or [config.label_column])]
    label_errors = {r: n for r, n in stats["reject_reasons"].items() if "outside [0, 1]" in r}
    if label_errors:
        example = next(iter(label_errors)).rsplit(": ", 1)[-1]
        raise InputError(f"{config.train_data}: {sum(label_errors.values())} label(s) of column "
                         f"{config.label_column!r} outside [0, 1] (e.g. {example}): BinaryCrossEntropyLoss needs "
                         "labels in [0, 1] (give graded labels divided by the highest grade)")
    if stats["pairs"] < config.num_workers:
        reasons = top_reasons(stats)
        why = f"; rejected: {reasons}" if reasons else ""
        raise InputError(f"{config.train_data}: {stats['pairs']} trainable pair(s) for {config.num_workers} "
                         f"worker(s){why}")
    # Shuffled once, seeded, over the whole set: rows come grouped (a BEIR split's positives, then its
    # negatives; triples' positives, then their negatives; a file's rows by query), and each worker takes a
    # contiguous part of the set, each batch rows of one window. Unshuffled, a worker could see only negatives.
    train_ds = tokenized.map_batches(_kept_rows, batch_format="pyarrow", batch_size=None)
    train_ds = train_ds.random_shuffle(seed=config.seed).materialize()
    if config.eval_data:
        stats["eval"] = eval_source
        eval_ds = _tokenized(ray.data.from_arrow(eval_table), config, eval_encoder or encoder, max_length,
                             labels=False)
        eval_ds = eval_ds.map_batches(_kept_rows, batch_format="pyarrow", batch_size=None).materialize()
    # Ray Train hands each epoch of a materialized set out through an actor of Ray Data's, which drew progress
    # bars (a dozen lines of terminal codes an epoch among the run's lines) for what takes milliseconds. The
    # sets' own settings: the user's DataContext is left as it is.
    for ds in (train_ds, eval_ds):
        if ds is not None:
            ds.context.enable_progress_bars = False
    without_bars_note()
    return train_ds, stats, eval_ds, qrels


class _BarsOffNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


_BARS_OFF_NOTE = _BarsOffNote()


def without_bars_note() -> None:
    """Ray Data's warning, in each process that runs the training sets (the driver, each worker), that their progress
    bars are off, and how to turn them on: ce-ray turns them off (`prepare_data`)."""
    logging.getLogger("ray.data._internal.progress").addFilter(_BARS_OFF_NOTE)


# ---------------------------------------------------------------- workers: a shard's batches and passes

def length_grouped(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   group_by_length: bool = True) -> List[np.ndarray]:
    """Row indices of a window cut into batches: shuffled, sorted by length (so that padding is small),
    and the batches themselves in random order, so that long and short batches alternate."""
    order = rng.permutation(len(lengths))
    if group_by_length:
        order = order[np.argsort(-lengths[order], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# Rows of a worker's part that each epoch deals into windows afresh (`shard_spans`). The part holds the same
# rows every epoch (the set is shuffled once): dealt into the same windows each epoch, whose rows are grouped
# by length, half the pairs of rows that shared a batch shared one again in the next epoch (WikiQA train,
# batch 16, windows of 50 batches: 52%, against 4% when each epoch shuffles the whole set). A span holds its
# rows' token ids (65,536 pairs of 128 tokens: 42 MB), and a worker holds one at a time; a part of fewer rows
# is one span.
SPAN_ROWS = 65536


def span_rows(config: TrainConfig) -> int:
    """Rows of a span: whole windows of `length_window` batches, as many as fit SPAN_ROWS, at least one."""
    window = config.batch_size * config.length_window
    return window * max(1, SPAN_ROWS // window)


@dataclasses.dataclass
class LeftOut:
    """The rows past the workers' equal parts (fewer than the workers), as the object refs of their Arrow blocks,
    and the parts' size. Each epoch trains them in place of as many rows of the parts, drawn from the seed and the
    epoch (`swap`): left out of every epoch, the same rows (the set is shuffled once) were never trained."""

    refs: list
    rows: int
    per_worker: int
    workers: int

    def swap(self, seed: int, epoch: int, rank: int) -> Optional[tuple]:
        """(a row of the worker's part, a left-out row) that trade places in the epoch, or None. Every worker
        draws the same (the seed sequence of the epoch and the worker count, which no rank's is), so each left-out
        row goes to one worker, and a worker takes at most one."""
        if not self.rows:
            return None
        rng = np.random.default_rng([seed, epoch, self.workers])
        ranks, rows = rng.permutation(self.workers)[: self.rows], rng.integers(self.per_worker, size=self.rows)
        taker = np.flatnonzero(ranks == rank)
        return (int(rows[taker[0]]), int(taker[0])) if len(taker) else None


def worker_spans(train_ds, config: TrainConfig, per_worker: int, workers: int):
    """Each worker's part of the (materialized) set, its rows [rank * per_worker, (rank + 1) * per_worker),
    in spans of `span_rows`: each span as the object refs of its Arrow blocks, which the worker fetches in the
    epoch's order (`shard_spans`); and the rows past the last part (`LeftOut`): every worker steps together."""
    size = span_rows(config)
    cuts = [rank * per_worker + start for rank in range(workers) for start in range(0, per_worker, size)]
    pieces = train_ds.split_at_indices(cuts + [workers * per_worker])  # [0]: before row 0; [-1]: the rest
    spans: List[List[list]] = [[] for _ in range(workers)]
    for cut, piece in zip(cuts, pieces[1:-1]):
        spans[cut // per_worker].append(piece.to_arrow_refs())
    rest = pieces[-1]
    return spans, LeftOut(rest.to_arrow_refs(), rest.count(), per_worker, workers)


def shard_spans(spans: List[list], config: TrainConfig, epoch: int, rank: int,
                left_out: Optional[LeftOut] = None) -> Iterator[pa.Table]:
    """One epoch of a worker's part (its `worker_spans`), a span at a time, the spans in an order of the seed,
    the epoch and the worker: in the same order every epoch, the same rows came first in each of them. A row of
    the part may give its place to a left-out row for the epoch (`LeftOut.swap`)."""
    import ray

    swap = left_out.swap(config.seed, epoch, rank) if left_out else None
    size = span_rows(config)
    order = np.random.default_rng([config.seed, epoch, rank]).permutation(len(spans))
    for number in order:
        table = pa.concat_tables(ray.get(spans[number]))
        if swap and swap[0] // size == number:
            row = swap[0] % size
            taken = pa.concat_tables(ray.get(left_out.refs)).slice(swap[1], 1).select(table.column_names)
            table = pa.concat_tables([table.slice(0, row), taken.cast(table.schema), table.slice(row + 1)])
        yield table


def span_windows(rows: int, window: int, rng: np.random.Generator) -> List[np.ndarray]:
    """A span's row indices shuffled and cut into windows of `window` rows (the last one may hold fewer), so
    that each epoch's windows, and their batches, hold other rows than the epoch before."""
    order = rng.permutation(rows)
    return [order[start : start + window] for start in range(0, rows, window)]


def prefetched(items: Iterator) -> Iterator:
    """`items`, whose first item a thread fetches from now on while the caller goes on."""
    pool = ThreadPoolExecutor(1)
    first = pool.submit(next, items, None)
    pool.shutdown(wait=False)  # the thread ends with its one fetch

    def rest():
        item = first.result()
        if item is not None:
            yield item
            yield from items

    return rest()


# Under CUDA graphs (compile_mode reduce-overhead) each (rows, width) of a pass is a graph of its own,
# recorded on its first run: widths padded to multiples of 32 let a few graphs serve every batch (16 up to
# 512 tokens), for some padding, which a step of a small batch, bound by launching kernels, does not feel.
GRAPH_WIDTH_MULTIPLE = 32


def bucketed_widths(lengths: np.ndarray, multiple: int, max_width: Optional[int]) -> np.ndarray:
    """Each row's padded width under CUDA graphs: its length rounded up to a multiple of `multiple`, at most
    `max_width` (the model's max length, within its positions), never below the length itself. A pass is
    as wide as its widest row's width, and the token budget counts these widths, not the lengths."""
    rounded = -(-lengths // multiple) * multiple
    return np.maximum(np.minimum(rounded, max_width), lengths) if max_width else rounded


def micro_batches(spans: Iterator[pa.Table], config: TrainConfig, epoch: int, rank: int, skip: int,
                  pad_id: int, max_width: Optional[int] = None) -> Iterator[list]:
    """One epoch of a worker's part, from its `shard_spans`, the first `skip` batches left out (resume).
    Each batch of `batch_size` rows comes as a list of forward passes, (inputs as numpy, labels): one, or with
    `batch_tokens` as many as keep every pass under that many padded tokens. Under CUDA graphs the passes'
    widths are bucketed (`bucketed_widths`), and the budget counts the bucketed widths.

    The order depends only on (seed, epoch, rank, span), so a resumed run sees the batches it had not seen. A part
    that is no whole number of batches has one short batch, which comes last, on every worker alike: each step's
    batches then hold as many rows on every worker, as DDP's average of the workers' gradients (each the mean over
    its own rows) and the run's count of pairs (rank 0's times the workers) take them to.
    """
    seen, short = 0, None
    for number, table in enumerate(spans):
        ids, offsets = list_parts(table.column(IDS))
        types = list_parts(table.column(TYPES))[0] if TYPES in table.column_names else None
        labels = table.column(LABEL).to_numpy(zero_copy_only=False).astype(np.float32)
        lengths = np.diff(offsets)
        widths = bucketed_widths(lengths, GRAPH_WIDTH_MULTIPLE, max_width) if config.cuda_graphs else lengths

        def passes_of(rows: np.ndarray) -> list:
            passes = ([rows[part] for part in token_budget_batches(widths[rows], config.batch_tokens)]
                      if config.batch_tokens else [rows])
            # Without CUDA graphs the widths are the lengths: each pass as wide as its longest row.
            return [(padded_inputs(ids, types, offsets, part, pad_id, int(widths[part].max())), labels[part])
                    for part in passes]

        rng = np.random.default_rng([config.seed, epoch, rank, number])
        windows = span_windows(table.num_rows, config.batch_size * config.length_window, rng)
        for rows in (window[batch] for window in windows
                     for batch in length_grouped(lengths[window], config.batch_size, rng, config.group_by_length)):
            if len(rows) < config.batch_size:  # the one short batch (the last window's of the last span): made now,
                short = passes_of(rows)  # so that its span's arrays are not held to the end
                continue
            seen += 1
            if seen > skip:
                yield passes_of(rows)
    if short is not None and seen + 1 > skip:
        yield short


def padded_inputs(ids: np.ndarray, types: Optional[np.ndarray], offsets: np.ndarray, rows: np.ndarray,
                   pad_id: int, width: Optional[int] = None) -> dict:
    input_ids, mask = pad(ids, offsets, rows, pad_id, width)
    inputs = {"input_ids": input_ids.astype(np.int64), "attention_mask": mask}  # bool: see _on_device
    if types is not None:
        inputs["token_type_ids"] = pad(types, offsets, rows, 0, width)[0].astype(np.int64)
    return inputs
