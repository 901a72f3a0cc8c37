"""Rerank: ranks per query (ties in input order), top-k, rejects, queries spread over files and blocks."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ce_ray.batching import REJECT
from ce_ray.config import ConfigError, EvalConfig, RerankConfig
from ce_ray.evaluate import run_eval
from ce_ray.messages import InputError
from ce_ray.readers import ROW_INDEX, ROW_INPUT
from ce_ray.rerank import CUT, keep_block_top_k, rank_queries, run_rerank, shuffle_input

from conftest import DURATION


def tagged(rows) -> pa.Table:
    """Rows (file key, row in file, score, doc) of one query, tagged as the reader tags them."""
    keys, index, scores, docs = zip(*rows)
    return pa.table({"query_id": ["q"] * len(rows), "document": list(docs), "score": pa.array(scores, pa.float32()),
                     ROW_INPUT: list(keys), ROW_INDEX: pa.array(index, pa.int64())})


def test_ties_follow_input_order_across_files():
    table = tagged([("b", 0, 0.5, "b0"), ("a", 3, 0.5, "a3"), ("b", 1, 0.9, "b1"), ("a", 1, 0.5, "a1")])
    out = rank_queries(table, input_order=["a", "b"])
    assert out.column("document").to_pylist() == ["b1", "a1", "a3", "b0"]
    assert out.column("rank").to_pylist() == [1, 2, 3, 4]
    assert ROW_INPUT not in out.column_names and ROW_INDEX not in out.column_names
    # The file order comes from the listing, not from the key's spelling.
    out = rank_queries(table, input_order=["b", "a"])
    assert out.column("document").to_pylist() == ["b1", "b0", "a1", "a3"]


def test_top_k_single_candidate_and_rejects():
    table = tagged([("a", 0, 0.1, "x"), ("a", 1, 0.7, "y"), ("a", 2, 0.4, "z"), ("a", 3, 0.2, "w")])
    table = table.append_column(REJECT, pa.array([None, None, None, "document is null"], pa.string()))
    table = table.set_column(2, "score", pa.array([0.1, 0.7, 0.4, None], pa.float32()))
    out = rank_queries(table, top_k=2, input_order=["a"], count_cut=True).to_pandas()
    ranked = out[out[REJECT].isna()]
    assert ranked["document"].tolist() == ["y", "z"] and ranked["rank"].tolist() == [1, 2]
    assert ranked[CUT].tolist() == [1, 0]  # x was cut, counted once on the best row
    rejected = out[out[REJECT].notna()]
    assert rejected["document"].tolist() == ["w"] and rejected["rank"].isna().all()

    one = rank_queries(tagged([("a", 5, 0.3, "only")]), top_k=10, input_order=["a"])
    assert one.column("rank").to_pylist() == [1]


def test_null_query_id_is_rejected_not_ranked():
    table = pa.table({"query_id": pa.array([None, None], pa.string()), "document": ["a", "b"],
                      "score": pa.array([0.2, 0.3], pa.float32())})
    out = rank_queries(table)
    assert out.column(REJECT).to_pylist() == ["query_id is null"] * 2
    assert out.column("rank").null_count == 2 and out.column("score").null_count == 2  # rejected: no score
    # NaN is how pandas writes a missing integer id: rejected too, not ranked together as one query.
    table = pa.table({"query_id": [1.0, float("nan"), float("nan")], "document": ["a", "b", "c"],
                      "score": pa.array([0.2, 0.3, 0.4], pa.float32())})
    out = rank_queries(table)
    assert out.column(REJECT).to_pylist() == [None, "query_id is NaN", "query_id is NaN"]
    assert out.column("rank").to_pylist() == [1, None, None]
    kept = keep_block_top_k(table, 1, "query_id")
    assert kept.num_rows == 3  # the NaN rows pass on, to be rejected, not cut as one query's
    # An empty id (a parquet's or JSON Lines' "", where a CSV's empty field is null) is none either: such rows were
    # ranked together as one query.
    table = pa.table({"query_id": ["7", "", " \t"], "document": ["a", "b", "c"],
                      "score": pa.array([0.2, 0.3, 0.4], pa.float32())})
    assert rank_queries(table).column(REJECT).to_pylist() == [None, "query_id is empty", "query_id is empty"]
    assert keep_block_top_k(table, 1, "query_id").num_rows == 3


def ranked_queries(blocks, top_k, input_order=None) -> pd.DataFrame:
    """rank_queries over each query's rows of all blocks, with the rows cut counted, as the group-by runs it."""
    rows = pa.concat_tables(blocks, promote_options="default")
    ids = rows.column("query_id").to_numpy(zero_copy_only=False)
    groups = [rows.filter(pa.array(ids == q)) for q in sorted(set(ids) - {None})]
    groups.append(rows.filter(pa.array(pd.isna(ids))))
    out = pd.concat([rank_queries(g, top_k=top_k, input_order=input_order, count_cut=True).to_pandas() for g in groups])
    return out.sort_values("doc").reset_index(drop=True)


@pytest.mark.parametrize("tags", [True, False])
def test_block_top_k_before_the_shuffle_keeps_the_ranks(tags):
    """Each block's best k rows of each query, ranked across blocks, give the same top k, ranks and rows cut as
    all rows: on queries spread over shuffled blocks, with tied scores, rejects and rows without a query id."""
    rng = np.random.default_rng(7)
    n = 3000
    table = pa.table({
        "query_id": pa.array(rng.integers(0, 40, n).astype(str), pa.string()),
        "document": [f"doc {i:05d}" for i in rng.permutation(n)],
        "doc": np.arange(n),
        "score": pa.array(rng.integers(0, 8, n) / 8, pa.float32(), mask=rng.random(n) < 0.03),
        REJECT: pa.array(np.where(rng.random(n) < 0.02, "document is null", None), pa.string()),
    })
    table = table.set_column(0, "query_id", pa.array(table.column("query_id").to_pylist(), pa.string(),
                                                     mask=rng.random(n) < 0.01))
    order = None
    if tags:  # three files, listed in an order that is not the keys' spelling
        table = table.append_column(ROW_INPUT, pa.array(rng.choice(["c", "a", "b"], n)))
        table = table.append_column(ROW_INDEX, pa.array(rng.permutation(n)))
        order = ["c", "a", "b"]
    table = table.take(pa.array(rng.permutation(n)))
    bounds = np.sort(rng.choice(np.arange(1, n), 11, replace=False))
    blocks = [table.slice(a, b - a) for a, b in zip(np.r_[0, bounds], np.r_[bounds, n])]
    for top_k in (1, 3, 200):
        expected = ranked_queries(blocks, top_k, order)
        cut = [keep_block_top_k(b, top_k, input_order=order, count_cut=True) for b in blocks]
        assert sum(c.num_rows for c in cut) < n if top_k < 200 else sum(c.num_rows for c in cut) == n
        got = ranked_queries(cut, top_k, order)
        pd.testing.assert_frame_equal(got, expected)
        assert len(got) + got[CUT].sum() == n  # every row written or counted as cut


def test_a_query_is_one_list_whatever_type_its_blocks_give_its_ids(ray_local):
    """Ray Data hashes each block's key in that block's type: int64 ids hash otherwise in a block that holds a
    null id, and so do 7.0 (a file pandas wrote as floats). One query's rows must still be ranked as one list."""
    from ce_ray.rerank import rank

    queries, rows = np.arange(40), 3

    def block(ids, offset):
        return pa.table({"query_id": ids, "document": [f"d{offset + i}" for i in range(len(ids))],
                         "score": pa.array(np.linspace(0, 1, len(ids)), pa.float32())})
    plain = block(pa.array(np.repeat(queries, rows), pa.int64()), 0)
    with_null = block(pa.array(list(np.repeat(queries, rows)) + [None], pa.int64()), 1000)
    floats = block(pa.array(np.repeat(queries, rows).astype(float)), 2000)
    ds = ray_local.data.from_arrow([plain, with_null, floats])
    out = rank(ds, partitions=8).to_pandas()
    ranked = out[out["rank"].notna()]
    ranked = ranked.assign(query_id=ranked["query_id"].astype(int))
    assert len(ranked) == 3 * rows * len(queries) and len(out) - len(ranked) == 1  # the null id: rejected
    for query, ranks in ranked.groupby("query_id")["rank"]:
        assert sorted(ranks) == list(range(1, 3 * rows + 1)), query


def _tagged_scores(n: int, queries: int, levels: int, seed: int):
    """`n` scored rows of random queries, with many ties (`levels` scores), tagged with their input file ("b" read
    before "a") and row; and as pandas, each row's expected rank: by score, then input order."""
    rng = np.random.default_rng(seed)
    rows = pa.table({"query_id": pa.array(rng.integers(0, queries, n)), "doc": np.arange(n),
                     "document": [f"d{i}" for i in range(n)],
                     "score": pa.array(rng.integers(0, levels, n) / levels, pa.float32()),
                     ROW_INPUT: pa.array(rng.choice(["b", "a"], n)), ROW_INDEX: pa.array(rng.permutation(n))})
    frame = rows.to_pandas().assign(file=lambda f: f[ROW_INPUT].map({"b": 0, "a": 1}))
    frame = frame.sort_values(["query_id", "score", "file", ROW_INDEX], ascending=[True, False, True, True])
    frame["expected"] = frame.groupby("query_id").cumcount() + 1
    return rows, frame


def test_each_rank_partition_is_ranked_in_one_call(ray_local):
    """A partition holds the rows of many queries: it is ranked in one sort (a call for each query, as Ray Data's
    map_groups makes, took a millisecond a query). The ranks are those of a sort of each query's rows by score,
    then input order (the rows' tags), alone and through `rank`'s shuffle of blocks that split the queries."""
    from ce_ray.rerank import rank

    n = 4000
    rows, frame = _tagged_scores(n, queries=300, levels=16, seed=3)

    def check(ranked: pd.DataFrame, top_k) -> None:
        got = ranked.merge(frame[["doc", "expected"]], on="doc")
        assert len(got) == (n if top_k is None else (frame["expected"] <= top_k).sum())
        assert (got["rank"] == got["expected"]).all()

    for top_k in (None, 3):
        out = rank_queries(rows, top_k=top_k, input_order=["b", "a"], count_cut=True).to_pandas()
        check(out, top_k)
        assert out[CUT].sum() == n - len(out)  # each query's rows cut, counted on its best row
        assert (out.loc[out[CUT] > 0, "rank"] == 1).all()
        ds = ray_local.data.from_arrow([rows.slice(start, 500) for start in range(0, n, 500)])
        check(rank(ds, top_k=top_k, input_order=["b", "a"], partitions=2).to_pandas(), top_k)


def test_a_sort_shuffle_strategy_ranks_each_query_as_one_list(ray_local):
    """Where the Dataset's shuffle strategy is a sort (Ray Data's hash shuffle, which the rank partitions take,
    refuses keys there), the scored rows are sorted by query instead: each query's rows still come together in
    one block, ranked as one list, in its order of score then input order, whole or cut to the top k."""
    from ray.data.context import ShuffleStrategy

    from ce_ray.rerank import rank

    n = 3000
    rows, frame = _tagged_scores(n, queries=200, levels=8, seed=5)
    for top_k in (None, 2):
        ds = ray_local.data.from_arrow([rows.slice(start, 250) for start in range(0, n, 250)])  # queries split
        ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        ranked = rank(ds, top_k=top_k, input_order=["b", "a"], partitions=4)
        got = ranked.to_pandas().merge(frame[["doc", "expected"]], on="doc")
        assert len(got) == (n if top_k is None else (frame["expected"] <= top_k).sum())
        assert (got["rank"] == got["expected"]).all()
        assert "Sort" in ranked.stats()  # the sort ran, not the hash shuffle


def test_rerank_counts_pairs_per_second_as_score_does():
    """pairs/s is every row in over the job's seconds, rejected rows too (each was read, checked and written), in
    both commands: rerank left its rejected rows out, and gave a lower figure than score for the same job."""
    from ce_ray.rerank import RerankSummary
    from ce_ray.score import Summary

    scored = Summary(rows_in=1000, rows_scored=600, rows_rejected=400, seconds=10.0, output="o", files_in=1)
    reranked = RerankSummary(rows_in=1000, rows_kept=100, rows_cut=500, rows_rejected=400, seconds=10.0, output="o",
                             files_in=1, top_k=1)
    assert reranked.pairs_per_second == scored.pairs_per_second == 100.0
    assert "  rows rejected 400  (see rejects/)" in scored.lines()
    # A resume's rows kept were neither read nor scored again: not in its pairs/s.
    resumed = Summary(rows_in=1000, rows_scored=1000, rows_rejected=0, seconds=10.0, output="o", files_in=2,
                      files_kept=1, rows_kept=900)
    assert resumed.pairs_per_second == 10.0


def test_partitions_follow_the_cluster_and_the_input_size(ray_local, tmp_path):
    """One rank partition per CPU of the cluster, more for a large input, whose size in memory the input check
    gives: parquet footers' row groups, a small text file's text, a large compressed file's size times 4."""
    import gzip

    import pyarrow.parquet as pq

    from ce_ray.input_files import HEAD_BYTES, check_inputs
    from ce_ray.config import MAX_RANK_PARTITIONS
    from ce_ray.rerank import PARTITION_BYTES, default_partitions
    from ce_ray.storage import filesystem

    cpus = int(ray_local.cluster_resources()["CPU"])
    assert default_partitions(0) == cpus and default_partitions(PARTITION_BYTES) == cpus
    assert default_partitions(10 * PARTITION_BYTES + 1) == 11 > cpus
    # No more than a setting may give (the README's "10,000 at most"): 3 TB in memory made 12,000.
    assert default_partitions(12_000 * PARTITION_BYTES) == MAX_RANK_PARTITIONS == 10_000

    fs = filesystem(str(tmp_path))[0]
    rows = pa.table({"query": ["q"] * 1000, "document": [f"document {i}" for i in range(1000)]})
    pq.write_table(rows, tmp_path / "a.parquet", row_group_size=400)
    footer = pq.ParquetFile(tmp_path / "a.parquet").metadata
    (tmp_path / "a.jsonl").write_text('{"query": "q", "document": "d"}\n' * 10)
    text = "".join(f'{{"query": "q{i}", "document": "d{i * 7919 % 10007}"}}\n' for i in range(40_000))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    assert len(text) > HEAD_BYTES
    [parquet], _ = check_inputs(fs, [str(tmp_path / "a.parquet")], "parquet", ["query", "document"])
    assert parquet.size_bytes == sum(footer.row_group(i).total_byte_size for i in range(3)) > 0
    (small, large), _ = check_inputs(fs, [str(tmp_path / n) for n in ("a.jsonl", "b.jsonl.gz")], "jsonl",
                                     ["query", "document"])
    assert small.size_bytes == 320
    assert large.size_bytes == 4 * os.path.getsize(tmp_path / "b.jsonl.gz")


def write_inputs(folder) -> pd.DataFrame:
    """Three parquet files; queries q1 and q2 spread over all of them; q3 has one candidate; one row
    cannot be scored. Returns every row with its file index and row position."""
    rng = np.random.default_rng(0)
    words = ["protein", "cell", "cancer", "river", "music", "tax", "gene", "moon", "virus", "tree"]
    frames = []
    for f in range(3):
        rows = []
        for i in range(7):
            q = ["q1", "q2"][i % 2]
            rows.append({"query_id": q, "query": f"what about {q}", "doc_id": f"f{f}-{i}",
                         "document": " ".join(rng.choice(words, 5)), "extra": f * 100 + i})
        if f == 1:
            rows.append({"query_id": "q3", "query": "lonely question", "doc_id": "f1-7", "document": "one answer",
                         "extra": 107})
            rows.append({"query_id": "q1", "query": "what about q1", "doc_id": "f1-8", "document": None,
                         "extra": 108})
        frame = pd.DataFrame(rows)
        frame.to_parquet(os.path.join(folder, f"part-{f}.parquet"), index=False)
        frames.append(frame.assign(file=f, row=np.arange(len(frame))))
    return pd.concat(frames, ignore_index=True)


def expected_ranks(results: pd.DataFrame, inputs: pd.DataFrame) -> pd.DataFrame:
    merged = results.merge(inputs[["doc_id", "file", "row"]], on="doc_id")
    merged = merged.sort_values(["query_id", "score", "file", "row"], ascending=[True, False, True, True],
                                kind="stable")
    merged["expected"] = merged.groupby("query_id").cumcount() + 1
    return merged


def test_rerank_job_over_files_and_blocks(ray_local, tiny_model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    inputs = write_inputs(folder)
    config = RerankConfig(model=str(tiny_model), input=str(folder), output=str(tmp_path / "all"),
                          rows_per_block=3, rank_partitions=3)
    summary = run_rerank(config)
    assert summary.rows_in == len(inputs) == 23
    out = capsys.readouterr().out
    assert "ce-ray rerank: ranks the rows of each query_id in 3 partition(s)\n" in out
    # The seconds split where the rank stage started: every row scored by then.
    assert 0 < summary.rank_seconds < summary.seconds
    said = re.search(r"\n  seconds +([\d.]+)  \(([\d.]+) starting, reading and scoring, ([\d.]+) ranking and "
                     r"writing\)\n", out)
    assert said and said.group(3) == f"{summary.rank_seconds:.1f}"
    assert (summary.rows_kept, summary.rows_cut, summary.rows_rejected, summary.shared_query_ids) == (22, 0, 1, 0)

    results = pd.read_parquet(tmp_path / "all" / "results")
    assert sorted(results.columns) == sorted(list(inputs.columns[:-2]) + ["score", "rank"])
    assert sorted(results["doc_id"]) == sorted(inputs["doc_id"][inputs["document"].notna()])
    checked = expected_ranks(results, inputs)
    assert (checked["rank"] == checked["expected"]).all()
    assert results.loc[results["query_id"] == "q3", "rank"].tolist() == [1]
    rejects = pd.read_parquet(tmp_path / "all" / "rejects")
    assert rejects["doc_id"].tolist() == ["f1-8"] and rejects["reason"].tolist() == ["document is null"]
    assert "rank" not in rejects.columns and "score" not in rejects.columns
    success = json.loads((tmp_path / "all" / "_SUCCESS").read_text())
    assert success["rows_in"] == 23

    top = run_rerank(RerankConfig(model=str(tiny_model), input=str(folder), output=str(tmp_path / "top"),
                                  rows_per_block=3, rank_partitions=3, top_k=2))
    assert (top.rows_kept, top.rows_cut, top.rows_rejected, top.rows_in) == (5, 17, 1, 23)
    assert "in 3 partition(s), keeping the best 2\n" in capsys.readouterr().out
    kept = pd.read_parquet(tmp_path / "top" / "results").sort_values(["query_id", "rank"])
    best = results[results["rank"] <= 2].sort_values(["query_id", "rank"])
    assert kept["doc_id"].tolist() == best["doc_id"].tolist()
    np.testing.assert_allclose(kept["score"], best["score"], atol=1e-6)
    # Eval of the top 2: a baseline would rank the reranker's choice, not the first stage's list: left out, said.
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tf0-0\t1\nq2\tf0-1\t1\n")
    measured = {name: run_eval(EvalConfig(input=str(tmp_path / name), qrels=str(tmp_path / "qrels.tsv"),
                                          baseline_column="extra")) for name in ("all", "top")}
    assert measured["all"]["baseline"] is not None and "baseline_left_out" not in measured["all"]
    assert measured["top"]["baseline"] is None
    assert "top 2 of each query (17 rows cut)" in measured["top"]["baseline_left_out"]
    assert "  no baseline: " in capsys.readouterr().out
    assert "left out 1 row(s) the job rejected" in measured["all"]["rejected_rows_left_out"]

    # Two sources whose ids collide: q1 asks two questions. Its rows are ranked as one list, as the input says,
    # and the summary says so.
    (tmp_path / "collide").mkdir()
    for f in range(3):
        frame = pd.read_parquet(folder / f"part-{f}.parquet")
        if f == 2:
            frame["query"] = frame["query"].str.replace("what about q1", "who wrote q1")
        frame.to_parquet(tmp_path / "collide" / f"part-{f}.parquet", index=False)
    collide = run_rerank(RerankConfig(model=str(tiny_model), input=str(tmp_path / "collide"),
                                      output=str(tmp_path / "collide-out"), rank_partitions=2, top_k=3))
    assert collide.shared_query_ids == 1 and collide.rows_kept == 7
    assert "query ids     1 with more than one query text, each ranked as one query\n" in capsys.readouterr().out

    # Query ids written as a categorical (a dictionary of strings in parquet): the same ranks.
    (tmp_path / "categorical").mkdir()
    for f in range(3):
        frame = pd.read_parquet(folder / f"part-{f}.parquet")
        frame.astype({"query_id": "category"}).to_parquet(tmp_path / "categorical" / f"part-{f}.parquet", index=False)
    run_rerank(RerankConfig(model=str(tiny_model), input=str(tmp_path / "categorical"),
                            output=str(tmp_path / "cat"), rows_per_block=3, rank_partitions=3))
    ranked = pd.read_parquet(tmp_path / "cat" / "results").astype({"query_id": object}).sort_values("doc_id")
    plain = results.sort_values("doc_id")
    assert ranked["rank"].tolist() == plain["rank"].tolist()
    assert ranked["query_id"].tolist() == plain["query_id"].tolist()

    # A cascade: the output reranked again (here by the same model), its scores and ranks under other names.
    # The output folder gives its results/ (not its rejects/, nor the eval.json an eval wrote beside them).
    (tmp_path / "all" / "eval.json").write_text("{}")
    again = RerankConfig(model=str(tiny_model), input=str(tmp_path / "all"), output=str(tmp_path / "two"), top_k=2)
    with pytest.raises(InputError, match="has a column 'score', which the job writes"):
        run_rerank(again)
    with pytest.raises(InputError, match="has a column 'rank', which the job writes: name the ranks otherwise"):
        run_rerank(dataclasses.replace(again, score_column="score_2"))
    with pytest.raises(ConfigError, match=r"^score_column \(--score-column\) and rank_column \(--rank-column\) must "
                                          r"name different columns, got \['s', 's'\]$"):
        run_rerank(dataclasses.replace(again, score_column="s", rank_column="s"))
    run_rerank(dataclasses.replace(again, score_column="score_2", rank_column="rank_2"))
    two = pd.read_parquet(tmp_path / "two" / "results").sort_values(["query_id", "rank_2"])
    assert two["doc_id"].tolist() == best["doc_id"].tolist() and (two["rank_2"] == two["rank"]).all()
    np.testing.assert_allclose(two["score_2"], two["score"], atol=1e-6)
    # `--score-column score` (the first reranker's) over it: the job's rank_2 (by score_2) was measured, without a word.
    from ce_ray.cli import main

    capsys.readouterr()
    for given, note in ((["--score-column", "score"], True), ([], False)):
        assert main(["eval", "--input", str(tmp_path / "two"), "--qrels", str(tmp_path / "qrels.tsv"), *given,
                     "--output", str(tmp_path / "two.json")]) == 0
        assert ("note: the order is the job's rank_2 column's (its rank by score_2), which comes before the score's "
                "(score): give rank_column (--rank-column) '' to measure the score's order"
                in capsys.readouterr().out) == note
    # An output whose job did not finish is partial: refused as an input (and by eval, which reads it alike).
    (tmp_path / "two" / "_SUCCESS").unlink()
    with pytest.raises(InputError, match=r"is the output of a job that did not finish \(no _SUCCESS\)"):
        run_rerank(dataclasses.replace(again, input=str(tmp_path / "two"), output=str(tmp_path / "three"),
                                       score_column="score_3", rank_column="rank_3"))
    # Its results/, read as they are (as documented), were measured without a word that they may be some only.
    for given in ("two/results", "two/results/*.parquet"):
        measured = run_eval(EvalConfig(input=str(tmp_path / given), qrels=str(tmp_path / "qrels.tsv"),
                                       rank_column="rank_2", output=str(tmp_path / "two.json")))
        assert measured["unfinished_job"] == (f"note: {tmp_path / given} is in the results/ of a job that did not "
                                              "finish (no _SUCCESS): its rows as they are, which may be some of the "
                                              "job's only")
    assert "unfinished_job" not in run_eval(EvalConfig(input=str(tmp_path / "all" / "results"), output=str(
        tmp_path / "all.json"), qrels=str(tmp_path / "qrels.tsv")))
    # A bad model fails before an output it would overwrite is touched.
    with pytest.raises(Exception, match="does not exist"):
        run_rerank(dataclasses.replace(config, model=str(tmp_path / "no-model"), mode="overwrite"))
    assert (tmp_path / "all" / "_SUCCESS").exists() and len(pd.read_parquet(tmp_path / "all" / "results")) == 22


def test_rerank_input_errors(tiny_model, tmp_path, capsys):
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "x.parquet")
    config = RerankConfig(model=str(tiny_model), input=str(tmp_path / "x.parquet"), output=str(tmp_path / "o"))
    with pytest.raises(InputError, match=r"x\.parquet: missing column\(s\) 'query_id' \(columns: query, document"):
        run_rerank(config)
    with pytest.raises(ConfigError, match="resume"):
        run_rerank(RerankConfig(model=str(tiny_model), input=str(tmp_path), output=str(tmp_path / "o"),
                                mode="resume"))
    # --help offered mode resume, which ranking refuses; given, it is still refused saying why, naming the flag (it
    # named the YAML key alone).
    from ce_ray.cli import build_parser, command_parser, main

    usage = command_parser(build_parser(), "rerank").format_help()
    assert "--mode {error,overwrite}" in usage and "resume" not in usage
    assert main(["rerank", "--model", str(tiny_model), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--mode", "resume"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "ce-ray rerank: error: mode resume (--mode resume) works per input file, but ranking groups rows across files; "
        "use mode overwrite (--mode overwrite)")
    # A typo of a mode is answered with the modes offered: the list offered resume too.
    with pytest.raises(SystemExit):
        main(["rerank", "--model", str(tiny_model), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
              "--mode", "resum"])
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "invalid choice: 'resum' (choose from 'error', 'overwrite')")
    assert "--mode {error,overwrite,resume}" in command_parser(build_parser(), "score").format_help()
    # A query id that is no single value fails naming the column, before Ray Data's group-by would fail on it.
    with pytest.raises(InputError, match=r"query_id is list<\w+: int64>: a query id is one value"):
        shuffle_input(pa.table({"query_id": [[1], [2]], "document": ["a", "b"]}), "query_id")
    categorical = pa.table({"query_id": pa.array(["q1", "q2", "q1"]).dictionary_encode()})
    assert shuffle_input(categorical, "query_id").column("query_id").type == pa.string()
    with pytest.raises(ConfigError, match="top_k"):
        run_rerank(RerankConfig(model=str(tiny_model), input=str(tmp_path), output=str(tmp_path / "o"), top_k=0))
    # A --config file's top_k (jobs/configs/rerank.yaml's 10) could not be unset from the command line, which the
    # refusal of 0 told to do: `--top-k none` unsets it, as any optional number's flag does.
    from ce_ray.cli import config_from_args

    (tmp_path / "rerank.yaml").write_text("model: m\ninput: i\noutput: o\ntop_k: 10\nmax_length: 64\n")
    parser = command_parser(build_parser(), "rerank")
    given = ["--config", str(tmp_path / "rerank.yaml"), "--top-k", "None", "--max-length", "none"]
    config = config_from_args(RerankConfig, parser.parse_args(given))
    assert (config.top_k, config.max_length, config.model) == (None, None, "m")
    assert config_from_args(RerankConfig, parser.parse_args(given[:2])).top_k == 10
    # A text flag's `none` is that text, as YAML's is: it unset the setting, without a word (`--baseline-column none`
    # measured the default's baseline, `--activation none` scored with the model's own).
    texts = config_from_args(RerankConfig, parser.parse_args(given + ["--query-column", "none", "--prompt", "none"]))
    assert (texts.query_column, texts.prompt, texts.top_k) == ("none", "none", None)
    with pytest.raises(ConfigError, match=r"leave it unset to keep every row, ranked \(--top-k none over a --config "
                                          r"file's\)$"):
        config_from_args(RerankConfig, parser.parse_args(given[:2] + ["--top-k", "0"]))
    with pytest.raises(SystemExit):
        parser.parse_args(given[:2] + ["--top-k", "nine"])
    assert "argument --top-k: invalid int value: 'nine'" in capsys.readouterr().err


def test_a_query_id_of_several_values_in_the_files_is_refused_before_any_work(ray_local, tiny_model, tmp_path,
                                                                             capsys):
    """A file whose query id is a list (parquet, JSON Lines): the job failed at its first scored block, exit 1, saying
    to rerun it, and left the output folder it had made, with `_ce_ray/job.json`. The files' types say it first."""
    from ce_ray.cli import main

    (tmp_path / "pq").mkdir()
    pd.DataFrame({"qid": [[1, 2], [3]], "query": ["q", "q"], "document": ["a", "b"]}).to_parquet(
        tmp_path / "pq" / "a.parquet")
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "a.jsonl").write_text('{"qid": [1, 2], "query": "q", "document": "a"}\n')
    for folder in ("pq", "jsonl"):
        assert main(["rerank", "--model", str(tiny_model), "--input", str(tmp_path / folder), "--output",
                     str(tmp_path / "o"), "--query-id-column", "qid"]) == 2
        assert re.fullmatch(r"ce-ray rerank: error: qid is list<\w+: int64>: a query id is one value \(text or a "
                            r"number\) per row", capsys.readouterr().err.splitlines()[-1])
        assert not (tmp_path / "o").exists()


def test_a_top_k_of_0_is_refused_by_rerank_saying_how_to_keep_every_row(ray_local, tiny_model, capsys):
    """`ce_ray.rank(..., top_k=0)` gives no document, as CrossEncoder.rank does; a rerank of top_k 0 would write no
    row of any query, which no one means: `ce_ray.rerank` and `ce-ray rerank --top-k 0` refuse it, in one line that
    says that leaving top_k unset keeps every row (it said `top_k must be >= 1, got 0` alone), naming the flag too."""
    import ray.data

    import ce_ray
    from ce_ray.cli import main

    said = ("top_k (--top-k) must be >= 1, got 0: a rerank keeps the best top_k rows of each query; leave it unset to "
            "keep every row, ranked (--top-k none over a --config file's)")
    rows = ray.data.from_items([{"query_id": 1, "query": "q", "document": "d"}])
    with pytest.raises(ConfigError, match=rf"^{re.escape(said)}$"):
        ce_ray.rerank(rows, model=str(tiny_model), top_k=0)
    assert main(["rerank", "--model", str(tiny_model), "--input", "in", "--output", "out", "--top-k", "0"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"ce-ray rerank: error: {said}"


def test_the_cut_an_outputs_rows_went_through_is_its_own_jobs_first():
    """A top-k rerank of rows an earlier rerank cut: eval's `the reranker's top k` is this job's cut, not its
    input's; an output that cut nothing says its input's."""
    from ce_ray.output_state import INPUT_CUT, rows_cut_before

    earlier = {"top_k": 3, "rows_cut": 10}
    assert rows_cut_before({"top_k": 1, "rows_cut": 5, INPUT_CUT: earlier}) == {"top_k": 1, "rows_cut": 5}
    assert rows_cut_before({"rows_cut": 0, INPUT_CUT: earlier}) == earlier
    assert rows_cut_before({"rows_scored": 4}) is None


def test_eval_reads_an_output_as_its_job_wrote_it(ray_local, tiny_model, tmp_path):
    """eval of a score job's output orders by its scores, not by a `rank` column the input brought (every metric
    was that order's, 1.0); of a rerank's, by the query id and rank columns the rerank wrote (a missing column
    `query_id` failed it); of a rerank cut to its top k, labels are refused (recall was 1.0 and MAP counted only
    the relevant documents kept)."""
    from ce_ray import ScoreConfig, run_score
    from ce_ray.evaluate import evaluate_frame

    (tmp_path / "in").mkdir()
    inputs = write_inputs(tmp_path / "in").rename(columns={"query_id": "qid"})
    inputs["label"] = (inputs["extra"] % 3 == 0).astype(int)
    inputs["rank"] = inputs.groupby("qid").cumcount() + 1 + 100 * (1 - inputs["label"])  # relevant ones first
    for f, part in inputs.groupby("file"):
        part.drop(columns=["file", "row"]).to_parquet(tmp_path / "in" / f"part-{f}.parquet", index=False)
    by_qid = EvalConfig(query_id_column="qid", baseline_column="")

    run_score(ScoreConfig(model=str(tiny_model), input=str(tmp_path / "in"), output=str(tmp_path / "scored")))
    scored = run_eval(dataclasses.replace(by_qid, input=str(tmp_path / "scored")))
    results = pd.read_parquet(tmp_path / "scored" / "results")
    assert scored["reranked_by"] == "score"
    # A score named that the output lacks: its rank column, which a score job's output is not read by, is not named
    # (it said `neither '' nor 'nope'`).
    with pytest.raises(InputError, match=r"^'nope' is not a column of the input: name the order's column"):
        run_eval(dataclasses.replace(by_qid, input=str(tmp_path / "scored"), score_column="nope"))
    assert scored["reranked"] == evaluate_frame(results.drop(columns="rank"), by_qid)["reranked"] != \
        evaluate_frame(results, by_qid)["reranked"]

    config = RerankConfig(model=str(tiny_model), input=str(tmp_path / "in"), output=str(tmp_path / "ranked"),
                          query_id_column="qid", rank_column="rank_ce")
    run_rerank(config)
    ranked = run_eval(EvalConfig(input=str(tmp_path / "ranked"), baseline_column="rank"))
    assert ranked["reranked_by"] == "rank_ce" and ranked["baseline_by"] == "rank"
    assert ranked["columns_of_the_job"].startswith("query_id_column 'qid', rank_column 'rank_ce': as the job")
    assert ranked["queries"] == 3 and ranked["baseline"]["map"] == pytest.approx(2 / 3)  # q3: none relevant, 0
    # A column given at its default's name is given all the same (a cascade's first reranker's order, the input's
    # own rank of a score job's output): it was taken for one left alone, and the job's measured instead.
    from ce_ray.cli import main

    for output, as_given in (("ranked", ranked["baseline"]), ("scored", ranked["baseline"])):
        assert main(["eval", "--input", str(tmp_path / output), "--rank-column", "rank", "--query-id-column", "qid",
                     "--baseline-column", "", "--output", str(tmp_path / "given.json")]) == 0
        measured = json.loads((tmp_path / "given.json").read_text())
        assert (measured["reranked_by"], measured["reranked"]) == ("rank", as_given), output
        assert "columns_of_the_job" not in measured
    run_rerank(dataclasses.replace(config, output=str(tmp_path / "top"), top_k=2))
    with pytest.raises(ConfigError, match=r"top 2 of each query \(17 rows cut\): the cut rows' labels are gone, .*; "
                                          r"give qrels \(--qrels\), or evaluate a rerank without top_k \(--top-k\)$"):
        run_eval(EvalConfig(input=str(tmp_path / "top")))

    # Its results/ folder, or a glob of its parts, read as the files they are, as the job wrote them: they were
    # measured as any parquet files, by the input's own `rank` (the reranker's scores unread) and by the cut labels.
    for parts in ("scored/results", "scored/results/", "scored/results/*.parquet"):
        read = run_eval(dataclasses.replace(by_qid, input=str(tmp_path / parts), output=str(tmp_path / "e.json")))
        assert read["reranked_by"] == "score" and read["reranked"] == scored["reranked"], parts
    for parts in ("top/results", "top/results/*.parquet"):
        with pytest.raises(ConfigError, match=r"holds the reranker's top 2 of each query \(17 rows cut\): the cut"):
            run_eval(EvalConfig(input=str(tmp_path / parts), output=str(tmp_path / "e.json")))
    # A cascade over the cut output (its rows the first reranker's choice, whatever scored them after), and a score
    # job over it: no labels without qrels (every query said to have no relevant document left: metrics of 0.25
    # for 0.13), and no baseline with them (it ranked the first reranker's choice).
    run_rerank(dataclasses.replace(config, input=str(tmp_path / "top"), output=str(tmp_path / "cascade"),
                                   rank_column="rank_l2", score_column="score_l2"))
    run_score(ScoreConfig(model=str(tiny_model), input=str(tmp_path / "top" / "results"),
                          output=str(tmp_path / "top-scored"), score_column="score_l2"))
    for later in ("cascade", "top-scored", "cascade/results"):
        with pytest.raises(ConfigError, match=r"holds an earlier reranker's \(the job's input's\) top 2 of each query "
                                              r"\(17 rows cut\): the cut rows' labels are gone"):
            run_eval(EvalConfig(input=str(tmp_path / later), query_id_column="qid", output=str(tmp_path / "e.json")))
    assert json.loads((tmp_path / "cascade" / "_SUCCESS").read_text())["input_cut"] == {"top_k": 2, "rows_cut": 17}
    grades = "".join(f"{q} 0 {d} {g}\n" for q, d, g in zip(inputs["qid"], inputs["doc_id"], inputs["label"]))
    (tmp_path / "qrels.txt").write_text(grades)
    judged = run_eval(EvalConfig(input=str(tmp_path / "cascade"), qrels=str(tmp_path / "qrels.txt"),
                                 baseline_column="rank", output=str(tmp_path / "e.json")))
    assert judged["baseline_by"] is None and judged["reranked_by"] == "rank_l2"
    assert judged["baseline_left_out"].startswith(f"no baseline: {tmp_path / 'cascade'} holds an earlier reranker's")


def test_a_rerank_that_fails_mid_way_says_why_and_that_it_reruns_with_overwrite(ray_local, tiny_model, tmp_path,
                                                                               capsys):
    """A file whose page cannot be decoded, read mid-way, ended the job as a usage error (`error:`, a page of
    Ray's frames, exit 2); the last line says what failed and how to finish: a rerank cannot resume. An output
    with results is refused naming --mode overwrite alone (it offered --mode resume, which rerank refuses)."""
    from ce_ray.cli import main
    from conftest import undecodable_parquet

    (tmp_path / "in").mkdir()
    frame = pd.DataFrame({"query_id": [f"q{i % 3}" for i in range(60)], "query": [f"query {i % 3}" for i in range(60)],
                          "document": [f"document {i % 7}" for i in range(60)]})
    frame.to_parquet(tmp_path / "in" / "a.parquet")
    undecodable_parquet(tmp_path / "in" / "b.parquet", frame)
    command = ["rerank", "--model", str(tiny_model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert main(command) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ce-ray rerank: failed: ArrowInvalid: Index not in dictionary bounds (reading {tmp_path}/in/b.parquet); "
        "rerun it with --mode overwrite (ranking groups rows across files: it cannot resume)")
    assert not (tmp_path / "out" / "_SUCCESS").exists()

    (tmp_path / "out" / "results").mkdir()  # as an earlier run left it
    frame.to_parquet(tmp_path / "out" / "results" / "part-000000.parquet")
    assert main(command) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ce-ray rerank: error: {tmp_path}/out already has results: pass --mode overwrite to replace them")


def test_equal_scores_of_a_python_dataset_keep_its_rows_order_as_cross_encoder_rank_does(ray_local, tiny_model,
                                                                                         tmp_path):
    """`ce_ray.rerank` of a DataFrame made a Dataset: of equal scores, the earlier row ranks first, over blocks,
    as CrossEncoder.rank's stable sort keeps the documents' order and `ce-ray rerank` keeps a file's. Equal
    scores were ordered by document text (apple before zebra)."""
    import shutil

    import ray.data
    from safetensors.torch import load_file, save_file
    from sentence_transformers import CrossEncoder

    import ce_ray

    flat = tmp_path / "flat"  # a classifier of zero weights: every pair scores sigmoid(bias)
    shutil.copytree(tiny_model, flat)
    weights = load_file(flat / "model.safetensors")
    weights["classifier.weight"] = weights["classifier.weight"] * 0
    save_file(weights, flat / "model.safetensors", metadata={"format": "pt"})
    documents = ["zebra stripes", "apple pie", "mango", "banana split", "cherry", "kiwi"]
    frame = pd.DataFrame({"query_id": [1] * 6 + [2] * 6, "query": ["which fruit"] * 6 + ["which animal"] * 6,
                          "document": documents + documents[::-1]})
    rows = ray.data.from_pandas([frame.iloc[start:start + 3] for start in range(0, 12, 3)])  # a query over blocks
    # The best 2 of each query: each block's best 2 first (keep_block_top_k), then the query's.
    ranked = ce_ray.rerank(rows, model=str(flat), top_k=2, rank_partitions=2).to_pandas()
    assert sorted(ranked.columns) == ["document", "query", "query_id", "rank", "reject_reason", "score"]
    anchor = CrossEncoder(str(flat), device="cpu")
    for query_id, group in frame.groupby("query_id"):
        expected = [group["document"].iloc[hit["corpus_id"]]
                    for hit in anchor.rank(group["query"].iloc[0], group["document"].tolist(), top_k=2)]
        got = ranked[ranked["query_id"] == query_id].sort_values("rank")
        assert got["score"].nunique() == 1 and got["document"].tolist() == expected
    assert ranked.sort_values(["query_id", "rank"])["document"].tolist() == ["zebra stripes", "apple pie", "kiwi",
                                                                             "cherry"]


def test_a_python_dataset_that_ray_holds_is_ranked_in_partitions_of_its_size(ray_local, tiny_model):
    """`ce_ray.rerank` of a DataFrame made a Dataset ranked its few rows in Ray's default 200 partitions (40 s on 2
    CPUs); a Dataset that Ray holds gets as many as `ce-ray rerank` gives an input of its size."""
    import ray.data

    import ce_ray
    from ce_ray.rerank import default_partitions

    frame = pd.DataFrame({"query_id": [1, 1, 2], "query": ["q one", "q one", "q two"],
                          "document": ["a", "b", "c"]})
    ranked = ce_ray.rerank(ray.data.from_pandas(frame), model=str(tiny_model)).materialize()
    assert ranked.count() == 3
    # Ray Data's stats name each shuffle stage with its partitions: `HashShuffleMap(keys=(...), partitions=N)`.
    assert set(re.findall(r"partitions=(\d+)", ranked.stats())) == {str(default_partitions(0))}


def test_a_lazy_python_dataset_is_ranked_in_one_partition_per_cpu(ray_local, tiny_model):
    """A lazy Dataset (its size known only once it has run) was ranked in Ray's default 200 partitions (40 s for a
    few rows on 2 CPUs): it gets `ce-ray rerank`'s least, one per CPU of the cluster, and runs once."""
    import ray.data

    import ce_ray
    from ce_ray.rerank import default_partitions

    frame = pd.DataFrame({"query_id": [1, 1, 2], "query": ["q one", "q one", "q two"],
                          "document": ["a", "b", "c"]})
    lazy = ray.data.from_pandas(frame).map_batches(lambda batch: batch, batch_format="pyarrow")
    ranked = ce_ray.rerank(lazy, model=str(tiny_model)).materialize()
    assert sorted(ranked.to_pandas()["rank"].tolist()) == [1, 1, 2]
    assert set(re.findall(r"partitions=(\d+)", ranked.stats())) == {str(default_partitions(0))}
    # once: its map ran for its one block, not again to learn its size
    assert len(re.findall(r"Operator \d+ MapBatches\(<lambda>\)", ranked.stats())) == 1


def test_rerank_parts_carry_none_of_the_input_files_metadata(ray_local, tiny_model, tmp_path):
    """A rerank's parts (rows of any input file, ranked) carried the first input file's schema metadata: an earlier
    score job's `ce_ray.input_rows` (300 on a part of 160 rows) and its pandas index. They carry the run that wrote
    them alone (`sink.RUN_ID`)."""
    from ce_ray.sink import RUN_ID

    (tmp_path / "in").mkdir()
    frame = pd.DataFrame({"query_id": ["q", "q"], "query": ["q", "q"], "document": ["a", "b"]},
                         index=pd.RangeIndex(1000, 1002, name="pair_id"))
    table = pa.Table.from_pandas(frame)
    pq.write_table(table.replace_schema_metadata(table.schema.metadata | {b"ce_ray.input_rows": b"300"}),
                   tmp_path / "in" / "a.parquet")
    run_rerank(RerankConfig(model=str(tiny_model), input=str(tmp_path / "in"), output=str(tmp_path / "out")))
    parts = sorted((tmp_path / "out" / "results").glob("*.parquet"))
    assert parts and all(pq.read_schema(part).metadata.keys() == {RUN_ID} for part in parts)


def test_a_parquet_input_with_hand_made_pandas_metadata_is_reranked(ray_local, tiny_model, tmp_path):
    """A parquet file whose schema carries pandas metadata made by hand, without its `columns` key (a writer
    other than pandas, a tool that copies schemas), failed rerank in Ray Data's shuffle with `KeyError: 'columns'`
    (it reads the key column into pandas with the block's metadata). The rows are read without it and ranked."""
    table = pa.table({"query_id": [7, 7, 8], "query": ["q7", "q7", "q8"], "document": ["a", "b", "c"]})
    pandas = json.dumps({"index_columns": [], "creator": {"library": "hand"}}).encode()
    pq.write_table(table.replace_schema_metadata({b"pandas": pandas}), tmp_path / "in.parquet")
    summary = run_rerank(RerankConfig(model=str(tiny_model), input=str(tmp_path / "in.parquet"),
                                      output=str(tmp_path / "out")))
    got = pd.read_parquet(tmp_path / "out" / "results").sort_values(["query_id", "rank"])
    assert (summary.rows_in, summary.rows_scored) == (3, 3)
    assert list(zip(got["query_id"], got["rank"])) == [(7, 1), (7, 2), (8, 1)]


def test_a_query_id_kept_as_a_hive_partition_key_is_read_by_rerank_and_eval(ray_local, tiny_model, tmp_path):
    """Pairs partitioned by query (`query_id=1/part-0.parquet`, as Spark's `partitionBy` writes them) have the id in
    their folders alone. The jobs' reader gives each key as a column, as Ray Data's readers do, but the check before
    the job refused the input (`missing column(s) 'query_id'`), and so did eval, which read the files' columns
    alone."""
    for query_id, documents in (("7", ["a", "b", "c"]), ("8", ["d", "e"])):
        folder = tmp_path / "pairs" / f"query_id={query_id}"
        folder.mkdir(parents=True)
        pd.DataFrame({"query": f"query {query_id}", "document": documents, "label": [1] + [0] * (len(documents) - 1),
                      "bm25_rank": range(1, len(documents) + 1)}).to_parquet(folder / "part-0.parquet")
    run_rerank(RerankConfig(model=str(tiny_model), input=str(tmp_path / "pairs"), output=str(tmp_path / "out")))
    got = pd.read_parquet(tmp_path / "out" / "results")
    assert sorted(got.groupby("query_id")["rank"].apply(sorted).to_dict().items()) == [("7", [1, 2, 3]),
                                                                                      ("8", [1, 2])]
    first_stage = run_eval(EvalConfig(input=str(tmp_path / "pairs"), score_column="", rank_column="bm25_rank",
                                      baseline_column="", output=str(tmp_path / "eval.json")))
    assert first_stage["queries"] == 2 and first_stage["reranked"]["mrr@10"] == 1.0


def test_csv_query_ids_written_as_whole_floats_are_one_query_with_their_integers(ray_local, tiny_model, tmp_path):
    """pandas writes an integer id column beside a missing id as `7.0`, in a CSV too: a CSV's ids are text, and `7`
    in one file and `7.0` in another were two queries, each with its rank 1 (and its top k), and eval measured
    them apart, `7.0` matching no qrels' `7`. They are one, as parquet's 7 and 7.0 are; `0042` stays itself."""
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "a.csv").write_text("query_id,query,document,doc_id\n7,what is x,doc a,a\n42,y,doc d,d\n")
    (tmp_path / "pairs" / "b.csv").write_text("query_id,query,document,doc_id\n7.0,what is x,doc b,b\n"
                                              ",what is x,doc c,c\n0042,y,doc e,e\n")
    summary = run_rerank(RerankConfig(model=str(tiny_model), input=str(tmp_path / "pairs"),
                                      output=str(tmp_path / "out")))
    assert (summary.rows_scored, summary.rows_rejected) == (4, 1)
    got = pd.read_parquet(tmp_path / "out" / "results")
    ranks = got.assign(key=got["query_id"].str.replace(".0", "", regex=False)).groupby("key")["rank"]
    assert sorted(ranks.apply(sorted).to_dict().items()) == [("0042", [1]), ("42", [1]), ("7", [1, 2])]
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n7\tb\t1\n42\td\t1\n")
    result = run_eval(EvalConfig(input=str(tmp_path / "out"), qrels=str(tmp_path / "qrels.tsv")))
    assert (result["queries"], result["pairs"], result["queries_not_in_qrels"]) == (2, 3, 1)


def test_a_null_query_id_partition_is_rejected_not_ranked_as_one_query(ray_local, tiny_model, tmp_path):
    """Spark and Hive write the rows of a null partition key in `query_id=__HIVE_DEFAULT_PARTITION__/`: its rows,
    pairs without a query id, were ranked as one query of that id. The key is null there, as Spark and pyarrow
    read it: those rows are rejected, as a null id in a column is."""
    for query_id, documents in (("7", ["a", "b"]), ("__HIVE_DEFAULT_PARTITION__", ["c", "d", "e"])):
        folder = tmp_path / "pairs" / f"query_id={query_id}"
        folder.mkdir(parents=True)
        pd.DataFrame({"query": "q", "document": documents}).to_parquet(folder / "part-0.parquet")
    summary = run_rerank(RerankConfig(model=str(tiny_model), input=str(tmp_path / "pairs"),
                                      output=str(tmp_path / "out")))
    got = pd.read_parquet(tmp_path / "out" / "results")
    rejected = pd.read_parquet(tmp_path / "out" / "rejects")
    assert (summary.rows_in, summary.rows_scored) == (5, 2)
    assert sorted(zip(got["query_id"], got["rank"])) == [("7", 1), ("7", 2)]
    assert sorted(rejected["document"]) == ["c", "d", "e"] and set(rejected["reason"]) == {"query_id is null"}


def test_a_rerank_says_its_ranking_in_its_progress_lines(ray_local, tiny_model, tmp_path, capsys, monkeypatch):
    """A rerank's progress lines ended with its scoring (with a text input, no total, they went on saying the pairs
    scored while it ranked): its ranking, after (the shuffle by query id, then the rank tasks), was said only by Ray
    Data's lines. From the last row scored (with a text input, from the first rank task), its lines say the rows
    ranked of those scored, and end once all are ranked."""
    rows = 6_000
    pairs = pa.table({"query_id": [f"q{i % 60}" for i in range(rows)],
                      "query": [f"query {i % 60}" for i in range(rows)],
                      "document": [f"document {i} of some words" for i in range(rows)]})
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    pairs.to_pandas().to_json(tmp_path / "pairs.jsonl", orient="records", lines=True)
    monkeypatch.setenv("CE_RAY_PROGRESS_SECONDS", "0.1")
    for name, total in (("pairs.parquet", " of 6,000"), ("pairs.jsonl", "")):
        summary = run_rerank(RerankConfig(model=str(tiny_model), input=str(tmp_path / name), top_k=5,
                                          output=str(tmp_path / name.replace(".", "-")), rows_per_block=500,
                                          rank_partitions=4))  # rank tasks that end apart
        assert (summary.rows_kept, summary.rows_cut) == (300, 5_700)
        lines = [line for line in capsys.readouterr().out.splitlines() if " pairs scored" in line]
        scoring = [line for line in lines if re.fullmatch(rf"ce-ray rerank: [\d,]+{total} pairs scored .*", line)]
        ranking = [re.fullmatch(rf"ce-ray rerank: all 6,000 pairs scored; ([\d,]+) ranked \([\d.]+%\) in {DURATION}",
                                line)
                   for line in lines[len(scoring):]]
        assert scoring and ranking and all(ranking), lines
        ranked = [int(said.group(1).replace(",", "")) for said in ranking]
        assert ranked == sorted(ranked) and ranked.count(rows) <= 1, lines  # none after all were ranked


def test_equal_scores_without_the_readers_tags_are_ordered_by_document_text():
    """A lazy Dataset's rows carry no input order: equal scores are ordered by document text (docs/python.md),
    ascending, the same in the block top k and in the ranking."""
    table = pa.table({"query_id": ["q"] * 4, "document": ["b", "c", "a", "d"],
                      "score": pa.array([0.5, 0.5, 0.5, 0.9], pa.float32())})
    out = rank_queries(table)
    assert out.column("document").to_pylist() == ["d", "a", "b", "c"]
    assert out.column("rank").to_pylist() == [1, 2, 3, 4]
    assert keep_block_top_k(table, 2).column("document").to_pylist() == ["d", "a"]


def test_a_row_rejected_before_keeps_its_reason_when_its_query_id_is_missing_too():
    """A row the reader rejected (`document is null`) that also has no query id keeps the first reason."""
    table = pa.table({"query_id": pa.array(["q", None], pa.string()), "document": ["a", None],
                      "score": pa.array([0.5, None], pa.float32()),
                      REJECT: pa.array([None, "document is null"], pa.string())})
    assert rank_queries(table).column(REJECT).to_pylist() == [None, "document is null"]
