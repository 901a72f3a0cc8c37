"""Training rows in the shapes they come in, as (query, document, label) pairs.

- Pairs: a query, a document and a label in [0, 1]; they pass as they are.
- A query, a positive and negatives (`negative_columns`): sentence-transformers' (anchor, positive, negative...)
  sets, MS MARCO's triples; each column may also hold a list of texts, as in rows of
  `{"query": ..., "pos": [...], "neg": [...]}`. Every positive text is labelled 1, every negative 0.
- A query, a list of documents and a list of as many labels: sentence-transformers' "labeled-list" (a list of
  documents with one label gives that label to each).

Nothing is lost: a row the reader rejected, whose labels do not match its documents, or that holds no text at
all gives one rejected pair with the reason, and a value that is not text (a number in JSON) is rejected too.
"""

from __future__ import annotations

import json
from typing import List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrow_types import is_list, is_text
from .batching import REJECT, reader_reasons, text_column
from .readers import ROW_INPUT, _json_text

LABEL_OF_NEGATIVES = "label"  # the label column of the pairs built with negative_columns


def _texts(table: pa.Table, column: str) -> Tuple[np.ndarray, pa.Array]:
    """(row, value) of every text of a column of texts or of lists of texts (a null or empty list holds none)."""
    values = table.column(column).combine_chunks()
    if is_list(values.type):
        return pc.list_parent_indices(values).to_numpy(), pc.list_flatten(values)
    return np.arange(len(values)), values


def _mixed_labels(labels: pa.Array, documents: pa.Array) -> pa.Array:
    """A text label column beside lists of documents as lists of labels: a JSON Lines column that mixed lists of
    labels (`[1, 0]`) with single labels (`1`, for every document of its row) is read as text, each list as its
    JSON, which was rejected as no number, with every pair of its row. A single label is given to each document."""
    counts = pc.list_value_length(documents).fill_null(0).to_numpy(zero_copy_only=False)
    lists = []
    for value, count in zip(labels.to_pylist(), counts):
        parsed = None
        if value is not None and value.lstrip().startswith("["):
            try:
                parsed = json.loads(value)
            except ValueError:
                pass
        if isinstance(parsed, list):
            lists.append([_json_text(v) for v in parsed])  # each label as the reader writes it
        else:
            lists.append([value] * int(count))
    return pa.array(lists, pa.list_(pa.string()))


def training_pairs(table: pa.Table, query_column: str, document_column: str, negative_columns: List[str],
                   label_column: str) -> pa.Table:
    """The pairs of a block of training rows: (query_column, document_column, label, REJECT), the label column
    being `label_column` without negative columns and LABEL_OF_NEGATIVES with them. Other columns are dropped."""
    # Only the columns trained on (and each row's file, which an error names), so that blocks of files whose
    # other columns differ (a column of one file alone, or of another type in each) make one set.
    used = [query_column, document_column, *(negative_columns or [label_column]), REJECT, ROW_INPUT]
    table = table.select([name for name in used if name in table.column_names])
    if not negative_columns and not is_list(table.column(document_column).type):
        return table  # pairs already
    row_reasons = reader_reasons(table)
    parts = []  # (rows, documents, labels, the documents' column name)
    if negative_columns:
        label_column = LABEL_OF_NEGATIVES
        rows, texts = _texts(table, document_column)
        parts.append((rows, texts, pa.array(np.ones(len(rows), np.float32)), document_column))
        for column in negative_columns:
            rows, texts = _texts(table, column)
            given = texts.is_valid().to_numpy(zero_copy_only=False)  # rows may hold fewer negatives than columns
            rows, texts = rows[given], texts.filter(pa.array(given))
            parts.append((rows, texts, pa.array(np.zeros(len(rows), np.float32)), column))
    else:
        labels = table.column(label_column).combine_chunks()
        if is_text(labels.type):
            labels = _mixed_labels(labels, table.column(document_column).combine_chunks())
        rows, texts = _texts(table, document_column)
        if is_list(labels.type):
            counts = pc.list_value_length(table.column(document_column)).fill_null(0).to_numpy(zero_copy_only=False)
            given = pc.list_value_length(labels).fill_null(0).to_numpy(zero_copy_only=False)
            wrong = counts != given
            for row in np.flatnonzero(wrong & (row_reasons == "")):
                row_reasons[row] = f"{label_column} holds {given[row]} label(s) for {counts[row]} document(s)"
            values = pc.list_flatten(labels)
            if wrong.any():  # those rows' texts are not trained on, nor their labels taken
                keep = ~wrong[rows]
                rows, texts = rows[keep], texts.filter(pa.array(keep))
                values = values.filter(pa.array(~wrong[pc.list_parent_indices(labels).to_numpy()]))
        else:  # one label for each text of the row
            values = labels.take(pa.array(rows))
        if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
            values = values.cast(pa.float32())
        parts.append((rows, texts, values, document_column))

    produced = np.zeros(table.num_rows, dtype=bool)
    for rows, *_ in parts:
        produced[rows] = True
    empty = np.flatnonzero(~produced)  # one rejected pair each, with why
    for row in empty:
        row_reasons[row] = row_reasons[row] or f"{document_column} holds no text"
    label_type = parts[0][2].type
    parts.append((empty, pa.nulls(len(empty), pa.string()), pa.nulls(len(empty), label_type), document_column))

    queries = table.column(query_column)
    pairs = []
    for rows, texts, values, column in parts:
        strings, text_reasons = text_column(pa.table({column: texts}), column)
        reasons = np.where(row_reasons[rows] != "", row_reasons[rows], text_reasons)
        pair = {query_column: queries.take(pa.array(rows)), document_column: strings,
                label_column: values.cast(label_type),
                REJECT: pa.array(np.where(reasons == "", None, reasons), pa.string())}
        if ROW_INPUT in table.column_names:  # each pair's file, which a label that is no number is named by
            pair[ROW_INPUT] = table.column(ROW_INPUT).take(pa.array(rows))
        pairs.append(pa.table(pair))
    return pa.concat_tables(pairs)

