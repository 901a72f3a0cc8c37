"""IR metrics: hand-worked values, and the same numbers as sentence-transformers' reranking evaluator."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat

import numpy as np
import pandas as pd
import pytest

from ce_ray.cli import main
from ce_ray.config import ConfigError, EvalConfig
from ce_ray.evaluate import evaluate_frame, run_eval
from ce_ray.messages import InputError
from ce_ray.metrics import ranking_metrics

from conftest import spread_model, wikiqa_pairs


def test_graded_ndcg_mrr_map_recall_by_hand():
    # Grades in rank order: ranks 2, 3 and 5 are relevant, with grades 2, 1 and 3.
    m = ranking_metrics([0, 2, 1, 0, 3], k=10, recall_k=2)
    dcg = 2 / np.log2(3) + 1 / np.log2(4) + 3 / np.log2(6)  # 2.9224179
    ideal = 3 / np.log2(2) + 2 / np.log2(3) + 1 / np.log2(4)  # 4.7618595
    assert m["ndcg@10"] == pytest.approx(0.6137136, abs=1e-6) == dcg / ideal
    assert m["mrr@10"] == 0.5
    assert m["map"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    assert m["recall@2"] == pytest.approx(1 / 3)
    # A fourth relevant document (grade 2) that the list missed: it counts in the ideal, MAP and recall.
    m = ranking_metrics([0, 2, 1, 0, 3], k=10, recall_k=100, relevant_total=4, ideal_gains=[3, 2, 2, 1])
    assert m["ndcg@10"] == pytest.approx(dcg / (ideal + 2 / np.log2(4) - 1 / np.log2(4) + 1 / np.log2(5)))
    assert m["map"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 4)
    assert m["recall@100"] == pytest.approx(3 / 4)
    # Cut-offs: the only relevant document at rank 11 is outside MRR@10 and NDCG@10.
    late = ranking_metrics([0] * 10 + [1], k=10)
    assert late["mrr@10"] == 0 and late["ndcg@10"] == 0 and late["map"] == pytest.approx(1 / 11)


def test_a_negative_grade_gains_nothing_as_in_trec_eval():
    """TREC qrels may grade junk below 0: trec_eval counts such a document as a gain of 0, in the list and in
    the ideal order, so NDCG stays within [0, 1] (a negative gain made it -0.29 here, and below -2 elsewhere)."""
    ranked = [-1, 1, 0]  # d1 (junk) first, d2 (grade 1) second, d5 (unjudged) third
    expected = (1 / np.log2(3)) / (2 + 1 / np.log2(3))  # ideal: d3 (grade 2), then d2; 0.2398125, as trec_eval
    one = ranking_metrics(ranked, relevant_total=2, ideal_gains=[-1, 1, 2, -2])
    assert one["ndcg@10"] == pytest.approx(expected, abs=1e-9) and one["map"] == pytest.approx(1 / 4)
    rows = pd.DataFrame({"query_id": ["a"] * 3, "doc_id": ["d1", "d2", "d5"], "score": [3.0, 2.0, 1.0]})
    qrels = {"a": {"d1": -1, "d2": 1, "d3": 2, "d4": -2}}
    result = evaluate_frame(rows, EvalConfig(baseline_column=""), qrels)
    assert result["reranked"]["ndcg@10"] == pytest.approx(expected, abs=1e-9)
    # Grades in the rows (no qrels): the list's own, junk first, then the relevant one.
    labelled = evaluate_frame(rows.assign(label=[-1, 1, 0]), EvalConfig(baseline_column=""))
    assert labelled["reranked"]["ndcg@10"] == pytest.approx(1 / np.log2(3), abs=1e-9)


def test_many_ranked_lists_at_once_give_each_lists_metrics():
    """`lists_metrics` (what `ce-ray eval` computes, a million pairs in a second) against `ranking_metrics` list
    by list: graded gains, lists of one row and of none, with and without relevant documents the lists miss."""
    from ce_ray.metrics import dcg, lists_metrics

    rng = np.random.default_rng(7)
    sizes = rng.integers(0, 30, 300)
    sizes[:3] = [0, 1, 25]
    lists = np.repeat(np.arange(300), sizes)
    gains = rng.choice([0, 0, 0, 0, 1, 2, 3], len(lists)).astype(np.float64)
    missed = rng.integers(0, 3, 300)  # relevant documents (grade 2) the first stage did not find
    judged = [list(gains[lists == q]) + [2] * missed[q] for q in range(300)]
    total = np.array([sum(g > 0 for g in grades) for grades in judged])
    ideal = np.array([dcg(sorted(grades, reverse=True), 10) for grades in judged])
    for extra in (False, True):
        got = lists_metrics(lists, gains, 300, 10, 5, total if extra else None, ideal if extra else None)
        for q in range(300):
            expected = ranking_metrics(gains[lists == q], 10, 5, total[q] if extra else None,
                                       judged[q] if extra else None)
            assert {name: got[name][q] for name in expected} == pytest.approx(expected, abs=1e-12), (q, extra)
    assert (got["map"] > 0).sum() > 100 and (got["ndcg@10"] == 0).sum() > 10


def test_query_without_relevant_counts_zero_and_unknown_qrels_are_reported(tmp_path, capsys):
    rows = pd.DataFrame({
        "query_id": ["a", "a", "a", "b", "b"],
        "doc_id": ["d1", "d2", "d3", "d4", "d5"],
        "score": [0.9, 0.8, 0.1, 0.7, 0.6],
        "bm25_rank": [3, 2, 1, 1, 2],
    })
    rows.to_parquet(tmp_path / "scored.parquet")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\na\td1\t1\nb\td9\t0\nzz\td1\t1\nyy\td2\t2\n")
    out = tmp_path / "eval.json"
    result = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), qrels=str(tmp_path / "qrels.tsv"),
                                 output=str(out)))
    assert result["queries"] == 2 and result["queries_without_relevant"] == 1
    assert result["reranked"]["map"] == pytest.approx((1.0 + 0.0) / 2)  # b has no relevant document: 0
    assert result["baseline"]["map"] == pytest.approx((1 / 3 + 0.0) / 2)
    assert result["qrels_queries_without_candidates"] == 2
    assert result["qrels_queries_without_candidates_examples"] == ["zz", "yy"]
    printed = capsys.readouterr().out
    assert "2 queries with no candidates" in printed and "zz, yy" in printed
    assert json.loads(out.read_text())["reranked"] == result["reranked"]

    skipped = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), qrels=str(tmp_path / "qrels.tsv"),
                                  output=str(out), only_with_relevant=True))
    assert skipped["queries"] == 1 and skipped["queries_skipped_without_relevant"] == 1
    assert skipped["reranked"]["map"] == 1.0
    assert "judge none of the input's" not in capsys.readouterr().out

    # Qrels of other ids: none of the queries (an error naming an id of each), or none of the documents (said).
    (tmp_path / "other.tsv").write_text("query-id\tcorpus-id\tscore\nQ-a\td1\t1\n")
    with pytest.raises(InputError, match=r"none of the 2 query ids of .* is in the qrels .*\('a' there, 'Q-a' in"):
        run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), qrels=str(tmp_path / "other.tsv"), output=str(out)))
    (tmp_path / "other.tsv").write_text("query-id\tcorpus-id\tscore\na\tD-1\t1\n")
    unjudged = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), qrels=str(tmp_path / "other.tsv"),
                                   output=str(out)))
    assert unjudged["judged_pairs"] == 0 and unjudged["reranked"]["map"] == 0
    assert "warning: the qrels judge none of the input's (query, document) pairs" in capsys.readouterr().out


def test_the_qrels_queries_without_candidates_shown_say_when_there_are_more(tmp_path, capsys):
    """SciFact's qrels name 300 queries, a BM25 run of 5 of them leaves 295 without candidates: the line shows a
    few of their ids and says that more follow, where it read as if those five were all of them."""
    pd.DataFrame({"query_id": ["a", "a"], "doc_id": ["d1", "d2"], "score": [0.9, 0.1]}).to_parquet(
        tmp_path / "scored.parquet")
    unjudged = "".join(f"q{i}\td1\t1\n" for i in range(7))
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\na\td1\t1\n" + unjudged)
    config = EvalConfig(input=str(tmp_path / "scored.parquet"), qrels=str(tmp_path / "qrels.tsv"),
                        output=str(tmp_path / "eval.json"))
    assert run_eval(config)["qrels_queries_without_candidates"] == 7
    line = next(line for line in capsys.readouterr().out.splitlines() if "with no candidates" in line)
    assert line.endswith("q0, q1, q2, q3, q4, ...")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\na\td1\t1\nq0\td1\t1\n")
    run_eval(config)
    line = next(line for line in capsys.readouterr().out.splitlines() if "with no candidates" in line)
    assert line.endswith(": q0")


def test_a_count_of_one_is_said_in_the_singular(tmp_path, capsys):
    """Eval's lines said `1 pairs` and `qrels name 1 queries with no candidates`."""
    pd.DataFrame({"query_id": ["a"], "doc_id": ["d1"], "score": [0.9]}).to_parquet(tmp_path / "scored.parquet")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\na\td1\t1\nq0\td1\t1\n")
    run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), qrels=str(tmp_path / "qrels.tsv"),
                        output=str(tmp_path / "eval.json")))
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"ce-ray eval: 1 query \(.*\), 1 pair", lines[0]), lines
    assert any(line.startswith("  qrels name 1 query with no candidates, ") for line in lines), lines


def test_a_baseline_of_scores_read_as_a_rank_is_warned_of(tmp_path, capsys):
    """`--baseline-column bm25_score` without --baseline-descending ranks BM25's worst first, and its metrics came
    out the worst with no word (SciFact, 5 queries: NDCG@10 0.2336 against 0.7262): the summary says so."""
    pd.DataFrame({"query_id": ["a", "a", "a"], "doc_id": ["d1", "d2", "d3"], "score": [0.9, 0.5, 0.1],
                  "label": [1, 0, 0], "bm25_score": [12.5, 7.25, 3.0], "bm25_rank": [1, 2, 3]}).to_parquet(
        tmp_path / "scored.parquet")
    config = EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "eval.json"),
                        baseline_column="bm25_score")
    assert run_eval(config)["baseline"]["mrr@10"] == pytest.approx(1 / 3)
    warning = ("warning: the baseline bm25_score holds fractions, as a score does, but is read as a rank (1 is best): "
               "give baseline_descending (--baseline-descending) if higher is better")
    assert warning in capsys.readouterr().out
    assert run_eval(dataclasses.replace(config, baseline_descending=True))["baseline"]["mrr@10"] == 1.0
    assert run_eval(dataclasses.replace(config, baseline_column="bm25_rank"))["baseline"]["mrr@10"] == 1.0
    assert "warning" not in capsys.readouterr().out


def test_an_order_column_of_text_or_of_scores_named_as_a_rank_is_said(tmp_path, capsys):
    """`--rank-column score` read the scores as ranks, the best last, under the header of a right run;
    `--baseline-column document` was the document ids' order, said to be the column's; `--rank-column document`
    was "no scored rows (3 without a document)"."""
    pd.DataFrame({"query_id": ["a", "a", "a"], "doc_id": ["d1", "d2", "d3"], "document": ["x", "y", "z"],
                  "score": [0.9, 0.5, 0.1], "label": [1, 0, 0], "bm25_rank": [1, 2, 3]}).to_parquet(
        tmp_path / "scored.parquet")
    config = EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "eval.json"))
    assert run_eval(dataclasses.replace(config, rank_column="score"))["reranked"]["mrr@10"] == pytest.approx(1 / 3)
    assert ("warning: the rank column score holds fractions, as a score does, but is read as a rank (1 is best): name "
            "it with score_column (--score-column) instead if higher is better") in capsys.readouterr().out
    for setting in ("rank_column", "baseline_column"):
        flag = "--" + setting.replace("_", "-")
        said = rf"^{setting} document \({flag} document\): the column holds no numbers \('x'\): name a column of ranks"
        with pytest.raises(InputError, match=said):
            run_eval(dataclasses.replace(config, **{setting: "document"}))
    assert "warning" not in capsys.readouterr().out + str(run_eval(config))


def test_eval_writes_neither_over_what_it_reads_nor_its_two_files_over_each_other(tmp_path):
    """`--output` naming the input parquet file replaced it with JSON; `--run-output` naming the qrels replaced
    them; one path for both files kept one of them."""
    scored, qrels = tmp_path / "scored.parquet", tmp_path / "qrels.tsv"
    pd.DataFrame({"query_id": ["a", "a"], "doc_id": ["d1", "d2"], "score": [0.9, 0.1]}).to_parquet(scored)
    qrels.write_text("query-id\tcorpus-id\tscore\na\td1\t1\n")
    before = scored.read_bytes(), qrels.read_text()
    for settings, said in (({"output": str(scored)}, rf"output \(--output\) {scored} is the input that eval reads"),
                           ({"run_output": str(qrels)}, rf"run_output \(--run-output\) {qrels} is the qrels"),
                           ({"output": str(tmp_path / "x"), "run_output": f"{tmp_path}/./x"},
                            r"output \(--output\) and run_output \(--run-output\) name one file")):
        with pytest.raises(ConfigError, match=said):
            run_eval(EvalConfig(input=str(scored), qrels=str(qrels), **settings))
    assert (scored.read_bytes(), qrels.read_text()) == before and not (tmp_path / "x").exists()
    # One of a folder's files, as a job's results/ part is: it was replaced with JSON, exit 0. A file of the folder
    # that eval does not read may be written.
    for setting in ("output", "run_output"):
        flag = "--" + setting.replace("_", "-")
        with pytest.raises(ConfigError, match=rf"^{setting} \({flag}\) {scored} is a file of the input {tmp_path}, "
                                              "which eval reads and writing it would replace: give another path$"):
            run_eval(EvalConfig(input=str(tmp_path), qrels=str(qrels), **{setting: str(scored)}))
    assert (scored.read_bytes(), qrels.read_text()) == before
    assert run_eval(EvalConfig(input=str(tmp_path), qrels=str(qrels), output=str(tmp_path / "eval.json")))["queries"]


def test_eval_counts_as_trec_eval_does_where_rows_repeat_lack_ids_or_are_not_judged(tmp_path, capsys):
    """A (query, document) pair listed twice counts once (merged candidates), a row without a query id
    (null, or NaN from pandas) is left out with integer ids kept as they are (`1`, not `1.0`), and a query
    the qrels do not judge is not evaluated, as trec_eval does; a baseline rank that came as text is a number."""
    rows = pd.DataFrame({
        "query_id": pd.array([1, 1, 1, 2, 2, None, 3], dtype="Int64"),
        "doc_id": ["a", "a", "b", "c", "d", "a", "e"],
        "score": [0.9, 0.9, 0.5, 0.8, 0.7, 0.99, 0.1],
        "bm25_rank": ["2", "2", "10", "1", "2", "1", "1"],
    })
    rows.to_parquet(tmp_path / "scored.parquet")
    (tmp_path / "qrels.txt").write_text("1 0 a 1\n2 0 d 1\n")
    result = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), qrels=str(tmp_path / "qrels.txt")))
    assert (result["queries"], result["pairs"]) == (2, 4)
    assert result["reranked"]["map"] == pytest.approx((1.0 + 0.5) / 2)
    assert result["baseline"]["map"] == pytest.approx((1.0 + 0.5) / 2)  # ranks "2" before "10"
    assert max(v for name in ("reranked", "baseline") for v in result[name].values()) <= 1.0
    assert (result["repeated_pairs_dropped"], result["rows_without_ids"], result["queries_not_in_qrels"]) == (1, 1, 1)
    assert result["judged_pairs"] == 2  # the repeated pair once, as measured (it counted both rows)
    printed = capsys.readouterr().out
    for line in ("left out 1 query the qrels do not judge", "counted once 1 repeated", "left out 1 row(s) without"):
        assert line in printed
    # Written as floats (pandas' integers around a missing value, without its Int64), the ids are the same.
    rows.astype({"query_id": "float64"}).to_parquet(tmp_path / "floats.parquet")
    floats = run_eval(EvalConfig(input=str(tmp_path / "floats.parquet"), qrels=str(tmp_path / "qrels.txt")))
    assert floats["reranked"] == result["reranked"] and floats["rows_without_ids"] == 1
    (tmp_path / "floats.parquet").unlink()
    # The default output goes beside the input, where no job reads it as pairs (not a file named after a glob).
    glob = run_eval(EvalConfig(input=str(tmp_path / "*.parquet"), qrels=str(tmp_path / "qrels.txt")))
    assert glob["queries"] == 2 and (tmp_path.parent / f"{tmp_path.name}.eval.json").exists()
    assert (tmp_path / "_scored.parquet.eval.json").exists() and not (tmp_path / "eval.json").exists()


def test_evals_default_output_of_the_working_folder_or_a_buckets_root_is_beside_or_in_it(tmp_path, monkeypatch):
    """`ce-ray eval --input .` (or `*.parquet`) wrote `..eval.json`, a hidden file, in the folder it measured, and of
    `s3://bucket` (its root) named the bucket `bucket.eval.json`, which does not exist."""
    from ce_ray.evaluate import default_output

    (tmp_path / "in").mkdir()
    monkeypatch.chdir(tmp_path / "in")
    for given in (".", "./", "*.parquet", "file://."):
        assert default_output(given, of_a_job=False) == f"{tmp_path}/in.eval.json"
    assert default_output("p.parquet", of_a_job=False) == f"{tmp_path}/in/_p.parquet.eval.json"
    for given in ("s3://bucket", "s3://bucket/", "s3://bucket/*.parquet"):
        assert default_output(given, of_a_job=False) == "s3://bucket/_eval.json"
    assert default_output("s3://bucket/pairs/", of_a_job=False) == "s3://bucket/pairs.eval.json"


def test_an_eval_whose_output_cannot_be_written_fails_before_it_measures(tmp_path):
    """`ce-ray eval --input .` in a folder whose parent is another user's (a container's working folder under `/`)
    measured, then failed writing with a traceback; so did an `--output` in a folder that cannot be made."""
    pd.DataFrame({"query_id": [1, 1], "score": [0.9, 0.1], "label": [1, 0]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(ConfigError, match=r"^output \(--output\) /proc/ce-ray-eval/e\.json cannot be written "
                                          r"\(\[Errno \d+\] .*\): give another path$"):
        run_eval(EvalConfig(input=str(tmp_path / "p.parquet"), output="/proc/ce-ray-eval/e.json"))


def test_a_document_listed_twice_counts_at_its_best_rank_in_each_order():
    """Passages of one document scored apart (or one document from two retrievers) count once, at the best
    rank each order gives the document, whatever the file's order: the first row in the file (here the
    passage scored 0.1) put the relevant document second, MRR 0.5 where its best passage ranks it first."""
    rows = pd.DataFrame({"query_id": ["q", "q", "q"], "doc_id": ["D", "E", "D"], "score": [0.1, 0.5, 0.9],
                         "bm25_rank": [3, 2, 1]})
    result = evaluate_frame(rows, EvalConfig(), {"q": {"D": 1}})
    assert result["reranked"]["mrr@10"] == result["reranked"]["map"] == 1.0
    assert result["baseline"]["mrr@10"] == 1.0  # the baseline's best copy is the other row
    assert (result["pairs"], result["per_query"][0]["candidates"], result["repeated_pairs_dropped"]) == (2, 2, 1)
    worse = evaluate_frame(rows.assign(bm25_rank=[1, 2, 3]), EvalConfig(), {"q": {"E": 1}})
    assert worse["reranked"]["mrr@10"] == worse["baseline"]["mrr@10"] == 0.5  # D (best copy) above E both ways


def test_equal_scores_are_counted_and_said(tmp_path, capsys):
    """Equal scores in a query rank in file order, where trec_eval orders them by document id (descending):
    the only place its figures can differ, so eval counts such pairs and says so. A repeated pair is no tie."""
    rows = pd.DataFrame({"query_id": ["q", "q", "q", "q", "r", "r"], "doc_id": ["a", "b", "c", "a", "a", "b"],
                         "score": [0.5, 0.5, 0.2, 0.5, 0.5, 0.4]})
    rows.to_parquet(tmp_path / "scored.parquet")
    (tmp_path / "qrels.txt").write_text("q 0 a 1\nr 0 a 1\n")
    result = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), qrels=str(tmp_path / "qrels.txt")))
    assert result["tied_pairs"] == 2 and result["reranked"]["mrr@10"] == 1.0  # trec_eval: b before a, 0.75
    assert "2 pairs share a score with another of their query: ce-ray keeps their order" in capsys.readouterr().out
    assert evaluate_frame(rows.assign(score=[0.9, 0.5, 0.2, 0.9, 0.5, 0.4]), EvalConfig(),
                          {"q": {"a": 1}})["tied_pairs"] == 0
    # A tie of a query left out (no relevant document, only_with_relevant) was counted, and said to change figures.
    untied = rows.assign(score=[0.9, 0.5, 0.2, 0.9, 0.5, 0.4])
    tie = pd.DataFrame({"query_id": ["s", "s"], "doc_id": ["x", "y"], "score": [0.3, 0.3]})
    unjudged_tie = pd.concat([untied, tie])
    judged = {"q": {"a": 1}, "s": {"x": 0}}
    assert evaluate_frame(unjudged_tie, EvalConfig(only_with_relevant=True), judged)["tied_pairs"] == 0
    assert evaluate_frame(unjudged_tie, EvalConfig(only_with_relevant=False), judged)["tied_pairs"] == 2
    # A run (a BM25 run ties often) is measured as trec_eval measures it, equal scores by document id, descending,
    # whatever the order of its lines: b before a, as trec_eval gives it (MRR 0.5, where the file's order gave 1).
    for lines in ("q Q0 a 1 0.5 bm25\nq Q0 b 2 0.5 bm25\nq Q0 c 3 0.2 bm25\n",
                  "q Q0 c 3 0.2 bm25\nq Q0 b 2 0.5 bm25\nq Q0 a 1 0.5 bm25\n"):
        (tmp_path / "bm25.run").write_text(lines)
        run = run_eval(EvalConfig(input=str(tmp_path / "bm25.run"), qrels=str(tmp_path / "qrels.txt")))
        assert (run["reranked"]["mrr@10"], run["tied_pairs"]) == (0.5, 2)
        assert "2 pairs share a score with another of their query: ordered by document id, descending, as " \
               "trec_eval orders them" in capsys.readouterr().out


def test_trec_qrels_read_as_beir_qrels(tmp_path):
    """MS MARCO's qrels (tab-separated) and TREC DL's (spaces) give the grades a BEIR file gives."""
    from ce_ray.candidates import read_qrels

    (tmp_path / "beir.tsv").write_text("query-id\tcorpus-id\tscore\n1102432\t2026790\t1\n264014\tD7\t2\n"
                                       "264014\tD8\t0\n")
    (tmp_path / "msmarco.tsv").write_text("1102432\t0\t2026790\t1\n264014\t0\tD7\t2\n264014\t0\tD8\t0\n")
    (tmp_path / "trec.txt").write_text("1102432 Q0 2026790 1\n264014 0 D7 2\n\n264014  0  D8 0\n")
    expected = read_qrels(str(tmp_path / "beir.tsv"))
    assert expected == {"1102432": {"2026790": 1}, "264014": {"D7": 2, "D8": 0}}
    assert read_qrels(str(tmp_path / "msmarco.tsv")) == read_qrels(str(tmp_path / "trec.txt")) == expected
    (tmp_path / "bad.tsv").write_text("q1\td1\n")
    with pytest.raises(InputError, match="line 1: expected BEIR's 3 tab-separated fields .* or TREC's 4 .*got 2"):
        read_qrels(str(tmp_path / "bad.tsv"))


def test_a_qrels_header_of_other_words_is_skipped_and_a_pair_listed_twice_is_warned_of(tmp_path, capsys):
    """A header other than BEIR's (`qid<TAB>docid<TAB>rel`, `query_id doc_id relevance`) failed on line 1: `score
    'rel' is not a number`; BEIR's loader skips a first line whatever it holds. A (query, document) pair listed
    twice kept its last grade unsaid (trec_eval refuses such qrels; BEIR's loader keeps the last grade)."""
    from ce_ray.candidates import read_qrels

    expected = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    for name, header in (("tab.tsv", "qid\tdocid\trel"), ("spaces.tsv", "query_id doc_id relevance"),
                         ("trec.txt", "qid iter docno rel")):
        sep = " 0 " if name == "trec.txt" else "\t"
        (tmp_path / name).write_text(header + "\n" + "".join(f"{q}{sep}{d}\t{g}\n" for q, d, g in (
            ("q1", "d1", 1), ("q1", "d2", 0), ("q2", "d3", 2))))
        assert read_qrels(str(tmp_path / name)) == expected
    assert capsys.readouterr().err == ""
    # A word past line 1 stays an error naming the file and the line; TREC qrels without a header are read.
    (tmp_path / "late.tsv").write_text("q1\td1\t1\nqid\tdocid\trel\n")
    with pytest.raises(InputError, match=f"^{tmp_path}/late.tsv line 2: score 'rel' is not a number$"):
        read_qrels(str(tmp_path / "late.tsv"))
    (tmp_path / "plain.txt").write_text("q1 0 d1 1\nq1 0 d2 0\nq2 0 d3 2\n")
    assert read_qrels(str(tmp_path / "plain.txt")) == expected
    # A grade that is no whole number was cut to one (0.5: 0, not relevant); BEIR's loader and trec_eval refuse it.
    (tmp_path / "half.tsv").write_text("q1\td1\t1.0\nq1\td2\t0.5\n")
    with pytest.raises(InputError, match=f"^{tmp_path}/half.tsv line 2: score '0.5' is not a whole number"):
        read_qrels(str(tmp_path / "half.tsv"))

    (tmp_path / "twice.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td3\t2\n"
                                        "q1\td1\t1\nq2\td3\t2\n")
    assert read_qrels(str(tmp_path / "twice.tsv")) == expected
    assert capsys.readouterr().err == (f"ce-ray: warning: {tmp_path}/twice.tsv: 2 line(s) repeat the (query, "
                                       "document) pair of an earlier line, whose last grade is kept (query/doc): "
                                       "q1/d1, ...\n")


def test_a_run_is_measured_by_its_scores_without_a_note_of_the_baseline_it_cannot_have(tmp_path, capsys):
    """A TREC run is ordered by its scores, as trec_eval orders it: its rank field (0 on every line here, or
    ranks against the scores) is not read. Each run's eval said `note: no 'bm25_rank' column, no baseline`, the
    default baseline, which no run holds."""
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\nq2\td3\t1\n")
    (tmp_path / "zero.run").write_text("q1 Q0 d1 0 0.2 x\nq1 Q0 d2 0 0.9 x\nq2 Q0 d3 0 0.1 x\nq2 Q0 d4 0 0.5 x\n")
    (tmp_path / "ranked.run").write_text("q1 Q0 d1 1 0.2 x\nq1 Q0 d2 2 0.9 x\nq2 Q0 d4 1 0.5 x\nq2 Q0 d3 2 0.1 x\n")
    for name in ("zero", "ranked"):
        result = run_eval(EvalConfig(input=str(tmp_path / f"{name}.run"), qrels=str(tmp_path / "qrels.tsv"),
                                     output=str(tmp_path / f"{name}.json")))
        assert [q["reranked"]["mrr@10"] for q in result["per_query"]] == [1.0, 0.5]
        assert result["reranked_by"] == "score" and result["baseline"] is None
        assert capsys.readouterr().err == ""


def test_the_reranked_order_is_written_as_a_trec_run(tmp_path):
    """One line per pair, `query Q0 doc rank score ce-ray`, ranks by the rank column when there is one (its
    ties broken by input order), and by the score otherwise; a run needs the document ids."""
    rows = pd.DataFrame({"query_id": [7, 7, 7, 3], "doc_id": ["d1", "d2", "d3", "d4"],
                         "score": np.array([0.25, 0.75, 0.25, 0.5], np.float32), "label": [0, 1, 0, 1]})
    rows.to_parquet(tmp_path / "scored.parquet")
    run = tmp_path / "runs" / "ce-ray.run"
    run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "eval.json"),
                        run_output=str(run)))
    assert run.read_text() == ("7 Q0 d2 1 0.75 ce-ray\n7 Q0 d1 2 0.25 ce-ray\n7 Q0 d3 3 0.25 ce-ray\n"
                               "3 Q0 d4 1 0.5 ce-ray\n")
    rows.assign(rank=[3, 1, 2, 1]).to_parquet(tmp_path / "scored.parquet")
    run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "eval.json"),
                        run_output=str(run)))
    assert run.read_text().splitlines()[:3] == ["7 Q0 d2 1 0.75 ce-ray", "7 Q0 d3 2 0.25 ce-ray",
                                                "7 Q0 d1 3 0.25 ce-ray"]
    # A run file is itself an input (any system's), with qrels: the metrics of the order it holds (by score,
    # equal scores by document id, descending, as trec_eval: here d3 before d1, as the rank column put them).
    (tmp_path / "qrels.txt").write_text("7 0 d3 1\n3 0 d4 2\n")
    json_out = str(tmp_path / "r.json")
    from_run = run_eval(EvalConfig(input=str(run), qrels=str(tmp_path / "qrels.txt"), output=json_out))
    from_rows = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), qrels=str(tmp_path / "qrels.txt"),
                                    output=json_out))
    assert from_run["reranked"] == from_rows["reranked"] and from_run["reranked"]["mrr@10"] == (1 / 2 + 1) / 2
    with pytest.raises(ConfigError, match=r"is a TREC run, which holds no grades: give qrels \(--qrels\)$"):
        run_eval(EvalConfig(input=str(run)))
    rows.drop(columns="doc_id").to_parquet(tmp_path / "scored.parquet")
    with pytest.raises(InputError, match="missing column\\(s\\) 'doc_id' .*; name the column with doc_id_column "
                                         "\\(--doc-id-column\\)$"):
        run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), run_output=str(run)))
    # A score job's output read without qrels: the labels' column, named by its setting.
    with pytest.raises(InputError, match="missing column\\(s\\) 'grade' .*; name the column with label_column "
                                         "\\(--label-column\\)$"):
        run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), label_column="grade"))


def test_a_run_file_or_eval_json_the_disk_does_not_take_whole_leaves_the_last_one_as_it_was(tmp_path, capsys):
    """Written in place, a run file that a full disk cut short was left for trec_eval to read (1,955 lines of 3,000,
    its last cut), and an eval.json emptied over the last one, the error naming no file. Each is written whole or not
    at all, and the error names it."""
    from conftest import files_of_at_most

    rows = pd.DataFrame({"query_id": np.arange(400) // 10, "doc_id": [f"d{i}" for i in range(400)],
                         "score": np.linspace(0, 1, 400, dtype=np.float32), "label": np.arange(400) % 2})
    rows.to_parquet(tmp_path / "scored.parquet")
    run, measures = tmp_path / "ce-ray.run", tmp_path / "eval.json"
    run.write_text("1 Q0 d1 1 0.5 earlier\n")
    measures.write_text("{}")
    for settings, cut in (({"run_output": str(run)}, run), ({}, measures)):
        with files_of_at_most(1000 if cut == run else 100), pytest.raises(OSError) as failed:
            # (what it says goes to capsys' memory, not to a file of pytest's that the limit would cut)
            run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(measures), **settings))
        assert f"writing {cut}" in getattr(failed.value, "__notes__", []), failed.value
    assert run.read_text() == "1 Q0 d1 1 0.5 earlier\n" and measures.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ce-ray.run", "eval.json", "scored.parquet"]
    # A link is written through, to its file; what is no file is written in place (a file moved over a FIFO that a
    # reader waits on, or over /dev/null, would replace it).
    import threading

    (tmp_path / "link.run").symlink_to(run)
    os.mkfifo(tmp_path / "fifo")
    read = []
    reader = threading.Thread(target=lambda: read.append(json.loads((tmp_path / "fifo").read_text())), daemon=True)
    reader.start()
    run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "fifo"),
                        run_output=str(tmp_path / "link.run")))
    reader.join(timeout=60)
    assert read[0]["pairs"] == 400 and stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)
    assert os.path.islink(tmp_path / "link.run") and len(run.read_text().splitlines()) == 400


def test_a_run_reads_alike_whatever_blanks_separate_its_fields(tmp_path):
    """A run of single spaces (ce-ray's, most systems') is read by Arrow, a million lines in a second or two
    where reading line by line took 6-9 s; tabs, runs of blanks, blank lines or a score that is no number
    are read line by line, to the same rows, a bad line named."""
    from ce_ray.evaluate import _single_spaced_run, read_trec_run

    (tmp_path / "spaced.run").write_text("007 Q0 0012 1 1e-05 bm25\n007 Q0 0011 2 -3 bm25\n8 Q0 D1 1 0.5 bm25\n")
    (tmp_path / "tabbed.run").write_text("007\tQ0\t0012\t1\t1e-05\tbm25\n\n007 Q0  0011 2 -3 bm25\n8 Q0 D1 1 0.5 bm25")
    names = ["query_id", "doc_id", "score"]
    assert _single_spaced_run(str(tmp_path / "spaced.run"), names) is not None
    assert _single_spaced_run(str(tmp_path / "tabbed.run"), names) is None
    spaced, tabbed = (read_trec_run(str(tmp_path / name), EvalConfig()) for name in ("spaced.run", "tabbed.run"))
    assert spaced.to_dict("list") == tabbed.to_dict("list") == {
        "query_id": ["007", "007", "8"], "doc_id": ["0012", "0011", "D1"], "score": [1e-05, -3.0, 0.5]}
    (tmp_path / "bad.run").write_text("q Q0 d1 1 0.5 x\nq Q0 d2 2 abc x\n")
    with pytest.raises(InputError, match="bad.run line 2: score 'abc' is not a number"):
        read_trec_run(str(tmp_path / "bad.run"), EvalConfig())


def test_a_run_whose_scores_do_not_follow_its_ranks_is_written_by_rank(tmp_path, capsys):
    """trec_eval reads a run's order from its scores, not its ranks: where the order is a rank column that the
    score column does not follow (a first stage's rank beside a reranker's scores), the run's scores are the
    negated ranks, so that trec_eval measures the order ce-ray measured (it measured the scores' order)."""
    rows = pd.DataFrame({"query_id": ["q", "q", "q"], "doc_id": ["a", "b", "c"], "rank": [1, 2, 3],
                         "score": [0.1, 0.9, 0.5], "label": [1, 0, 0]})
    rows.to_parquet(tmp_path / "scored.parquet")
    run = tmp_path / "run.txt"
    run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "e.json"), run_output=str(run)))
    assert run.read_text() == "q Q0 a 1 -1 ce-ray\nq Q0 b 2 -2 ce-ray\nq Q0 c 3 -3 ce-ray\n"
    assert "the run's scores are the negated rank (its order): score does not follow it" in capsys.readouterr().out
    # The run measured as trec_eval takes it: the order ce-ray measured.
    (tmp_path / "qrels.txt").write_text("q 0 a 1\n")
    assert run_eval(EvalConfig(input=str(run), qrels=str(tmp_path / "qrels.txt"),
                               output=str(tmp_path / "r.json")))["reranked"]["mrr@10"] == 1.0


def evaluator_samples(df: pd.DataFrame) -> list:
    """The evaluator's samples: every candidate in the file's order, positives among them."""
    samples = []
    for _, group in df.groupby("query_id", sort=False):
        samples.append({"query": group["query"].iloc[0], "documents": group["document"].tolist(),
                        "positive": group.loc[group["label"] == 1, "document"].tolist()})
    return samples


def test_same_numbers_as_cross_encoder_reranking_evaluator(ray_local, tiny_model, tmp_path):
    import ray
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    import ce_ray

    pairs = wikiqa_pairs("test")
    questions = pairs["query_id"].unique()[:60]
    pairs = pairs[pairs["query_id"].isin(questions)].reset_index(drop=True)
    pairs["original_rank"] = pairs.groupby("query_id", sort=False).cumcount() + 1
    # The evaluator finds positives by text: no question may hold one sentence twice with two labels.
    assert not pairs.groupby(["query_id", "document"])["label"].nunique().gt(1).any()

    model_path = spread_model(tiny_model, tmp_path / "spread")
    ranked = ce_ray.rerank(ray.data.from_pandas(pairs), model=str(model_path), rank_partitions=4).to_pandas()
    assert len(ranked) == len(pairs)
    # Scores of two different sentences of one question must differ by more than CrossEncoder parity
    # (1e-5 promised, ~1e-7 seen), or both sides could order a near-tie differently: such questions are
    # left out (a repeated sentence ties, harmlessly).
    ordered = ranked.sort_values(["query_id", "score"])
    same = ordered.groupby("query_id")["document"].shift() == ordered["document"]
    gaps = ordered.assign(gap=ordered.groupby("query_id")["score"].diff().where(~same))
    separated = gaps.groupby("query_id")["gap"].min().fillna(1.0) > 2e-6  # fp32 parity is ~1e-7 in practice
    assert separated.sum() >= 25
    keep = set(separated[separated].index)
    pairs, ranked = pairs[pairs["query_id"].isin(keep)], ranked[ranked["query_id"].isin(keep)]

    model = CrossEncoder(str(model_path), device="cpu")
    for only_with_relevant in (False, True):
        subset = pairs if not only_with_relevant else pairs[pairs.groupby("query_id")["label"].transform("max") > 0]
        evaluator = CrossEncoderRerankingEvaluator(evaluator_samples(subset), at_k=10,
                                                   always_rerank_positives=False, write_csv=False)
        expected = evaluator(model)
        ours = evaluate_frame(ranked, EvalConfig(baseline_column="original_rank",
                                                 only_with_relevant=only_with_relevant))
        assert ours["queries"] == len(evaluator.samples)
        for name in ("map", "mrr@10", "ndcg@10"):
            assert ours["reranked"][name] == pytest.approx(expected[name], abs=1e-6), name
            assert ours["baseline"][name] == pytest.approx(expected[f"base_{name}"], abs=1e-6), name
    assert 0 < ours["reranked"]["map"] < 1


def test_queries_of_one_candidate_or_none_relevant_count_as_the_evaluator_and_trec_eval_count_them(tiny_model,
                                                                                                     tmp_path, capsys):
    """A query without a relevant candidate counts 0 (the evaluator's and trec_eval's way; `only_with_relevant`
    leaves it out), one with a single candidate counts as that candidate (trec_eval: 1 where it is relevant, as
    sentence-transformers 6.3's evaluator; an older one's NDCG refused a list of one): the same numbers as the
    evaluator wherever it gives some, and the summary says how many queries of each kind it counted and the
    pairs of those it counted."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    pairs = wikiqa_pairs("test", 400)
    # Query id: (WikiQA question, relevant rows, rows): questions whose sentences the tiny model scores apart.
    kinds = {"one wrong": (3, 0, 1), "none right": (4, 0, 6), "one right of five": (5, 1, 5), "two right": (9, 2, 6)}
    rows = []
    for qid, (question, right, size) in kinds.items():
        group = pairs[pairs["query_id"] == pairs["query_id"].unique()[question]].head(size)
        rows.append(group.assign(query_id=qid, label=[1] * right + [0] * (size - right),
                                 doc_id=[f"{qid}-{i}" for i in range(size)]))
    frame = pd.concat(rows, ignore_index=True)
    frame = frame.assign(query=frame["query_id"] + ": " + frame["query"], original_rank=frame.groupby(
        "query_id", sort=False).cumcount() + 1)
    model = CrossEncoder(str(spread_model(tiny_model, tmp_path / "spread")), device="cpu")
    frame["score"] = model.predict(list(zip(frame["query"], frame["document"])))
    # Both sides must see one order: two scores of a query differ by more than CrossEncoder parity (~1e-7).
    gaps = frame.groupby("query_id")["score"].apply(lambda scores: scores.sort_values().diff().min())
    assert (gaps.fillna(1.0) > 2e-6).all(), gaps

    for only_with_relevant in (False, True):
        subset = frame[frame.groupby("query_id")["label"].transform("max") > 0] if only_with_relevant else frame
        expected = CrossEncoderRerankingEvaluator(evaluator_samples(subset), at_k=10, always_rerank_positives=False,
                                                  write_csv=False)(model)
        frame.to_parquet(tmp_path / "scored.parquet")
        ours = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "eval.json"),
                                   baseline_column="original_rank", only_with_relevant=only_with_relevant))
        for name in ("map", "mrr@10", "ndcg@10"):
            assert ours["reranked"][name] == pytest.approx(expected[name], abs=1e-6), name
            assert ours["baseline"][name] == pytest.approx(expected[f"base_{name}"], abs=1e-6), name
        assert (ours["queries"], ours["pairs"]) == ((2, 11) if only_with_relevant else (4, 18))
        assert ours["queries_with_one_candidate"] == (0 if only_with_relevant else 1)
    printed = capsys.readouterr().out
    assert "4 queries (all queries, those without a relevant document at 0), 18 pairs" in printed
    assert "2 queries without a relevant document: counted as 0" in printed
    assert "1 query with a single candidate: counted, alike in any order" in printed
    assert "2 queries (queries with a relevant document), 11 pairs\n  left out 2 queries without a relevant" in printed

    # A single relevant candidate: 1 everywhere, as trec_eval counts it. The evaluator refused the query before
    # sentence-transformers 6.3 (scikit-learn's NDCG of a list of one); since, it counts it as trec_eval does.
    single = frame[frame["query_id"] == "one right of five"].head(1)
    assert evaluate_frame(single, EvalConfig(baseline_column=""))["reranked"] == {
        "ndcg@10": 1.0, "mrr@10": 1.0, "map": 1.0, "recall@100": 1.0}
    try:
        theirs = CrossEncoderRerankingEvaluator(evaluator_samples(single), always_rerank_positives=False)(model)
    except ValueError as refused:
        assert "more than 1 document" in str(refused)
    else:
        assert {name: theirs[name] for name in ("map", "mrr@10", "ndcg@10")} == {
            "map": 1.0, "mrr@10": 1.0, "ndcg@10": 1.0}


def test_the_run_file_holds_each_pair_once_and_leaves_the_metrics_as_they_are(tmp_path, capsys):
    """`--run-output` changes no metric: a row without a document id is measured by its label and left out of
    the run alone; a repeated pair is written once, at its best rank (trec_eval refuses a run that repeats one);
    scores are written in full (a float64 score's 9 digits made two scores equal, which trec_eval then orders by
    document id); the run read back with the qrels gives the metrics of the rows it came from. An input whose
    rows all lack a query id says so, not just that it has no rows."""
    rows = pd.DataFrame({"query_id": [5, 5, 5, 5, 6, 6], "doc_id": ["a", None, "b", "a", "c", "d"],
                         "score": [0.1234567891, 0.9, 0.1234567892, 0.05, 0.5, 0.7], "label": [0, 1, 0, 0, 1, 0]})
    rows.to_parquet(tmp_path / "scored.parquet")
    measured = {}
    for run in ("", str(tmp_path / "run.txt")):
        measured[run] = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "e.json"),
                                            run_output=run))
    assert measured[""]["reranked"] == measured[run]["reranked"] and measured[run]["reranked"]["mrr@10"] == 0.75
    lines = (tmp_path / "run.txt").read_text().splitlines()
    assert lines == ["5 Q0 b 1 0.1234567892 ce-ray", "5 Q0 a 2 0.1234567891 ce-ray", "6 Q0 d 1 0.7 ce-ray",
                     "6 Q0 c 2 0.5 ce-ray"]
    assert measured[run]["run"] == {"by_rank": False, "rows_without_doc_id": 1, "repeated_pairs": 1}
    printed = capsys.readouterr().out
    assert "the run leaves out 1 row(s) without a document id" in printed
    assert "the run holds each (query, document) pair once, at its best rank" in printed
    # Read back, with qrels of the same grades: the metrics of those rows (the one without an id left out).
    (tmp_path / "qrels.txt").write_text("5 0 b 1\n6 0 c 1\n")
    back = run_eval(EvalConfig(input=str(tmp_path / "run.txt"), qrels=str(tmp_path / "qrels.txt"),
                               output=str(tmp_path / "r.json")))
    direct = evaluate_frame(rows.dropna(), EvalConfig(), {"5": {"b": 1}, "6": {"c": 1}})
    assert back["reranked"] == direct["reranked"] and back["reranked"]["mrr@10"] == 0.75
    rows.assign(query_id=None).to_parquet(tmp_path / "scored.parquet")
    with pytest.raises(InputError, match=r"scored.parquet has no scored rows with a query id \(6 without\)"):
        run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "e.json")))
    rows.assign(doc_id=["a b", "x", "y", "z", "c", "d"]).to_parquet(tmp_path / "scored.parquet")
    with pytest.raises(InputError, match="document id 'a b' holds a blank: a TREC run's fields are separated"):
        run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "e.json"),
                            run_output=str(tmp_path / "run.txt")))
    # An empty id left its line a field short (`5 Q0  1 0.9 ce-ray`), which trec_eval refuses, and eval read back;
    # then it was refused; it is no id now, as a null one (`test_an_empty_id_is_no_id_and_the_run_leaves_it_out`).
    for column, left_out in (("doc_id", "rows_without_doc_id"), ("query_id", "rows_without_ids")):
        rows.assign(**{column: ["", "x", "y", "z", "c", "d"]}).to_parquet(tmp_path / "scored.parquet")
        result = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "e.json"),
                                     run_output=str(tmp_path / "run.txt")))
        assert {**result, **result["run"]}[left_out] == 1
        assert "  " not in (tmp_path / "run.txt").read_text()
    for line, fields in (("5 Q0  1 0.9 ce-ray", 5), (" Q0 b 1 0.9 ce-ray", 5), ("5 Q0 b 1 0.9 ce-ray more", 7)):
        (tmp_path / "short.run").write_text(f"6 Q0 c 1 0.5 ce-ray\n{line}\n")
        with pytest.raises(InputError, match=f"short.run line 2: a TREC run line has 6 fields .*, got {fields}"):
            run_eval(EvalConfig(input=str(tmp_path / "short.run"), qrels=str(tmp_path / "qrels.txt"),
                                output=str(tmp_path / "r.json")))


def test_integer_document_ids_beside_a_missing_one_are_written_in_the_run_as_they_are(tmp_path):
    """An integer column of document ids with a null (Arrow, Polars and Spark write them so, and pandas' float ids
    with a NaN read as such) came through pandas as floats: the run said `1.2345678901e+10` for 12345678901,
    which matches no qrels, and two ids past 2**53 as one, one of them left out as a repeated pair."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = pa.array([12345678901, 2**53 + 1, 2**53, None], pa.int64())
    pq.write_table(pa.table({"query_id": [1, 1, 1, 1], "doc_id": ids, "score": [0.9, 0.5, 0.3, 0.1],
                             "label": [1, 0, 0, 0]}), tmp_path / "scored.parquet")
    measured = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "e.json"),
                                   run_output=str(tmp_path / "run.txt")))
    assert (tmp_path / "run.txt").read_text().splitlines() == [
        "1 Q0 12345678901 1 0.9 ce-ray", "1 Q0 9007199254740993 2 0.5 ce-ray", "1 Q0 9007199254740992 3 0.3 ce-ray"]
    assert measured["run"] == {"by_rank": False, "rows_without_doc_id": 1, "repeated_pairs": 0}
    # in two files, as a job's results/ parts: the ids' column comes in chunks (the run's join of them failed)
    (tmp_path / "parts").mkdir()
    for part, query in (("a", 1), ("b", 2)):
        pq.write_table(pa.table({"query_id": [query] * 2, "doc_id": pa.array([query * 10, None], pa.int64()),
                                 "score": [0.9, 0.5], "label": [1, 0]}), tmp_path / "parts" / f"{part}.parquet")
    run_eval(EvalConfig(input=str(tmp_path / "parts"), output=str(tmp_path / "e.json"),
                        run_output=str(tmp_path / "run.txt")))
    assert (tmp_path / "run.txt").read_text().splitlines() == ["1 Q0 10 1 0.9 ce-ray", "2 Q0 20 1 0.9 ce-ray"]


def test_a_run_holds_ids_with_quotes_and_refuses_ids_with_any_blank_python_splits_at(tmp_path):
    """An id holding a quote (a title, `"Weird Al" Yankovic`) failed `--run-output` with Arrow's CSV writer's
    message, nothing written; an id holding a vertical tab or a Unicode space (a no-break space, an ideographic
    one) was written, and its line read back as 7 fields where any line of the run had a tab."""
    rows = pd.DataFrame({"query_id": ['q"1', 'q"1', "q'2"], "doc_id": ['"Weird_Al"_Yankovic', "d,2", "d3"],
                         "score": [0.9, 0.5, 0.3], "label": [1, 0, 1]})
    rows.to_parquet(tmp_path / "scored.parquet")
    measured = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "e.json"),
                                   run_output=str(tmp_path / "run.txt")))
    assert (tmp_path / "run.txt").read_text() == ('q"1 Q0 "Weird_Al"_Yankovic 1 0.9 ce-ray\nq"1 Q0 d,2 2 0.5 ce-ray\n'
                                                  "q'2 Q0 d3 1 0.3 ce-ray\n")
    (tmp_path / "qrels.txt").write_text('q"1 0 "Weird_Al"_Yankovic 1\nq\'2 0 d3 1\n')
    back = run_eval(EvalConfig(input=str(tmp_path / "run.txt"), qrels=str(tmp_path / "qrels.txt"),
                               output=str(tmp_path / "back.json")))
    assert back["reranked"] == measured["reranked"] and back["reranked"]["mrr@10"] == 1.0
    for blank in ("\v", "\x1c", "\x85", "\u00a0", "\u2003", "\u2028", "\u3000"):
        rows.assign(doc_id=["a", f"b{blank}c", "d"]).to_parquet(tmp_path / "scored.parquet")
        with pytest.raises(InputError, match="document id 'b.+c' holds a blank"):
            run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "e.json"),
                                run_output=str(tmp_path / "run.txt")))
        assert len(f"b{blank}c".split()) == 2  # as ir_measures and `_run_lines` would read it
    rows.assign(doc_id=["a", "b\u200bc", "d"]).to_parquet(tmp_path / "scored.parquet")  # zero-width: no blank
    run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "e.json"),
                        run_output=str(tmp_path / "run.txt")))
    assert "b\u200bc" in (tmp_path / "run.txt").read_text().split()


def test_eval_of_pairs_in_a_text_format_says_it_reads_parquet(tmp_path):
    """A JSON Lines or CSV file of scored pairs failed with pyarrow's "Parquet magic bytes not found" alone."""
    rows = pd.DataFrame({"query_id": [1, 1], "doc_id": [1, 2], "score": [0.9, 0.1], "label": [1, 0]})
    rows.to_json(tmp_path / "scored.jsonl", orient="records", lines=True)
    rows.to_csv(tmp_path / "scored.csv", index=False)
    for name, kind in (("scored.jsonl", "JSONL"), ("scored.csv", "CSV")):
        with pytest.raises(InputError, match=rf"cannot read .*{name}: .*\(a {kind} file: eval reads parquet, a score "
                                             r"or rerank output or its files, or a TREC run file; score or rerank"):
            run_eval(EvalConfig(input=str(tmp_path / name), baseline_column=""))


def test_files_whose_columns_widen_to_one_type_are_read_as_one_and_others_refused_naming_both(tmp_path):
    """Scored files with an int64 label in one and a double in the other (pandas writes 0/1 labels as either)
    failed with a traceback and Arrow's `Unable to merge: Field label has incompatible types: int64 vs double`,
    where the jobs widen such columns to one type (docs/inputs.md)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"query_id": ["a", "a"], "doc_id": ["1", "2"], "score": [0.9, 0.1],
                             "label": pa.array([1, 0], pa.int64())}), tmp_path / "in" / "p1.parquet")
    pq.write_table(pa.table({"query_id": ["b", "b"], "doc_id": ["3", "4"], "score": [0.2, 0.8],
                             "label": pa.array([1.0, 0.0])}), tmp_path / "in" / "p2.parquet")
    result = run_eval(EvalConfig(input=str(tmp_path / "in"), baseline_column=""))
    assert result["reranked"]["mrr@10"] == 0.75 and result["queries"] == 2
    pq.write_table(pa.table({"query_id": ["b", "b"], "doc_id": ["3", "4"], "score": [0.2, 0.8],
                             "label": ["1", "0"]}), tmp_path / "in" / "p2.parquet")
    with pytest.raises(InputError, match=r"p2\.parquet: column 'label' is string, but in .*p1\.parquet it is int64: "
                                         r"rows of both cannot be put together"):
        run_eval(EvalConfig(input=str(tmp_path / "in"), baseline_column=""))


def test_labels_that_are_text_are_read_as_training_reads_them_or_refused(tmp_path):
    """Labels as a CSV or TSV brings them through rerank (text: `1`, `True`) are read as numbers, as training
    reads them; a column of text where no label is a number (`yes`, or `--label-column` naming the query) was read
    as 0 everywhere: every query without a relevant document, every metric 0, exit 0."""
    rows = pd.DataFrame({"query_id": ["a", "a", "b", "b"], "doc_id": ["1", "2", "3", "4"],
                         "score": [0.9, 0.1, 0.2, 0.8]})
    for labels in (["1", "0", "0", "1"], ["True", "False", "false", "true"]):
        rows.assign(label=labels).to_parquet(tmp_path / "pairs.parquet")
        result = run_eval(EvalConfig(input=str(tmp_path / "pairs.parquet"), baseline_column=""))
        assert result["reranked"]["map"] == 1.0
    rows.assign(label=["yes", "no", "no", "yes"]).to_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(InputError, match=r"pairs\.parquet: label column 'label' is text, not a number: name the "
                                         r"grades' column with label_column \(--label-column\), or give qrels "
                                         r"\(--qrels\)$"):
        run_eval(EvalConfig(input=str(tmp_path / "pairs.parquet"), baseline_column=""))


def test_soft_labels_are_refused_as_training_refuses_them_in_its_eval_data(tmp_path):
    """Labels of a teacher's scores in [0, 1] were taken as grades: every row above 0 relevant, MAP and MRR 1.0000,
    exit 0, where qrels of such a grade and training's eval data are refused."""
    rows = pd.DataFrame({"query_id": ["a", "a", "a"], "doc_id": ["1", "2", "3"], "score": [0.9, 0.1, 0.5]})
    rows.assign(label=[0.05, 0.9, 0.1]).to_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(InputError, match=r"pairs\.parquet: evaluation takes labels as grades, which documents are "
                                         r"relevant, and label 0\.05 is none: give a column of 0 and 1 \(or whole "
                                         r"grades\) with label_column \(--label-column\), or qrels \(--qrels\)$"):
        run_eval(EvalConfig(input=str(tmp_path / "pairs.parquet"), baseline_column=""))
    rows.assign(label=[0.0, 2.0, 1.0]).to_parquet(tmp_path / "pairs.parquet")  # whole grades, as floats
    assert run_eval(EvalConfig(input=str(tmp_path / "pairs.parquet"), baseline_column=""))["reranked"]["mrr@10"] == 0.5


def test_ids_written_as_whole_numbers_with_zeros_match_qrels_written_alike(tmp_path):
    """The input's ids `7.0` are read as `7` (an integer id column with a missing value, as pandas writes it), and
    qrels that spelled them the same way, `7.0`, were read as written: the query matched none (exit 2), or its
    documents none (every metric 0). The qrels' ids are read as the input's; a TREC run's as written, as the qrels'."""
    pd.DataFrame({"query_id": ["7.0", "7.0", "8"], "doc_id": ["10.0", "11.0", "12"],
                  "score": [0.2, 0.9, 0.4]}).to_parquet(tmp_path / "pairs.parquet")
    (tmp_path / "qrels.tsv").write_text("7.0\t10.0\t1\n8.0\t12\t1\n")
    (tmp_path / "run.txt").write_text("7.0 Q0 10.0 1 0.2 x\n7.0 Q0 11.0 2 0.9 x\n")
    measured = run_eval(EvalConfig(input=str(tmp_path / "pairs.parquet"), qrels=str(tmp_path / "qrels.tsv"),
                                   baseline_column=""))
    assert (measured["queries"], measured["reranked"]["mrr@10"]) == (2, 0.75)
    measured = run_eval(EvalConfig(input=str(tmp_path / "run.txt"), qrels=str(tmp_path / "qrels.tsv")))
    assert (measured["queries"], measured["reranked"]["mrr@10"]) == (1, 0.5)


def test_an_output_or_run_output_that_is_a_folder_is_refused_before_any_work(tmp_path, capsys):
    """`--output out/` or `--run-output out/` naming a folder failed once every metric was computed, with pyarrow's
    traceback and `failed: IsADirectoryError`, exit 1. The refusal names the setting by its flag too (it named the
    YAML key alone)."""
    (tmp_path / "run.txt").write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\n")
    (tmp_path / "qrels.tsv").write_text("q1 0 d1 1\n")
    (tmp_path / "out").mkdir()
    for flag in ("--output", "--run-output"):
        assert main(["eval", "--input", str(tmp_path / "run.txt"), "--qrels", str(tmp_path / "qrels.tsv"),
                     flag, str(tmp_path / "out")]) == 2
        setting = flag[2:].replace("-", "_")
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"ce-ray eval: error: {setting} ({flag}) {tmp_path}/out is a folder: give the path of a file")
    assert not (tmp_path / "run.txt.eval.json").exists()


def test_a_missing_setting_is_named_by_its_flag_too(capsys):
    """`ce-ray eval` without `--input` said `missing required setting(s): input`, the YAML key alone."""
    assert main(["eval"]) == 2
    assert capsys.readouterr().err.splitlines() == ["ce-ray eval: error: missing required setting(s): input (--input)"]
    assert main(["candidates"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "ce-ray candidates: error: missing required setting(s): data (--data), output (--output)"]


def test_a_label_column_beside_qrels_and_an_order_of_no_baseline_are_refused(tmp_path, capsys):
    """`--label-column grade` with `--qrels` (the qrels' grades were used) and `--baseline-descending` with
    `--baseline-column ""` (no baseline was measured) changed nothing, without a word: each is refused before any
    work, in one line, naming each setting by its flag too (they named the YAML key alone, `leave label_column
    out`, to a user who gave `--label-column`)."""
    (tmp_path / "run.txt").write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\n")
    (tmp_path / "qrels.tsv").write_text("q1 0 d1 1\n")
    run = ["eval", "--input", str(tmp_path / "run.txt")]
    assert main(run + ["--qrels", str(tmp_path / "qrels.tsv"), "--label-column", "grade"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ce-ray eval: error: label_column (--label-column) gives the grades without qrels: with qrels "
        f"{tmp_path}/qrels.tsv the grades are theirs; leave it out")
    assert main(run + ["--baseline-column", "", "--baseline-descending"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "ce-ray eval: error: baseline_descending (--baseline-descending) orders the baseline, which an empty "
        "baseline_column (--baseline-column) leaves out: name the baseline's column")
    with pytest.raises(ConfigError, match=r"^label_column \(--label-column\) gives the grades"):  # from Python too
        run_eval(EvalConfig(input=str(tmp_path / "run.txt"), qrels=str(tmp_path / "qrels.tsv"), label_column="grade"))
    with pytest.raises(ConfigError, match=r"^k \(--k\) and recall_k \(--recall-k\) must be >= 1$"):
        run_eval(EvalConfig(input=str(tmp_path / "run.txt"), qrels=str(tmp_path / "qrels.tsv"), k=0))
    assert not (tmp_path / "run.txt.eval.json").exists()


def test_qrels_without_a_judgment_fail_in_one_line(tmp_path, capsys):
    """An empty qrels file, or one of BEIR's header alone, failed eval with `failed: StopIteration`, exit 1, and
    candidates with `no query of qrels/test.tsv is in queries.jsonl`."""
    (tmp_path / "run.txt").write_text("q1 Q0 d1 1 2.0 x\n")
    for text in ("", "query-id\tcorpus-id\tscore\n"):
        (tmp_path / "qrels.tsv").write_text(text)
        assert main(["eval", "--input", str(tmp_path / "run.txt"), "--qrels", str(tmp_path / "qrels.tsv")]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"ce-ray eval: error: {tmp_path}/qrels.tsv holds no judgment (a query, a document and its grade a line)")
    (tmp_path / "beir" / "qrels").mkdir(parents=True)
    (tmp_path / "beir" / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "red apples"}\n')
    (tmp_path / "beir" / "queries.jsonl").write_text('{"_id": "q1", "text": "apples"}\n')
    (tmp_path / "beir" / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    assert main(["candidates", "--data", str(tmp_path / "beir"), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"ce-ray candidates: error: {tmp_path}/beir/qrels/test.tsv "
                                                        "holds no judgment (a query, a document and its grade a line)")


def test_an_eval_written_beside_a_file_leaves_its_folder_readable_as_pairs(tmp_path, capsys):
    """`ce-ray eval --input out/candidates/candidates-test.parquet` (the file candidates names; or a part of a job's
    results/) wrote its `candidates-test.parquet.eval.json` beside it, in the candidates' folder, which the rerank
    of the folder then refused: `input …/candidates mixes formats ['jsonl', 'parquet']`, and pandas' and Arrow's
    reads failed (Parquet magic bytes not found). It is `_candidates-test.parquet.eval.json`, which they pass over
    as over `_SUCCESS`; a folder's reader skips an earlier ce-ray's JSON too and says so, with the format given."""
    import pyarrow.dataset

    from ce_ray.input_files import list_files

    (tmp_path / "candidates").mkdir()
    file = tmp_path / "candidates" / "candidates-test.parquet"
    pd.DataFrame({"query_id": ["1", "1"], "doc_id": ["a", "b"], "query": ["q", "q"], "document": ["x", "y"],
                  "bm25_rank": [1, 2], "label": [0, 1]}).to_parquet(file)
    run_eval(EvalConfig(input=str(file), rank_column="bm25_rank", baseline_column=""))
    assert (tmp_path / "candidates" / "_candidates-test.parquet.eval.json").exists()
    assert len(pd.read_parquet(tmp_path / "candidates")) == 2
    assert pyarrow.dataset.dataset(tmp_path / "candidates").count_rows() == 2
    capsys.readouterr()
    assert list_files(str(tmp_path / "candidates")).files == [str(file)]
    assert capsys.readouterr().err == ""
    (tmp_path / "candidates" / "_candidates-test.parquet.eval.json").rename(
        tmp_path / "candidates" / "candidates-test.parquet.eval.json")
    assert list_files(str(tmp_path / "candidates")).files == [str(file)]
    assert capsys.readouterr().err == (f"ce-ray: note: {tmp_path / 'candidates'}: skipped 1 file(s) that are not "
                                       "parquet: candidates-test.parquet.eval.json\n")
    assert list_files(str(tmp_path / "candidates"), input_format="parquet").files == [str(file)]


def test_rows_without_a_score_are_left_out_and_a_run_scoring_nan_is_refused(tmp_path, capsys):
    """A row of `ce_ray.score`'s Dataset that could not be scored (a null score) or a NaN ranked last with no word,
    was counted as tied with another, and its run line held `nan`, which trec_eval ranks nowhere in particular: such
    rows are left out and counted, as a job's rejected rows are; a run line scoring `nan` fails naming its line, as
    a score that is no number does (it was read, and said to be ordered as trec_eval orders it)."""
    rows = pd.DataFrame({"query_id": ["q"] * 4, "doc_id": ["a", "b", "c", "d"], "score": [0.9, None, 0.5, np.nan],
                         "label": [0, 1, 1, 0]})
    rows.to_parquet(tmp_path / "scored.parquet")
    (tmp_path / "qrels.txt").write_text("q 0 b 1\nq 0 c 1\n")
    result = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), qrels=str(tmp_path / "qrels.txt"),
                                 run_output=str(tmp_path / "out.run")))
    assert (result["rows_without_order"], result["pairs"], result["tied_pairs"]) == (2, 2, 0)
    assert result["reranked"]["map"] == pytest.approx(0.25)  # c at rank 2 of 2 relevant; b not retrieved
    assert (tmp_path / "out.run").read_text() == "q Q0 a 1 0.9 ce-ray\nq Q0 c 2 0.5 ce-ray\n"
    assert ("left out 2 row(s) without a score (null or not a number: rows that could not be scored)\n"
            in capsys.readouterr().out)
    labels = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), output=str(tmp_path / "eval.json")))
    assert (labels["rows_without_order"], labels["reranked"]["mrr@10"]) == (2, 0.5)
    assert "rows that could not be scored): their labels not counted" in capsys.readouterr().out
    rows.assign(score=None).to_parquet(tmp_path / "scored.parquet")
    with pytest.raises(InputError, match=r"scored\.parquet has no scored rows \(4 without a score\)$"):
        run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), qrels=str(tmp_path / "qrels.txt")))
    for separator in (" ", "\t"):  # Arrow's reader of single spaces, and the reader of any other
        (tmp_path / "nan.run").write_text(f"q Q0 a 1 0.9 x\nq{separator}Q0 b 2 nan x\n")
        with pytest.raises(InputError, match=r"nan\.run line 2: score 'nan' is not a number$"):
            run_eval(EvalConfig(input=str(tmp_path / "nan.run"), qrels=str(tmp_path / "qrels.txt")))


def test_a_baselines_equal_values_rank_by_document_id_whatever_the_files_order():
    """A rerank's output is written in the reranker's order, which a baseline's ties took: BM25 scores tie often,
    and the first stage borrowed the reranker's figures (MRR 1.0 here in its order, 0.5 in the other). They rank as
    trec_eval ranks them, by document id, descending."""
    rows = pd.DataFrame({"query_id": ["q", "q"], "doc_id": ["a", "b"], "score": [0.9, 0.1], "label": [1, 0],
                         "bm25_score": [3.0, 3.0]})
    config = EvalConfig(baseline_column="bm25_score", baseline_descending=True)
    for frame in (rows, rows.iloc[::-1].reset_index(drop=True)):
        result = evaluate_frame(frame, config)
        assert (result["baseline"]["mrr@10"], result["reranked"]["mrr@10"]) == (0.5, 1.0)


def test_a_parquet_file_named_without_a_format_is_read_as_parquet_not_as_a_run(tmp_path):
    """A Spark-style `part-00000` given alone was taken for a TREC run: `is a TREC run, which holds no grades`, and
    with qrels `line 1: not valid UTF-8`."""
    pd.DataFrame({"query_id": ["q", "q"], "doc_id": ["a", "b"], "score": [0.9, 0.1], "label": [1, 0]}).to_parquet(
        tmp_path / "part-00000")
    (tmp_path / "qrels.txt").write_text("q 0 b 1\n")
    assert run_eval(EvalConfig(input=str(tmp_path / "part-00000")))["reranked"]["mrr@10"] == 1.0
    assert run_eval(EvalConfig(input=str(tmp_path / "part-00000"), qrels=str(tmp_path / "qrels.txt")))[
        "reranked"]["mrr@10"] == 0.5


def test_an_empty_id_is_no_id_and_the_run_leaves_it_out(tmp_path):
    """A query or document id of "" (a parquet's, where a CSV's empty field is null) was a query of its own, and an
    empty document id failed `--run-output` once every metric was computed (`document id is empty`)."""
    pd.DataFrame({"query_id": ["q", "q", "", "r", " "], "doc_id": ["a", "", "b", "c", "e"],
                  "score": [0.9, 0.5, 0.4, 0.3, 0.2], "label": [1, 0, 1, 1, 1]}).to_parquet(tmp_path / "scored.parquet")
    result = run_eval(EvalConfig(input=str(tmp_path / "scored.parquet"), run_output=str(tmp_path / "out.run")))
    assert (result["queries"], result["pairs"], result["rows_without_ids"]) == (2, 3, 2)
    assert (tmp_path / "out.run").read_text() == "q Q0 a 1 0.9 ce-ray\nr Q0 c 1 0.3 ce-ray\n"


def test_the_order_asked_for_is_the_one_measured_and_a_file_in_the_way_is_said_before_any_work(tmp_path, capsys):
    """`--score-column score_l12` over a cascade's output (a `rank` of its first reranker beside it) measured the
    first reranker's rank, and a `--rank-column` the input lacks its scores, both without a word (the first is said
    now, and `--rank-column ''` reads no rank; the second refused); a baseline that
    is the order's column was said to be none, then warned of as read as a rank; an `--output` or `--run-output`
    under a file failed once measured, `[Errno 17] File exists`, naming neither."""
    pd.DataFrame({"query_id": ["q"] * 3, "doc_id": ["a", "b", "c"], "label": [0, 0, 1], "rank": [1, 2, 3],
                  "score_l12": [0.1, 0.2, 0.9], "score": [0.9, 0.5, 0.1]}).to_parquet(tmp_path / "cascade.parquet")
    by_rank = run_eval(EvalConfig(input=str(tmp_path / "cascade.parquet"), score_column="score_l12",
                                  baseline_column=""))
    assert by_rank["reranked"]["ndcg@10"] == 0.5 and by_rank["rank_before_score"] == (
        "note: the order is the input's rank column's, which comes before the score's (score_l12): give rank_column "
        "(--rank-column) '' to measure the score's order")
    assert "rank_before_score" not in run_eval(EvalConfig(input=str(tmp_path / "cascade.parquet"), baseline_column=""))
    measured = run_eval(EvalConfig(input=str(tmp_path / "cascade.parquet"), score_column="score_l12", rank_column="",
                                   baseline_column=""))
    assert measured["reranked"]["ndcg@10"] == 1.0
    with pytest.raises(InputError, match=r"^rank_column \(--rank-column\) 'rank_l12' is no column of "
                                         r".*cascade\.parquet: name the order's column"):
        run_eval(EvalConfig(input=str(tmp_path / "cascade.parquet"), rank_column="rank_l12", baseline_column=""))
    capsys.readouterr()
    assert main(["eval", "--input", str(tmp_path / "cascade.parquet"), "--score-column", "score_l12",
                 "--rank-column", "", "--baseline-column", "score_l12"]) == 0
    err = capsys.readouterr().err
    assert "'score_l12' gives the reranked order: no baseline" in err and "warning" not in err
    (tmp_path / "notes.txt").write_text("a file")
    (tmp_path / "_cascade.parquet.eval.json").unlink()
    for flag, name in (("--output", "eval.json"), ("--run-output", "run.txt")):
        assert main(["eval", "--input", str(tmp_path / "cascade.parquet"), flag, str(tmp_path / "notes.txt" / name)]) \
            == 2
        setting = flag[2:].replace("-", "_")
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"ce-ray eval: error: {setting} ({flag}) {tmp_path}/notes.txt/{name}: {tmp_path}/notes.txt is a file, "
            "not a folder")
    assert not (tmp_path / "_cascade.parquet.eval.json").exists()


def test_each_count_and_metric_of_an_eval_as_trec_eval_and_its_summary_say_them(tmp_path):
    """What no test pinned (each changed, the suite stayed green): MRR@10 of ce-ray eval's lists cut at 10, graded
    labels read as grades, a negative grade relevant to no denominator (MAP, Recall), unjudged queries counted as
    none of the judged ones, the table's change signed as reranked less baseline, a float32 score written as its
    shortest form in a run, and no query to measure refused."""
    from ce_ray.evaluate import table_lines, write_trec_run
    from ce_ray.metrics import lists_metrics

    past_the_cut = lists_metrics(np.zeros(12, int), np.array([0.0] * 11 + [1.0]), 1)
    assert past_the_cut["mrr@10"][0] == 0.0 and past_the_cut["recall@100"][0] == 1.0
    graded = evaluate_frame(pd.DataFrame({"query_id": ["a"] * 3, "score": [3.0, 2.0, 1.0], "label": [1, 2, 0]}),
                            EvalConfig(baseline_column=""))
    assert graded["reranked"]["ndcg@10"] == pytest.approx((1 + 2 / np.log2(3)) / (2 + 1 / np.log2(3)), abs=1e-9)
    rows = pd.DataFrame({"query_id": ["a"] * 3, "doc_id": ["d1", "d2", "d5"], "score": [3.0, 2.0, 1.0]})
    junk = evaluate_frame(rows, EvalConfig(baseline_column=""), {"a": {"d1": -1, "d2": 1, "d3": 2, "d4": -2}})
    assert (junk["reranked"]["map"], junk["reranked"]["recall@100"]) == (pytest.approx(0.25), pytest.approx(0.5))
    labelled = evaluate_frame(rows.assign(label=[-1, 1, 0]), EvalConfig(baseline_column=""))
    assert (labelled["reranked"]["map"], labelled["reranked"]["recall@100"]) == (pytest.approx(0.5), 1.0)
    # Query b is judged by no qrels: left out as such, not a judged query without a relevant document.
    two = pd.DataFrame({"query_id": ["a", "a", "b"], "doc_id": ["d1", "d2", "d1"], "score": [2.0, 1.0, 1.0]})
    for only in (False, True):
        result = evaluate_frame(two, EvalConfig(baseline_column="", only_with_relevant=only), {"a": {"d1": 1}})
        assert (result["queries"], result["queries_without_relevant"], result["queries_not_in_qrels"],
                result["queries_skipped_without_relevant"]) == (1, 0, 1, 0)
    # A query without a relevant document, left out: counted once, as left out (not also as counted at 0).
    none = evaluate_frame(two.assign(label=[1, 0, 0]), EvalConfig(baseline_column="", only_with_relevant=True))
    assert (none["queries"], none["queries_skipped_without_relevant"], none["queries_without_relevant"]) == (1, 1, 0)
    changed = table_lines({"reranked": {"ndcg@10": 0.6, "mrr@10": 0.5, "map": 0.5, "recall@100": 1.0},
                           "baseline": {"ndcg@10": 0.5, "mrr@10": 0.5, "map": 0.5, "recall@100": 1.0}}, EvalConfig())
    assert next(line for line in changed if "ndcg@10" in line).endswith("+0.1000")
    scored = pd.DataFrame({"query_id": ["a", "a"], "doc_id": ["d1", "d2"], "score": np.array([0.1, 0.7], np.float32)})
    write_trec_run(str(tmp_path / "run.txt"), scored, EvalConfig(baseline_column=""))
    assert (tmp_path / "run.txt").read_text() == "a Q0 d2 1 0.7 ce-ray\na Q0 d1 2 0.1 ce-ray\n"
    scored.assign(label=[0, 0]).to_parquet(tmp_path / "unanswered.parquet")
    with pytest.raises(ConfigError, match=r"^no query to evaluate \(none has a relevant document\)$"):
        run_eval(EvalConfig(input=str(tmp_path / "unanswered.parquet"), baseline_column="", only_with_relevant=True))
