"""Pair tokenization into Arrow list columns, and token-budget micro-batches built from them.

Shared by scoring and training. Token ids travel between stages as Arrow `list<int32>` columns; padded
arrays are built from the Arrow offsets with numpy, with no Python loop per row.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import fast_tokenize
from .arrow_types import is_text
from .config import ConfigError
from .messages import setting_and_flag
from .tokenizer_facts import TokenizerFacts, tokenizer_facts

IDS = "_ce_input_ids"
TYPES = "_ce_token_type_ids"
REJECT = "reject_reason"

# Token budget of one forward pass. A GPU wants big batches to fill its cores; on CPU, batches past ~2k tokens
# fall out of cache and run slower (L12 on 2 cores: ~58 pairs/s at 2,048, ~45 at 8,192).
GPU_BATCH_TOKENS = 65536
CPU_BATCH_TOKENS = 2048


def default_batch_tokens(on_gpu: bool) -> int:
    return GPU_BATCH_TOKENS if on_gpu else CPU_BATCH_TOKENS


@functools.lru_cache(maxsize=4)
def cached_tokenizer(path: str, trust_remote_code: bool = False, version: str = ""):
    """One tokenizer per worker process, reused by every task that runs there. `version`: the folder's
    (`model_folder.model_version`), a key alone: Ray's task workers outlive a job in a Python session, and a
    folder saved again (a model trained again into it) was tokenized by its first tokenizer, without a word."""
    from .model_folder import load_tokenizer

    return load_tokenizer(path, trust_remote_code)


def text_column(table: pa.Table, name: str) -> Tuple[pa.Array, np.ndarray]:
    """The column as a string array, and the reason each row cannot be scored ('' when it can).

    A column that is not text (numbers or objects from JSONL, a mixed pandas block) is checked value by
    value: strings stay, anything else is rejected and kept in the rejects as its JSON text.
    """
    column = table.column(name).combine_chunks() if table.num_columns else pa.array([], pa.string())
    reasons = np.full(len(column), "", dtype=object)
    if is_text(column.type):  # a dictionary of strings (a categorical) casts to its strings too
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        reasons[nulls] = f"{name} is null"
        return column.cast(pa.string()), reasons
    import json

    values = column.to_pylist()
    text = []
    for i, v in enumerate(values):
        if isinstance(v, str):
            text.append(v)
        elif v is None or (isinstance(v, float) and v != v):
            text.append(None)
            reasons[i] = f"{name} is null"
        else:
            text.append(json.dumps(v, default=str))
            reasons[i] = f"{name} is {type(v).__name__}, not text"
    return pa.array(text, pa.string()), reasons


def encode_pairs_hf(tokenizer, queries: List[str], documents: List[str], max_length: int):
    """The Hugging Face pair encoding with CrossEncoder's truncation (longest_first), as Arrow lists."""
    if not queries:
        with_types = "token_type_ids" in tokenizer.model_input_names
        return pa.array([], pa.list_(pa.int32())), pa.array([], pa.list_(pa.int8())) if with_types else None
    enc = tokenizer(
        queries,
        documents,
        truncation="longest_first",
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
    )
    ids = enc["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat_ids = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(offsets[-1]))
    ids_array = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat_ids))
    if "token_type_ids" not in enc:
        return ids_array, None
    flat_types = np.fromiter(
        (t for row in enc["token_type_ids"] for t in row), dtype=np.int8, count=int(offsets[-1])
    )
    return ids_array, pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat_types))


def fast_plan(tokenizer, choice: str = "auto"):
    """nanotoken's plan for a tokenizer (`fast_tokenize.PairPlan`), or None for the Hugging Face path: nanotoken
    for BERT WordPiece tokenizers (auto), Hugging Face otherwise or when asked ("hf")."""
    return chosen_plan(None if choice == "hf" else fast_tokenize.pair_plan(tokenizer), choice,
                       type(tokenizer).__name__)


def chosen_plan(plan, choice: str, tokenizer_class: str):
    """`plan` (nanotoken's, or None where it cannot serve) as the `tokenizer` setting `choice` takes it."""
    if choice == "hf":
        return None
    if choice == "fast" and plan is None:
        # A BertTokenizer may be refused too (said to be no BERT WordPiece, where it truncated on the left): what
        # nanotoken reproduces is said, and the setting by its key and flag, as a command's user gives it.
        raise ConfigError(f"{setting_and_flag('tokenizer', 'fast')}: nanotoken does not reproduce this "
                          f"{tokenizer_class} (it reproduces BERT WordPiece tokenizers as transformers saves them, "
                          "cutting on the right, special tokens whole, no normalizer added by the model's settings): "
                          f"give {setting_and_flag('tokenizer', 'hf')}, or auto, which picks the one that fits")
    return plan


@dataclass(frozen=True)
class PairEncoder:
    """How tokenize tasks encode pairs, decided once on the driver (`pair_encoder`): nanotoken's plan where it
    gives the model tokenizer's ids, else the Hugging Face tokenizer that each worker loads from `model`.

    With a plan, a task imports neither transformers nor torch: its worker process is ready ~2 s sooner and
    holds ~200 MB less (bench/README.md, finding 12), which counts on a node with a tokenize task per CPU.
    """

    model: str
    trust_remote_code: bool = False
    fast: Optional[fast_tokenize.PairPlan] = None
    prompt: str = ""  # put before each query, as CrossEncoder.predict puts its prompt (`model_folder.query_prompt`)
    version: str = ""  # the model folder's files, as they were when the encoder was made (`cached_tokenizer`)

    def encode(self, queries: pa.Array, documents: pa.Array, max_length: int):
        """(ids, token types or None) Arrow list arrays, the Hugging Face pair encoding id for id."""
        if self.prompt:
            queries = pc.binary_join_element_wise(pa.scalar(self.prompt, queries.type), queries,
                                                  pa.scalar("", queries.type))
        if self.fast is not None:
            return self.fast.encode(queries, documents, max_length)
        tokenizer = cached_tokenizer(self.model, self.trust_remote_code, self.version)
        return encode_pairs_hf(tokenizer, queries.to_pylist(), documents.to_pylist(), max_length)


def pair_encoder(model: str, choice: str = "auto", trust_remote_code: bool = False,
                 facts: Optional[TokenizerFacts] = None, prompt: str = "", files: Optional[dict] = None) -> PairEncoder:
    """The encoder of a model's pairs for `tokenize_table`; choice "fast" fails for a tokenizer nanotoken
    cannot reproduce. The plan comes from the model's `tokenizer_facts` (after a first job, without
    transformers), or from `facts` where the caller has them already. `files`: an `s3://` model's listing, where
    the caller has it (`model_folder.model_files`)."""
    from .model_folder import model_version

    facts = facts or tokenizer_facts(model, trust_remote_code)
    return PairEncoder(model, trust_remote_code, chosen_plan(facts.plan, choice, facts.tokenizer_class), prompt,
                       model_version(model, files))


def reader_reasons(table: pa.Table) -> np.ndarray:
    """Why the reader rejected each row ('' where it did not)."""
    if REJECT not in table.column_names:
        return np.full(table.num_rows, "", dtype=object)
    return np.array(table.column(REJECT).fill_null("").to_pylist(), dtype=object)


def tokenize_table(
    table: pa.Table, encoder: PairEncoder, query_column: str, document_column: str, max_length: int
) -> pa.Table:
    """Adds token ids (and token types) for rows that can be scored, and a reject reason for the rest."""
    queries, q_reasons = text_column(table, query_column)
    documents, d_reasons = text_column(table, document_column)
    reasons = np.where(q_reasons != "", q_reasons, d_reasons)
    if REJECT in table.column_names:  # the reader already found something wrong with the row
        prior = reader_reasons(table)
        reasons = np.where(prior != "", prior, reasons)
        table = table.drop_columns([REJECT])
    valid = reasons == ""
    valid_idx = np.flatnonzero(valid)
    ids, types = encoder.encode(queries.take(valid_idx), documents.take(valid_idx), max_length)
    if len(valid_idx) < table.num_rows:
        # Put the encoded rows back in place; rejected rows get null ids.
        position = np.full(table.num_rows, -1, dtype=np.int64)
        position[valid_idx] = np.arange(len(valid_idx))
        take = pa.array(position, mask=~valid)
        ids = ids.take(take)
        types = types.take(take) if types is not None else None
    for name, text in ((query_column, queries), (document_column, documents)):
        # Texts stay as they came (a caller's large strings, pandas' and Ray Data's, were given back as strings);
        # other values (a number among them, a mixed pandas block) as the JSON text the rejects keep, and a
        # categorical's as its strings.
        given = table.column(name).type
        if not is_text(given) or pa.types.is_dictionary(given):
            table = table.set_column(table.schema.get_field_index(name), name, text)
    table = table.append_column(IDS, ids)
    if types is not None:
        table = table.append_column(TYPES, types)
    reject = pa.array(np.where(valid, None, reasons), pa.string())
    return table.append_column(REJECT, reject)


def list_parts(column: pa.ChunkedArray | pa.Array) -> Tuple[np.ndarray, np.ndarray]:
    """Flat values and row offsets of a list column (nulls have length 0)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        array = pc.if_else(array.is_null(), pa.scalar([], array.type), array)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    offsets = array.offsets.to_numpy()
    values = array.values.to_numpy(zero_copy_only=False)
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


def token_budget_batches(lengths: np.ndarray, budget: int, max_rows: Optional[int] = None) -> Iterator[np.ndarray]:
    """Row indices sorted by length (longest first), cut so that rows x padded length <= budget.

    Longest first makes the padded length of a batch its first row's, so padding is small, and the first
    batch is the largest allocation the replica will ever make.
    """
    order = np.argsort(-lengths, kind="stable")
    start = 0
    while start < len(order):
        padded = max(int(lengths[order[start]]), 1)
        rows = max(budget // padded, 1)
        if max_rows:
            rows = min(rows, max_rows)
        yield order[start : start + rows]
        start += rows


def pad(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray, pad_id: int = 0,
        width: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Right-padded [len(rows), width] array of the selected rows, and its attention mask; the width is the
    longest row's unless given (at least that)."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    width = max(int(lengths.max()) if len(rows) else 0, width or 1)
    mask = np.arange(width)[None, :] < lengths[:, None]
    out = np.full((len(rows), width), pad_id, dtype=values.dtype)
    # Source index of every real token: each row's start plus its position within the row.
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[mask] = values[np.repeat(starts, lengths) + within]
    return out, mask
