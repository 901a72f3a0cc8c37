"""Pair tokenization with nanotoken: the Hugging Face BERT pair encoding, id for id, many times faster.

nanotoken encodes single texts only. Each distinct query and document is encoded once without special
tokens (a reranking input repeats every query ~100 times); `[CLS] q [SEP] d [SEP]`, the token types and
Hugging Face's `longest_first` truncation are then assembled for all rows at once in numpy.
"""

from __future__ import annotations

import functools
import json
import sys
import weakref
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Texts = Union[Sequence[str], pa.Array, pa.ChunkedArray]
PAIR_SPECIALS = 3  # [CLS] q [SEP] d [SEP]
# A text of more characters than this many a token of the room is encoded by its first words (`_encoded_texts`).
PREFIX_CHARS_PER_TOKEN = 8


@dataclass(frozen=True)
class PairPlan:
    """How nanotoken encodes one tokenizer's pairs: its pipeline as tokenizer JSON (truncation and padding
    left out), the [CLS] and [SEP] ids, and whether the model takes token types.

    Small and picklable, and it needs no Hugging Face tokenizer to encode: the driver builds it once, and a
    tokenize task that gets it imports neither transformers nor torch.
    """

    spec: str
    cls_id: int
    sep_id: int
    with_types: bool
    # Whether a text's first words give the tokens they give in the whole text: not where an added token holds a
    # space, which a cut before the space would split.
    prefixes_hold: bool = False

    @property
    def encoder(self):  # nanotoken.Tokenizer, built once per process
        return _encoder(self.spec)

    def encode(self, queries: Texts, documents: Texts, max_length: int,
               parallel: Optional[bool] = None) -> Tuple[pa.ListArray, Optional[pa.ListArray]]:
        """See `encode_pairs`."""
        return _encode(self, queries, documents, max_length, parallel)


# tokenizer -> (its pipeline's `_fingerprint`, its plan or None): a tokenizer changed since rebuilds it.
_plans: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _fingerprint(tokenizer, backend) -> tuple:
    """What of a tokenizer's pipeline a caller may change between calls, cheaply (~5 µs, where the whole pipeline's
    JSON takes ~2 ms): its size, normalizer, pre-tokenizer, pair template and added tokens. Its size alone kept a
    stale plan, whose ids then differed from the tokenizer's, after `add_tokens` of words already in the vocabulary
    (its size unchanged) or a normalizer replaced."""
    return (len(tokenizer), str(backend.normalizer), str(backend.pre_tokenizer), str(backend.post_processor),
            str(backend.get_added_tokens_decoder()))


def supports(tokenizer) -> bool:
    """True for a Hugging Face BERT WordPiece tokenizer whose whole pipeline nanotoken reproduces."""
    return pair_plan(tokenizer) is not None


def pair_plan(tokenizer) -> Optional[PairPlan]:
    """The nanotoken plan of a Hugging Face tokenizer, built once per tokenizer object; None where nanotoken
    cannot reproduce it."""
    # Settings that change between calls are checked every time.
    if getattr(tokenizer, "truncation_side", "right") != "right":
        return None
    if getattr(tokenizer, "split_special_tokens", False):
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(backend, "encode_special_tokens", False):
        return None
    fingerprint = _fingerprint(tokenizer, backend)
    try:
        cached = _plans.get(tokenizer)
    except TypeError:  # not weak-referenceable: built on every call
        cached = None
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    plan = _build_plan(tokenizer)
    try:
        _plans[tokenizer] = (fingerprint, plan)
    except TypeError:
        pass
    return plan


def _build_plan(tokenizer) -> Optional[PairPlan]:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    normalizer = spec.get("normalizer") or {}
    pre_tokenizer = spec.get("pre_tokenizer") or {}
    # Only the BERT pipeline: WordPiece after BertNormalizer (any casing, accent and CJK settings nanotoken
    # is tested on) and BertPreTokenizer. Anything else goes to the Hugging Face path.
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        return None
    if normalizer.get("type") != "BertNormalizer" or pre_tokenizer.get("type") != "BertPreTokenizer":
        return None
    if not all(isinstance(normalizer.get(k), bool) for k in ("clean_text", "handle_chinese_chars", "lowercase")):
        return None
    if normalizer.get("strip_accents") not in (None, True, False):
        return None
    template = _pair_template(spec.get("post_processor"))
    if template is None:
        return None
    # Truncation and padding in the file are call-time state of the Hugging Face tokenizer; nanotoken
    # encodes without them, and leaving them out makes equal pipelines share one encoder.
    spec["truncation"] = None
    spec["padding"] = None
    spec = json.dumps(spec)
    if _encoder(spec) is None:
        return None
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ["token_type_ids"])
    prefixes_hold = not any(c.isspace() for token in json.loads(spec).get("added_tokens") or []
                            for c in token.get("content", ""))
    return PairPlan(spec, template[0], template[1], with_types, prefixes_hold)


def _pair_template(post: Optional[dict]) -> Optional[Tuple[int, int]]:
    """(cls id, sep id) when the pair template is `[CLS] A [SEP] B [SEP]` with types 0 0 0 1 1."""
    if not post:
        return None
    if post.get("type") == "BertProcessing":
        return int(post["cls"][1]), int(post["sep"][1])
    if post.get("type") != "TemplateProcessing":
        return None
    pieces = [(kind, value.get("id"), value.get("type_id"))
              for item in post.get("pair") or [] for kind, value in item.items()]
    kinds = [p[0] for p in pieces]
    if kinds != ["SpecialToken", "Sequence", "SpecialToken", "Sequence", "SpecialToken"]:
        return None
    if [p[1] for p in pieces[1::2]] != ["A", "B"] or [p[2] for p in pieces] != [0, 0, 0, 1, 1]:
        return None
    if pieces[2][1] != pieces[4][1]:
        return None
    specials = post.get("special_tokens") or {}
    cls_ids = (specials.get(pieces[0][1]) or {}).get("ids") or []
    sep_ids = (specials.get(pieces[2][1]) or {}).get("ids") or []
    if len(cls_ids) != 1 or len(sep_ids) != 1:
        return None
    return int(cls_ids[0]), int(sep_ids[0])


@functools.lru_cache(maxsize=8)
def _encoder(tokenizer_json: str):
    """One nanotoken tokenizer per pipeline (vocab included) per process: Ray workers reuse processes."""
    import nanotoken

    try:
        return nanotoken.Tokenizer.from_json(tokenizer_json)
    except nanotoken.UnsupportedTokenizerError:
        return None


def _parallel() -> Optional[bool]:
    """Threads only where this process owns more than one CPU: a Ray task or actor holds its own share."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        context = ray.get_runtime_context()
        if context.worker.mode == ray.WORKER_MODE:
            return context.get_assigned_resources().get("CPU", 1) > 1
    return None  # nanotoken's own default: threads, except in multiprocessing or forked children


def _distinct(texts: Texts, name: str) -> Tuple[pa.Array, np.ndarray]:
    """The distinct texts and, for every row, the index of its text among them."""
    array = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count:
        raise ValueError(f"{name} has {array.null_count} null values: reject them before tokenizing")
    encoded = array.dictionary_encode()
    return encoded.dictionary, encoded.indices.to_numpy().astype(np.int64)


def truncated_lengths(query: np.ndarray, document: np.ndarray, max_length: int) -> Tuple[np.ndarray, np.ndarray]:
    """Tokens kept of each side under Hugging Face tokenizers' `longest_first` for a pair.

    With room = max_length - 3: a pair that fits is kept whole; else the shorter side is kept whole when the
    longer side still gets at least as much (the longer side takes the rest); else both get half, the odd
    token going to the longer side, to the document on a tie. Below 3 the tokenizers library truncates
    nothing.
    """
    if max_length < PAIR_SPECIALS:
        return query, document
    room = max_length - PAIR_SPECIALS
    short = np.minimum(query, document)
    keep_long = np.where(short > room, short, np.maximum(short, room - short))
    keep_short = short
    halves = keep_short + keep_long > room
    keep_short = np.where(halves, room // 2, keep_short)
    keep_long = np.where(halves, room // 2 + room % 2, keep_long)
    query_longer = query > document
    keep_query = np.where(query_longer, keep_long, keep_short)
    keep_document = np.where(query_longer, keep_short, keep_long)
    fits = query + document <= room
    return (
        np.where(fits, query, np.minimum(query, keep_query)),
        np.where(fits, document, np.minimum(document, keep_document)),
    )


def encode_pairs(
    tokenizer, queries: Texts, documents: Texts, max_length: int, parallel: Optional[bool] = None
) -> Tuple[pa.ListArray, Optional[pa.ListArray]]:
    """Token ids (list<int32>) and token types (list<int8>, None when the model takes none) of each pair,
    identical to `batching.encode_pairs_hf`. `parallel` overrides where nanotoken uses threads."""
    plan = pair_plan(tokenizer)
    if plan is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} is not a supported BERT WordPiece tokenizer")
    return plan.encode(queries, documents, max_length, parallel)


def _encoded_texts(plan: PairPlan, arrays: Sequence[pa.Array], query_index: np.ndarray, document_index: np.ndarray,
                   max_length: int, parallel: Optional[bool]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tokens of each distinct text of `arrays`, without special tokens: all their ids (int32), and where each
    text's start among them and how many they are. The rows are pairs of texts: `query_index` and `document_index`.

    A text far longer than a pair keeps (a web page of 250 KB, where a pair keeps 512 tokens) is encoded by its
    words up to a space some `PREFIX_CHARS_PER_TOKEN` characters a token of the room in: whole, it took seconds and
    GBs a block. BERT's normalizer changes each character alone and its pre-tokenizer splits at every space, so
    those words give the tokens they give in the whole text. Where they are more than the room, the pair's
    truncation keeps some of them alone, as of the whole text (`truncated_lengths`), unless its other side is
    more than the room too: `longest_first` then compares the two sides' whole lengths, and the texts are encoded
    whole, as are those whose first words give no more tokens than the room (long words, few spaces).
    """
    parallel = _parallel() if parallel is None else parallel
    room = max_length - PAIR_SPECIALS
    texts = [text for array in arrays for text in array.to_pylist()]
    words = texts
    cut = np.zeros(len(texts), bool)
    if plan.prefixes_hold and room > 0:
        limit = PREFIX_CHARS_PER_TOKEN * (room + 1)
        characters = np.concatenate([pc.utf8_length(array).to_numpy(zero_copy_only=False) for array in arrays])
        for i in np.flatnonzero(characters > limit):
            end = texts[i].rfind(" ", limit // 2, limit)
            if end > 0:
                if words is texts:
                    words = list(texts)
                words[i], cut[i] = texts[i][:end], True
    encoded = plan.encoder.encode_batch(words, add_special_tokens=False, parallel=parallel)
    token_ids = encoded.ids.astype(np.int32)
    starts, lengths = encoded.offsets[:-1].astype(np.int64), np.diff(encoded.offsets).astype(np.int64)
    # Rounds until no cut text is to be encoded whole: one whose first words gave too few tokens may, whole, be over
    # the room beside a cut side, which is then encoded whole too (a second round; its own side was over the room).
    while cut.any():
        over_room = lengths > room
        both_over = over_room[query_index] & over_room[document_index]
        whole = cut & ~over_room
        whole[query_index[both_over]] = True
        whole[document_index[both_over]] = True
        whole &= cut
        if not whole.any():
            break
        again = np.flatnonzero(whole)
        encoded = plan.encoder.encode_batch([texts[i] for i in again], add_special_tokens=False, parallel=parallel)
        starts[again] = len(token_ids) + encoded.offsets[:-1]
        lengths[again] = np.diff(encoded.offsets)
        token_ids = np.concatenate([token_ids, encoded.ids.astype(np.int32)])
        cut &= ~whole
    return token_ids, starts, lengths


def _encode(plan: PairPlan, queries: Texts, documents: Texts, max_length: int, parallel: Optional[bool]):
    if len(queries) != len(documents):
        raise ValueError(f"{len(queries)} queries but {len(documents)} documents")
    with_types = plan.with_types
    rows = len(queries)
    if rows == 0:  # as encode_pairs_hf
        return pa.array([], pa.list_(pa.int32())), pa.array([], pa.list_(pa.int8())) if with_types else None

    query_texts, query_index = _distinct(queries, "queries")
    document_texts, document_index = _distinct(documents, "documents")
    document_index = document_index + len(query_texts)
    token_ids, starts, lengths = _encoded_texts(plan, [query_texts, document_texts], query_index, document_index,
                                                max_length, parallel)
    keep_query, keep_document = truncated_lengths(lengths[query_index], lengths[document_index], max_length)

    # Every row is five segments, gathered from one pool holding [CLS], [SEP] and all encoded texts.
    pool = np.concatenate([np.array([plan.cls_id, plan.sep_id], np.int32), token_ids])
    total = int(keep_query.sum() + keep_document.sum()) + PAIR_SPECIALS * rows
    if total >= 2**31:
        raise ValueError(f"{total} tokens in one batch do not fit list<int32> offsets: use smaller batches")
    segment_lengths = np.ones((rows, 5), np.int64)
    segment_lengths[:, 1] = keep_query
    segment_lengths[:, 3] = keep_document
    segment_starts = np.zeros((rows, 5), np.int64)
    segment_starts[:, 1] = starts[query_index] + 2
    segment_starts[:, 2] = 1
    segment_starts[:, 3] = starts[document_index] + 2
    segment_starts[:, 4] = 1
    segment_lengths, segment_starts = segment_lengths.ravel(), segment_starts.ravel()
    written_before = np.cumsum(segment_lengths) - segment_lengths
    source = np.repeat(segment_starts - written_before, segment_lengths)
    source += np.arange(total)
    flat_ids = pool[source]

    offsets = np.zeros(rows + 1, np.int32)
    np.cumsum(keep_query + keep_document + PAIR_SPECIALS, out=offsets[1:])
    offsets = pa.array(offsets)
    ids = pa.ListArray.from_arrays(offsets, pa.array(flat_ids))
    if not with_types:
        return ids, None
    segment_types = np.tile(np.array([0, 0, 0, 1, 1], np.int8), rows)
    return ids, pa.ListArray.from_arrays(offsets, pa.array(np.repeat(segment_types, segment_lengths)))
