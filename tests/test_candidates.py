"""`ce-ray candidates`: BM25 top-k over SciFact checked against BM25 by hand and the qrels; bad input."""

from __future__ import annotations

import json
import math
from collections import Counter

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ce_ray.candidates import read_corpus, read_qrels, read_queries, run_candidates
from ce_ray.cli import main
from ce_ray.config import CandidatesConfig, ConfigError
from ce_ray.messages import InputError

from conftest import SCIFACT


def lucene_bm25(query: list, documents: list, k1: float = 1.5, b: float = 0.75) -> list:
    """BM25 as Lucene scores it, from the tokens: the reference the retrieved order must follow."""
    n = len(documents)
    average = sum(len(d) for d in documents) / n
    df = Counter(t for d in documents for t in set(d))
    scores = []
    for doc in documents:
        tf = Counter(doc)
        s = 0.0
        for t in set(query):
            if tf[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                s += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(doc) / average))  # Lucene drops (k1 + 1)
        scores.append(s)
    return scores


def test_scifact_candidates(tmp_path, capsys):
    import bm25s

    out = tmp_path / "cands"
    assert main(["candidates", "--data", str(SCIFACT), "--split", "test", "--top-k", "5",
                 "--output", str(out)]) == 0
    # What it is doing, before the index that takes minutes on a large corpus (it said nothing until done).
    assert ("ce-ray candidates: 5,183 documents and 300 queries (test) read in "
            in capsys.readouterr().out.split("\n")[0])
    df = pd.read_parquet(out / "candidates-test.parquet")
    qrels = read_qrels(str(SCIFACT / "qrels" / "test.tsv"))
    corpus, queries = read_corpus(str(SCIFACT)), read_queries(str(SCIFACT))
    assert df["query_id"].nunique() == 300 == len(qrels) and len(df) == 1500
    assert (df.groupby("query_id")["bm25_rank"].apply(list) == [[1, 2, 3, 4, 5]] * 300).all()
    assert (df.groupby("query_id")["bm25_score"].diff().dropna() <= 0).all()
    assert (df["query"] == df["query_id"].map(queries)).all()
    assert (df["document"] == df["doc_id"].map(corpus)).all()

    # Labels: the qrels grade of each retrieved pair, 0 when unjudged; every judged pair found is labelled.
    grades = [qrels[q].get(d, 0) for q, d in zip(df["query_id"], df["doc_id"])]
    assert df["label"].tolist() == grades
    found = sum(1 for q, judged in qrels.items() for d in judged if d in set(df.loc[df["query_id"] == q, "doc_id"]))
    assert int((df["label"] > 0).sum()) == found > 150

    # The ranking: Lucene BM25 computed here over the same tokens, for a few queries.
    doc_ids = list(corpus)
    tokens = bm25s.tokenize([corpus[d] for d in doc_ids], stopwords="en", return_ids=False, show_progress=False)
    for query_id in list(qrels)[:3]:
        q_tokens = bm25s.tokenize([queries[query_id]], stopwords="en", return_ids=False, show_progress=False)[0]
        reference = dict(zip(doc_ids, lucene_bm25(q_tokens, tokens)))
        mine = df[df["query_id"] == query_id]
        for doc_id, score in zip(mine["doc_id"], mine["bm25_score"]):
            assert score == pytest.approx(reference[doc_id], rel=1e-4)
        best = sorted(reference.values(), reverse=True)[:5]
        assert mine["bm25_score"].tolist() == pytest.approx(best, rel=1e-4)

    summary = json.loads((out / "_SUCCESS").read_text())
    assert summary["unknown_qrels_queries"] == 0 and summary["unknown_qrels_documents"] == 0
    with pytest.raises(FileExistsError):
        run_candidates(CandidatesConfig(data=str(SCIFACT), output=str(out), top_k=5))


def beir_folder(path, corpus_lines, qrels_text):
    (path / "qrels").mkdir(parents=True)
    (path / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n")
    (path / "queries.jsonl").write_text('{"_id": "q1", "text": "red apples"}\n{"_id": "q2", "text": "blue sea"}\n')
    (path / "qrels" / "test.tsv").write_text(qrels_text)
    return path


def test_a_corpus_of_one_document_and_one_query_is_said_in_the_singular(tmp_path, capsys):
    """The line said `1 documents and 1 queries (test) read in`."""
    folder = beir_folder(tmp_path / "beir", ['{"_id": "d1", "title": "Apples", "text": "red apples are sweet"}'],
                         "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    run_candidates(CandidatesConfig(data=str(folder), output=str(tmp_path / "out"), top_k=2))
    assert "ce-ray candidates: 1 document and 1 query (test) read in " in capsys.readouterr().out


def test_candidates_the_disk_does_not_take_whole_leave_no_file_that_says_they_are_done(tmp_path, capsys):
    """A disk that filled as `_SUCCESS` was written left it empty, which says a folder is finished; the candidates
    file, written in place, would be cut short. Each is written whole or not at all, the error naming it."""
    from conftest import files_of_at_most

    folder = beir_folder(tmp_path / "beir", ['{"_id": "d1", "title": "Apples", "text": "red apples are sweet"}'],
                         "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with files_of_at_most(1000), pytest.raises(OSError) as failed:  # (what it says goes to capsys' memory)
        run_candidates(CandidatesConfig(data=str(folder), output=str(tmp_path / "out"), top_k=2))
    assert f"writing {tmp_path}/out/candidates-test.parquet" in getattr(failed.value, "__notes__", []), failed.value
    assert list((tmp_path / "out").iterdir()) == []


def test_unknown_qrels_entries_are_reported(tmp_path, capsys):
    docs = ['{"_id": "d1", "title": "Apples", "text": "red apples are sweet"}',
            '{"_id": "d2", "title": "", "text": "the blue sea is deep"}',
            '{"_id": "d3", "title": "Trees", "text": "green leaves"}']
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td404\t1\nq2\td2\t1\nq9\td3\t1\n"
    folder = beir_folder(tmp_path / "beir", docs, qrels)
    summary = run_candidates(CandidatesConfig(data=str(folder), output=str(tmp_path / "out"), top_k=2))
    assert summary["unknown_qrels_queries"] == 1 and summary["unknown_qrels_queries_examples"] == ["q9"]
    assert summary["unknown_qrels_documents"] == 1
    assert summary["unknown_qrels_documents_examples"] == [["q1", "d404"]]
    err = capsys.readouterr().err
    assert "1 unknown quer(y/ies)" in err and "q9" in err and "q1/d404" in err
    df = pd.read_parquet(tmp_path / "out" / "candidates-test.parquet")
    assert df["query_id"].unique().tolist() == ["q1", "q2"]  # q9 is not in queries.jsonl
    top = df[df["bm25_rank"] == 1].set_index("query_id")
    assert top.loc["q1", "doc_id"] == "d1" and top.loc["q1", "label"] == 2
    assert top.loc["q1", "document"] == "Apples red apples are sweet"
    assert top.loc["q2", "document"] == "the blue sea is deep"  # empty title: no leading space
    # A config from Python is validated as the command's is: top_k 0 and max_queries 0 passed. Each is named by
    # its YAML key and its flag (it was named by the key alone).
    for setting in ({"top_k": 0}, {"max_queries": 0}):
        name, value = next(iter(setting.items()))
        flag = name.replace("_", "-")
        with pytest.raises(ConfigError, match=rf"^{name} \(--{flag}\) must be >= 1, got {value}$"):
            run_candidates(CandidatesConfig(data=str(folder), output=str(tmp_path / "zero"), **setting))
    assert not (tmp_path / "zero").exists()


def gzipped_copy(folder, path):
    """`folder`'s files gzipped under `path` (`corpus.jsonl.gz`, `qrels/test.tsv.gz`), as BEIR folders are kept."""
    import gzip

    for file in folder.rglob("*"):
        if file.is_file():
            target = path / file.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.with_name(target.name + ".gz").write_bytes(gzip.compress(file.read_bytes()))
    return path


def test_a_gzipped_beir_folder_gives_the_candidates_of_its_plain_copy(tmp_path, capsys):
    """A BEIR folder kept gzipped (`corpus.jsonl.gz`, `queries.jsonl.gz`, `qrels/test.tsv.gz`) failed in one line,
    `<data>/qrels/test.tsv does not exist`, exit 2: each file is read gzipped where only that is there."""
    docs = ['{"_id": "d1", "title": "Apples", "text": "red apples are sweet"}',
            '{"_id": "d2", "title": "", "text": "the blue sea is deep"}', '{"_id": "d3", "title": "", "text": "green"}']
    plain = beir_folder(tmp_path / "beir", docs, "query-id\tcorpus-id\tscore\nq1\td1\t2\nq2\td2\t1\n")
    gzipped = gzipped_copy(plain, tmp_path / "beir-gz")
    assert sorted(str(p.relative_to(gzipped)) for p in gzipped.rglob("*.gz")) == [
        "corpus.jsonl.gz", "qrels/test.tsv.gz", "queries.jsonl.gz"]
    for folder in (plain, gzipped):
        assert main(["candidates", "--data", str(folder), "--top-k", "2", "--output", str(tmp_path / folder.name)]) == 0
    assert "pairs         2 (BM25 top 2; fewer for 2 queries" in capsys.readouterr().out
    expected = pd.read_parquet(tmp_path / "beir" / "candidates-test.parquet")
    assert expected[["query_id", "doc_id", "label"]].values.tolist() == [["q1", "d1", 2], ["q2", "d2", 1]]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "beir-gz" / "candidates-test.parquet"), expected)
    # A gzipped file's errors name it as it is.
    (gzipped / "queries.jsonl.gz").write_bytes(__import__("gzip").compress(b'{"_id": "q1"}\n{"_id": "q2"}\n'))
    assert main(["candidates", "--data", str(gzipped), "--output", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip() == (f"ce-ray candidates: error: no query of qrels/test.tsv.gz has a 'text' "
                                               f"in {gzipped}/queries.jsonl.gz")


def test_records_that_repeat_an_id_are_warned_of(tmp_path, capsys):
    """A corpus whose records repeat an `_id` (passages given their document's id; `1` and `"1"`) kept the last of
    each unsaid: the earlier ones were never retrieved, and the summary counted fewer documents than lines."""
    docs = ['{"_id": 1, "title": "", "text": "red apples are sweet"}', '{"_id": "1", "title": "", "text": "blue sea"}',
            '{"_id": "d2", "title": "", "text": "green tea"}', '{"_id": "d2", "title": "", "text": "red tea"}']
    folder = beir_folder(tmp_path / "beir", docs, "query-id\tcorpus-id\tscore\nq1\t1\t1\n")
    summary = run_candidates(CandidatesConfig(data=str(folder), output=str(tmp_path / "out"), top_k=3))
    assert summary["documents"] == 2
    assert capsys.readouterr().err == (f"ce-ray: warning: {folder}/corpus.jsonl: 2 record(s) repeat the _id of an "
                                       "earlier one, which only the last of them keeps: 1, d2\n")
    assert read_corpus(str(folder)) == {"1": "blue sea", "d2": "red tea"}


def test_the_summary_counts_one_query_in_the_singular_and_says_how_many_max_queries_left_out(tmp_path, capsys):
    """The summary said "fewer for 1 queries, ... with them", and with `--max-queries` it counted the queries
    taken, not those it left out."""
    docs = ['{"_id": "d1", "title": "Apples", "text": "red apples are sweet"}',
            '{"_id": "d2", "title": "", "text": "the blue sea is deep"}', '{"_id": "d3", "title": "", "text": "green"}']
    folder = beir_folder(tmp_path / "beir", docs, "query-id\tcorpus-id\tscore\nq1\td1\t2\nq2\td2\t1\n")
    assert main(["candidates", "--data", str(folder), "--top-k", "2", "--max-queries", "1",
                 "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "  queries       1 (test; 1 more left out by --max-queries)\n" in out
    assert "  pairs         1 (BM25 top 2; fewer for 1 query, whose other documents share no term with it)\n" in out
    assert json.loads((tmp_path / "out" / "_SUCCESS").read_text())["queries_left_out"] == 1
    assert main(["candidates", "--data", str(folder), "--top-k", "2", "--output", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert "  queries       2 (test)\n" in out
    assert "  pairs         2 (BM25 top 2; fewer for 2 queries, whose other documents share no term with them)\n" in out


def test_eval_of_candidates_without_flags_names_the_flag_that_reads_their_order(tmp_path, capsys):
    """`ce-ray eval` of a candidates output, which holds no `rank` or `score`, said to name the order's column,
    not that its `bm25_rank` is read with `--rank-column bm25_rank`."""
    docs = ['{"_id": "d1", "title": "Apples", "text": "red apples are sweet"}',
            '{"_id": "d2", "title": "", "text": "the blue sea is deep"}']
    folder = beir_folder(tmp_path / "beir", docs, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    assert main(["candidates", "--data", str(folder), "--output", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert main(["eval", "--input", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "ce-ray eval: error: neither 'rank' nor 'score' is a column of the input: name the order's column, a rank "
        "(1 is best) with rank_column (--rank-column) or a score (higher is better) with score_column "
        "(--score-column), e.g. rank_column bm25_rank (--rank-column bm25_rank) for the input's first-stage order"]
    assert main(["eval", "--input", str(tmp_path / "out"), "--rank-column", "bm25_rank",
                 "--output", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["reranked"]["mrr@10"] == 1.0


def test_a_byte_order_mark_at_a_beir_or_trec_files_start_is_skipped(tmp_path):
    """A UTF-8 byte order mark (Windows' editors write one) failed a BEIR corpus as no JSON, and began a TREC qrels'
    first query id: query 1's judgment went to a query `\ufeff1` that no run has, and query 1 lost its relevant
    document, the metrics wrong with a warning of an unknown query alone."""
    docs = ['{"_id": "d1", "title": "", "text": "red apples"}', '{"_id": "d2", "title": "", "text": "blue sea"}']
    folder = beir_folder(tmp_path / "beir", docs, "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    corpus = folder / "corpus.jsonl"
    corpus.write_bytes(b"\xef\xbb\xbf" + corpus.read_bytes())
    assert read_corpus(str(folder)) == {"d1": "red apples", "d2": "blue sea"}
    (tmp_path / "trec.qrels").write_bytes("\ufeff1 0 d1 1\n1 0 d2 0\n".encode())
    assert read_qrels(str(tmp_path / "trec.qrels")) == {"1": {"d1": 1, "d2": 0}}


def test_bad_corpus_line_names_file_and_line(tmp_path):
    docs = ['{"_id": "d1", "title": "A", "text": "alpha"}', '{"_id": "d2", "title": "B", "text": beta}']
    folder = beir_folder(tmp_path / "beir", docs, "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(InputError, match=r"corpus\.jsonl line 2: not valid JSON"):
        run_candidates(CandidatesConfig(data=str(folder), output=str(tmp_path / "out")))
    assert main(["candidates", "--data", str(folder), "--output", str(tmp_path / "out")]) == 2


def test_a_job_that_fails_mid_way_says_why_and_that_it_reruns_with_overwrite(tmp_path, capsys):
    """A write that fails after the index was built (a disk that takes no file past 1,000 bytes; a link to a folder
    that is not there, before the file was written whole and moved into place): Python's traceback and its error,
    which, of a usage error's type (FileNotFoundError), ended the job as one found before any work, `error:`, exit 2.
    The traceback stays; the last line says what failed, in which file, and how to finish the job."""
    from conftest import files_of_at_most

    docs = ['{"_id": "d1", "title": "Apples", "text": "red apples are sweet"}',
            '{"_id": "d2", "title": "", "text": "the blue sea is deep"}']
    folder = beir_folder(tmp_path / "beir", docs, "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with files_of_at_most(1000):  # (what it says goes to capsys' memory)
        assert main(["candidates", "--data", str(folder), "--output", str(tmp_path / "out")]) == 1
    errors = capsys.readouterr().err
    assert "Traceback" in errors
    assert errors.splitlines()[-1].startswith("ce-ray candidates: failed: OSError: ")
    assert errors.splitlines()[-1].endswith(f"(writing {tmp_path}/out/candidates-test.parquet); rerun it with "
                                            "--mode overwrite")
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_folder_in_the_candidates_files_place_is_refused_before_the_work_and_overwritten(tmp_path, capsys):
    """A folder named as the candidates file (a parquet dataset of that name) failed the job after the index was
    built, and `--mode overwrite`, which the failure said finishes it, failed the same way: it deleted files
    alone. It is refused before any work, and overwritten as a file is."""
    docs = ['{"_id": "d1", "title": "Apples", "text": "red apples are sweet"}']
    folder = beir_folder(tmp_path / "beir", docs, "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (tmp_path / "out" / "candidates-test.parquet").mkdir(parents=True)
    (tmp_path / "out" / "candidates-test.parquet" / "part-0.parquet").write_bytes(b"")
    assert main(["candidates", "--data", str(folder), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ce-ray candidates: error: {tmp_path}/out already has candidates (candidates-test.parquet): pass --mode "
        "overwrite to replace them, or give another output folder for another split's")
    assert main(["candidates", "--data", str(folder), "--output", str(tmp_path / "out"), "--mode", "overwrite"]) == 0
    assert pd.read_parquet(tmp_path / "out" / "candidates-test.parquet")["doc_id"].tolist() == ["d1"]
    assert (tmp_path / "out" / "_SUCCESS").is_file()
    # An output that is a file is refused naming the setting by its flag too (it named the YAML key alone).
    assert main(["candidates", "--data", str(folder), "--output", str(tmp_path / "out" / "_SUCCESS")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ce-ray candidates: error: output (--output) {tmp_path}/out/_SUCCESS is a file: pass a folder")
    # One under a file: a traceback once the corpus was indexed, saying to rerun it with --mode overwrite.
    assert main(["candidates", "--data", str(folder), "--output", str(tmp_path / "out" / "_SUCCESS" / "c")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"ce-ray candidates: error: output (--output) {tmp_path}/out/"
                                                        f"_SUCCESS/c: {tmp_path}/out/_SUCCESS is a file, not a folder")


def test_an_output_of_another_split_or_job_and_odd_ids_and_texts(tmp_path, capsys):
    """`--mode overwrite` with another split left the first split's candidates beside the new ones, and `_SUCCESS`
    said the second alone: a rerank of the folder read both, each query's documents twice with two labels. Over a
    score or rerank job's output it replaced that job's `_SUCCESS`, and eval measured a rerank cut to its top k from
    the cut labels. A null `_id` was the document `None`; a lone surrogate (an emoji cut in two) failed the job with
    Arrow's traceback once the corpus was indexed."""
    docs = ['{"_id": "d1", "title": "Apples", "text": "red apples are sweet \\ud83d"}', '{"_id": "d2", "text": "sea"}']
    folder = beir_folder(tmp_path / "beir", docs, "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td2\t1\n")
    out = tmp_path / "out"
    assert run_candidates(CandidatesConfig(data=str(folder), output=str(out), split="dev"))["pairs"] == 1
    assert "corpus.jsonl: 1 line with a lone surrogate (\\ud800-\\udfff, no UTF-8 text), read as U+FFFD (line 1)" \
        in capsys.readouterr().err
    with pytest.raises(FileExistsError, match=r"already has candidates \(candidates-dev\.parquet\): pass --mode "
                                              r"overwrite to replace them, or give another output folder"):
        run_candidates(CandidatesConfig(data=str(folder), output=str(out)))
    run_candidates(CandidatesConfig(data=str(folder), output=str(out), mode="overwrite"))
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "candidates-test.parquet"]
    assert pq.read_table(out / "candidates-test.parquet").column("document").to_pylist()[0].endswith("sweet \ufffd")
    for job_folder in ("_ce_ray", "results"):
        (tmp_path / job_folder / job_folder).mkdir(parents=True)
        with pytest.raises(ConfigError, match=rf"^output \(--output\) {tmp_path}/{job_folder} is the output of a "
                                              r"score or rerank job \(it holds _ce_ray/, results/ or rejects/\)"):
            run_candidates(CandidatesConfig(data=str(folder), output=str(tmp_path / job_folder), mode="overwrite"))
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": null, "text": "b"}\n')
    with pytest.raises(InputError, match=r"corpus\.jsonl line 2: expected a JSON object with an '_id' \(a text or a "
                                         r"number\)$"):
        run_candidates(CandidatesConfig(data=str(folder), output=str(tmp_path / "other")))


def test_a_data_path_that_is_a_file_or_a_qrels_path_that_is_a_folder_fails_in_one_line(tmp_path, capsys):
    """`--data` naming the corpus file instead of its folder, or eval's `--qrels` naming the qrels folder instead
    of a file, ended in pyarrow's traceback and, for candidates, `failed: ...; rerun it with --mode overwrite`,
    exit 1, as if work had been done."""
    docs = ['{"_id": "d1", "title": "Apples", "text": "red apples are sweet"}']
    folder = beir_folder(tmp_path / "beir", docs, "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    corpus = folder / "corpus.jsonl"
    assert main(["candidates", "--data", str(corpus), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"ce-ray candidates: error: {corpus}/qrels/test.tsv does not exist"]
    assert main(["candidates", "--data", str(folder), "--output", str(tmp_path / "out")]) == 0
    assert main(["eval", "--input", str(tmp_path / "out"), "--score-column", "bm25_score",
                 "--qrels", str(folder / "qrels")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"ce-ray eval: error: {folder}/qrels is a folder, not a file"]


def test_a_corpus_or_queries_without_text_fail_before_any_work_naming_the_file(tmp_path, capsys):
    """An empty corpus, or one whose texts are under other keys (`body`), failed in bm25s' index with `max() arg
    is an empty sequence` and `rerun it with --mode overwrite`, exit 1; queries under other keys (`query`) gave 0
    pairs and exit 0."""
    empty = beir_folder(tmp_path / "empty", [], "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (empty / "corpus.jsonl").write_text("")
    other_keys = beir_folder(tmp_path / "body", ['{"_id": "d1", "body": "red apples are sweet"}'],
                             "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    for folder in (empty, other_keys):
        assert main(["candidates", "--data", str(folder), "--output", str(tmp_path / "out")]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"ce-ray candidates: error: no document of {folder}/corpus.jsonl has a 'title' or 'text'"]
    folder = beir_folder(tmp_path / "queries", ['{"_id": "d1", "title": "Apples", "text": "red apples are sweet"}'],
                         "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (folder / "queries.jsonl").write_text('{"_id": "q1", "query": "red apples"}\n')
    assert main(["candidates", "--data", str(folder), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"ce-ray candidates: error: no query of qrels/test.tsv has a 'text' in {folder}/queries.jsonl"]
    assert not (tmp_path / "out").exists()
    # A corpus of stopwords and one-letter words alone: texts, which bm25s' index keeps no word of (its ValueError
    # failed the job, `rerun it with --mode overwrite`, exit 1).
    stopwords = beir_folder(tmp_path / "stopwords", ['{"_id": "d1", "text": "the of and"}',
                                                     '{"_id": "d2", "title": "a", "text": "I"}'],
                            "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert main(["candidates", "--data", str(stopwords), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ce-ray candidates: error: no document of {stopwords}/corpus.jsonl has a word BM25 indexes (English stopwords "
        "and words of one letter are left out)")
    assert not (tmp_path / "out").exists()


def test_a_query_of_a_number_is_its_text_and_an_output_with_candidates_is_refused_before_the_corpus_is_read(
        tmp_path, capsys):
    """A query whose JSON text is a number (`2024`) failed the job in bm25s (`'int' object has no attribute
    'lower'`), where a document's is read as text; an output that has candidates was refused once the corpus was
    read (minutes and gigabytes for millions of passages): a corpus that is no JSON shows which comes first."""
    folder = beir_folder(tmp_path / "beir", ['{"_id": "d1", "text": "the 2024 harvest of red apples"}',
                                             '{"_id": "d2", "text": "blue sea"}'],
                         "query-id\tcorpus-id\tscore\nq7\td1\t1\n")
    (folder / "queries.jsonl").write_text('{"_id": "q7", "text": 2024}\n')
    assert run_candidates(CandidatesConfig(data=str(folder), output=str(tmp_path / "out")))["pairs"] == 1
    table = pq.read_table(tmp_path / "out" / "candidates-test.parquet")
    assert table.column("query").to_pylist() == ["2024"] and table.column("doc_id").to_pylist() == ["d1"]
    (folder / "corpus.jsonl").write_text("not json\n")
    assert main(["candidates", "--data", str(folder), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ce-ray candidates: error: {tmp_path}/out already has candidates (candidates-test.parquet): pass --mode "
        "overwrite to replace them, or give another output folder for another split's")


def test_queries_with_no_candidate_are_said_and_overwrite_removes_the_eval_of_the_candidates(tmp_path, capsys):
    """A query none of whose words is in the index was counted among those with fewer candidates, and candidates of
    no pair at all said `done` alone; `--mode overwrite` left `ce-ray eval`'s figures of the former candidates beside
    the new ones, where a job's overwrite deletes its eval.json."""
    docs = ['{"_id": "d1", "title": "Apples", "text": "red apples are sweet"}',
            '{"_id": "d2", "title": "", "text": "the blue sea is deep"}']
    folder = beir_folder(tmp_path / "beir", docs, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "red apples"}\n{"_id": "q2", "text": "zzzz"}\n')
    output = tmp_path / "out"
    summary = run_candidates(CandidatesConfig(data=str(folder), output=str(output), top_k=2))
    assert (summary["pairs"], summary["queries_with_fewer_matches"], summary["queries_without_matches"]) == (1, 2, 1)
    assert "(BM25 top 2; fewer for 2 queries, whose other documents share no term with them; none for 1 of them)" \
        in capsys.readouterr().out
    assert main(["eval", "--input", str(output / "candidates-test.parquet"), "--rank-column", "bm25_rank"]) == 0
    assert (output / "_candidates-test.parquet.eval.json").exists()
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "zzzz"}\n{"_id": "q2", "text": "yyyy"}\n')
    assert main(["candidates", "--data", str(folder), "--output", str(output), "--mode", "overwrite"]) == 0
    assert "  warning: no query shares a term with the corpus: " in capsys.readouterr().out
    assert not (output / "_candidates-test.parquet.eval.json").exists()


def test_the_summary_counts_the_queries_kept_and_a_negative_grade_is_no_relevant_document(tmp_path):
    """What no test pinned (each changed, the suite stayed green): `--max-queries` keeps the qrels' first queries,
    in the qrels' order; the summary's judged and relevant counts are those of the queries kept, the others left out
    (an unknown one not among them); a corpus smaller than top_k short of no query that retrieves all of it; a
    negative grade written as it is and relevant to no count; a qrels line of five words refused."""
    docs = ['{"_id": "d1", "title": "", "text": "red apples"}', '{"_id": "d2", "title": "", "text": "red sea apples"}',
            '{"_id": "d3", "title": "", "text": "blue sea"}']
    qrels = "query-id\tcorpus-id\tscore\nq3\td2\t1\nq1\td1\t1\nq1\td2\t-1\nq2\td3\t2\nq9\td1\t1\n"
    folder = beir_folder(tmp_path / "beir", docs, qrels)
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "red apples"}\n{"_id": "q2", "text": "blue sea"}\n'
                                          '{"_id": "q3", "text": "apples sea"}\n')
    first = run_candidates(CandidatesConfig(data=str(folder), output=str(tmp_path / "first"), top_k=10, max_queries=1))
    assert pd.read_parquet(tmp_path / "first" / "candidates-test.parquet")["query_id"].unique().tolist() == ["q3"]
    assert (first["queries_left_out"], first["judged_pairs"], first["relevant_total"], first["relevant_retrieved"],
            first["queries_with_fewer_matches"]) == (2, 1, 1, 1, 0)
    every = run_candidates(CandidatesConfig(data=str(folder), output=str(tmp_path / "every"), top_k=10))
    pairs = pd.read_parquet(tmp_path / "every" / "candidates-test.parquet")
    assert pairs.set_index(["query_id", "doc_id"])["label"].to_dict()[("q1", "d2")] == -1
    assert (every["queries"], every["judged_pairs"], every["relevant_total"], every["relevant_retrieved"],
            every["unknown_qrels_queries"]) == (3, 4, 3, 3, 1)
    (tmp_path / "five.tsv").write_text("q1 0 d1 1\nq1 0 d2 1 extra\n")
    with pytest.raises(InputError, match=r"five\.tsv.* 2"):
        read_qrels(str(tmp_path / "five.tsv"))
