"""BM25 first stage (`bm25s`) over a BEIR folder: the top-k documents of each query, as pairs parquet.

A BEIR folder holds `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl` (`_id`, `text`) and
`qrels/<split>.tsv` (`query-id`, `corpus-id`, `score`), any of them gzipped (`corpus.jsonl.gz`: `beir_file`).
The output has one row per (query, candidate): query_id, doc_id, query, document (title and text, joined as BEIR
joins them), bm25_score, bm25_rank (1 = best) and label (the qrels grade, 0 when unjudged), ready for
`ce-ray rerank` and `ce-ray eval`.
The index lives in one process: BM25 here serves demos, evaluation and hard-negative mining.
"""

from __future__ import annotations

import csv
import json
import posixpath
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from .config import CandidatesConfig, ConfigError, require
from .input_files import EVAL_SUFFIX, UTF8_BOM, compression_of, is_number
from .messages import InputError, plural, setting_and_flag
from .output_state import REJECTS, RESULTS, STATE, SUCCESS
from .runtime import work
from .storage import (check_s3_access, file_in_the_way, filesystem, is_remote, join, remove, write_bytes_atomic,
                      write_table_atomic)


def numbered_lines(uri: str):
    """(line number, line) of a local or s3:// text file (gzip etc. detected from the name)."""
    fs, path = filesystem(uri)
    kind = fs.get_file_info(path).type  # NotFound too where a folder of the path is a file (`--data corpus.jsonl`)
    if kind == pafs.FileType.NotFound:
        raise InputError(f"{uri} does not exist")
    if kind == pafs.FileType.Directory:
        raise InputError(f"{uri} is a folder, not a file")
    with fs.open_input_stream(path, compression=compression_of(path)) as f:
        data = f.read()  # the whole file: BM25 indexes all of it in memory anyway
    # A byte order mark at its start is skipped (Windows' editors write one), as a JSON Lines input's is: BEIR's
    # corpus failed as no JSON, and a TREC qrels' first query id began with it, its judgment another query's.
    for number, line in enumerate(data.removeprefix(UTF8_BOM).split(b"\n"), start=1):
        try:
            yield number, line.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{uri} line {number}: not valid UTF-8") from None


def find_beir_file(folder: str, name: str) -> Optional[str]:
    """The path of a BEIR folder's file `name` (`corpus.jsonl`, `qrels/test.tsv`), or of `name.gz` where only that
    is there: BEIR's downloads are often kept gzipped, and the reads detect the compression from the name. None
    where neither is a file."""
    plain = join(folder, name)
    fs, path = filesystem(plain)
    for found, uri in ((path, plain), (f"{path}.gz", f"{plain}.gz")):
        if fs.get_file_info(found).type == pafs.FileType.File:
            return uri
    return None


def beir_file(folder: str, name: str) -> str:
    """`find_beir_file`'s path, or the plain one where neither is there, for the error that names it."""
    return find_beir_file(folder, name) or join(folder, name)


def read_jsonl_records(uri: str) -> List[dict]:
    """Every record of a JSON Lines file; a bad line fails with the file and the line number. A lone surrogate
    (`\\ud83d`, an emoji cut in two by a scraper: valid JSON, no UTF-8) is read as U+FFFD, and warned of: the job
    failed writing its pairs, once the corpus was indexed, with Arrow's traceback."""
    records, mended = [], []
    for number, line in numbered_lines(uri):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise InputError(f"{uri} line {number}: not valid JSON ({str(e)[:80]})") from None
        if not isinstance(record, dict) or not isinstance(record.get("_id"), (str, int, float)):
            # a null id was the document "None", one with every other null id
            raise InputError(f"{uri} line {number}: expected a JSON object with an '_id' (a text or a number)")
        text = json.dumps(record, ensure_ascii=False)
        if LONE_SURROGATE.search(text):
            record = json.loads(LONE_SURROGATE.sub("\ufffd", text))
            mended.append(number)
        records.append(record)
    if mended:
        print(f"ce-ray: warning: {uri}: {plural(len(mended), 'line')} with a lone surrogate (\\ud800-\\udfff, no "
              f"UTF-8 text), read as U+FFFD (line {mended[0]}" + (", ...)" if len(mended) > 1 else ")"),
              file=sys.stderr, flush=True)
    return records


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _texts_by_id(uri: str, text) -> Dict[str, str]:
    """id -> `text(record)` of each record of a JSON Lines file. A repeated id (`1` and `"1"` too) keeps its last
    record, as BEIR's loader keeps it, and is warned of: the earlier records (passages given their document's id)
    were dropped unsaid, never retrieved or judged."""
    records = read_jsonl_records(uri)
    texts = {str(r["_id"]): text(r) for r in records}
    if len(texts) < len(records):
        repeated = [i for i, n in Counter(str(r["_id"]) for r in records).items() if n > 1]
        print(f"ce-ray: warning: {uri}: {len(records) - len(texts):,} record(s) repeat the _id of an earlier one, "
              f"which only the last of them keeps: {', '.join(repeated[:5])}" + (", ..." if len(repeated) > 5 else ""),
              file=sys.stderr, flush=True)
    return texts


def read_corpus(folder: str) -> Dict[str, str]:
    """doc id -> document text: title and text joined with a space and stripped, as BEIR's reranker does."""
    return _texts_by_id(beir_file(folder, "corpus.jsonl"),
                        lambda r: f"{r.get('title') or ''} {r.get('text') or ''}".strip())


def read_queries(folder: str) -> Dict[str, str]:
    """query id -> its text, as text whatever JSON gave (`2024`), as a document's is."""
    return _texts_by_id(beir_file(folder, "queries.jsonl"), lambda r: f"{r.get('text') or ''}")


def read_qrels(uri: str) -> Dict[str, Dict[str, int]]:
    """query id -> {doc id: grade}, in file order, from a BEIR qrels TSV (header `query-id corpus-id score`)
    or a TREC qrels file (`query iteration document relevance`, split at spaces or tabs, no header: MS
    MARCO's and TREC DL's). A first line whose grade is not a number is a header, of any words (`qid docid rel`),
    as BEIR's loader skips its first line whatever it holds. A (query, document) pair listed again keeps its last
    grade, as BEIR's loader keeps it (trec_eval refuses such qrels), and is warned of."""
    qrels: Dict[str, Dict[str, int]] = {}
    repeated: List[str] = []
    rows = ((n, line.rstrip("\n\r")) for n, line in numbered_lines(uri))
    for number, line in rows:
        if not line.strip():
            continue
        parts = next(csv.reader([line], delimiter="\t"))
        words = line.split()
        if len(parts) != 3 and len(words) == 4:  # TREC: the iteration (0 or Q0) is not used
            parts = [words[0], words[2], words[3]]
        if number == 1 and ((len(parts) == 3 and not is_number(parts[2]))
                            or (len(words) in (3, 4) and not is_number(words[-1]))):
            continue  # a header, tab- or space-separated
        if len(parts) != 3:
            raise InputError(f"{uri} line {number}: expected BEIR's 3 tab-separated fields (query-id, corpus-id, "
                             f"score) or TREC's 4 (query, iteration, document, relevance), got {len(parts)}")
        try:
            grade = float(parts[2])
            whole = int(grade)
        except (ValueError, OverflowError):  # `nan`, `inf`
            raise InputError(f"{uri} line {number}: score {parts[2]!r} is not a number") from None
        if whole != grade:  # 0.5 was read as 0, not relevant; BEIR's loader and trec_eval read whole grades alone
            raise InputError(f"{uri} line {number}: score {parts[2]!r} is not a whole number (a grade: 0, 1, 2, ...)")
        judged = qrels.setdefault(parts[0], {})
        if parts[1] in judged:
            repeated.append(f"{parts[0]}/{parts[1]}")
        judged[parts[1]] = grade
    if not qrels:  # nothing to search for or to measure by: said here, not as a fault further on
        raise InputError(f"{uri} holds no judgment (a query, a document and its grade a line)")
    if repeated:
        print(f"ce-ray: warning: {uri}: {len(repeated):,} line(s) repeat the (query, document) pair of an earlier "
              f"line, whose last grade is kept (query/doc): {repeated[0]}" + (", ..." if len(repeated) > 1 else ""),
              file=sys.stderr, flush=True)
    return qrels


@dataclass
class QrelsReport:
    """qrels entries that name a query or a document the folder does not have."""

    unknown_queries: List[str] = field(default_factory=list)
    unknown_documents: List[tuple] = field(default_factory=list)  # (query id, doc id)

    def lines(self, examples: int = 5) -> List[str]:
        out = []
        if self.unknown_queries:
            out.append(f"qrels name {len(self.unknown_queries)} unknown quer(y/ies), not retrieved: "
                       f"{', '.join(self.unknown_queries[:examples])}")
        if self.unknown_documents:
            shown = ", ".join(f"{q}/{d}" for q, d in self.unknown_documents[:examples])
            out.append(f"qrels name {len(self.unknown_documents)} unknown document(s) (query/doc): {shown}")
        return out


def check_qrels(qrels: Dict[str, Dict[str, int]], queries: Dict[str, str], corpus: Dict[str, str]) -> QrelsReport:
    report = QrelsReport()
    for query_id, judged in qrels.items():
        if query_id not in queries:
            report.unknown_queries.append(query_id)
        report.unknown_documents.extend((query_id, d) for d in judged if d not in corpus)
    return report


def bm25_tokens(corpus: Dict[str, str], corpus_file: str):
    """The documents' texts (in the corpus' order) as bm25s indexes them; refused where none keeps a word, which
    bm25s' index fails on (`max() arg is an empty sequence`): it drops English stopwords and one-letter words."""
    import bm25s

    tokens = bm25s.tokenize(list(corpus.values()), stopwords="en", show_progress=False)
    if not tokens.vocab:
        raise InputError(f"no document of {corpus_file} has a word BM25 indexes (English stopwords and words of one "
                         "letter are left out)")
    return tokens


def bm25_top_k(corpus_tokens, query_texts: List[str], k: int):
    """(doc indices, scores), each [queries, k], best first, over the documents of `bm25_tokens`."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(corpus_tokens, show_progress=False)
    query_tokens = bm25s.tokenize(query_texts, stopwords="en", return_ids=False, show_progress=False)
    k = min(k, len(corpus_tokens.ids))
    return retriever.retrieve(query_tokens, k=k, show_progress=False, n_threads=0)


SCHEMA = pa.schema([
    ("query_id", pa.string()), ("doc_id", pa.string()), ("query", pa.string()), ("document", pa.string()),
    ("bm25_score", pa.float32()), ("bm25_rank", pa.int32()), ("label", pa.int32()),
])


def candidates_table(corpus: Dict[str, str], queries: Dict[str, str], qrels: Dict[str, Dict[str, int]],
                     query_ids: List[str], k: int, corpus_tokens) -> pa.Table:
    """The BM25 top k of each query (`corpus_tokens`: `bm25_tokens` of the corpus) as pairs, with their grades."""
    doc_ids = list(corpus)
    texts = [corpus[d] for d in doc_ids]
    indices, scores = bm25_top_k(corpus_tokens, [queries[q] for q in query_ids], k)
    per_query = indices.shape[1]
    rows_doc = [doc_ids[i] for i in indices.ravel()]
    rows_query = np.repeat(np.array(query_ids, dtype=object), per_query)
    labels = [qrels.get(q, {}).get(d, 0) for q, d in zip(rows_query, rows_doc)]
    table = pa.table({
        "query_id": pa.array(rows_query, pa.string()),
        "doc_id": pa.array(rows_doc, pa.string()),
        "query": pa.array([queries[q] for q in rows_query], pa.string()),
        "document": pa.array([texts[i] for i in indices.ravel()], pa.string()),
        "bm25_score": pa.array(scores.ravel().astype(np.float32)),
        "bm25_rank": pa.array(np.tile(np.arange(1, per_query + 1, dtype=np.int32), len(query_ids))),
        "label": pa.array(labels, pa.int32()),
    }, schema=SCHEMA)
    # A document that shares no term with the query (BM25 score 0) was not retrieved: bm25s fills a query's k
    # with such documents, in arbitrary order, where fewer match.
    return table.filter(pa.compute.greater(table.column("bm25_score"), 0))


# A job's candidates of any split, and `ce-ray eval`'s figures of them (`input_files.eval_beside`'s name, and an
# earlier ce-ray's)
CANDIDATES_FILE = re.compile(rf"_?candidates-.+\.parquet(?:{re.escape(EVAL_SUFFIX)})?")


def output_file(config: CandidatesConfig) -> str:
    return join(config.output, f"candidates-{config.split}.parquet")


def _check_output(config: CandidatesConfig) -> Optional[List[str]]:
    """What of a job's own the output holds (`mode overwrite` replaces it), None where there is no output folder;
    refused before the corpus is read (minutes and gigabytes for millions of passages)."""
    fs, path = filesystem(config.output)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise ConfigError(f"{setting_and_flag('output')} {config.output} is a file: pass a folder")
    if blocker := file_in_the_way(config.output):  # found as the output was made, after the corpus was indexed
        raise ConfigError(f"{setting_and_flag('output')} {config.output}: {blocker} is a file, not a folder")
    if info.type == pafs.FileType.NotFound:
        return None
    entries = fs.get_file_info(pafs.FileSelector(path))
    names = {posixpath.basename(e.path) for e in entries}
    if names & {STATE, RESULTS, REJECTS}:
        # Its `_SUCCESS` is a score or rerank job's, which an overwrite replaced: `ce-ray eval` then measured a
        # rerank cut to its top k from the cut labels, with the candidates' order for a baseline.
        raise ConfigError(f"{setting_and_flag('output')} {config.output} is the output of a score or rerank job (it "
                          f"holds {STATE}/, {RESULTS}/ or {REJECTS}/): give another folder")
    # A folder in the place of the file (a parquet dataset of that name) is replaced as a file is, before any work:
    # the write would fail on it after the index was built. The candidates of another split too: `_SUCCESS` says one
    # split's, and a rerank or eval of the folder read both, each query's documents twice with two labels. And
    # `ce-ray eval`'s figures of the candidates, which would be read as the new ones' (it was left beside them),
    # named as an earlier ce-ray named them too.
    present = sorted(e.path for e in entries if CANDIDATES_FILE.fullmatch(posixpath.basename(e.path))
                     or posixpath.basename(e.path) == SUCCESS)
    if present and config.mode == "error":
        shown = ", ".join(posixpath.basename(p) for p in present if p.endswith(".parquet")) or SUCCESS
        raise FileExistsError(f"{config.output} already has candidates ({shown}): pass --mode overwrite to replace "
                              "them, or give another output folder for another split's")
    return present


def _prepare(config: CandidatesConfig, present: Optional[List[str]]) -> None:
    """The output folder made, or what of a job's own it held (`_check_output`) removed."""
    fs, path = filesystem(config.output)
    if present is None:
        fs.create_dir(path, recursive=True)
    for p in present or []:
        remove(fs, p)


def run_candidates(config: CandidatesConfig) -> dict:
    """The `ce-ray candidates` job: BM25 top-k of every query of a split, written as pairs parquet."""
    require(config)
    config.validate()  # as the command's config is: from Python, top_k 0 and max_queries 0 passed
    start = time.perf_counter()
    for uri in (config.data, config.output):  # a bucket that is not there is an error, where writing would create it
        check_s3_access(uri)
    present = _check_output(config)
    qrels_file = beir_file(config.data, f"qrels/{config.split}.tsv")
    qrels = read_qrels(qrels_file)
    queries = read_queries(config.data)
    corpus = read_corpus(config.data)
    qrels_name = qrels_file[len(join(config.data, "")):]  # `qrels/test.tsv`, or `.tsv.gz`, for the lines below
    # Texts under other keys (`body`, `query`) read as empty: bm25s fails on a corpus without a term, and
    # queries without one retrieve nothing.
    if not any(corpus.values()):
        raise InputError(f"no document of {beir_file(config.data, 'corpus.jsonl')} has a 'title' or 'text'")
    report = check_qrels(qrels, queries, corpus)
    for line in report.lines():
        print(f"ce-ray candidates: warning: {line}", file=sys.stderr, flush=True)
    known = [q for q in qrels if q in queries]
    query_ids = known[: config.max_queries]
    if not query_ids:
        raise InputError(f"no query of {qrels_name} is in {beir_file(config.data, 'queries.jsonl')}")
    if not any(queries[q].strip() for q in query_ids):
        raise InputError(f"no query of {qrels_name} has a 'text' in {beir_file(config.data, 'queries.jsonl')}")
    # Said before the index is built: BM25 over 400,000 documents took 40 s on 2 CPU cores, and a corpus of
    # millions takes many minutes, with nothing else said until the job ends.
    print(f"ce-ray candidates: {plural(len(corpus), 'document')} and {plural(len(query_ids), 'query')} "
          f"({config.split}) read in {time.perf_counter() - start:.1f} s; indexing them with BM25, then retrieving "
          f"the top {config.top_k} of each query", flush=True)
    tokens = bm25_tokens(corpus, beir_file(config.data, "corpus.jsonl"))  # a corpus of no word is refused
    _prepare(config, present)
    with work():  # from here on an error fails a job that has done work, whatever its type
        return _retrieve(config, corpus, tokens, queries, qrels, query_ids, len(known) - len(query_ids), report,
                         start)


def _retrieve(config: CandidatesConfig, corpus: Dict[str, str], corpus_tokens, queries: Dict[str, str],
              qrels: Dict[str, Dict[str, int]], query_ids: List[str], left_out: int, report: QrelsReport,
              start: float) -> dict:
    """The work of `run_candidates`, after its checks: the index, the candidates file, `_SUCCESS` and the summary."""
    table = candidates_table(corpus, queries, qrels, query_ids, config.top_k, corpus_tokens)
    fs, path = filesystem(output_file(config))
    write_table_atomic(fs, path, table, is_remote(config.output))
    judged = sum(len(qrels[q]) for q in query_ids)
    counts = table.group_by("query_id").aggregate([("doc_id", "count")]).column("doc_id_count").to_numpy()
    short = len(query_ids) - int((counts == min(config.top_k, len(corpus))).sum())  # queries with fewer than k
    unmatched = len(query_ids) - len(counts)  # of those, queries with none: no word of theirs is in the index
    found = int(pa.compute.sum(pa.compute.greater(table.column("label"), 0)).as_py() or 0)
    relevant = sum(sum(g > 0 for g in qrels[q].values()) for q in query_ids)
    summary = {
        "queries": len(query_ids), "documents": len(corpus), "pairs": table.num_rows, "top_k": config.top_k,
        "queries_with_fewer_matches": short, "queries_without_matches": unmatched, "queries_left_out": left_out,
        "split": config.split, "judged_pairs": judged, "relevant_retrieved": found, "relevant_total": relevant,
        "unknown_qrels_queries": len(report.unknown_queries),
        "unknown_qrels_queries_examples": report.unknown_queries[:10],
        "unknown_qrels_documents": len(report.unknown_documents),
        "unknown_qrels_documents_examples": [list(p) for p in report.unknown_documents[:10]],
        "seconds": time.perf_counter() - start, "output": output_file(config),
    }
    # whole or not at all: a disk that filled left an empty _SUCCESS, which says a folder is finished
    write_bytes_atomic(fs, filesystem(join(config.output, SUCCESS))[1], json.dumps(summary, indent=2).encode(),
                       is_remote(config.output))
    recall = found / relevant if relevant else 0.0
    print("\n".join([
        "ce-ray candidates: done",
        f"  queries       {len(query_ids):,} ({config.split}"
        + (f"; {left_out:,} more left out by --max-queries)" if left_out else ")"),
        f"  documents     {len(corpus):,}",
        f"  pairs         {table.num_rows:,} (BM25 top {config.top_k}"
        + (f"; fewer for {plural(short, 'query')}, whose other documents share no term with "
           f"{'it' if short == 1 else 'them'}" + (f"; none for {unmatched:,} of them" if unmatched else "") + ")"
           if short else ")"),
        f"  relevant      {found:,} of {relevant:,} retrieved (recall@{config.top_k} {recall:.3f} over all pairs; "
        "ce-ray eval averages it per query)",
        f"  seconds       {summary['seconds']:.1f}",
        f"  output        {summary['output']}",
    ] + ([f"  warning: no query shares a term with the corpus: {output_file(config)} holds no pair to rerank (are "
          "the queries and the corpus of one language, and their text fields the ones read?)"]
         if not table.num_rows else [])), flush=True)
    return summary
