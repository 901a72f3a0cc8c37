"""Every bad input and fault of docs/reliability.md: one test per row of its table."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ce_ray import ScoreConfig, readers, run_score
from ce_ray.config import ConfigError, load_config
from ce_ray.input_files import check_inputs
from ce_ray.messages import InputError
from ce_ray.model import ModelError

from conftest import ROOT, TOKENIZER_FILES

LONG = "word " * 25_000  # 125,000 characters


def job(tiny_model, source, out, **settings):
    return run_score(ScoreConfig(model=str(tiny_model), input=str(source), output=str(out), **settings))


def rejects(out) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(out, "rejects")).sort_values("id").reset_index(drop=True)


def results(out) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(out, "results")).sort_values("id").reset_index(drop=True)


# One JSONL job and one CSV job hold every kind of bad row; the tests below each look at one kind.
JSONL_LINES = [
    b'{"id": 0, "query": "good", "document": "row", "path": "a user column named path"}',
    b'{"id": 1, "query": null, "document": "null query"}',
    b'{"id": 2, "query": "", "document": "empty query is text"}',
    b'{"id": 3, "query": 42, "document": "a number as query"}',
    b'{"id": 4, "query": "bad byte \xff here", "document": "invalid UTF-8"}',
    b'{"id": 5, "query": "long", "document": "' + LONG.encode() + b'"}',
    b'{"id": 6, "query": "duplicate id", "document": "first"}',
    b'{"id": 6, "query": "duplicate id", "document": "second"}',
    b'{"id": 8, "query": "broken json", ',
    b'{"id": 9, "query": "good", "document": "last row"}',
]


@pytest.fixture(scope="module")
def jsonl_job(ray_local, tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-jsonl")
    (folder / "in").mkdir()
    (folder / "in" / "rows.jsonl").write_bytes(b"\n".join(JSONL_LINES) + b"\n")
    summary = job(tiny_model, folder / "in", folder / "out", rows_per_block=4)
    return summary, folder / "out"


@pytest.fixture(scope="module")
def csv_job(ray_local, tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-csv")
    (folder / "in").mkdir()
    lines = [b"id,query,document", b"0,good,row", b"1,,empty cell", b"2,bad \xfe byte,x", b'3,"quoted, ok",y',
             b"4,long," + LONG.encode(), b"5,a stray,comma,here", b"   ", b"6,cut short"]
    (folder / "in" / "rows.csv").write_bytes(b"\n".join(lines) + b"\n")
    summary = job(tiny_model, folder / "in", folder / "out")
    return summary, folder / "out"


def test_every_row_is_accounted_for(jsonl_job, csv_job):
    for summary, out, n in ((*jsonl_job, len(JSONL_LINES)), (*csv_job, 7)):
        assert summary.rows_in == n == summary.rows_scored + summary.rows_rejected
        assert len(results(out)) + len(pd.read_parquet(out / "rejects")) == n


def test_null_text_is_rejected(jsonl_job, csv_job):
    assert rejects(jsonl_job[1]).set_index("id").loc[1, "reason"] == "query is null"
    assert rejects(csv_job[1]).set_index("id").loc["1", "reason"] == "query is null"  # an empty CSV cell


def test_empty_string_is_scored(jsonl_job):
    row = results(jsonl_job[1]).set_index("id").loc[2]
    assert row["query"] == "" and np.isfinite(row["score"])


def test_wrong_type_is_rejected_with_its_value(jsonl_job):
    row = rejects(jsonl_job[1]).set_index("id").loc[3]
    assert row["reason"] == "query is int, not text" and row["query"] == "42"


def test_a_column_of_mixed_types_in_jsonl_is_kept_as_text():
    """Lines that give a passthrough column (an id) as a number and as text: all text, a text as it is, where a
    text came quoted (`"1"`), so that `1` and `"1"` were two queries."""
    lines = [b'{"query": "q", "document": "d", "query_id": %s}' % value for value in
             (b"1", b'"1"', b"1.5", b'{"a": 1}', b"null")]
    table = readers._parse_lines_slowly(lines, list(range(1, 6)), "ids.jsonl", ["query", "document"])
    assert table.column("query_id").to_pylist() == ["1", "1", "1.5", '{"a": 1}', None]


def test_jsonl_integers_past_int64_are_kept_exactly_as_text(ray_local, tmp_path, tiny_model):
    """An id past int64's range (a uint64 hash) is kept as the text it was written: Arrow's reader read it as a
    float, rounded (two ids one), and a chunk read line by line (a NaN in it) failed the job with OverflowError."""
    ids = [12345678901234567890, 12345678901234567891, 7]
    for name, extra in (("rounded", "1.5"), ("overflow", "NaN")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "p.jsonl").write_text("".join(
            f'{{"id": {i}, "query": "q", "document": "d {i}", "bm25": {extra}}}\n' for i in ids))
        summary = job(tiny_model, tmp_path / name, tmp_path / f"out-{name}")
        assert (summary.rows_scored, summary.rows_rejected) == (3, 0)
        assert sorted(results(tmp_path / f"out-{name}")["id"]) == sorted(map(str, ids))


def test_invalid_utf8_in_a_row_an_earlier_job_rejected_keeps_that_jobs_reason():
    from ce_ray.batching import REJECT

    query = pa.array([b"\xff", b"q"], pa.binary()).view(pa.string())  # as a parquet file can hold it
    table = pa.table({"query": query, REJECT: ["document is null", None]})
    checked = readers.reject_invalid_utf8(table, "f.parquet")
    assert checked.column(REJECT).to_pylist() == ["document is null", None]
    assert checked.column("query").to_pylist() == ["\ufffd", "q"]


def test_invalid_utf8_in_jsonl_rejects_the_line(jsonl_job):
    bad = rejects(jsonl_job[1])
    reason = bad[bad["reason"].str.contains("line 5")]["reason"].tolist()
    assert len(reason) == 1 and "not valid JSON" in reason[0] and "utf-8" in reason[0].lower()
    assert 4 not in set(results(jsonl_job[1])["id"])


@pytest.mark.parametrize("bad_line", [1, 2])
def test_invalid_utf8_in_jsonl_of_good_lines_else_rejects_the_line(ray_local, tmp_path, tiny_model, bad_line):
    """A JSON Lines file whose only fault is a byte that is no UTF-8 in a text (a Latin-1 `\xe9`): Arrow's reader
    took it into the text, and the job failed where it was tokenized (`UnicodeDecodeError` in a task), its other
    rows lost; on line 1 it failed the whole job in its file check (`line 1 is not valid JSON`). Its line is
    rejected, as in a chunk of other bad lines, and the others scored, on line 1 as on any other."""
    lines = [b'{"id": %d, "query": "q", "document": "%s"}\n' % (i, b"caf\xe9" if i + 1 == bad_line else b"d%d" % i)
             for i in range(3)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.jsonl").write_bytes(b"".join(lines))
    summary = job(tiny_model, tmp_path / "in", tmp_path / "out")
    assert (summary.rows_in, summary.rows_scored, summary.rows_rejected) == (3, 2, 1)
    assert results(tmp_path / "out")["id"].tolist() == [i for i in range(3) if i + 1 != bad_line]
    reason = rejects(tmp_path / "out")["reason"].tolist()
    assert reason == [f"{tmp_path / 'in' / 'rows.jsonl'} line {bad_line}: not valid JSON ('utf-8' codec can't decode "
                      "byte 0xe9 in position 40: invalid continuation byte)"]


def test_a_jsonl_file_of_one_line_not_utf8_fails_before_any_work(ray_local, tmp_path, tiny_model):
    """A file of that line alone, whose columns no line names, fails before any work in one line naming the file
    and the line."""
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "rows.jsonl").write_bytes(b'{"id": 0, "query": "q", "document": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"^\S+rows\.jsonl: line 1 is not UTF-8: byte 0xe9 at 40; write the file as "
                                         r"UTF-8$"):
        job(tiny_model, tmp_path / "alone", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("meta", ["{}", '{"n": {}}', "[{}]"])
def test_a_jsonl_column_of_objects_without_keys_fails_before_any_work(ray_local, tmp_path, tiny_model, meta):
    """`"metadata": {}` on every line (as BEIR's corpus files have it) reads as a struct without fields, which
    parquet cannot write: the job scored every row, then failed at its first write with Arrow's message, and a
    resume failed alike. Refused before any work, naming the file and the column; a list of nothing scores."""
    (tmp_path / "in").mkdir()
    lines = [f'{{"query": "q{i}", "document": "d", "meta": {meta}, "tags": []}}' for i in range(3)]
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"^\S+a\.jsonl: column 'meta' is .*struct<>.*: it holds JSON objects "
                                         r"without keys \(\{\}\) on every line checked, which parquet cannot "
                                         r"write; give them a key, or leave the column out of the file$"):
        job(tiny_model, tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(line.replace(f'"meta": {meta}, ', "") for line in lines))
    assert job(tiny_model, tmp_path / "in", tmp_path / "out").rows_scored == 3


@pytest.mark.parametrize("bad,bad_line", [(b'{"query": "a",', 1), (b'{"query": "a",', 2), (b"[1, 2]", 1), (b"7", 1)])
def test_a_jsonl_line_that_is_no_json_object_rejects_its_row_on_line_1_as_on_any_other(ray_local, tmp_path, tiny_model,
                                                                                     bad, bad_line):
    """A line cut short, or a JSON array or number, not an object: on line 2 its row was rejected and the others
    scored; on line 1 the whole file failed in its check (`line 1 is not valid JSON`, `line 1 is not a JSON
    object`, `a JSON array, where JSON Lines ... are read`). A file of such lines alone still fails before any work,
    naming the file and the line."""
    lines = [b'{"id": %d, "query": "q", "document": "d%d"}' % (i, i) for i in range(3)]
    lines[bad_line - 1] = bad
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    summary = job(tiny_model, tmp_path / "in", tmp_path / "out")
    assert (summary.rows_in, summary.rows_scored, summary.rows_rejected) == (3, 2, 1)
    assert results(tmp_path / "out")["id"].tolist() == [i for i in range(3) if i + 1 != bad_line]
    because = ("Expecting property name enclosed in double quotes: line 1 column 15 (char 14)" if bad.startswith(b"{")
               else "not a JSON object")
    assert rejects(tmp_path / "out")["reason"].tolist() == [
        f"{tmp_path / 'in' / 'rows.jsonl'} line {bad_line}: not valid JSON ({because})"]
    if bad_line == 1:
        (tmp_path / "alone").mkdir()
        (tmp_path / "alone" / "rows.jsonl").write_bytes(bad + b"\n" + bad + b"\n")
        said = {b"[": "a JSON array, where JSON Lines (one object a line) are read: write one object per line "
                      "(pandas: to_json(orient='records', lines=True))",
                b"7": "line 1 is not a JSON object",
                b"{": "line 1 is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 15 "
                      "(char 14))"}[bad[:1]]
        with pytest.raises(InputError) as failed:
            job(tiny_model, tmp_path / "alone", tmp_path / "out2")
        assert str(failed.value) == f"{tmp_path / 'alone' / 'rows.jsonl'}: {said}"
        assert not (tmp_path / "out2").exists()


def test_invalid_utf8_in_csv_rejects_the_row(csv_job):
    row = rejects(csv_job[1]).set_index("id").loc["2"]
    assert row["reason"].startswith("query is not valid UTF-8") and row["query"] == "bad \ufffd byte"
    assert results(csv_job[1]).set_index("id").loc["3", "query"] == "quoted, ok"


def test_a_csv_row_whose_fields_do_not_match_the_header_is_rejected(csv_job):
    """Too many fields (a stray comma) or too few (a line cut short): that row rejected with its text, the
    others scored; a line of spaces is a blank line."""
    bad = rejects(csv_job[1])
    malformed = bad[bad["id"].isna()]["reason"].tolist()
    assert sorted(r.split(": ", 1)[1] for r in malformed) == [
        "a row of 2 field(s) where the header has 3 ('6,cut short')",
        "a row of 4 field(s) where the header has 3 ('5,a stray,comma,here')"]
    assert malformed[0].startswith(str(csv_job[1].parent / "in" / "rows.csv"))
    assert set(results(csv_job[1])["id"]) == {"0", "3", "4"}  # a CSV's columns are text, as they come


def test_tsv_is_tab_separated_text_without_quotes(ray_local, tmp_path, tiny_model):
    """As WikiQA, MS MARCO and BEIR's qrels are written: split at every tab, a quote is text. All of WikiQA
    test (.tsv.gz) is read as pandas reads it with quoting off (with CSV's quoting, 49 of its rows would merge
    into others), then a file with a row cut at a tab inside a field, a CRLF line and invalid UTF-8, gzipped and
    named as Windows names it (`.TSV.GZ`: Arrow and Ray Data decompress `.gz` alone, and it was refused as no UTF-8),
    and a line break inside a document, which ends its row there as the docs say (a TSV field cannot hold one)."""
    import gzip

    from conftest import WIKIQA

    wikiqa = WIKIQA / "WikiQA-test.tsv.gz"
    summary = job(tiny_model, wikiqa, tmp_path / "wikiqa", query_column="Question", document_column="Sentence",
                  rows_per_block=2048)
    assert (summary.rows_in, summary.rows_scored, summary.rows_rejected) == (6165, 6165, 0)
    expected = pd.read_csv(wikiqa, sep="\t", quoting=3, keep_default_na=False, dtype=str)  # every column text
    scored = pd.read_parquet(tmp_path / "wikiqa" / "results").sort_values("SentenceID").reset_index(drop=True)
    pd.testing.assert_frame_equal(scored.drop(columns="score"),
                                  expected.sort_values("SentenceID").reset_index(drop=True))
    assert scored["Sentence"].str.contains('"').sum() > 0

    (tmp_path / "in").mkdir()
    lines = [b"id\tquery\tdocument", b'0\t"quoted\tsays "hi"', b"1\ta tab\tinside\ta field", b"2\tq\td\r",
             b"3\tbad \xfe byte\td", b"4\tq\tits first line\rits second"]
    (tmp_path / "in" / "rows.TSV.GZ").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    summary = job(tiny_model, tmp_path / "in", tmp_path / "out")
    assert (summary.rows_in, summary.rows_scored, summary.rows_rejected) == (6, 3, 3)
    assert results(tmp_path / "out")[["id", "query", "document"]].to_dict("list") == {
        "id": ["0", "2", "4"], "query": ['"quoted', "q", "q"], "document": ['says "hi"', "d", "its first line"]}
    second_line, malformed, utf8 = sorted(rejects(tmp_path / "out")["reason"])
    assert malformed.endswith("rows.TSV.GZ: a row of 4 field(s) where the header has 3 "
                              "('1\\ta tab\\tinside\\ta field')")
    assert second_line.endswith("rows.TSV.GZ: a row of 1 field(s) where the header has 3 ('its second')")
    assert utf8.startswith("query is not valid UTF-8 in")


def test_csv_and_tsv_columns_are_read_as_text_as_they_come(ray_local, tmp_path, tiny_model):
    """A CSV holds no types: every column comes back as the text it was. An id `0042` stays `0042` (a number
    would not match its qrels), an id `A7` after 150,000 numbers is read (a type guessed from the first
    megabyte failed the file there), `NA`, `null` and `nan` are words; only an empty field is null."""
    (tmp_path / "in").mkdir()
    rows = ["id,query,document", "0042,NA,null", "A1,nan,", *(f"{i},q,d" for i in range(150_000)), "A7,q,d"]
    (tmp_path / "in" / "ids.csv").write_text("\n".join(rows) + "\n")
    summary = job(tiny_model, tmp_path / "in", tmp_path / "out", rows_per_block=50_000)
    assert (summary.rows_in, summary.rows_scored, summary.rows_rejected) == (150_003, 150_002, 1)
    scored = results(tmp_path / "out")
    assert scored["id"].tolist()[:2] == ["0", "0042"] and scored["id"].tolist()[-1] == "A7"
    assert scored.set_index("id").loc["0042", ["query", "document"]].tolist() == ["NA", "null"]
    rejected = rejects(tmp_path / "out")
    assert rejected[["id", "query", "reason"]].values.tolist() == [["A1", "nan", "document is null"]]


def test_a_csv_or_tsv_file_without_a_header_line_is_read_with_column_names(ray_local, tmp_path, tiny_model):
    """As MS MARCO's top1000 files come (qid, pid, query, passage, no header): `column_names` names the
    columns and the first line is a row. Without it the first row is taken as the header and the job fails
    naming the columns it found; the setting is refused for formats whose files name their columns."""
    from ce_ray.input_files import check_inputs, list_files

    (tmp_path / "in").mkdir()
    lines = [b"1048585\t7187158\twhat is paula deen's brother\tPaula Deen and her brother Earl W. Bubba Hiers",
             b"1048585\t7187157\twhat is paula deen's brother\tHer brother is \"Bubba\"", b"2\t3\tcut short"]
    (tmp_path / "in" / "top1000.dev.tsv").write_bytes(b"\r\n".join(lines) + b"\r\n")
    names = "query_id,doc_id,query,document"
    summary = job(tiny_model, tmp_path / "in", tmp_path / "out", column_names=names)
    assert (summary.rows_in, summary.rows_scored, summary.rows_rejected) == (3, 2, 1)
    scored = pd.read_parquet(tmp_path / "out" / "results").sort_values("doc_id")
    assert scored[["query_id", "doc_id", "document"]].values.tolist() == [
        ["1048585", "7187157", 'Her brother is "Bubba"'],
        ["1048585", "7187158", "Paula Deen and her brother Earl W. Bubba Hiers"]]
    assert pd.read_parquet(tmp_path / "out" / "rejects")["reason"].str.endswith(
        "a row of 3 field(s) where the column names have 4 ('2\\t3\\tcut short')").all()
    files, input_format, fs, _, _ = list_files(str(tmp_path / "in"), "auto", names.split(","))
    check_inputs(fs, files, input_format, ["query"], names.split(","), present=["query_id"])  # as rerank checks

    with pytest.raises(InputError, match=r"missing column\(s\) 'query', 'document' \(columns: 1048585, 7187158, "
                                         r"what is .*; for a file without a header line, give its columns' names in "
                                         r"column_names \(--column-names\)$"):
        job(tiny_model, tmp_path / "in", tmp_path / "out-no-names", mode="overwrite")
    with pytest.raises(InputError, match=r"missing column\(s\) 'query_id' \(columns: 1048585,"):
        check_inputs(fs, files, input_format, [], None, present=["query_id"])
    # A file read in another format, or a headed file missing a column, is not told to name its columns.
    (tmp_path / "pairs.csv").write_text("query_id,query,document\n1,q,d\n")
    with pytest.raises(InputError, match=r"\(columns: query_id,query,document\); read as tsv, though its name says "
                                         r"csv: check input_format \(--input-format\)$"):
        check_inputs(fs, [str(tmp_path / "pairs.csv")], "tsv", ["query", "document"])
    with pytest.raises(InputError, match=r"missing column\(s\) 'qid' \(columns: query_id, query, document\)$"):
        check_inputs(fs, [str(tmp_path / "pairs.csv")], "csv", ["query", "document"], present=["qid"])
    # A file that cannot be read as the format given, which its name is not (a config's `input_format: csv` over
    # parquet files), was said to be not UTF-8, or not parquet, alone.
    (tmp_path / "named.parquet").write_bytes(b"PAR1\x15\x92\x00query\n")  # a parquet file's first bytes, as csv
    with pytest.raises(InputError, match=r"named\.parquet: its header line is not UTF-8: .* \(read as csv, though its "
                                         r"name says parquet: check input_format \(--input-format\)\)$"):
        check_inputs(fs, [str(tmp_path / "named.parquet")], "csv", ["query", "document"])
    with pytest.raises(InputError, match=r"^cannot read \S+pairs\.csv: .* \(read as parquet, though its name says csv: "
                                         r"check input_format \(--input-format\)\)$"):
        check_inputs(fs, [str(tmp_path / "pairs.csv")], "parquet", ["query", "document"])
    # A header of names alone (WikiQA's) names its columns otherwise, more likely than it is a row: it was told only
    # to give column_names.
    (tmp_path / "wikiqa.tsv").write_text("QuestionID\tQuestion\tSentence\nQ1\twhat is x\tx is y\n")
    with pytest.raises(InputError, match=r"\(columns: QuestionID, Question, Sentence\); name the columns with "
                                         r"query_column \(--query-column\) and document_column \(--document-column\); "
                                         r"or, for a file without a header line, give its columns' names in "
                                         r"column_names \(--column-names\)$"):
        job(tiny_model, tmp_path / "wikiqa.tsv", tmp_path / "out-wikiqa")
    pq.write_table(pa.table({"query": ["q"], "document": ["d"]}), tmp_path / "p.parquet")
    # each message names column_names by its flag too (they named the YAML key alone)
    with pytest.raises(InputError, match=r"^column_names \(--column-names\) names the columns of CSV or TSV files "
                                         r"without a header line; \S+p\.parquet is parquet, whose files name their "
                                         r"columns$"):
        job(tiny_model, tmp_path / "p.parquet", tmp_path / "out-parquet", column_names="query,document")
    with pytest.raises(InputError, match=r"^column_names \(--column-names\) must be distinct names separated by "
                                         r"commas, got 'query,query,document,x'$"):
        job(tiny_model, tmp_path / "in", tmp_path / "out-twice", column_names="query,query,document,x")
    with pytest.raises(InputError, match=r"top1000.dev.tsv: its first line has 4 field\(s\), column_names "
                                         r"\(--column-names\) names 3 \(query_id, doc_id, query\)$"):
        job(tiny_model, tmp_path / "in", tmp_path / "out-three", column_names="query_id,doc_id,query")
    (tmp_path / "with-header").mkdir()
    (tmp_path / "with-header" / "top.tsv").write_bytes(b"query_id\tdoc_id\tquery\tdocument\r\n" + lines[0])
    with pytest.raises(InputError, match=r"top\.tsv: its first line is a header naming the columns column_names "
                                         r"\(--column-names\) names: leave it out$"):
        job(tiny_model, tmp_path / "with-header", tmp_path / "out-header", column_names=names)


def test_a_missing_column_of_a_wide_file_says_that_the_columns_named_are_some_of_them(tmp_path):
    """A file of 20 columns, whose query is `question`, the 15th: the error names the first 12 and says there are
    20, where it named 12 as if they were all the file has, and the one to give was not among them."""
    import pyarrow.fs as pafs

    from ce_ray.input_files import check_inputs
    from ce_ray.score import check_columns

    names = [f"c{i}" for i in range(14)] + ["question", "document", *[f"x{i}" for i in range(4)]]
    pq.write_table(pa.table({name: ["t"] for name in names}), tmp_path / "wide.parquet")
    shown = r"\(columns: c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, \.\.\. \(20 in all\)\)"
    with pytest.raises(InputError, match=r"wide\.parquet: missing column\(s\) 'query' " + shown):
        check_inputs(pafs.LocalFileSystem(), [str(tmp_path / "wide.parquet")], "parquet", ["query", "document"])
    with pytest.raises(InputError, match=shown + ": name the column with query_column"):
        check_columns(names, {"query": "query_column"})
    pq.write_table(pa.table({"c0": ["t"], "question": ["q"]}), tmp_path / "narrow.parquet")
    with pytest.raises(InputError, match=r"\(columns: c0, question\)$"):  # all of them: no more to say
        check_inputs(pafs.LocalFileSystem(), [str(tmp_path / "narrow.parquet")], "parquet", ["query"])


def test_a_delimited_files_first_line_that_is_no_header_of_its_format_is_refused_saying_why(tmp_path):
    """A CSV whose first line holds spaces alone passed the check (which skipped it) and the reader took it for
    the header: every row rejected, then the job failed mid-way naming query_column. A header split at `;` (a
    European Excel export) was told to name its columns, as if it had no header; a TSV's header read as CSV was
    said to be `read as csv, though its name says csv`."""
    import pyarrow.fs as pafs

    from ce_ray.input_files import check_inputs

    def refusal(name: str, text: str, input_format: str) -> str:
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError) as refused:
            check_inputs(pafs.LocalFileSystem(), [str(tmp_path / name)], input_format, ["query", "document"])
        return str(refused.value).removeprefix(f"{tmp_path}/")

    assert refusal("spaces.csv", "   \nquery,document\nq,d\n", "csv") == (
        "spaces.csv: its first line holds spaces or tabs alone, which is read as its header: remove that line")
    assert refusal("semicolons.csv", "query;document\nq;d\n", "csv") == (
        "semicolons.csv: missing column(s) 'query', 'document' (columns: query;document); its header is one field, "
        "'query;document': CSV files are read split at commas and TSV files at tabs (write it with either)")
    assert refusal("tabs.csv", "query\tdocument\nq\td\n", "csv").endswith(
        "; read as csv, though its first line reads as tsv: check input_format (--input-format)")
    (tmp_path / "empty-first.csv").write_text("\nquery,document\nq,d\n")  # an empty line Arrow's reader skips too
    check_inputs(pafs.LocalFileSystem(), [str(tmp_path / "empty-first.csv")], "csv", ["query", "document"])


def test_a_missing_column_the_file_holds_in_another_case_or_unicode_form_is_named_as_the_file_has_it(tmp_path):
    """A column named `requête` composed (NFC, as typed) where the file has it decomposed (NFD) was refused as
    `missing column(s) 'requête' (columns: ..., requête, ...)`: both print alike. eval said the same."""
    import unicodedata

    from ce_ray.config import EvalConfig
    from ce_ray.evaluate import run_eval

    typed, written = "requête", unicodedata.normalize("NFD", "requête")
    pq.write_table(pa.table({written: ["q"], " Document": ["d"], "label": [1]}), tmp_path / "p.parquet")
    with pytest.raises(InputError) as refused:
        check_inputs(pafs.LocalFileSystem(), [str(tmp_path / "p.parquet")], "parquet", [typed, "document"],
                     settings={typed: "query_column"})
    assert str(refused.value).endswith(
        "(--query-column); the file has 'reque\\u0302te' for 'requ\\xeate', ' Document' for 'document', which differ "
        "in case, blanks or Unicode form: name them as the file does")
    with pytest.raises(InputError, match=r"the file has 'reque\\u0302te' for 'requ\\xeate', which .+: name it as"):
        run_eval(EvalConfig(input=str(tmp_path / "p.parquet"), query_id_column=typed, output=str(tmp_path / "e.json")))
    pq.write_table(pa.table({"query_id": ["q"], "doc": ["d"]}), tmp_path / "p.parquet")  # no look-alike: as before
    with pytest.raises(InputError, match=r"\(columns: query_id, doc\)$"):
        check_inputs(pafs.LocalFileSystem(), [str(tmp_path / "p.parquet")], "parquet", ["document"])


def test_broken_json_line_is_rejected_and_the_rest_scored(jsonl_job):
    bad = rejects(jsonl_job[1])
    assert bad["reason"].str.contains("line 9: not valid JSON").sum() == 1
    assert 9 in set(results(jsonl_job[1])["id"])


def test_a_jsonl_file_whose_first_line_lacks_a_key_that_later_lines_have_is_read(ray_local, tmp_path, tiny_model):
    """A JSON object may leave a key out (a null): a first line without a query, where later lines have one, was
    refused as a file `missing column(s) 'query'`, naming --query-column, though the file has the column."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p.jsonl").write_text('{"id": 1, "document": "d1"}\n{"id": 2, "query": "q", "document": "d2", '
                                             '"title": "t"}\n{"id": 3, "query": "q", "document": "d3"}\n')
    summary = job(tiny_model, tmp_path / "in", tmp_path / "out")
    assert (summary.rows_scored, summary.rows_rejected) == (2, 1)
    assert rejects(tmp_path / "out")[["id", "reason"]].values.tolist() == [[1, "query is null"]]
    assert results(tmp_path / "out")["title"].fillna("none").tolist() == ["t", "none"]
    # So may every line of a file of a few (Spark's writer leaves out null fields): the whole job was refused.
    (tmp_path / "in" / "q.jsonl").write_text('{"id": 4, "query": "q"}\n')
    summary = job(tiny_model, tmp_path / "in", tmp_path / "out", mode="overwrite")
    assert (summary.rows_scored, summary.rows_rejected) == (2, 2)
    assert sorted(rejects(tmp_path / "out")[["id", "reason"]].values.tolist()) == [[1, "query is null"],
                                                                                    [4, "document is null"]]
    # A column of any type the job needs (rerank's query id, a label), which no reader fills, is still each file's.
    (tmp_path / "ids").mkdir()
    (tmp_path / "ids" / "a.jsonl").write_text('{"id": 1, "query": "q", "document": "d"}\n')
    (tmp_path / "ids" / "b.jsonl").write_text('{"query": "q", "document": "d"}\n')
    with pytest.raises(InputError, match=r"b\.jsonl: missing column\(s\) 'id'"):
        check_inputs(pafs.LocalFileSystem(), [str(tmp_path / "ids" / name) for name in ("a.jsonl", "b.jsonl")],
                     "jsonl", ["query", "document"], present=["id"])


def test_megabytes_of_blank_lines_opening_a_file_hide_no_rows(ray_local, tiny_model, tmp_path, monkeypatch):
    """The input check reads a text file's head: one of empty lines alone said the file had no rows, and the job
    left its rows out, saying nothing; a CSV's header followed by empty lines past the head did too."""
    from ce_ray import input_files
    from ce_ray.input_files import HEAD_BYTES

    monkeypatch.setattr(input_files, "FIRST_LINE_BYTES", 4 * HEAD_BYTES)  # what a first line may take: 64 MiB
    blank = b"\n" * (2 * HEAD_BYTES) + b"\r\n" * 10
    rows = [(b'{"id": %d, "query": "q", "document": "d"}' % i) for i in range(3)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(blank + b"\n".join(rows) + b"\n")
    (tmp_path / "in" / "b.jsonl").write_bytes(b'{"id": 3, "query": "q", "document": "d"}\n')
    (tmp_path / "a.csv").write_bytes(b"id,query,document\n" + blank + b"0,q,d\n")
    (tmp_path / "b.csv").write_bytes(blank + b"0,q,d\n")
    (tmp_path / "c.jsonl").write_bytes(b" " + b"\n" * (2 * HEAD_BYTES) + b" \t\n" * (5 * HEAD_BYTES // 3) + rows[0])
    fs = pafs.LocalFileSystem()
    for path, kind, names in ((tmp_path / "in" / "a.jsonl", "jsonl", None), (tmp_path / "a.csv", "csv", None),
                              (tmp_path / "b.csv", "csv", ["id", "query", "document"])):
        [check], _ = check_inputs(fs, [str(path)], kind, ["query", "document"], column_names=names)
        assert check.rows is None and check.columns == ["id", "query", "document"]
    # Lines of spaces and tabs, which the JSON Lines reader skips, too (Arrow's CSV reader reads one as a row).
    [check], _ = check_inputs(fs, [str(tmp_path / "c.jsonl")], "jsonl", ["query", "document"])
    assert check.rows is None and check.columns == ["id", "query", "document"]
    summary = job(tiny_model, tmp_path / "in", tmp_path / "out")
    assert summary.rows_scored == 4 and sorted(results(tmp_path / "out")["id"]) == [0, 1, 2, 3]


def test_blank_lines_in_jsonl_are_skipped_and_a_line_of_two_objects_is_rejected(tmp_path):
    """Blank and whitespace lines (CRLF too) are no rows; two objects on one line are not a JSON line (Arrow's
    reader would take both), so that line is rejected and the others keep their rows."""
    from ce_ray.batching import REJECT
    from ce_ray.readers import json_lines_chunks

    def read(data: bytes) -> list:
        """(id, reject reason) of each row the reader gives."""
        path = tmp_path / "rows.jsonl"
        path.write_bytes(data)
        with open(path, "rb") as f:
            tables = list(json_lines_chunks(f, str(path), text_columns=["query"]))
        return [(row.get("id"), row.get(REJECT)) for table in tables for row in table.to_pylist()]

    rows = [b'{"id": %d, "query": "q"}' % i for i in range(5)]
    assert read(b"\r\n".join(rows[:2] + [b"", b"  "] + rows[2:])) == [(i, None) for i in range(5)]
    two = read(b"\n".join(rows[:2] + [b"", b'{"id": 7}{"id": 8}'] + rows[2:]))
    assert [i for i, _ in two] == [0, 1, None, 2, 3, 4] and "not valid JSON" in two[2][1]
    assert two[2][1].startswith(f"{tmp_path / 'rows.jsonl'} line 4: ")  # its line in the file, blank ones counted
    assert read(b"\n \r\n") == []
    # A lone surrogate is valid JSON and no UTF-8 text: its line is rejected (it failed the job).
    lone = read(b"\n".join(rows[:2] + [b'{"id": 9, "query": "q \\ud800"}', rows[2]]))
    assert [i for i, _ in lone] == [0, 1, None, 2] and "line 3: holds a lone surrogate" in lone[2][1]

    # Strings that look like dates are the strings they are (Arrow's reader made them timestamps, the query
    # then "datetime, not text" and a timestamp's zone dropped).
    (tmp_path / "dated.jsonl").write_text('{"query": "2021-03-04", "meta": {"created": "2026-01-01T10:00:00Z"}}\n' * 3)
    with open(tmp_path / "dated.jsonl", "rb") as f:
        dated = pa.concat_tables(json_lines_chunks(f, str(tmp_path / "dated.jsonl"), ["query"]))
    assert dated.schema.types == [pa.string(), pa.struct([("created", pa.string())])]
    assert dated.to_pylist()[0] == {"query": "2021-03-04", "meta": {"created": "2026-01-01T10:00:00Z"}}


def test_a_null_struct_stays_null_where_the_files_structs_differ(ray_local, tmp_path, tiny_model):
    """Files whose struct columns differ (`struct<year: int32>` and `int64`; JSON objects of other keys) were put
    together by Ray Data, whose concat of two struct types dropped the structs' nulls: a null row came back as
    `{'year': None}`, or from a JSON Lines file read line by line (a line cut short) as `{'year': 0}`, the 0 Arrow
    stores under a null. Each chunk is read in the input's agreed type now."""
    (tmp_path / "pin").mkdir()
    meta = [{"year": 2020}, None]
    pq.write_table(pa.table({"id": [0, 1], "query": ["q", "q"], "document": ["d", "d"],
                             "meta": pa.array(meta, pa.struct([("year", pa.int32())]))}),
                   tmp_path / "pin" / "a.parquet")
    pq.write_table(pa.table({"id": [2], "query": ["q"], "document": ["d"],
                             "meta": pa.array([{"year": 2**40}], pa.struct([("year", pa.int64())]))}),
                   tmp_path / "pin" / "b.parquet")
    job(tiny_model, tmp_path / "pin", tmp_path / "pout")
    assert results(tmp_path / "pout")["meta"].tolist() == [{"year": 2020}, None, {"year": 2**40}]
    (tmp_path / "jin").mkdir()
    (tmp_path / "jin" / "a.jsonl").write_text('{"id": 0, "query": "q", "document": "d", "meta": {"year": 2020}}\n'
                                              '{"id": 1, "query": "q", "document": "d", "meta": null}\n'
                                              '{"id": 2, "query": "q", "document": "d", "meta": {"year": 2021}\n')
    (tmp_path / "jin" / "b.jsonl").write_text('{"id": 3, "query": "q", "document": "d", "meta": {"source": "web"}}\n')
    job(tiny_model, tmp_path / "jin", tmp_path / "jout")
    assert results(tmp_path / "jout")["meta"].tolist() == [{"year": 2020, "source": None}, None,
                                                           {"year": None, "source": "web"}]
    assert pd.read_parquet(tmp_path / "jout" / "rejects")["meta"].tolist() == [None]  # the line cut short


def test_json_integers_past_2_53_beside_floats_are_kept_as_written():
    """A JSON Lines column of `0.5` and ids past 2^53 was read by Arrow as doubles, the ids rounded, two of them one
    (`1.2345678901234568e+18`), exit 0. Kept as the text they were written, as integers past int64 are."""
    from ce_ray.readers import read_json_lines

    ids = [b"0.5", b"9007199254740993", b"1234567890123456789", b"1234567890123456788"]
    lines = [b'{"query": "q", "document": "d", "x": %s}' % x for x in ids]
    table = read_json_lines(lines, [1, 2, 3, 4], "f.jsonl", ["query", "document"])
    assert table.column("x").to_pylist() == [x.decode() for x in ids]
    exact = read_json_lines([b'{"query": "q", "x": 1.5, "id": 9007199254740993}'], [1], "f.jsonl", ["query"])
    assert exact.column("id").type == pa.int64() and exact.column("id").to_pylist() == [2**53 + 1]
    # Such an id in a file of its own, beside another file's floats (the input's type: double), fails as the type
    # that cannot hold it, as in parquet: it was said to have changed past the check's first MiB, which it had not.
    from ce_ray.readers import as_checked_types

    with pytest.raises(InputError, match=r"^b\.jsonl lines 1-1: column 'x' is int64, of values that the type the "
                                         r"input's files make of it, double, cannot hold \(Integer value "
                                         r"9007199254740993 not in range"):
        as_checked_types(pa.table({"x": [2**53 + 1]}), pa.schema([("x", pa.float64())]), [1], "b.jsonl", [])


def test_long_rows_are_read_and_column_names_the_job_cannot_keep_are_refused(tmp_path):
    """A CSV row of two 1.2 MB fields failed its file (Arrow's blocks of 1 MiB), and a JSON Lines file whose first
    line passed 1 MiB was refused as not JSON. A header naming a column twice, or a column named as ce-ray's own
    (`_ce_row`), is refused before any work: they failed mid-job."""
    import io as memory
    import pyarrow.fs as pafs

    from ce_ray.input_files import check_inputs
    from ce_ray.readers import delimited_chunks

    big = "x" * 1_200_000
    rows = f"query,document\n{big},{big}\nq,d\n".encode()
    assert sum(t.num_rows for t in delimited_chunks(memory.BytesIO(rows), "p.csv", ["query", "document"])) == 2
    fs = pafs.LocalFileSystem()
    (tmp_path / "long.jsonl").write_text(json.dumps({"query": "q", "document": big}) + "\n")
    [check], _ = check_inputs(fs, [str(tmp_path / "long.jsonl")], "jsonl", ["query", "document"])
    assert check.columns == ["query", "document"]
    for header, refused in (("query,document,note,note", "its header names 'note' more than once"),
                            ("query,document,_ce_row", "has a column '_ce_row', a name ce-ray gives")):
        (tmp_path / "p.csv").write_text(f"{header}\n{','.join('v' * len(header.split(',')))}\n")
        with pytest.raises(InputError, match=refused):
            check_inputs(fs, [str(tmp_path / "p.csv")], "csv", ["query", "document"])
    # A reject_reason column is an earlier job's (ce_ray.score's Dataset written out): read, not refused.
    (tmp_path / "p.csv").write_text("query,document,reject_reason\nq,d,\n")
    [check], _ = check_inputs(fs, [str(tmp_path / "p.csv")], "csv", ["query", "document"])
    assert check.columns[-1] == "reject_reason"
    # One of numbers is not: the job failed mid-way in Arrow's cast of its values, offering --mode resume.
    pq.write_table(pa.table({"query": ["q"], "document": ["d"], "reject_reason": [0]}), tmp_path / "p.parquet")
    with pytest.raises(InputError, match=r"p\.parquet: has a column 'reject_reason' of int64, .*: rename it"):
        check_inputs(fs, [str(tmp_path / "p.parquet")], "parquet", ["query", "document"])


def test_a_csvs_quoted_line_breaks_are_read_whole_across_the_readers_blocks(monkeypatch):
    """Arrow cut a CSV's blocks (64 MiB) at a line break inside a quoted field: a file past one block lost rows and
    cut others, with no error (a job of 1,081 rows of multi-line documents scored a document cut short and rejected
    its rest as a row of 51 fields). Here blocks of 4 KiB over 300 such rows: each read as written."""
    import csv
    import io as memory

    from ce_ray import readers

    monkeypatch.setattr(readers, "CSV_BLOCK_BYTES", 4096)
    rows = [(f"query {i}", f'line one of {i}\nline two, with a comma\r\nand "quotes"\n' * (1 + i % 7))
            for i in range(300)]
    written = memory.StringIO(newline="")
    csv.writer(written).writerows([("query", "document"), *rows])
    table = pa.concat_tables(readers.delimited_chunks(memory.BytesIO(written.getvalue().encode()), "p.csv",
                                                      ["query", "document"]))
    assert table.column_names == ["query", "document"]  # no row rejected
    assert list(zip(table["query"].to_pylist(), table["document"].to_pylist())) == rows


def test_first_lines_as_their_writers_write_them_are_checked_as_the_reader_reads_them(tmp_path):
    """The check of a text file's first record, before any work, and the reader disagreed. A headerless CSV whose first
    document passed 131,072 characters (Python's csv limit) failed the job with a traceback and a resume hint, and a
    CSV whose lines end in "\r" alone (Excel for Mac) failed so too, though Arrow reads both. A JSON array written an
    object a line (`[`, the objects, `]`) was scored in part where the check read it whole (its last object parsed;
    the other lines rejected). A parquet file naming a column twice failed with pyarrow's KeyError."""
    import pyarrow.fs as pafs

    from ce_ray.input_files import check_inputs
    from ce_ray.readers import delimited_chunks

    fs = pafs.LocalFileSystem()
    long_document = "word " * 40_000
    (tmp_path / "long.csv").write_text(f"1,a query,{long_document}\n2,another,short\n")
    [check], _ = check_inputs(fs, [str(tmp_path / "long.csv")], "csv", ["query", "document"],
                              column_names=["id", "query", "document"])
    assert check.columns == ["id", "query", "document"]
    mac = {"mac.csv": ("query,document\rq1,d1\rq2,\"d2, quoted\"\r", [("q1", "d1"), ("q2", "d2, quoted")]),
           "mac.tsv": ("query\tdocument\rq1\td1\r", [("q1", "d1")])}
    for name, (text, rows) in mac.items():
        (tmp_path / name).write_text(text, newline="")
        [check], _ = check_inputs(fs, [str(tmp_path / name)], name[-3:], ["query", "document"])
        assert check.columns == ["query", "document"] and check.rows is None  # rows to read, not an empty file
        with open(tmp_path / name, "rb") as f:
            read = pa.concat_tables(delimited_chunks(f, name, check.columns, tab_separated=name.endswith("tsv")))
        assert list(zip(read["query"].to_pylist(), read["document"].to_pylist())) == rows
    (tmp_path / "array.jsonl").write_text('[\n{"query": "q1", "document": "d1"},\n'
                                          '{"query": "q2", "document": "d2"}\n]\n')
    with pytest.raises(InputError, match=r"array\.jsonl: a JSON array, where JSON Lines \(one object a line\)"):
        check_inputs(fs, [str(tmp_path / "array.jsonl")], "jsonl", ["query", "document"])
    twice = pa.Table.from_arrays([pa.array(["q"]), pa.array(["d"]), pa.array(["q"])], ["query", "document", "query"])
    pq.write_table(twice, tmp_path / "twice.parquet")
    with pytest.raises(InputError, match=r"twice\.parquet: its schema names 'query' more than once"):
        check_inputs(fs, [str(tmp_path / "twice.parquet")], "parquet", ["query", "document"])


def test_ctrl_c_ends_a_job_with_a_line_that_says_how_to_finish_it(tmp_path, tiny_model):
    """Ctrl-C printed the traceback of wherever the driver was waiting (~30 lines of Ray's internals). A second
    one, pressed as Ray shut down after that line, printed the traceback of Ray's shutdown, and the status was 1."""
    from conftest import interrupted_as_in_a_terminal

    (tmp_path / "in").mkdir()
    pd.DataFrame({"query": ["a query"] * 600_000, "document": [f"document {i}" for i in range(600_000)]}).to_parquet(
        tmp_path / "in" / "pairs.parquet")  # a minute's work here: still running when the signal comes
    command = ["score", "--model", str(tiny_model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
               "--rows-per-block", "512"]
    # after the job's line saying how it scores: Ray has started, the pairs are read
    returncode, errors = interrupted_as_in_a_terminal(command, after="forward passes in ")
    assert returncode == 130, errors[-3000:]
    # Ray's exit may log after it
    assert ("\nce-ray score: interrupted; --mode resume finishes it (the input files completed are kept, and the rows "
            "written of parquet files)\n") in errors
    assert "Traceback" not in errors and "KeyboardInterrupt" not in errors
    command[-3] = str(tmp_path / "again")  # the output
    returncode, errors = interrupted_as_in_a_terminal(command, after="forward passes in ", again="interrupted")
    assert returncode == 130 and "Traceback" not in errors and "KeyboardInterrupt" not in errors, errors[-3000:]


def test_ctrl_c_as_the_command_exits_leaves_its_status(tmp_path):
    """The `ce-ray` command's process lives a second or two past its last line (Ray's shutdown, Python's exit):
    a Ctrl-C pressed then, just after `done`, ended it by the signal, status 130, its work done and said. The
    command (its console script, `python -m ce_ray.cli`) ignores Ctrl-C once it returned; `main`, as a caller
    in process calls it, gives the caller its handler back."""
    import signal

    from ce_ray import cli

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert cli.main(["eval", "--input", str(tmp_path / "none")]) == 2
        assert {signum: signal.getsignal(signum) for signum in before} == before
        assert cli.command(["eval", "--input", str(tmp_path / "none")]) == 2
        assert {signum: signal.getsignal(signum) for signum in before} == dict.fromkeys(before, signal.SIG_IGN)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    scripts = (ROOT / "pyproject.toml").read_text()
    assert 'ce-ray = "ce_ray.cli:command"' in scripts
    for job in sorted((ROOT / "jobs").glob("*.py")):  # the Ray Jobs' entrypoints, the same process
        assert f'sys.exit(command(["{job.stem}", *sys.argv[1:]]))' in job.read_text(), job.name


def test_sigterm_ends_a_job_with_a_line_and_the_exit_status_of_the_signal(tmp_path, tiny_model):
    """SIGTERM (a scheduler's stop, Kubernetes', `ray job stop`) ended the job with no word and exit 15, which
    Ray's handler gives it (`sys.exit(15)`), where shells and schedulers read 143, 128 + the signal's number;
    where Ray took more than 3 s to shut down, the driver died of SIGABRT (Ray's failure signal handler's alarm)."""
    from conftest import interrupted_as_in_a_terminal

    (tmp_path / "in").mkdir()
    pd.DataFrame({"query": ["a query"] * 600_000, "document": [f"document {i}" for i in range(600_000)]}).to_parquet(
        tmp_path / "in" / "pairs.parquet")
    command = ["score", "--model", str(tiny_model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
               "--rows-per-block", "512"]
    returncode, errors = interrupted_as_in_a_terminal(command, after="forward passes in ", sent="SIGTERM")
    assert returncode == 143, errors[-3000:]
    assert ("\nce-ray score: stopped (SIGTERM); --mode resume finishes it (the input files completed are kept, and "
            "the rows written of parquet files)\n") in errors
    assert "Traceback" not in errors


def test_sigterm_as_ray_starts_ends_the_job_with_a_line(tmp_path, tiny_model):
    """SIGTERM during ray.init (Ray's handler there, `sys.exit(15)`, before ce-ray notes the signal) ended the job
    with no word and exit 15. Now it is `stopped (SIGTERM)`, exit 143. The signal is sent as soon as the process
    catches it (/proc's SigCgt): Ray's handler, installed as ray.init starts."""
    import signal
    import time

    (tmp_path / "in").mkdir()
    pd.DataFrame({"query": ["q"] * 50, "document": [f"d {i}" for i in range(50)]}).to_parquet(
        tmp_path / "in" / "p.parquet")
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_TMPDIR": tempfile.mkdtemp(prefix="cer-", dir="/tmp")}

    def started(output: str):
        argv = ["score", "--model", str(tiny_model), "--input", str(tmp_path / "in"), "--output",
                str(tmp_path / output)]
        return subprocess.Popen([sys.executable, "-m", "ce_ray.cli", *argv], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def catches_sigterm(pid: int) -> bool:
        with open(f"/proc/{pid}/status") as f:
            caught = next(line for line in f if line.startswith("SigCgt:"))
        return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)

    job = started("early")
    try:
        deadline = time.monotonic() + 120
        while not catches_sigterm(job.pid) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.005)
        job.send_signal(signal.SIGTERM)
        _, errors = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 143, errors[-3000:]
    assert "\nce-ray score: stopped (SIGTERM);" in errors and "Traceback" not in errors


def test_a_sigterm_whose_exit_python_lost_in_a_hook_during_ray_init_still_stops_the_job(monkeypatch):
    """A SIGTERM that came as ray.init forked was handled in the fork's hook (filelock's), where Python printed
    `Exception ignored in ...`, Ray's `SystemExit: 15` and a traceback, then the hook's next one's KeyError, and the
    job went on (the test above, once in a suite's run). A `__del__`'s exception is lost the same way."""
    import signal

    from ce_ray.runtime import _sigterm_kept

    class Raises:
        def __init__(self, error):
            self.error = error

        def __del__(self):
            raise self.error

    said = []  # what Python's hook (pytest's here) was given
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: said.append(repr(unraisable.exc_value)))
    before = sys.unraisablehook
    with pytest.raises(SystemExit) as stopped:
        with _sigterm_kept():
            Raises(SystemExit(signal.SIGTERM))
            Raises(KeyError(140393221720960))  # the next hook's, of the state the first left
    assert stopped.value.code == signal.SIGTERM and sys.unraisablehook is before and said == []
    with _sigterm_kept():  # another lost error is said as Python says it, and the job goes on
        Raises(KeyError("x"))
    assert said == ["KeyError('x')"] and sys.unraisablehook is before


def test_a_job_that_fails_mid_way_ends_with_a_line_of_why_and_how_to_finish_it(ray_local, tmp_path, tiny_model,
                                                                             capsys):
    """A file whose page cannot be decoded, read mid-way: Ray Data's error of the read task (pyarrow's
    ArrowInvalid, a ValueError, which Ray's error is too) ended the job as a usage error, `ce-ray score: error:`
    and a page of Ray's frames, exit 2, naming no file. Ray's report stays for debugging; the last line says
    what failed, in which file, and how to finish the job."""
    from ce_ray.cli import main
    from conftest import undecodable_parquet

    (tmp_path / "in").mkdir()
    frames = [pd.DataFrame({"id": range(i * 50, i * 50 + 50), "query": [f"query {i}"] * 50,
                            "document": [f"document {j % 7}" for j in range(50)]}) for i in range(3)]
    for i, frame in enumerate(frames):
        frame.to_parquet(tmp_path / "in" / f"p{i}.parquet")
    undecodable_parquet(tmp_path / "in" / "p1.parquet", frames[1])
    command = ["score", "--model", str(tiny_model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert main(command) == 1
    errors = capsys.readouterr().err
    assert errors.splitlines()[-1] == (
        f"ce-ray score: failed: ArrowInvalid: Index not in dictionary bounds (reading {tmp_path}/in/p1.parquet); "
        "--mode resume finishes it (the input files completed are kept, and the rows written of parquet files)")
    assert "Traceback" in errors and "ce-ray score: error" not in errors
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_the_rejects_of_a_job_whose_input_had_a_reason_keep_their_reasons_when_scored_again(ray_local, tmp_path,
                                                                                            tiny_model):
    """The rejects of a job whose input has a `reason` column hold it and the job's `reject_reason`: scored again
    (a parquet folder, whose footer names both), a row keeps its earlier reason and a new one gets its own, where
    the rejects' parts held no `reject_reason` at all."""
    (tmp_path / "in").mkdir()
    pd.DataFrame({"id": ["1", "2", "3"], "query": ["q", "q", None], "document": ["a", "b", "c"],
                  "reason": ["asked by a", "asked by b", "asked by c"],
                  "reject_reason": [None, "an earlier job's reason", None]}).to_parquet(tmp_path / "in" / "p.parquet")
    summary = job(tiny_model, tmp_path / "in", tmp_path / "out")
    assert (summary.rows_scored, summary.rows_rejected) == (1, 2)
    assert rejects(tmp_path / "out")[["id", "reason", "reject_reason"]].values.tolist() == [
        ["2", "asked by b", "an earlier job's reason"], ["3", "asked by c", "query is null"]]


def test_a_categorical_text_column_is_text(ray_local, tmp_path, tiny_model):
    """pandas writes a categorical column as a dictionary of strings: scored as the same strings would be,
    also where one file has it categorical and another plain (and ids int32 in one, int64 in the other),
    whose rows Ray Data put in one block and failed on."""
    df = pd.DataFrame({"id": range(6), "query": pd.Categorical(["q one", "q one", "q two", None, "q two", "q one"]),
                       "document": [f"document {i}" for i in range(6)]})
    plain = df.astype({"query": object})
    for name, frame in (("categorical", df), ("plain", plain)):
        (tmp_path / name).mkdir()
        frame.to_parquet(tmp_path / name / "p.parquet")
    (tmp_path / "mixed").mkdir()
    df.iloc[:3].astype({"id": np.int32}).to_parquet(tmp_path / "mixed" / "a.parquet")
    plain.iloc[3:].to_parquet(tmp_path / "mixed" / "b.parquet")
    assert pa.types.is_dictionary(pq.read_schema(tmp_path / "categorical" / "p.parquet").field("query").type)
    summary = job(tiny_model, tmp_path / "categorical", tmp_path / "out-categorical")
    assert (summary.rows_scored, summary.rows_rejected) == (5, 1)
    assert rejects(tmp_path / "out-categorical")["reason"].tolist() == ["query is null"]
    job(tiny_model, tmp_path / "plain", tmp_path / "out-plain")
    pd.testing.assert_frame_equal(results(tmp_path / "out-categorical"), results(tmp_path / "out-plain"))
    job(tiny_model, tmp_path / "mixed", tmp_path / "out-mixed")
    pd.testing.assert_frame_equal(results(tmp_path / "out-mixed"), results(tmp_path / "out-plain"))


def test_files_whose_column_types_disagree_fail_naming_the_column(ray_local, tmp_path, tiny_model):
    """An id that is a number in one file and text in another: Ray Data failed the job where it first put
    rows of both in one block, after the output was begun, in a page of its frames. Parquet files fail before
    any work, naming both, from their footers; JSON Lines files too, from their first lines (they failed the
    job where their rows met, the work lost), and so does a struct in one file and text in another."""
    (tmp_path / "parquet").mkdir()
    pd.DataFrame({"query_id": [1, 2], "query": ["q", "q"], "document": ["a", "b"]}).to_parquet(
        tmp_path / "parquet" / "a.parquet")
    pd.DataFrame({"query_id": ["3"], "query": ["q"], "document": ["c"]}).to_parquet(tmp_path / "parquet" / "b.parquet")
    disagree = r"b\.parquet: column 'query_id' is (large_)?string, but in \S+a\.parquet it is int64"
    with pytest.raises(InputError, match=disagree):
        job(tiny_model, tmp_path / "parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "a.jsonl").write_text('{"id": 1, "meta": {"n": 1}, "query": "q", "document": "a"}\n')
    (tmp_path / "jsonl" / "b.jsonl").write_text('{"id": "x2", "meta": "n", "query": "q", "document": "b"}\n')
    with pytest.raises(InputError, match=r"b\.jsonl: column 'id' is string, but in \S+a\.jsonl it is int64"):
        job(tiny_model, tmp_path / "jsonl", tmp_path / "out-jsonl")
    (tmp_path / "jsonl" / "b.jsonl").write_text('{"id": 2, "meta": "n", "query": "q", "document": "b"}\n')
    with pytest.raises(InputError, match=r"b\.jsonl: column 'meta' is string, but in \S+a\.jsonl it is struct"):
        job(tiny_model, tmp_path / "jsonl", tmp_path / "out-jsonl")
    assert not (tmp_path / "out-jsonl").exists()


def test_a_column_of_kinds_that_make_no_one_type_names_the_first_files_own_type(tmp_path):
    """Query ids as integers in one file, as floats in another (pandas' integers around a missing value) and as
    text in a third: the check said the first file's ids were `double`, the type the first two widen to, which
    that file does not have. It says the first file's own type."""
    (tmp_path / "in").mkdir()
    for name, ids in (("a", [1, 2]), ("b", [3.0, None]), ("c", ["5", "6"])):
        pd.DataFrame({"query_id": ids, "query": ["q", "q"], "document": ["d", "d"]}).to_parquet(
            tmp_path / "in" / f"{name}.parquet")
    fs, files = pafs.LocalFileSystem(), sorted(str(p) for p in (tmp_path / "in").iterdir())
    with pytest.raises(InputError, match=r"c\.parquet: column 'query_id' is (large_)?string, but in \S+a\.parquet "
                                         r"it is int64: rows of both cannot be put together"):
        check_inputs(fs, files, "parquet", ["query", "document"])


def test_a_jsonl_column_whose_kind_changes_past_the_checked_mib_fails_naming_the_file_and_line(ray_local, tmp_path,
                                                                                                  tiny_model):
    """The check before the job reads a JSON Lines file's first MiB: an id that is a number there and text past it
    failed the job where its rows met another file's, in a line naming the column alone (`column 'id' is int64 in
    some rows and string in others`), not which file to fix. An id that is text there and a number past it is one
    id, as where a file mixes them in its first lines: its rows are scored, the numbers kept as text."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"id": 1, "query": "q", "document": "a"}\n')
    pad = "x" * 1000  # 1,100 lines of 1 KB: past the first MiB
    lines = [{"id": n, "query": "q", "document": "d", "pad": pad} for n in range(1100)]
    lines[1090]["id"] = "x7"
    (tmp_path / "in" / "b.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(InputError) as failed:
        job(tiny_model, tmp_path / "in", tmp_path / "out")
    assert str(failed.value) == (f"{tmp_path}/in/b.jsonl: column 'id' is string in lines 1-1,100 (e.g. line 1,091: "
                                 "'x7'), but int64 where the check before the job read the input (each file's first "
                                 "MiB): rows of both cannot be put together; write it as one type in every file")
    # Text in the file's first chunk of lines (`readers.JSON_LINES_CHUNK_BYTES`), numbers alone in the next
    pad = "x" * 100_000
    lines = [{"id": "a" if n == 0 else n, "query": "q", "document": "d", "pad": pad} for n in range(90)]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    job(tiny_model, tmp_path / "mixed.jsonl", tmp_path / "texts")
    got = results(tmp_path / "texts")
    assert sorted(got["id"]) == sorted(["a", *map(str, range(1, 90))]) and got["score"].notna().all()


def test_values_that_the_checked_type_cannot_hold_fail_the_job_not_a_part_of_another_schema(ray_local, tmp_path,
                                                                                            tiny_model):
    """A label that is 1 in a JSON Lines file's first MiB and 0.5 past it, or an integer id past 2^53 in one
    parquet file beside float ids in another (the input's type: double), were written in a part of their own type:
    the job said done, and its output read back as no one table (`Float value 0.500000 was truncated converting to
    int64`). Whole floats past a MiB of integers (1.0 after 1) are the same values, written as integers."""
    (tmp_path / "in").mkdir()
    pad = "x" * 1000  # 1,100 lines of 1 KB: past the first MiB
    lines = [{"id": n, "query": "q", "document": "d", "label": 1, "pad": pad} for n in range(1100)]
    lines[1090]["label"] = 1.0
    (tmp_path / "in" / "a.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    job(tiny_model, tmp_path / "in", tmp_path / "whole")
    assert results(tmp_path / "whole")["label"].tolist() == [1] * 1100
    lines[1090]["label"] = 0.5
    (tmp_path / "in" / "a.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(InputError, match=r"a\.jsonl: column 'label' is double in lines 1-1,100 \(e\.g\. line 1,091: "
                                         r"'0\.5'\), but int64 where the check before the job read the input"):
        job(tiny_model, tmp_path / "in", tmp_path / "half")
    # A part's rows in the input's types (`sink.conform`, as a write task puts them): where two files' blocks never
    # met in one read task, the int64 file's part was written in int64, the other's in double.
    from ce_ray.sink import conform

    part = pa.table({"id": [2**53 + 1], "query": ["q"], "document": ["d"], "score": pa.array([0.5], pa.float32())})
    schema = pa.schema([("id", pa.float64()), ("query", pa.string()), ("document", pa.string())])
    with pytest.raises(InputError, match=r"^the rows of input a-1: column 'id' is int64, of values that the type the "
                                         r"input's files make of it, double, cannot hold \(Integer value "
                                         r"9007199254740993 not in range"):
        conform(part, schema, "the rows of input a-1")
    assert conform(part.set_column(0, "id", pa.array([7])), schema).schema == schema.append(part.schema.field("score"))
    # In a job, small files are read together: the rows met in Ray's block before any part was written, and the job
    # failed there in Ray's traceback, naming neither column nor file. They are read in the input's types now.
    (tmp_path / "ids").mkdir()
    pq.write_table(pa.table({"id": [2**53 + 1, 7], "query": ["q"] * 2, "document": ["d", "e"]}),
                   tmp_path / "ids" / "a.parquet")
    pq.write_table(pa.table({"id": [1.5, 2.0], "query": ["q"] * 2, "document": ["f", "g"]}),
                   tmp_path / "ids" / "b.parquet")
    with pytest.raises(InputError, match=rf"^{tmp_path}/ids/a\.parquet: column 'id' is int64, of values that the type "
                                         r"the input's files make of it, double, cannot hold \(Integer value "
                                         r"9007199254740993 not in range"):
        job(tiny_model, tmp_path / "ids", tmp_path / "past-2-53")
    # An integer and a decimal whose digits cannot hold any integer (decimal128(20, 2) of int64 and decimal(10, 2)):
    # every job failed mid-way; refused before any work now.
    pq.write_table(pa.table({"id": pa.array([5], pa.decimal128(10, 2)), "query": ["q"], "document": ["f"]}),
                   tmp_path / "ids" / "b.parquet")
    with pytest.raises(InputError, match=r"column 'id' is decimal128\(10, 2\), but in \S+a\.parquet it is int64: rows "
                                         "of both cannot be put together"):
        job(tiny_model, tmp_path / "ids", tmp_path / "decimals")
    assert not (tmp_path / "decimals").exists()


def test_a_jsonl_column_null_where_checked_takes_the_values_past_the_checked_mib(ray_local, tmp_path, tiny_model):
    """A JSON Lines column null in every file's first MiB (a title, tags `[]`, an object's `null` field) and
    filled past it: the plain column's parts were written in their own types (null, string), the output no longer
    one table (`Unsupported cast from string to null`), though the job said done; the list and the object failed
    the job mid-way, telling to write the file in one type, which it was. Such a column is text where checked."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"query": "q", "document": "a", "title": null}\n')
    pad = "x" * 1000  # 1,100 lines of 1 KB: past the first MiB
    lines = [{"query": "q", "document": f"d{n}", "title": None, "tags": [], "meta": {"url": None}, "pad": pad}
             for n in range(1100)]
    lines[1090] |= {"title": "A title", "tags": ["news"], "meta": {"url": "http://x"}}
    lines[1091] |= {"title": 7, "tags": [1]}  # other kinds past the MiB: their JSON text, as in a column of text
    (tmp_path / "in" / "b.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    job(tiny_model, tmp_path / "in", tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "results")  # one table: failed on the parts' two types
    got = table.to_pandas().set_index("document")
    assert len(got) == 1101 and got["score"].notna().all()
    assert (got.loc["d1090", "title"], list(got.loc["d1090", "tags"]), got.loc["d1090", "meta"]) == (
        "A title", ["news"], {"url": "http://x"})
    assert (got.loc["d1091", "title"], list(got.loc["d1091", "tags"])) == ("7", ["1"])
    assert got["title"].isna().sum() == 1099 and table.schema.field("title").type == pa.string()


def test_files_whose_columns_widen_to_one_type_are_written_in_it(ray_local, tmp_path, tiny_model):
    """Files of one input whose columns differ but widen to one type (int32 and int64, an all-null column and
    text), that lack a column another has, or hold their columns in another order: each results part was
    written in its own file's schema, and the folder no longer read back as one table (Arrow's and pandas'
    readers failed on a later part's text for the first one's all-null column, or dropped a column the first
    part lacked). Every part is now written in the input's one schema."""
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": pa.array([0, 1, 2], pa.int32()), "query": ["q"] * 3,
                             "document": ["d0", "d1", "d2"], "note": pa.nulls(3)}), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.table({"document": ["d3", "d4"], "label": [1, 0], "note": ["x", None], "query": ["q"] * 2,
                             "id": pa.array([3, 2**40], pa.int64())}), tmp_path / "in" / "b.parquet")
    job(tiny_model, tmp_path / "in", tmp_path / "out", rows_per_block=2)  # blocks of one file each, never merged
    parts = sorted((tmp_path / "out" / "results").iterdir())
    schemas = {str(pq.read_schema(part).remove_metadata()) for part in parts}
    assert len(parts) == 2 and len(schemas) == 1, schemas
    got = results(tmp_path / "out")
    assert got["id"].tolist() == [0, 1, 2, 3, 2**40] and got["label"].tolist()[3:] == [1, 0]
    assert got["note"].tolist()[3] == "x" and got.columns.tolist() == ["id", "query", "document", "note", "label",
                                                                         "score"]


def test_parts_carry_no_pandas_index_of_another_file(ray_local, tmp_path, tiny_model):
    """Every part carried the pandas metadata of the first input file read: pandas gave a part of another file that
    file's index (`pair_id` 1000-1002 for a file written with 0-2) and read a file's own stored index as a column
    in one part and as the index in another. The parts carry no pandas metadata: each part and the folder read
    back with a default index, an index stored in the file kept as its column, in pandas and Arrow alike."""
    (tmp_path / "in").mkdir()
    frame = pd.DataFrame({"id": [0, 1, 2], "query": ["q"] * 3, "document": ["d0", None, "d2"]})
    frame.set_index(pd.RangeIndex(1000, 1003, name="pair_id")).to_parquet(tmp_path / "in" / "a.parquet")
    frame.assign(id=[3, 4, 5], document=["d3", "d4", "d5"]).to_parquet(tmp_path / "in" / "b.parquet")
    frame.assign(id=[6, 7, 8], document=["d6", "d7", "d8"]).set_index(pd.Index(["x", "y", "z"])).to_parquet(
        tmp_path / "in" / "c.parquet")
    job(tiny_model, tmp_path / "in", tmp_path / "out")
    parts = sorted((tmp_path / "out").glob("re*/*.parquet"))
    assert len(parts) == 4 and [b"pandas" in (pq.read_schema(p).metadata or {}) for p in parts] == [False] * 4
    columns = ["id", "query", "document", "__index_level_0__"]
    for part in parts:
        got = pd.read_parquet(part)
        assert got.index.equals(pd.RangeIndex(len(got))), (part.name, got.index)
        assert got.columns.tolist() == columns + (["score"] if part.parent.name == "results" else ["reason"])
    got = pd.read_parquet(tmp_path / "out" / "results")
    assert got.index.equals(pd.RangeIndex(8)) and got.equals(pq.read_table(tmp_path / "out" / "results").to_pandas())
    assert sorted(zip(got["id"], got["__index_level_0__"].fillna("-"))) == [
        (0, "-"), (2, "-"), (3, "-"), (4, "-"), (5, "-"), (6, "x"), (7, "y"), (8, "z")]


def test_a_nullable_integer_column_keeps_its_arrow_type_for_pandas_to_read_back(ray_local, tmp_path, tiny_model):
    """The parts carry no pandas metadata, so pandas' nullable `Int64` (an extra column with nulls) is not restored
    by a plain `pd.read_parquet`, which gives float64: the column stays int64 in the parts, and pandas reads it as
    `Int64` with `dtype_backend="numpy_nullable"` (docs/scoring.md)."""
    frame = pd.DataFrame({"query": ["q"] * 3, "document": ["d0", "d1", "d2"],
                          "hits": pd.array([3, None, 2**53 + 1], dtype="Int64")})
    frame.to_parquet(tmp_path / "in.parquet")
    job(tiny_model, tmp_path / "in.parquet", tmp_path / "out")
    assert pq.read_table(tmp_path / "out" / "results").schema.field("hits").type == pa.int64()
    got = pd.read_parquet(tmp_path / "out" / "results", dtype_backend="numpy_nullable")
    assert str(got["hits"].dtype) == "Int64" and got["hits"].tolist() == [3, pd.NA, 2**53 + 1]


def test_a_parquet_file_of_no_rows_is_counted_among_the_files_in(ray_local, tmp_path, tiny_model, capsys):
    """A parquet file of no rows (a writer's last, empty file) was left out of the summary's `files in` (1 for a
    folder of 2), where an empty JSON Lines file was counted: every file of the input is counted."""
    (tmp_path / "in").mkdir()
    frame = pd.DataFrame({"id": [0, 1], "query": ["q"] * 2, "document": ["d0", "d1"]})
    frame.to_parquet(tmp_path / "in" / "a.parquet")
    frame.iloc[:0].to_parquet(tmp_path / "in" / "b.parquet")
    summary = job(tiny_model, tmp_path / "in", tmp_path / "out")
    assert (summary.files_in, summary.rows_in, summary.rows_scored) == (2, 2, 2)
    assert "  files in      2\n" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "_SUCCESS").read_text())["files_in"] == 2
    # Counts of files have their thousands' commas, as those of rows (`files in 1000` beside `rows in 1,531`).
    from ce_ray.score import Summary

    lines = Summary(1531, 1531, 0, 1.0, "out", files_in=1000, files_kept=1000, rows_kept=1531).lines()
    assert "  files in      1,000" in lines and any(line.startswith("  kept          1,000 file(s), ") for line in lines)


def test_a_jsonl_file_whose_query_is_a_number_on_every_line_rejects_its_rows(ray_local, tmp_path, tiny_model):
    """Arrow's reader read such a file's query as numbers, and Ray Data failed the job where its block met
    another file's texts, after the scoring had begun; its rows are rejected, as a number on one line is."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"id": 0, "query": "q", "document": "d"}\n' * 2)
    (tmp_path / "in" / "b.jsonl").write_text('{"id": 1, "query": 7, "document": "d"}\n' * 2)
    summary = job(tiny_model, tmp_path / "in", tmp_path / "out")
    assert (summary.rows_scored, summary.rows_rejected) == (2, 2)
    assert rejects(tmp_path / "out")["query"].tolist() == ["7", "7"]
    assert rejects(tmp_path / "out")["reason"].tolist() == ["query is int, not text"] * 2


def test_jsonl_columns_are_written_in_the_input_order(ray_local, tmp_path, tiny_model):
    """The output keeps the input's columns in their order, as for parquet and CSV: a JSON Lines input's query and
    document went after its other columns (`id` first), in results and rejects alike."""
    (tmp_path / "in.jsonl").write_text('{"query": "q", "document": "d", "id": 0}\n'
                                       '{"query": 7, "document": "d", "id": 1}\n')
    job(tiny_model, tmp_path / "in.jsonl", tmp_path / "out")
    assert results(tmp_path / "out").columns.tolist() == ["query", "document", "id", "score"]
    assert rejects(tmp_path / "out").columns.tolist() == ["query", "document", "id", "reason"]


def test_a_csv_header_that_is_not_utf8_fails_before_any_work_naming_the_file(ray_local, tmp_path, tiny_model):
    """A CSV saved as Latin-1 with a `café` column, or a TSV saved as UTF-16 (Excel's Unicode Text): the check read
    their header with U+FFFD (or said the query column was missing, among garbled names), and the job failed in its
    read task with `UnicodeDecodeError`. A JSON Lines file saved as UTF-16 (PowerShell's `>`) had its line 1 scored,
    its other lines rejected, and a line more counted. Each fails before any work, in one line naming the file."""
    (tmp_path / "latin1").mkdir()
    (tmp_path / "latin1" / "p.csv").write_bytes("query,document,café\nq,d,x\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"^\S+p\.csv: its header line is not UTF-8: byte 0xe9 at 18; write the "
                                         r"file as UTF-8$"):
        job(tiny_model, tmp_path / "latin1", tmp_path / "out")
    (tmp_path / "utf16").mkdir()
    (tmp_path / "utf16" / "p.tsv").write_bytes("query\tdocument\nq\td\n".encode("utf-16"))
    with pytest.raises(InputError, match=r"p\.tsv: its header line is not UTF-8 \(UTF-16, as Excel's Unicode Text "
                                         r"writes it\): byte 0xff at 0;"):
        job(tiny_model, tmp_path / "utf16", tmp_path / "out")
    (tmp_path / "utf16" / "p.tsv").unlink()
    (tmp_path / "utf16" / "p.jsonl").write_bytes('{"query": "q", "document": "d1"}\n{"query": "q", "document": "d2"}\n'
                                                 .encode("utf-16"))
    with pytest.raises(InputError, match=r"p\.jsonl: line 1 is not UTF-8 \(UTF-16, as Windows PowerShell 5's Out-File "
                                         r"writes it\): byte 0xff at 0; write the file as UTF-8$"):
        job(tiny_model, tmp_path / "utf16", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_utf8_bom_at_the_start_of_a_csv_or_jsonl_file_is_skipped(ray_local, tmp_path, tiny_model):
    """As Excel writes CSV: the header's first name is still `id`, and a JSONL first line is still an object
    (the second line, a number for text, sends the chunk line by line)."""
    bom = b"\xef\xbb\xbf"
    files = {"csv": b"id,query,document\n0,q,first\n1,q,second\n",
             "jsonl": b'{"id": 0, "query": "q", "document": "first"}\n{"id": 1, "query": "q", "document": 42}\n'}
    for kind, data in files.items():
        (tmp_path / kind).mkdir()
        (tmp_path / kind / f"rows.{kind}").write_bytes(bom + data)
        summary = job(tiny_model, tmp_path / kind, tmp_path / f"out-{kind}")
        assert (summary.rows_scored, summary.rows_rejected) == ((2, 0) if kind == "csv" else (1, 1))
        assert {"csv": "0", "jsonl": 0}[kind] in set(results(tmp_path / f"out-{kind}")["id"])


def test_text_of_100k_characters_is_truncated_and_scored(jsonl_job, csv_job):
    for out in (jsonl_job[1], csv_job[1]):
        got = results(out)
        row = got[got["document"].str.len() > 100_000]
        assert len(row) == 1 and np.isfinite(row["score"].iloc[0])
        assert row["document"].iloc[0] == LONG.strip() or row["document"].iloc[0] == LONG  # kept unchanged


def test_duplicate_ids_are_kept_as_separate_rows(jsonl_job):
    got = results(jsonl_job[1])
    assert sorted(got[got["id"] == 6]["document"]) == ["first", "second"]


def test_a_user_column_named_path_is_kept(jsonl_job):
    got = results(jsonl_job[1]).set_index("id")
    assert got.loc[0, "path"] == "a user column named path"
    assert not [c for c in got.columns if c.startswith("_ce_")]


def test_partition_keys_of_hive_style_folders_become_columns(ray_local, tmp_path, tiny_model):
    """`day=1/lang=en%20us/part-0.parquet`, as Spark and Hive write: each key a text column, URL-decoded, as Ray
    Data's readers give it; a column of the file's own of that name wins; a single file's folders count too."""
    from ce_ray.readers import partition_values

    assert partition_values("bucket/data/day=1/lang=en%20us/part-0.parquet") == {"day": "1", "lang": "en us"}
    assert partition_values("/data/a=b=c/=x/plain/f.jsonl") == {}
    rows = {"day=1/lang=en%20us": ["a", "b"], "day=2/lang=fr": ["c"], "day=2/lang=de": ["d", "e", "f"]}
    for i, (folder, ids) in enumerate(rows.items()):
        (tmp_path / "in" / folder).mkdir(parents=True)
        frame = pd.DataFrame({"id": ids, "query": "q", "document": ids})
        if folder.endswith("de"):
            frame["day"] = "its own"
        frame.to_parquet(tmp_path / "in" / folder / f"part-{i}.parquet")
    job(tiny_model, tmp_path / "in", tmp_path / "out")
    got = results(tmp_path / "out").set_index("id")
    assert got["day"].to_dict() == {"a": "1", "b": "1", "c": "2", "d": "its own", "e": "its own", "f": "its own"}
    assert got["lang"].to_dict() == {"a": "en us", "b": "en us", "c": "fr", "d": "de", "e": "de", "f": "de"}
    job(tiny_model, tmp_path / "in" / "day=2" / "lang=fr" / "part-1.parquet", tmp_path / "one")
    assert results(tmp_path / "one")[["day", "lang"]].values.tolist() == [["2", "fr"]]


def test_a_column_the_job_writes_fails_before_scoring_unless_named_otherwise(ray_local, tmp_path, tiny_model):
    """A first stage's `score` (or an earlier output's): the job would overwrite it. It fails before any work,
    naming the setting that names the scores otherwise; a later JSON line's key fails the job at its block."""
    frame = pd.DataFrame({"query": ["q", "q"], "document": ["d", None], "score": [0.5, 0.7], "reason": ["r1", "r2"]})
    frame.to_parquet(tmp_path / "bm25.parquet")
    with pytest.raises(InputError, match=r"bm25\.parquet: has a column 'score', which the job writes: name the "
                                         r"scores otherwise with score_column \(--score-column\)"):
        job(tiny_model, tmp_path / "bm25.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    job(tiny_model, tmp_path / "bm25.parquet", tmp_path / "out", score_column="ce_score")
    got = pd.read_parquet(tmp_path / "out" / "results")
    assert got[["score", "reason"]].values.tolist() == [[0.5, "r1"]] and got["ce_score"].notna().all()
    # The input's own `reason` stays; the rejects' is then `reject_reason`.
    bad = pd.read_parquet(tmp_path / "out" / "rejects")
    assert bad[["reason", "reject_reason"]].values.tolist() == [["r2", "document is null"]]
    assert "ce_score" not in bad.columns

    # A later JSON line's key fails before any work where the check reads it (a file's first MiB), past that at its
    # block.
    lines = ['{"query": "q", "document": "d"}', '{"query": "q", "document": "e", "score": 1}']
    (tmp_path / "late.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"late\.jsonl: has a column 'score', which the job writes"):
        job(tiny_model, tmp_path / "late.jsonl", tmp_path / "late")
    assert not (tmp_path / "late").exists()
    (tmp_path / "far.jsonl").write_text("\n".join([lines[0].replace('"d"', f'"{LONG[:1000]}"')] * 1100 + lines) + "\n")
    with pytest.raises(InputError, match="the input has a column 'score', which the job writes"):
        job(tiny_model, tmp_path / "far.jsonl", tmp_path / "far")
    assert not (tmp_path / "far" / "_SUCCESS").exists()
    with pytest.raises(ConfigError, match=r"^score_column \(--score-column\) must name a column$"):
        job(tiny_model, tmp_path / "late.jsonl", tmp_path / "late", score_column="")


def test_string_views_are_text(ray_local, tmp_path, tiny_model):
    """Polars' strings come to Arrow as string views: scored as text from a file, and a caller's Dataset that
    holds them is ranked (Arrow's sorts and takes refuse views)."""
    from ce_ray.rerank import shuffle_input

    views = pa.table({name: pa.array(values, pa.string_view()) for name, values in
                      {"query_id": ["a", "b", "c"] * 4, "query": ["q"] * 12, "document": list("abcdefghijkl")}.items()})
    pq.write_table(views, tmp_path / "polars.parquet")
    job(tiny_model, tmp_path / "polars.parquet", tmp_path / "out")
    got = pd.read_parquet(tmp_path / "out" / "results")
    assert sorted(got["document"]) == list("abcdefghijkl") and got["score"].notna().all()
    # (Ray refuses to ship a table of views between processes under pytest, so the rank stage's first step
    # is called here: each query's best row of a scored block.)
    scored = views.append_column("score", pa.array(np.arange(12, dtype=np.float32)))
    assert shuffle_input(scored, "query_id", top_k=1).column("document").to_pylist() == ["j", "k", "l"]


def test_missing_and_misnamed_columns_fail_before_scoring(tmp_path, tiny_model):
    pd.DataFrame({"query": ["q"], "Document": ["d"]}).to_parquet(tmp_path / "a.parquet")
    with pytest.raises(InputError, match=r"a\.parquet: missing column\(s\) 'document' \(columns: query, Document\)"):
        job(tiny_model, tmp_path / "a.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_text_column_type_fails_before_scoring(tmp_path, tiny_model):
    pd.DataFrame({"query": [1, 2], "document": ["a", "b"]}).to_parquet(tmp_path / "ints.parquet")
    with pytest.raises(InputError, match=r"ints\.parquet: column 'query' is int64, not text"):
        job(tiny_model, tmp_path / "ints.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_parquet_among_good_ones_fails_before_scoring(tmp_path, tiny_model):
    (tmp_path / "in").mkdir()
    for i in range(3):
        pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "in" / f"good-{i}.parquet")
    data = (tmp_path / "in" / "good-0.parquet").read_bytes()
    (tmp_path / "in" / "torn.parquet").write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(InputError, match=r"cannot read .*torn\.parquet"):
        job(tiny_model, tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_folder_and_a_glob_matching_nothing_fail(tmp_path, tiny_model, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no parquet files"):
        job(tiny_model, tmp_path / "empty", tmp_path / "out")
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "empty" / "p.parquet")
    with pytest.raises(InputError, match=r"input \S+/empty/\*\.csv matches no files$"):
        job(tiny_model, f"{tmp_path}/empty/*.csv", tmp_path / "out")
    # A folder whose name holds `[`: a pattern, matching nothing, which said nothing of why; matched as written `[[]`
    (tmp_path / "in" / "pairs[v2]").mkdir(parents=True)
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "in" / "pairs[v2]" / "p.parquet")
    with pytest.raises(InputError) as refused:
        job(tiny_model, tmp_path / "in" / "pairs[v2]", tmp_path / "out")
    assert str(refused.value) == (f"input {tmp_path}/in/pairs[v2] matches no files: `[`, `*` and `?` make a path a "
                                  f"pattern, and {tmp_path}/in/pairs[v2] is a name that holds them; to read it as it "
                                  f"is, give {tmp_path}/in/pairs[[]v2]/*")
    assert job(tiny_model, f"{tmp_path}/in/pairs[[]v2]/*", tmp_path / "out").rows_scored == 1
    # A glob of its files, as users write one (docs/inputs.md's example), said no more than that it matched nothing.
    from ce_ray.input_files import list_files

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"matches no files: .* and \S+/in/pairs\[v2\] is a name that holds them; to "
                                         r"read it as it is, give in/pairs\[\[\]v2\]/\*\.parquet$"):
        list_files("in/pairs[v2]/*.parquet")
    # An output beside it: the escape's `[` made the folder above the glob's, and the output was refused as inside the
    # input, with the hint's own form; as written, that refusal came before the hint.
    with pytest.raises(InputError, match=r"matches no files: .*give \S+/in/pairs\[\[\]v2\]/\*$"):
        job(tiny_model, tmp_path / "in" / "pairs[v2]", tmp_path / "in" / "out")
    assert job(tiny_model, f"{tmp_path}/in/pairs[[]v2]/*", tmp_path / "in" / "out").rows_scored == 1


def test_a_folder_of_two_formats_or_a_file_of_no_format_names_the_flag_that_reads_it(tmp_path):
    """The refusal of a folder of two formats, and of a file whose name says no format, said `pass input_format`, a
    YAML key, where a user of the command line gives `--input-format`, which reads one format and skips the
    other's files: they name both, as the other settings' messages do."""
    from ce_ray.input_files import list_files

    (tmp_path / "in").mkdir()
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "in" / "a.parquet")
    (tmp_path / "in" / "b.tsv").write_text("query\tdocument\nq\td\n")
    with pytest.raises(InputError, match=r"mixes formats \['parquet', 'tsv'\]: read one with input_format parquet "
                                         r"\(--input-format parquet\), which skips the other's files$"):
        list_files(str(tmp_path / "in"), "auto", None)
    assert list_files(str(tmp_path / "in"), "tsv", None)[0] == [str(tmp_path / "in" / "b.tsv")]
    (tmp_path / "part-00000").write_text("query\tdocument\nq\td\n")
    with pytest.raises(InputError, match=r"from its name: pass input_format \(--input-format\): parquet, jsonl, csv "
                                         r"or tsv$"):
        list_files(str(tmp_path / "part-00000"), "auto", None)


def test_a_folders_hidden_files_and_folders_are_not_read(tmp_path):
    """A folder a notebook edited holds `.ipynb_checkpoints/` (a copy of each file: every pair twice), one copied
    from a Mac holds `._` files (AppleDouble, not the format their names say): hidden, as Spark and Arrow take them."""
    from ce_ray.input_files import list_files

    for name in ("pairs.jsonl", ".ipynb_checkpoints/pairs-checkpoint.jsonl", "._pairs.jsonl", "_tmp/pairs.jsonl"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_text('{"query": "q", "document": "d"}\n')
    assert list_files(str(tmp_path / "in"), "auto", None).files == [str(tmp_path / "in" / "pairs.jsonl")]


def test_a_folders_documents_are_skipped_with_the_format_given_and_by_eval(tmp_path, capsys):
    """A folder of parquet files as a dataset comes (a README.md, a LICENSE): with `--input-format parquet`, and in
    `ce-ray eval` (which reads parquet), its documents were read as parquet and failed the job (`cannot read
    .../README.md: Parquet file size is 11 bytes ...`). They are skipped and said, as without the format; a file
    whose name says no format (part-00000) is still read; without the format, it is what the error names."""
    from ce_ray.config import EvalConfig
    from ce_ray.evaluate import run_eval
    from ce_ray.input_files import list_files

    (tmp_path / "in").mkdir()
    frame = pd.DataFrame({"query_id": [1, 1], "query": ["q", "q"], "document": ["a", "b"], "label": [0, 1],
                          "score": [0.2, 0.9]})
    frame.to_parquet(tmp_path / "in" / "a.parquet")
    frame.to_parquet(tmp_path / "in" / "part-00000")
    (tmp_path / "in" / "README.md").write_text("# not pairs")
    (tmp_path / "in" / "LICENSE").write_text("not pairs")
    assert [os.path.basename(f) for f in list_files(str(tmp_path / "in"), "parquet").files] == ["a.parquet",
                                                                                                "part-00000"]
    assert "skipped 2 file(s) that are not parquet: LICENSE, README.md" in capsys.readouterr().err
    # Without the format the error names the file it cannot read, not the README that sorts before it.
    os.remove(tmp_path / "in" / "a.parquet")
    with pytest.raises(InputError, match=r"cannot tell the format of \S+/part-00000 from its name"):
        list_files(str(tmp_path / "in"), "auto", None)
    frame.to_parquet(tmp_path / "in" / "a.parquet")
    got = run_eval(EvalConfig(input=str(tmp_path / "in"), baseline_column="", output=str(tmp_path / "eval.json")))
    assert got["queries"] == 1 and got["reranked"]["mrr@10"] == 1.0


def test_other_files_in_an_input_folder_are_skipped_and_said(ray_local, tmp_path, tiny_model, capsys):
    """A folder as datasets come (WikiQA's has a LICENSE.pdf and a README): its files of the format are read,
    the others skipped with one line; with the format given, a file without an extension (Hadoop's
    part-00000) is read too, and a glob of the folder's files skips the same documents; a file named alone is
    read whatever its name."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "LICENSE.pdf").write_bytes(b"%PDF-1.5 not pairs")
    (tmp_path / "in" / "README.md").write_text("# not pairs")
    (tmp_path / "in" / "pairs.tsv").write_text("query\tdocument\nq\ta\n")
    assert job(tiny_model, tmp_path / "in", tmp_path / "out").rows_in == 1
    assert "skipped 2 file(s) that are not tsv: LICENSE.pdf, README.md" in capsys.readouterr().err
    (tmp_path / "in" / "part-00000").write_text("query\tdocument\nq\tb\n")
    assert job(tiny_model, tmp_path / "in", tmp_path / "out2", input_format="tsv").rows_in == 2
    assert job(tiny_model, tmp_path / "in" / "part-00000", tmp_path / "out3", input_format="tsv").rows_in == 1
    # `in/*` is the folder too: its documents were read as pairs and failed the job.
    assert job(tiny_model, f"{tmp_path}/in/*", tmp_path / "out5", input_format="tsv").rows_in == 2
    assert "skipped 2 file(s) that are not tsv: LICENSE.pdf, README.md" in capsys.readouterr().err
    # A glob names its files: read as the format given, whatever their names say.
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "pairs.txt").write_text("query\tdocument\nq\tc\n")
    assert job(tiny_model, f"{tmp_path}/txt/*.txt", tmp_path / "out4", input_format="tsv").rows_in == 1
    # An output whose every row was rejected has no results/ on S3 (no empty folders there): said so.
    from ce_ray.input_files import list_files

    (tmp_path / "rejected" / "_ce_ray").mkdir(parents=True)
    (tmp_path / "rejected" / "_SUCCESS").write_text("{}")
    with pytest.raises(InputError, match="is the output of a job that scored no row"):
        list_files(str(tmp_path / "rejected"))


def test_a_file_reached_again_through_a_link_is_read_once(tmp_path):
    """A `latest` link beside the dated folders it leads to gave its files twice, and a link back to a folder above
    some 40 times over (pyarrow's listing follows links), exit 0. A file reached by two names is read once, at its own
    place where it has one; a link to a file the folder's listing passes over (in a hidden folder, as git-annex and
    the Hugging Face cache keep them) is read by its name, and a glob matches links as files."""
    from ce_ray.input_files import list_files

    for day in ("2024-01-01", "2024-01-02"):
        (tmp_path / "in" / day).mkdir(parents=True)
        pd.DataFrame({"query": ["q"], "document": [day]}).to_parquet(tmp_path / "in" / day / "p.parquet")
    (tmp_path / "in" / "latest").symlink_to("2024-01-02")
    (tmp_path / "in" / "2024-01-01" / "loop").symlink_to("..")
    (tmp_path / "in" / "again.parquet").symlink_to(tmp_path / "in" / "2024-01-01" / "p.parquet")
    (tmp_path / "elsewhere").mkdir()
    pd.DataFrame({"query": ["q"], "document": ["e"]}).to_parquet(tmp_path / "elsewhere" / "e.parquet")
    (tmp_path / "in" / "extra").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "back").symlink_to(tmp_path / "elsewhere")
    files = list_files(str(tmp_path / "in")).files
    assert [f[len(str(tmp_path / "in")) + 1:] for f in files] == [
        "2024-01-01/p.parquet", "2024-01-02/p.parquet", "extra/e.parquet"]
    # The input given as the link itself is read through it.
    assert list_files(str(tmp_path / "in" / "latest")).files == [str(tmp_path / "in" / "latest" / "p.parquet")]
    assert list_files(f"{tmp_path}/in/late*/p.parquet").files == [f"{tmp_path}/in/latest/p.parquet"]
    (tmp_path / "annex" / ".versions").mkdir(parents=True)
    pd.DataFrame({"query": ["q"], "document": ["v3"]}).to_parquet(tmp_path / "annex" / ".versions" / "v3.parquet")
    (tmp_path / "annex" / "current.parquet").symlink_to(".versions/v3.parquet")
    (tmp_path / "annex" / "up").symlink_to(tmp_path)  # a link above the input: a loop
    assert list_files(str(tmp_path / "annex")).files == [str(tmp_path / "annex" / "current.parquet")]


def test_a_folder_gone_while_its_input_is_listed_is_passed_over(tmp_path, monkeypatch):
    """A Spark job's `_temporary/` removed as the input is listed (a job writing beside it, or the output's own
    listing as another job writes): passed over, as pyarrow's listing passed over it, where it failed the input."""
    import shutil

    from ce_ray.storage import list_tree

    (tmp_path / "in" / "_temporary" / "0").mkdir(parents=True)
    (tmp_path / "in" / "_temporary" / "0" / "part-0.parquet").write_text("x")
    (tmp_path / "in" / "p.parquet").write_text("x")
    listing = os.scandir

    class Entries(list):  # as os.scandir's iterator, a context manager too
        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

    def listed_then_removed(path="."):
        entries = Entries(listing(path))
        if path == str(tmp_path / "in"):
            shutil.rmtree(tmp_path / "in" / "_temporary")
        return entries

    monkeypatch.setattr(os, "scandir", listed_then_removed)
    assert list(list_tree(pafs.LocalFileSystem(), str(tmp_path / "in"))) == [str(tmp_path / "in" / "p.parquet")]


def test_a_file_of_pairs_compressed_by_a_codec_ce_ray_does_not_read_is_refused_naming_it(tmp_path):
    """`b.csv.xz` beside `a.csv` was skipped as a file that is not csv, its rows lost; named alone it was of no format
    ce-ray could tell, and given one, `its header line is not UTF-8`."""
    import lzma

    from ce_ray.input_files import list_files

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("query,document\nq,a\n")
    (tmp_path / "in" / "b.csv.xz").write_bytes(lzma.compress(b"query,document\nq,b\n"))
    (tmp_path / "in" / "notes.zip").write_bytes(b"PK")  # an archive of no format's name: skipped, as documents are
    refused = (r"/in/b\.csv\.xz is compressed with xz \(\.xz\), which ce-ray does not read: "
               r"recompress it as \.gz, \.bz2 or \.zst$")
    for given, input_format in [("in", "auto"), ("in/b.csv.xz", "auto"), ("in/b.csv.xz", "csv"), ("in/*", "csv")]:
        with pytest.raises(InputError, match=refused):
            list_files(str(tmp_path / given), input_format)
    (tmp_path / "in" / "b.csv.xz").unlink()
    for given, input_format in [("in", "auto"), ("in", "csv"), ("in/*", "csv")]:  # the archive skipped as documents are
        assert [os.path.basename(f) for f in list_files(str(tmp_path / given), input_format).files] == ["a.csv"]
    (tmp_path / "in" / "c.csv.gzip").write_bytes(b"")
    with pytest.raises(InputError, match=r"c\.csv\.gzip ends in \.gzip, which ce-ray does not read as gzip: "
                                         r"name it \.gz$"):
        list_files(str(tmp_path / "in"))


def test_a_folder_of_a_delta_hudi_or_iceberg_table_is_refused(tmp_path):
    """A Delta Lake table's folder keeps the parquet files of its earlier versions (an update's, a delete's, a
    compaction's) beside the current ones, which its `_delta_log/` alone tells apart: read as a folder of parquet
    files, the rows replaced came again, exit 0."""
    from ce_ray.input_files import list_files

    for table, marker, reader in [("delta", "_delta_log/00000000000000000000.json", "read_delta"),
                                  ("hudi", ".hoodie/hoodie.properties", "read_hudi"),
                                  ("iceberg", "metadata/v1.metadata.json", "read_iceberg")]:
        (tmp_path / table / marker).parent.mkdir(parents=True)
        (tmp_path / table / marker).write_text("{}")
        pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / table / "part-0.parquet")
        with pytest.raises(InputError, match=rf"^input \S+/{table} holds a .* table \({marker.split('/')[0]}/\): its "
                                             rf"folder keeps .* Read it with Ray Data's ray.data.{reader} and score"):
            list_files(str(tmp_path / table))
    # A table beside a glob's files is not theirs.
    for folder in ("g/a", "g/lake/_delta_log"):
        (tmp_path / folder).mkdir(parents=True)
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "g" / "a" / "pairs.parquet")
    (tmp_path / "g" / "lake" / "_delta_log" / "0.json").write_text("{}")
    assert list_files(f"{tmp_path}/g/*/pairs.parquet").files == [f"{tmp_path}/g/a/pairs.parquet"]
    # A folder of its own named metadata, without Iceberg's files, is read as any.
    (tmp_path / "mine" / "metadata").mkdir(parents=True)
    (tmp_path / "mine" / "metadata" / "notes.json").write_text("{}")
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "mine" / "p.parquet")
    assert len(list_files(str(tmp_path / "mine"), "parquet").files) == 1


def test_a_folder_inside_a_delta_hudi_or_iceberg_table_is_refused(tmp_path):
    """A partition folder of a Delta Lake table (`table/dt=2024-01-01/`) holds its earlier versions' files too,
    and its `_delta_log/` lies above it: it was read as a folder of parquet files, exit 0. A file named alone is read
    (the files of one version); a folder of its own named `data` beside one named `metadata` is read as any."""
    from ce_ray.input_files import list_files

    def table(folder, marker, partition):
        (tmp_path / folder / marker).parent.mkdir(parents=True)
        (tmp_path / folder / marker).write_text("{}")
        (tmp_path / folder / partition).mkdir(parents=True)
        pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / folder / partition / "p.parquet")

    table("delta", "_delta_log/00000000000000000000.json", "dt=2024-01-01/lang=en")
    table("hudi", ".hoodie/hoodie.properties", "dt=2024-01-01")
    table("iceberg", "metadata/v1.metadata.json", "data/dt=2024-01-01")
    table("lake/env=prod/delta", "_delta_log/00000000000000000000.json", "dt=1")  # a table in another's partition
    for given, name, marker in [("lake/env=prod/delta/dt=1", "Delta Lake", "_delta_log"),
                                ("delta/dt=2024-01-01", "Delta Lake", "_delta_log"),
                                ("delta/dt=2024-01-01/lang=en/*.parquet", "Delta Lake", "_delta_log"),
                                ("hudi/dt=2024-01-01/", "Apache Hudi", ".hoodie"),
                                ("iceberg/data", "Apache Iceberg", "metadata"),
                                ("iceberg/data/dt=2024-01-01", "Apache Iceberg", "metadata")]:
        top = re.escape(given.split("/dt=")[0].split("/data")[0])
        with pytest.raises(InputError, match=rf"^input \S+/{re.escape(given)} lies in the folder of the {name} table "
                                             rf"at \S+/{top}/ \({marker}/\): its folder keeps .* ray\.data\.read_"):
            list_files(f"{tmp_path}/{given}")
    one = f"{tmp_path}/delta/dt=2024-01-01/lang=en/p.parquet"
    assert list_files(one).files == [one]
    table("mine", "metadata/notes.json", "data/k=v")
    assert list_files(f"{tmp_path}/mine/data/k=v").files == [f"{tmp_path}/mine/data/k=v/p.parquet"]


def test_a_file_uri_is_its_path_url_decoded(tmp_path):
    """A job given `file:///…/p.parquet` and resumed with the path (or the other way) was refused as a job of other
    settings (`input`), recorded as typed; `file:///…/a%20b/p.parquet` was looked for in a folder `a%20b`, where
    pyarrow and Ray Data read the folder `a b`."""
    from ce_ray.input_files import list_files
    from ce_ray.storage import absolute

    (tmp_path / "a b").mkdir()
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "a b" / "p.parquet")
    config = load_config(ScoreConfig, None, {"model": f"file://{tmp_path}/m/../m", "input": f"file://{tmp_path}/a%20b",
                                             "output": f"file://{tmp_path}/out"})
    assert (config.input, config.output) == (f"{tmp_path}/a b", f"{tmp_path}/out")
    assert absolute(config.model) == absolute(f"{tmp_path}/m") == absolute(f"file://{tmp_path}/m/")
    assert list_files(f"file://{tmp_path}/a%20b/p.parquet").files == [f"{tmp_path}/a b/p.parquet"]
    from ce_ray.model_folder import local_model_path  # a model of a config built directly, not read by load_config

    assert local_model_path(f"file://{tmp_path}/a%20b") == f"{tmp_path}/a b"


def test_an_output_that_cannot_be_made_fails_before_any_work(tmp_path, tiny_model):
    """An output under a file was refused as it was made: once Ray had started and the model was loaded. It is
    among the output's checks before Ray starts (`check_output`)."""
    from ce_ray.sink import OutputError, check_output

    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "p.parquet")
    under_a_file = r"^cannot write the output \S+/p\.parquet/out: \S+/p\.parquet is a file, not a folder$"
    with pytest.raises(OutputError, match=under_a_file):
        job(tiny_model, tmp_path / "p.parquet", tmp_path / "p.parquet" / "out")
    with pytest.raises(OutputError, match=under_a_file):
        check_output(str(tmp_path / "p.parquet" / "out"), "error")
    # A folder that cannot be made (here /proc's, as one of another user or on a read-only mount) was found as the
    # first part was written, Ray started (39 s on 2 CPUs). One that can is made and removed again: nothing left.
    with pytest.raises(OutputError, match=r"^cannot write the output /proc/ce-ray-out/o: \[Errno \d+\] "):
        check_output("/proc/ce-ray-out/o", "error")
    check_output(str(tmp_path / "new" / "out"), "error")
    assert not (tmp_path / "new").exists()


def test_zero_rows_fail(tmp_path, tiny_model):
    table = pa.table({"query": pa.array([], pa.string()), "document": pa.array([], pa.string())})
    pq.write_table(table, tmp_path / "zero.parquet")
    (tmp_path / "zero.jsonl").write_text("")
    for name in ("zero.parquet", "zero.jsonl"):
        with pytest.raises(InputError, match="no rows"):
            job(tiny_model, tmp_path / name, tmp_path / "out")


def test_unknown_model_path_and_hub_id_fail_before_the_output_is_touched(tmp_path, tiny_model, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no hub here: do not wait on retries
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(ModelError, match="does not exist"):
        job(tmp_path / "no-such-model", tmp_path / "p.parquet", tmp_path / "out")
    # A file of the model's given for its folder: it said the folder `does not exist`, which the user saw it did
    with pytest.raises(ModelError, match=r"model \S+/model\.safetensors is a file: give the model's folder"):
        job(tiny_model / "model.safetensors", tmp_path / "p.parquet", tmp_path / "out")
    with pytest.raises(ModelError, match="model no-such-org/no-such-reranker is neither a local folder nor in the "):
        job("no-such-org/no-such-reranker", tmp_path / "p.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@contextlib.contextmanager
def _hub_answering(monkeypatch):
    """A Hugging Face hub endpoint on 127.0.0.1 that answers as the hub does a client looking up a repository: 404 with
    its error code where there is none, 503 where the hub is down (a repository of `down-org`). Yields the paths
    asked for."""
    import http.server
    import threading

    import huggingface_hub.constants

    asked = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            status, code = (503, "") if "/down-org/" in self.path else (404, "RepoNotFound")
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    try:
        yield asked
    finally:
        server.shutdown()
        server.server_close()


def test_a_hub_id_neither_cached_nor_reachable_fails_in_one_line_saying_what_to_do(tmp_path, monkeypatch):
    """A hub id that is not in the Hugging Face cache, where the hub is off (HF_HUB_OFFLINE) or out of reach (behind a
    firewall; here an endpoint where nothing listens): the error was Hugging Face's text of several lines (check the
    internet connection; set a variable to 0). It is one line: the id, neither a folder here nor in the cache (named),
    why the hub did not give it, and what to do; Hugging Face's error is its cause. In the Python API and in
    `ce-ray score` alike; a mistyped path (`./modles/x`) says it is no folder, and nothing of the hub. A hub that
    answers (no such repository; down) is said to have answered, not to be out of reach."""
    import huggingface_hub.constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    from test_score import run_cli

    model, cache = "cross-encoder/ms-marco-MiniLM-L6-v2", tmp_path / "hub"
    with socket.socket() as free:  # a loopback port that nothing listens on once closed
        free.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{free.getsockname()[1]}"  # never the real hub, whatever the network
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "p.parquet")

    def said(hub, model=model):  # the whole line, with why the hub did not give the model
        return (rf"model {model} is neither a local folder nor in the Hugging Face cache \({re.escape(str(cache))}\), "
                rf"and {hub}: give a folder of it by its path \(`hf download {model} --local-dir <folder>`, where the "
                r"hub is reachable, makes one\), or bring its download into that cache \(HF_HOME or HF_HUB_CACHE set "
                r"where it is\)")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    offline, unreachable = r"the hub is off \(HF_HUB_OFFLINE\)", r"the hub could not be reached \(\w+: .*refused\)"
    for hub in (offline, unreachable):
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", hub == offline)
        with pytest.raises(ModelError) as raised:
            job(model, tmp_path / "p.parquet", tmp_path / "out")
        assert re.fullmatch(said(hub), str(raised.value))
        assert isinstance(raised.value.__cause__, LocalEntryNotFoundError)
    with pytest.raises(ModelError, match=r"^model folder \./modles/x does not exist$"):
        job("./modles/x", tmp_path / "p.parquet", tmp_path / "out")
    # A hub that answers: no such repository (or one this user may not read), or down for a while.
    with _hub_answering(monkeypatch) as answered:
        with pytest.raises(ModelError, match=r"^model no-such-org/no-such-reranker is neither a local folder nor a "
                                             r"repository of the Hugging Face hub that you may read \(a private"):
            job("no-such-org/no-such-reranker", tmp_path / "p.parquet", tmp_path / "out")
        with pytest.raises(ModelError) as raised:
            job("down-org/reranker", tmp_path / "p.parquet", tmp_path / "out")
        assert re.fullmatch(said(r"the hub did not give it \(HfHubHTTPError: .*503.*\)", "down-org/reranker"),
                            str(raised.value)) and answered
    result = run_cli("score", "--model", model, "--input", str(tmp_path / "p.parquet"), "--output",
                     str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.fullmatch(rf"ce-ray score: error: {said(offline)}", result.stderr.splitlines()[-1])
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_bad_model_or_output_fails_before_ray_starts(tmp_path, tiny_model, monkeypatch):
    """The model's checks and the output's refusals come before a job, or a call of predict or rank, starts Ray
    (seconds on a laptop). The refusals of an output name the setting by its flag too (they named the YAML key
    alone)."""
    import importlib

    import ce_ray
    from ce_ray.config import RerankConfig, TrainConfig
    from ce_ray.rerank import run_rerank
    from ce_ray.sink import OutputError, OutputExistsError
    from ce_ray.train import train

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started before the checks")

    for module in ("readers", "runtime", "score"):  # each module's own name of it
        monkeypatch.setattr(importlib.import_module(f"ce_ray.{module}"), "ensure_ray", no_ray)
    pairs = tmp_path / "in" / "p.parquet"
    pairs.parent.mkdir()
    pd.DataFrame({"query": ["q"], "document": ["d"], "query_id": ["1"], "label": [1.0]}).to_parquet(pairs)
    three = _model_copy(tiny_model, tmp_path, "nli")  # a 3-way classifier: an NLI model's labels
    config = json.loads((three / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(["contradiction", "entailment", "neutral"])}
    (three / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="is a classifier of 3 labels: ce-ray scores and trains rerankers of one"):
        job(three, pairs, tmp_path / "out")
    with pytest.raises(ModelError, match="classifier of 3 labels"):
        run_rerank(RerankConfig(model=str(three), input=str(pairs), output=str(tmp_path / "out")))
    with pytest.raises(ModelError, match="classifier of 3 labels"):
        train(TrainConfig(model=str(three), train_data=str(pairs), output=str(tmp_path / "trained")))
    # The Python API's predict and rank: they started a local Ray, then failed on the model.
    with pytest.raises(ModelError, match="classifier of 3 labels"):
        ce_ray.predict(str(three), [("q", "d")])
    with pytest.raises(ModelError, match="classifier of 3 labels"):
        ce_ray.rank(str(three), "q", ["d"])
    # Without `architectures` in config.json, its head's weights tell: the replicas failed to load it, in Ray.
    from safetensors.torch import load_file, save_file

    two = _model_copy(tiny_model, tmp_path, "two")
    weights = load_file(two / "model.safetensors")
    for name in ("classifier.weight", "classifier.bias"):
        weights[name] = weights[name].repeat(2, *[1] * (weights[name].dim() - 1))
    save_file(weights, two / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((two / "config.json").read_text())
    config.pop("architectures")
    (two / "config.json").write_text(json.dumps(config | {"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}))
    with pytest.raises(ModelError, match=r"is a classifier of 2 labels: .* to score with it, save it with one "
                                         r"logit, its classifier's second row less its first"):
        job(two, pairs, tmp_path / "out")
    with pytest.raises(ModelError, match="has no config.json: not a Hugging Face model folder$"):
        job(pairs.parent, pairs, tmp_path / "out")  # a data folder as the model
    # ce-ray train's checkpoints, a run's folder of them or one of them, as the model: where its model is
    import shutil

    run = tmp_path / "a-run" / "checkpoints" / "run"
    for step, written in (("checkpoint_0000002", 1_000), ("checkpoint_0000010", 2_000)):
        shutil.copytree(tiny_model, run / step / "model")
        os.utime(run / step / "model" / "config.json", (written, written))
    # the latest by time, not by name: a run named after another in a shared storage_path
    shutil.copytree(tiny_model, run.parent / "zeta" / "checkpoint_0000001" / "model")
    os.utime(run.parent / "zeta" / "checkpoint_0000001" / "model" / "config.json", (500, 500))
    for given in (run.parent.parent, run.parent, run, run / "checkpoint_0000010"):  # the output of a run stopped too
        with pytest.raises(ModelError, match=rf"^{given} has no config.json: not a Hugging Face model folder; it "
                                             rf"holds ce-ray train's checkpoints, whose model is {run}/checkpoint_"
                                             r"0000010/model \(the run's --output holds the model it published\)$"):
            job(given, pairs, tmp_path / "out")
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(OutputError, match=r"^output \(--output\) \S+notes\.txt is a file: give a folder$"):
        job(tiny_model, pairs, tmp_path / "notes.txt")
    (tmp_path / "done" / "results").mkdir(parents=True)
    (tmp_path / "done" / "_SUCCESS").write_text("{}")
    # A folder that no ce-ray job wrote (no _ce_ray/): a user's own results/ and eval.json, which an overwrite
    # deleted, and a resume was refused pointing to the overwrite.
    (tmp_path / "done" / "results" / "thesis.txt").write_text("mine")
    (tmp_path / "done" / "eval.json").write_text("{}")
    for mode in ("error", "overwrite", "resume"):
        with pytest.raises(OutputError, match=r"^output \(--output\) \S+done holds results/, rejects/ or _SUCCESS "
                                              r"that no ce-ray score or rerank job wrote \(it has no _ce_ray/\)"):
            job(tiny_model, pairs, tmp_path / "done", mode=mode)
    assert sorted(p.name for p in (tmp_path / "done").rglob("*")) == ["_SUCCESS", "eval.json", "results", "thesis.txt"]
    (tmp_path / "done" / "_ce_ray").mkdir()
    (tmp_path / "done" / "_ce_ray" / "job.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="already has results"):
        job(tiny_model, pairs, tmp_path / "done")
    # Training into the model's own folder would replace the weights it starts from.
    own = _model_copy(tiny_model, tmp_path, "own")
    with pytest.raises(ConfigError, match=r"^output \(--output\) \S+own/ is the model's own folder, which the "
                                          r"trained model would replace: give another output$"):
        train(TrainConfig(model=str(own), train_data=str(pairs), output=str(own) + "/"))
    with pytest.raises(ConfigError, match=r"^output \(--output\) file://\S+own is the model's own folder"):
        train(TrainConfig(model=str(own), train_data=str(pairs), output=f"file://{own}"))  # it was taken
    # A folder of a user's files that is no model (`--output /tmp`, a project's folder): the model's files replaced
    # those of their names, and any `*.model` was removed as an earlier model's.
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("config.json", "notes.txt", "spm.model"):
        (mine / name).write_text("mine")
    with pytest.raises(ConfigError, match=r"^output \(--output\) \S+mine holds other files than a model's "
                                          r"\(config\.json, notes\.txt\) and no model: the trained model's files "
                                          r"would replace"):
        train(TrainConfig(model=str(tiny_model), train_data=str(pairs), output=str(mine)))
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "notes.txt", "spm.model"]
    # A project's own config.json and README.md, of a model's names, were replaced without a word.
    from ce_ray.train import _refuse_files_of_another

    (mine / "notes.txt").unlink()
    (mine / "README.md").write_text("# My project\n")
    with pytest.raises(ConfigError, match=r"^output \(--output\) \S+mine holds other files than a model's "
                                          r"\(README\.md, config\.json\) and no model"):
        _refuse_files_of_another(pafs.LocalFileSystem(), str(mine), str(mine))
    # Not a model's files of a publish cut short (its configuration, its card), nor the run's own checkpoints (its
    # storage_path inside), nor a hidden file: each is taken, as the same command finishes the run.
    (mine / "config.json").write_text('{"model_type": "bert"}')
    (mine / "README.md").write_text("---\nlibrary_name: sentence-transformers\n---\n")
    for name in (".gitkeep", "ckpt"):
        (mine / name).write_text("")
    _refuse_files_of_another(pafs.LocalFileSystem(), str(mine), str(mine), "ckpt")
    assert not (tmp_path / "out").exists() and not (tmp_path / "trained").exists()


def test_links_planted_in_an_output_folder_lead_no_write_of_the_job_elsewhere(ray_local, tmp_path, tiny_model):
    """A shared output folder (`/tmp/scored`) that another user made first, links in it: `_ce_ray/job.json` led to a
    file of the user's, which the job replaced with its settings (exit 0), and a `results` link to a folder of theirs
    took the job's parts there, an overwrite deleting what was there. The file's link is replaced, the folder's
    refused before any work; `ce-ray eval --output` a link still writes its file, as the user named it."""
    from ce_ray.sink import OutputError

    pd.DataFrame({"id": [1, 2], "query": ["q", "q"], "document": ["a", "b"]}).to_parquet(tmp_path / "p.parquet")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("precious")
    shared = tmp_path / "shared"
    (shared / "_ce_ray").mkdir(parents=True)
    (shared / "_ce_ray" / "job.json").symlink_to(victim / "notes.txt")
    job(tiny_model, tmp_path / "p.parquet", shared)
    assert (victim / "notes.txt").read_text() == "precious"
    assert not (shared / "_ce_ray" / "job.json").is_symlink() and len(results(shared)) == 2
    for mode in ("error", "overwrite"):
        linked = tmp_path / f"linked-{mode}"
        linked.mkdir()
        (linked / "results").symlink_to(victim)
        with pytest.raises(OutputError, match=rf"^{linked}/results is a link: a job writes its own folders in its "
                                              "output, not through links; remove it, or write the output elsewhere$"):
            job(tiny_model, tmp_path / "p.parquet", linked, mode=mode)
    assert sorted(p.name for p in victim.iterdir()) == ["notes.txt"]
    from ce_ray.evaluate import write_file

    (tmp_path / "eval.json").symlink_to(victim / "eval.json")
    write_file(str(tmp_path / "eval.json"), b"{}")
    assert (victim / "eval.json").read_text() == "{}" and (tmp_path / "eval.json").is_symlink()


def test_a_replica_that_fails_as_it_starts_is_said_by_its_error(ray_local):
    """An error of a replica's start (a model that transformers cannot load) came as Ray's ActorDiedError, whose
    text alone holds it: the job's last line was its whole traceback, 2,500 characters of it."""
    import ray

    from ce_ray.runtime import failure_cause

    class _ReplicaThatCannotStart:  # defined here, so that Ray's workers get it by value
        def __init__(self):
            raise RuntimeError("the model cannot load")

        def __call__(self, batch):
            return batch

    with pytest.raises(ray.exceptions.ActorDiedError) as failed:
        ray.data.range(4).map_batches(_ReplicaThatCannotStart, concurrency=1).materialize()
    assert failure_cause(failed.value) == "RuntimeError: the model cannot load"


def _model_copy(tiny_model, tmp_path, name):
    import shutil

    target = tmp_path / name
    shutil.copytree(tiny_model, target)
    return target


def test_a_max_length_past_the_models_positions_fails_before_any_work(tmp_path, tiny_model):
    """BERT's 512 learned positions: a longer max_length indexed past them (an IndexError on a CPU, on a GPU a
    device-side assert that ends the replica's process), mid-job. Now it is refused before any work, naming the
    setting by its flag too (it named the YAML key alone)."""
    from ce_ray.config import TrainConfig
    from ce_ray.train import train

    pd.DataFrame({"query": ["q"], "document": ["d " * 900], "label": [1.0]}).to_parquet(tmp_path / "p.parquet")
    past = r"^max_length \(--max-length\) 1000: \S+ takes at most 512 tokens \(its position table\)$"
    with pytest.raises(ConfigError, match=past):
        job(tiny_model, tmp_path / "p.parquet", tmp_path / "out", max_length=1000)
    with pytest.raises(ConfigError, match=past):
        train(TrainConfig(model=str(tiny_model), train_data=str(tmp_path / "p.parquet"), output=str(tmp_path / "m"),
                          max_length=1000))
    assert not (tmp_path / "out").exists() and not (tmp_path / "m").exists()
    # A RoBERTa whose tokenizer names no length: CrossEncoder's rule gives its 514 positions, two of which come
    # before the first token's; the pairs are cut at 512 instead, said.
    from ce_ray.model_folder import usable_max_length

    (tmp_path / "roberta").mkdir()
    (tmp_path / "roberta" / "config.json").write_text(json.dumps(
        {"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}))
    assert usable_max_length(str(tmp_path / "roberta"), "r", 514) == 512
    assert usable_max_length(str(tmp_path / "roberta"), "r", 256) == 256
    assert usable_max_length(str(tiny_model), "t", 512) == 512
    # RoBERTa's kin number them so too: an MPNet of 130 positions had no bound, and a long pair failed mid-job.
    (tmp_path / "roberta" / "config.json").write_text(json.dumps(
        {"model_type": "mpnet", "max_position_embeddings": 130, "pad_token_id": 1}))
    assert usable_max_length(str(tmp_path / "roberta"), "m", 512) == 128


def test_model_needing_remote_code_is_refused(tmp_path, tiny_model):
    model = _model_copy(tiny_model, tmp_path, "remote-code")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "modeling_evil.py").write_text("raise SystemExit('repository code ran')\n")
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(ModelError, match=r"needs code from its repository .* trust_remote_code true \(--trust-r"):
        job(model, tmp_path / "p.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_repository_classifier_of_any_name_scores_with_its_head(ray_local, tmp_path, tiny_model):
    """A reranker whose repository code is trusted is a sequence classifier where its config's auto_map loads its
    class as one, whatever the class's name: `MyModel` was refused as having no classifier (and training said it
    would get a new head), where CrossEncoder scores with its trained one."""
    import ce_ray
    from ce_ray.model_folder import has_classifier

    model = _model_copy(tiny_model, tmp_path, "remote-named")
    config = json.loads((model / "config.json").read_text())
    config |= {"architectures": ["MyModel"], "model_type": "mybert",
               "auto_map": {"AutoConfig": "custom.MyConfig", "AutoModelForSequenceClassification": "custom.MyModel"}}
    (model / "config.json").write_text(json.dumps(config))
    (model / "custom.py").write_text(
        "from transformers import BertConfig, BertForSequenceClassification\n"
        "class MyConfig(BertConfig):\n    model_type = 'mybert'\n"
        "class MyModel(BertForSequenceClassification):\n    config_class = MyConfig\n")
    pairs = [("what is a cell", "the basic unit of life"), ("river", "a tax on music")]
    scores = ce_ray.predict(str(model), pairs, trust_remote_code=True)
    np.testing.assert_allclose(scores, ce_ray.predict(str(tiny_model), pairs), atol=1e-6)
    # A class the auto_map loads as another kind (a base model) has no classifier, whatever it inherits.
    config["auto_map"] = {"AutoConfig": "custom.MyConfig", "AutoModel": "custom.MyModel"}
    (model / "config.json").write_text(json.dumps(config))
    assert not has_classifier(str(model))


def test_pickle_only_weights_are_refused_unless_allowed(ray_local, tmp_path, tiny_model):
    import torch

    import ce_ray
    from safetensors.torch import load_file

    model = _model_copy(tiny_model, tmp_path, "pickled")
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    os.remove(model / "model.safetensors")
    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(ModelError, match=r"only pickle weights .* give allow_pickle true \(--allow-pickle\) if"):
        job(model, tmp_path / "p.parquet", tmp_path / "out")
    # Another safetensors file beside them (an adapter's) is not the model's weights: it passed as safe, and the
    # job failed once begun, finding no model.safetensors.
    from safetensors.torch import save_file

    save_file({"lora_A": torch.zeros(2, 2)}, model / "adapter_model.safetensors")
    with pytest.raises(ModelError, match="only pickle weights"):
        job(model, tmp_path / "p.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # Nor is a safetensors index whose shards are the pickle file: the job began its output, and failed in the
    # replicas, where torch's weights-only load alone stopped it.
    weights = list(torch.load(model / "pytorch_model.bin", weights_only=True))
    (model / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": dict.fromkeys(weights, "pytorch_model.bin")}))
    with pytest.raises(ModelError, match="only pickle weights"):
        job(model, tmp_path / "p.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    os.remove(model / "model.safetensors.index.json")
    # --allow-pickle (a folder one trusts) scores with them: the model's own weights, as its safetensors give them.
    os.remove(model / "adapter_model.safetensors")
    pairs = [("what is a cell", "the basic unit of life"), ("river", "a tax on music")]
    pickled = ce_ray.predict(str(model), pairs, allow_pickle=True)
    assert pickled.tolist() == ce_ray.predict(str(tiny_model), pairs).tolist()


def test_a_damaged_model_folder_fails_before_the_output_is_touched(tmp_path, tiny_model):
    """A safetensors file cut short (as an interrupted copy leaves it), a config.json that is not JSON, no tokenizer."""
    import ce_ray
    from ce_ray.model_folder import check_safe

    pd.DataFrame({"query": ["q"], "document": ["d"]}).to_parquet(tmp_path / "p.parquet")
    model = _model_copy(tiny_model, tmp_path, "cut-short")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelError, match=r"model\.safetensors is not a whole safetensors file \(.*\): copy or "
                                         "download it again"):
        job(model, tmp_path / "p.parquet", tmp_path / "out")
    model = _model_copy(tiny_model, tmp_path, "bad-config")
    (model / "config.json").write_text('{"model_type": "bert",\n')
    with pytest.raises(ModelError, match=r"bad-config/config\.json is not valid JSON \(.*line 2"):
        job(model, tmp_path / "p.parquet", tmp_path / "out")
    # A model saved without its tokenizer: transformers made an empty one, every word [UNK], and the job scored that.
    model = _model_copy(tiny_model, tmp_path, "no-tokenizer")
    for name in TOKENIZER_FILES:
        (model / name).unlink()
    no_tokenizer = r"no-tokenizer has no tokenizer files \(tokenizer\.json, or vocab\.txt and the like\)"
    with pytest.raises(ModelError, match=no_tokenizer):
        job(model, tmp_path / "p.parquet", tmp_path / "out")
    with pytest.raises(ModelError, match=no_tokenizer):
        ce_ray.predict(str(model), [("q", "d")])
    with pytest.raises(ModelError, match=no_tokenizer):  # among the folder's checks before Ray starts (it came after)
        check_safe(str(model), allow_pickle=False, trust_remote_code=False)
    from transformers import CanineTokenizer  # a tokenizer of characters: its tokenizer_config.json alone

    CanineTokenizer().save_pretrained(model)
    check_safe(str(model), allow_pickle=False, trust_remote_code=False)
    # A model type that transformers does not know: its first line, not its advice on upgrading over two more.
    model = _model_copy(tiny_model, tmp_path, "unknown-type")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"model_type": "no-such-type"}))
    with pytest.raises(ModelError, match=r"^cannot load model \S+unknown-type: ValueError: .*model type `no-such-type`"
                                         r" but Transformers does not recognize this architecture[^\n]*$"):
        job(model, tmp_path / "p.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_model_that_names_no_max_length_is_refused_before_the_work(tmp_path, tiny_model):
    """An XLNet (no position table) whose tokenizer's files name no model_max_length: transformers gives it 1e30,
    and every tokenize task failed with `OverflowError: Python int too large to convert to C long`, the job's last
    line `--mode resume finishes it`. Refused before the output is touched, naming the flag; with it, scored."""
    import shutil

    import torch
    from transformers import XLNetConfig, XLNetForSequenceClassification

    model = tmp_path / "xlnet"
    torch.manual_seed(0)
    XLNetForSequenceClassification(XLNetConfig(vocab_size=30522, d_model=32, n_layer=1, n_head=2, d_inner=64,
                                               num_labels=1)).save_pretrained(model)
    for name in TOKENIZER_FILES:
        shutil.copy(tiny_model / name, model / name)
    settings = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in settings.items()
                                                             if k != "model_max_length"}))
    pd.DataFrame({"query": ["q"], "document": ["d " * 600]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(ModelError, match=r"xlnet names no max length \(neither its tokenizer's files, "
                                         r"model_max_length, nor its config, max_position_embeddings\): give "
                                         r"max_length \(--max-length\)"):
        job(model, tmp_path / "p.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert job(model, tmp_path / "p.parquet", tmp_path / "out", max_length=64).rows_scored == 1


def test_checkpoints_are_loaded_with_weights_only():
    """Every torch.load in the library passes weights_only=True (no pickle code runs from a checkpoint)."""
    calls = []
    for name in os.listdir(ROOT / "ce_ray"):
        if name.endswith(".py"):
            for node in ast.walk(ast.parse((ROOT / "ce_ray" / name).read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load" and \
                        getattr(node.func.value, "id", "") == "torch":
                    safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                               for k in node.keywords)
                    calls.append((name, node.lineno, safe))
    assert all(safe for _, _, safe in calls), calls


def test_unknown_and_mistyped_config_keys_fail(tmp_path):
    (tmp_path / "a.yaml").write_text("model: m\nrows_per_blok: 10\n")
    with pytest.raises(ConfigError, match="unknown setting 'rows_per_blok' \\(did you mean 'rows_per_block'\\?\\)"):
        load_config(ScoreConfig, str(tmp_path / "a.yaml"))
    (tmp_path / "b.yaml").write_text("model: m\nmode: resumee\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: mode \(--mode\): 'resumee' is not one of 'error', 'overwrite', "
                                          r"'resume'$"):
        load_config(ScoreConfig, str(tmp_path / "b.yaml"))
    # A key that is not text (`1:`; `on:`, which YAML reads as true) failed in the did-you-mean lookup: a TypeError's
    # traceback, exit 1 and `--mode resume finishes it`; a file not UTF-8, an error that named no file.
    from ce_ray.config import TrainConfig

    for text, said in (("1: 2", "unknown setting 1: a setting's name is text$"),
                       ("on: 2", r"unknown setting True: a setting's name is text \(YAML reads on, off, yes and no"),
                       ("deepspeed:\n  2: 1", r"unknown setting deepspeed\.2: a setting's name is text$")):
        (tmp_path / "c.yaml").write_text(f"model: m\n{text}\n")
        with pytest.raises(ConfigError, match=rf"^{tmp_path}/c\.yaml: {said}"):
            load_config(TrainConfig, str(tmp_path / "c.yaml"))
    (tmp_path / "d.yaml").write_bytes(b"\xff\xfemodel: m\n")
    with pytest.raises(ConfigError, match=rf"^config file {tmp_path}/d\.yaml is not UTF-8 text \('utf-8' codec"):
        load_config(ScoreConfig, str(tmp_path / "d.yaml"))
    # A choice of numbers takes no YAML true (== 1) nor 2.0 (== 2): DeepSpeed was given stage True.
    for stage in ("true", "2.0"):
        (tmp_path / "e.yaml").write_text(f"model: m\ndeepspeed:\n  stage: {stage}\n")
        with pytest.raises(ConfigError, match=r"deepspeed\.stage: (True|2\.0) is not one of 1, 2, 3$"):
            load_config(TrainConfig, str(tmp_path / "e.yaml"))


def test_a_config_file_says_what_it_holds_or_is_refused(tmp_path, monkeypatch):
    """Each of these ran other settings than the file's without a word: a key given twice kept the last, a
    `deepspeed:` section with its keys left commented trained with DDP, a file of `false` was no settings, a
    leading `~` made a folder named `~`. Another command's setting was said to be a close spelling (qrels to
    score: "did you mean 'replicas'"); PyYAML's error ran over two lines."""
    from ce_ray.config import TrainConfig

    def refused(text: str, said: str, cls=ScoreConfig) -> None:
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ConfigError, match=said):
            load_config(cls, str(tmp_path / "c.yaml"))

    refused("model: m\noutput: /new\nmode: error\noutput: /old\n",
            r"c\.yaml is not valid YAML: 'output' is given twice \(line 4, column 1\)$")
    refused("model: m\ndeepspeed:\n#  stage: 2\n", r"c\.yaml: the section deepspeed: is empty: write `deepspeed: "
            r"\{\}` for its defaults, or leave it out$", TrainConfig)
    assert load_config(TrainConfig, None, {"model": "m"}).deepspeed is None
    for text in ("false", "0", "[]", '""'):
        refused(text + "\n", r"c\.yaml must hold a mapping of settings, not ")
    refused("model: m\nqrels: q.tsv\n", r"unknown setting 'qrels' \(a setting of ce-ray eval\)$")
    refused("model: [m\n", r"c\.yaml is not valid YAML: [^\n]+ \(line \d+, column \d+\)$")
    refused("model: m\ndeepspeed:\n  stag: 2\n", r"unknown setting 'deepspeed\.stag' \(did you mean 'stage'\?\)$",
            TrainConfig)
    refused("model: m\nstage: 3\n", r"unknown setting 'stage' \(a key of the deepspeed: section\)$", TrainConfig)
    # A name that becomes a file's or a folder's (a run's checkpoints, a split's candidates) is no path.
    from ce_ray.config import CandidatesConfig

    refused("model: m\nrun_name: ../escaped\n", r"run_name \(--run-name\) '\.\./escaped' becomes a file's or a "
            r"folder's name: give a name without / or \\, not \. or \.\.$", TrainConfig)
    refused("data: d\nsplit: sub/x\n", r"split \(--split\) 'sub/x' becomes a file's", CandidatesConfig)
    assert load_config(ScoreConfig, "") == ScoreConfig()  # a script's `--config "${CONFIG:-}"`
    (tmp_path / "c.yaml").write_text("defaults: &d\n  model: m\n")
    refused("x: &d {model: m}\n<<: *d\ninput: i\n", r"unknown setting 'x'")  # a merge key is no key given twice
    (tmp_path / "c.yaml").write_text("# nothing set yet\n")
    assert load_config(ScoreConfig, str(tmp_path / "c.yaml")) == ScoreConfig()
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.yaml").write_text("model: ~/tiny\ninput: ~/pairs.parquet\noutput: ~\nprompt: ~/not a path\n")
    config = load_config(ScoreConfig, str(tmp_path / "c.yaml"), {"output": "~/scored"})
    assert (config.model, config.input, config.output) == (f"{tmp_path}/tiny", f"{tmp_path}/pairs.parquet",
                                                           f"{tmp_path}/scored")
    assert config.prompt == "~/not a path"


def test_settings_that_are_not_finite_numbers_fail_before_any_work(tmp_path):
    """YAML's .nan and .inf, a flag's nan, a keyword's float("inf"): each passed the range checks (a NaN is
    neither <= 0 nor < 0), and a NaN weight_decay trained a model of NaN weights to the end."""
    import ce_ray
    from ce_ray.config import TrainConfig

    for setting in ("lr: .nan", "weight_decay: .nan", "max_grad_norm: .nan", "pos_weight: .inf",
                    "warmup_ratio: -.inf", "cpus_per_worker: .inf"):
        (tmp_path / "t.yaml").write_text(f"model: m\n{setting}\n")
        name = setting.split(":")[0]
        flag = name.replace("_", "-")  # named by its flag too (it named the YAML key alone)
        with pytest.raises(ConfigError, match=rf"{name} \(--{flag}\): expected a finite number, got -?(nan|inf)$"):
            load_config(TrainConfig, str(tmp_path / "t.yaml"))
    with pytest.raises(ConfigError, match=r"^lr \(--lr\): expected a finite number, got nan"):
        load_config(TrainConfig, overrides={"lr": float("nan")})  # as the flag --lr nan gives it
    with pytest.raises(ConfigError, match=r"^tokenize_cpus \(--tokenize-cpus\): expected a finite number, got inf"):
        load_config(ScoreConfig, overrides={"tokenize_cpus": float("inf")})
    with pytest.raises(ConfigError, match=r"^pos_weight \(--pos-weight\): expected a finite number, got inf"):
        ce_ray.train(model="m", train_data="t", output="o", pos_weight=float("inf"))  # before it reads anything
    with pytest.raises(ConfigError, match=r"^weight_decay \(--weight-decay\): expected a finite number, got nan"):
        ce_ray.train(TrainConfig(model="m", train_data="t", output="o", weight_decay=float("nan")))


def test_settings_that_failed_in_the_work_are_refused_before_it():
    """Each passed the checks, then failed or hung once Ray started: a seed of 2**32 in Ray Data's shuffle after the
    data was read (saying to run the same command again), an activation that builds but is no function of the
    logits in every replica, 100,000 rank partitions ranking 3 rows for minutes; min_replicas above replicas was a
    note, one column for the query and the document scored each query against itself; a split's name as below."""
    from ce_ray.config import RerankConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"^seed \(--seed\) must be from 0 to 2\*\*31 - 1 .*got 4294967296 "):
        load_config(TrainConfig, overrides={"model": "m", "seed": 2**32})
    assert load_config(TrainConfig, overrides={"model": "m", "seed": 2**31 - 1}).seed == 2**31 - 1
    for activation in ("torch.Tensor", "torch.nn.Module", "torch.Generator"):
        with pytest.raises(ConfigError, match=rf"^activation \(--activation\) '{activation}' is no class that makes "
                                              r"a function .*: (TypeError|NotImplementedError): "):
            load_config(ScoreConfig, overrides={"model": "m", "activation": activation})
    assert load_config(ScoreConfig, overrides={"model": "m", "activation": "torch.nn.Tanh"}).activation
    # A class's name alone, as a CrossEncoder user types it, was told to give trust_remote_code, which then failed.
    for activation, said in (("sigmoid", "did you mean torch.nn.Sigmoid?"),
                             ("identity", "did you mean torch.nn.Identity?"),
                             ("logit", "give one, as torch.nn.Sigmoid (the default) or torch.nn.Identity (the logit)"),
                             ("softmax", "give one, as torch.nn.Sigmoid")):  # no hint of a class refused below
        for trusted in (False, True):
            with pytest.raises(ConfigError) as refused:
                load_config(ScoreConfig, overrides={"model": "m", "activation": activation,
                                                    "trust_remote_code": trusted})
            assert str(refused.value).startswith(f"activation (--activation) {activation!r} is no class's dotted path: "
                                                 + said)
    # A softmax over one logit scores every pair 1 (LogSoftmax 0): no order, without a word
    for activation, score in (("torch.nn.Softmax", 1), ("torch.nn.Softmin", 1), ("torch.nn.LogSoftmax", 0)):
        with pytest.raises(ConfigError, match=rf"^activation \(--activation\) '{activation}' is no class .*: "
                                              rf"TypeError: {activation[9:]} gives every logit one score, {score}$"):
            load_config(ScoreConfig, overrides={"model": "m", "activation": activation})
    with pytest.raises(ConfigError, match=r"^rank_partitions \(--rank-partitions\) must be from 1 to 10,000, got "
                                          r"100,000$"):
        load_config(RerankConfig, overrides={"model": "m", "rank_partitions": 100_000})
    with pytest.raises(ConfigError, match=r"^min_replicas \(--min-replicas\) 5 is more than replicas "
                                          r"\(--replicas\) 2, the most the job starts$"):
        load_config(ScoreConfig, overrides={"model": "m", "replicas": 2, "min_replicas": 5})
    for cls in (ScoreConfig, RerankConfig, TrainConfig):
        with pytest.raises(ConfigError, match=r"^query_column \(--query-column\) and document_column "
                                              r"\(--document-column\) are both 'text': name the query's column"):
            load_config(cls, overrides={"model": "m", "query_column": "text", "document_column": "text"})
    # A split is a file's name, qrels/<split>.tsv: ../qrels/test read outside qrels/ once Ray had started, and an
    # empty one wrote candidates-.parquet.
    from ce_ray.config import CandidatesConfig

    for cls, setting, value in ((TrainConfig, "eval_split", "../qrels/test"), (TrainConfig, "train_split", ""),
                                (CandidatesConfig, "split", "")):
        with pytest.raises(ConfigError, match=rf"^{setting} \(--{setting.replace('_', '-')}\) '{re.escape(value)}' "
                                              r"becomes a file's or a folder's name: .*, nor empty$"):
            load_config(cls, overrides={"model": "m", setting: value} if cls is TrainConfig else {setting: value})


def test_a_config_built_in_python_is_checked_as_yaml_and_flags_are(tmp_path):
    """`ce_ray.score(ds, config=ScoreConfig(batch_tokens=4096.0))` and `run_score(ScoreConfig(max_length="512"))`
    skipped the check that YAML keys, flags and keywords get: the first failed the job in its replicas (`slice
    indices must be integers`), the second in Python's words (`'<' not supported between instances of 'str' and
    'int'`). A path is taken as text, as a keyword's is; a whole number as a float; a section as its mapping."""
    from ce_ray.config import CandidatesConfig, DeepSpeedConfig, EvalConfig, TrainConfig

    for config, message in ((ScoreConfig(model="m", batch_tokens=4096.0), r"^batch_tokens \(--batch-tokens\): "
                             r"expected int, got float 4096\.0$"),
                            (ScoreConfig(model="m", max_length="512"), r"^max_length \(--max-length\): expected int, "
                             r"got str '512'$"),
                            (TrainConfig(model="m", dtype="float64"), r"^dtype \(--dtype\): 'float64' is not one of"),
                            (EvalConfig(input="i", k="10"), r"^k \(--k\): expected int, got str '10'$"),
                            (CandidatesConfig(data="d", top_k=2.5), r"^top_k \(--top-k\): expected int, got float")):
        with pytest.raises(ConfigError, match=message):
            config.validate()
    config = TrainConfig(model=tmp_path / "m", lr=1, deepspeed={"stage": 3})
    config.validate()
    assert (config.model, config.lr, config.deepspeed) == (str(tmp_path / "m"), 1.0, DeepSpeedConfig(stage=3))


# --- S3 -------------------------------------------------------------------------------------------------

SECRET = "fake-secret-Zq7uV9xK2pLm"
KEY_ID = "AKIAFAKEKEYID7Q2W"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_credentials(monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", KEY_ID), ("AWS_SECRET_ACCESS_KEY", SECRET),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)


@pytest.mark.timeout(60)
def test_unreachable_s3_endpoint_fails_fast_naming_it(tmp_path, tiny_model, monkeypatch, fake_credentials):
    import time

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    start = time.monotonic()
    with pytest.raises(InputError) as error:
        job(tiny_model, "s3://ce-ray-in/pairs/", tmp_path / "out")
    assert time.monotonic() - start < 30
    assert f"cannot reach s3://ce-ray-in at {endpoint}" in str(error.value)
    assert SECRET not in str(error.value) and KEY_ID not in str(error.value)


@pytest.mark.timeout(60)
def test_wrong_s3_credentials_fail_fast_without_printing_them(tmp_path, tiny_model, monkeypatch, fake_credentials):
    import boto3
    import moto.settings
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="ce-ray-in")
        monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # from now on keys are checked
        with pytest.raises(InputError) as error:
            job(tiny_model, "s3://ce-ray-in/pairs/", tmp_path / "out")
        with pytest.raises(InputError) as out_error:
            job(tiny_model, str(tmp_path), "s3://ce-ray-in/out")
    finally:
        server.stop()
    for e in (error, out_error):
        assert f"s3://ce-ray-in at {endpoint} refused the credentials" in str(e.value)
        assert SECRET not in str(e.value) and KEY_ID not in str(e.value)


@pytest.mark.timeout(60)
def test_an_output_bucket_that_is_not_there_is_refused_before_any_work(tmp_path, tiny_model, monkeypatch,
                                                                       fake_credentials):
    """rerank and eval to a bucket that does not exist (a typo) fail naming it, as score does; rerank created
    the bucket and wrote into it, eval's error named no bucket."""
    from moto.server import ThreadedMotoServer

    from ce_ray.config import EvalConfig, RerankConfig
    from ce_ray.evaluate import run_eval
    from ce_ray.rerank import run_rerank

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    pd.DataFrame({"query_id": [1], "query": ["q"], "document": ["d"], "score": [0.5], "label": [1]}).to_parquet(
        tmp_path / "pairs.parquet")
    try:
        with pytest.raises(InputError, match=f"bucket ce-ray-typo does not exist at {endpoint}"):
            run_rerank(RerankConfig(model=str(tiny_model), input=str(tmp_path / "pairs.parquet"),
                                    output="s3://ce-ray-typo/out", score_column="score_2"))
        with pytest.raises(InputError, match=f"bucket ce-ray-typo does not exist at {endpoint}"):
            run_eval(EvalConfig(input=str(tmp_path / "pairs.parquet"), output="s3://ce-ray-typo/eval.json"))
    finally:
        server.stop()


@pytest.mark.timeout(400)
def test_credentials_never_reach_outputs_logs_or_configs(tmp_path, tiny_model):
    """A job over S3 with fake keys in its environment: no output file, log line or job file holds them."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    ray_tmp = tempfile.mkdtemp(prefix="cer-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "RAY_TMPDIR": ray_tmp, "RAY_ADDRESS": "local", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    try:
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=KEY_ID,
                          aws_secret_access_key=SECRET, region_name="us-east-1")
        s3.create_bucket(Bucket="ce-ray-io")
        frame = pd.DataFrame({"query": ["what is ray", None], "document": ["a distributed engine", "x"]})
        s3.put_object(Bucket="ce-ray-io", Key="in/pairs.parquet", Body=frame.to_parquet())
        result = subprocess.run(
            [sys.executable, "-m", "ce_ray.cli", "score", "--model", str(tiny_model), "--input",
             "s3://ce-ray-io/in/", "--output", "s3://ce-ray-io/out"],
            cwd=ROOT, env=env, capture_output=True, timeout=360)
        assert result.returncode == 0, result.stderr[-3000:]
        written = {o["Key"]: s3.get_object(Bucket="ce-ray-io", Key=o["Key"])["Body"].read()
                   for o in s3.list_objects_v2(Bucket="ce-ray-io", Prefix="out/")["Contents"]}
    finally:
        server.stop()
    assert {"out/_SUCCESS", "out/_ce_ray/job.json"} <= set(written)
    assert any(k.startswith("out/results/") for k in written) and any(k.startswith("out/rejects/") for k in written)
    texts = {"stdout": result.stdout, "stderr": result.stderr, **{f"s3://{k}": v for k, v in written.items()}}
    for root, _, files in os.walk(ray_tmp):  # every log and file of the job's Ray session
        for name in files:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    texts[path] = f.read()
    assert len(texts) > 10
    for secret in (SECRET, KEY_ID):
        leaks = [where for where, data in texts.items() if secret.encode() in data]
        assert not leaks, f"{secret} found in {leaks}"


def test_a_line_of_several_values_that_are_not_text_is_rejected_for_its_first():
    """_parse_lines_slowly: a line whose query is a number and whose document a list is rejected for the first
    column checked (the query), as `text_column` names the first reason; each value is kept as JSON text."""
    from ce_ray.batching import REJECT

    lines = [b'{"query": 1, "document": [2]}', b'{"query": "q", "document": {"a": 1}}',
             b'{"query": "q", "document": "d"}']
    table = readers._parse_lines_slowly(lines, [1, 2, 3], "f.jsonl", ["query", "document"])
    assert table.column(REJECT).to_pylist() == ["query is int, not text", "document is dict, not text", None]
    assert table.column("query").to_pylist() == ["1", "q", "q"]
    assert table.column("document").to_pylist() == ["[2]", '{"a": 1}', "d"]


def test_a_bad_lines_number_counts_the_blank_lines_of_earlier_chunks(tmp_path, monkeypatch):
    """json_lines_chunks: the line a reason names is the file's line, blank lines of earlier chunks counted, so that
    a user finds it with `sed -n Np` (the first chunk's numbers alone were checked)."""
    from ce_ray.batching import REJECT

    monkeypatch.setattr(readers, "JSON_LINES_CHUNK_BYTES", 64)
    lines = [b'{"query": "q%d"}' % i for i in range(3)] + [b"", b"", b"  "]
    lines += [b'{"query": "q%d"}' % i for i in range(3, 9)] + [b"{not json"] + [b'{"query": "q9"}']
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with open(tmp_path / "rows.jsonl", "rb") as f:
        tables = list(readers.json_lines_chunks(f, str(tmp_path / "rows.jsonl"), ["query"]))
    assert len(tables) > 2  # several chunks
    reasons = [r for t in tables if REJECT in t.column_names for r in t.column(REJECT).to_pylist() if r]
    assert len(reasons) == 1 and reasons[0].startswith(f"{tmp_path / 'rows.jsonl'} line 13: not valid JSON")


def test_an_input_of_three_empty_files_names_them_all_without_an_ellipsis(tmp_path):
    """The files' names end with `...` only where more are left unnamed; so do the skipped files' below."""
    files = []
    for name in "abc":
        (tmp_path / f"{name}.jsonl").write_text("")
        files.append(str(tmp_path / f"{name}.jsonl"))
    with pytest.raises(InputError, match=r"\(3 file\(s\), all empty: \S+/a\.jsonl, \S+/b\.jsonl, \S+/c\.jsonl\)$"):
        check_inputs(pafs.LocalFileSystem(), files, "jsonl", ["query", "document"])
    (tmp_path / "d.jsonl").write_text("")
    with pytest.raises(InputError, match=r"all empty: \S+/a\.jsonl, \S+/b\.jsonl, \S+/c\.jsonl, \.\.\.\)$"):
        check_inputs(pafs.LocalFileSystem(), files + [str(tmp_path / "d.jsonl")], "jsonl", ["query", "document"])


def test_five_skipped_files_are_named_without_an_ellipsis(tmp_path, capsys):
    from ce_ray.input_files import list_files

    (tmp_path / "pairs.tsv").write_text("query\tdocument\nq\td\n")
    for name in ("a.md", "b.md", "c.md", "d.md", "e.md"):
        (tmp_path / name).write_text("# not pairs")
    list_files(str(tmp_path), "auto")
    said = capsys.readouterr().err.rstrip()
    assert said.endswith("skipped 5 file(s) that are not tsv: a.md, b.md, c.md, d.md, e.md")
    (tmp_path / "f.md").write_text("# not pairs")
    list_files(str(tmp_path), "auto")
    assert capsys.readouterr().err.rstrip().endswith("e.md, ...")


def test_an_empty_file_beside_files_of_rows_is_no_error(tmp_path):
    """check_inputs: an input fails for having no rows only where every file is empty; an empty file (a writer's
    last) beside files of rows contributes none and needs no columns."""
    (tmp_path / "a.jsonl").write_text('{"query": "q", "document": "d"}\n')
    (tmp_path / "b.jsonl").write_text("")
    checks, schema = check_inputs(pafs.LocalFileSystem(), [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")],
                                  "jsonl", ["query", "document"])
    assert [c.rows for c in checks][1] == 0 and set(schema.names) >= {"query", "document"}


@pytest.mark.parametrize("command, settings, refused", [
    ("score", {"replicas": 2, "min_replicas": 2}, None),
    ("score", {"replicas": 2, "min_replicas": 3}, r"min_replicas \(--min-replicas\) 3 is more than"),
    ("score", {"max_length": 8}, None),
    ("score", {"max_length": 7}, r"max_length \(--max-length\) must be >= 8"),
    ("rerank", {"rank_partitions": 10_000}, None),
    ("rerank", {"rank_partitions": 10_001}, r"rank_partitions \(--rank-partitions\) must be from 1 to 10,000"),
    ("rerank", {"rank_partitions": 0}, r"rank_partitions \(--rank-partitions\) must be from 1 to 10,000"),
    ("rerank", {"rank_column": "score"}, "must name different columns"),
    ("train", {"keep_checkpoints": 0}, r"keep_checkpoints \(--keep-checkpoints\) must be >= 1"),
    ("train", {"hard_negatives": 0}, None),
    ("train", {"hard_negatives": -1}, r"hard_negatives \(--hard-negatives\) must be >= 0"),
    ("train", {"lr": 0.0}, r"lr \(--lr\) must be > 0"),
    ("train", {"warmup_ratio": 0.99}, None),
    ("train", {"warmup_ratio": 1.0}, r"warmup_ratio \(--warmup-ratio\) must be in \[0, 1\)"),
    ("train", {"pos_weight": 0.0}, r"pos_weight \(--pos-weight\) must be > 0"),
    ("train", {"run_name": ".."}, r"run_name \(--run-name\) '\.\.' becomes a file's or a folder's name"),
    ("train", {"train_split": "."}, r"train_split \(--train-split\) '\.' becomes a file's or a folder's name"),
    ("train", {"run_name": "modèle"},
     r"run_name \(--run-name\) 'modèle': Ray Train takes a run's name in ASCII alone \(it tags its metrics with it\): "
     r"give one without 'è'$"),
])
def test_each_setting_is_refused_past_its_bound_and_taken_at_it(command, settings, refused):
    """Each bound where its message puts it: a warmup over the whole run never decayed the rate, an lr of 0 or a
    pos_weight of 0 (then dropped) trained to no end, 0 checkpoints kept failed the run once it had trained, a run
    name `..` put the checkpoints beside the storage path, ranks named `score` wrote over the scores."""
    from ce_ray.config import RerankConfig, TrainConfig

    cls = {"score": ScoreConfig, "rerank": RerankConfig, "train": TrainConfig}[command]
    if refused is None:
        load_config(cls, None, {"model": "m", **settings})
    else:
        with pytest.raises(ConfigError, match=refused):
            load_config(cls, None, {"model": "m", **settings})


def test_an_s3_place_written_whose_key_begins_with_a_slash_is_refused():
    """`s3://bkt//out` (a script's empty prefix): the parts went under keys that s3fs does not list, and the job
    failed once its work was done, as if they were lost (`--mode resume` again); candidates wrote a file no later
    job could read. A `//` further in is listed, and works."""
    from ce_ray.config import CandidatesConfig, EvalConfig, TrainConfig

    for cls, settings in [(ScoreConfig, {"model": "m", "output": "s3://bkt//out"}),
                          (TrainConfig, {"model": "m", "storage_path": "s3a://bkt///ck/"}),
                          (CandidatesConfig, {"data": "d", "output": "s3://bkt//c"}),
                          (EvalConfig, {"input": "i", "run_output": "s3://bkt//run.txt"})]:
        with pytest.raises(ConfigError, match=r"its key begins with / \(an empty name after the bucket\), which S3 "
                                              r"stores but s3fs does not list: .* "
                                              r"Give s3a?://bkt/(out|ck/|c|run\.txt)$"):
            load_config(cls, None, settings)
    for place in ("s3://bkt", "s3://bkt/", "s3://bkt/a//out", "/local//out"):
        load_config(ScoreConfig, None, {"model": "m", "output": place})


def test_a_runs_default_name_is_its_output_folders_in_ascii():
    """Ray Train tags its metrics with the run's name: an output `modèle` failed the run once Ray Train had started
    (`UnicodeEncodeError`), and the same command again, which the failure told to run."""
    from ce_ray.checkpoints import run_storage
    from ce_ray.config import TrainConfig

    def name(output):
        return run_storage(load_config(TrainConfig, None, {"model": "m", "output": output}))[2]

    assert name("/data/runs/minilm-v2/") == "minilm-v2"
    assert name("/data/modèle") == "modele-" + hashlib.sha256("modèle".encode()).hexdigest()[:8]
    assert name("/data/modéle") != name("/data/modèle") and name("/data/模型").startswith("ce-ray-train-")
    assert all(name(f"/data/{n}").isascii() for n in ("模型", "modèle", "🙂"))


def test_a_yaml_boolean_is_no_number(tmp_path):
    """YAML reads `yes` as true, which Python takes for 1: `batch_size: yes` trained in batches of one."""
    from ce_ray.config import TrainConfig

    (tmp_path / "c.yaml").write_text("model: m\nbatch_size: yes\n")
    with pytest.raises(ConfigError, match=r"batch_size.*: expected int, got a boolean True$"):
        load_config(TrainConfig, str(tmp_path / "c.yaml"))
    # An empty value (`eval_data:`) of a text whose empty means none is that: it was refused, `expected str, got
    # NoneType None`, though the help says `empty: …`. An optional number's stays unset.
    (tmp_path / "c.yaml").write_text("model: m\neval_data:\nbest_metric:\nstorage_path:\neval_max_queries:\n")
    config = load_config(TrainConfig, str(tmp_path / "c.yaml"))
    assert (config.eval_data, config.best_metric, config.storage_path, config.eval_max_queries) == ("", "", "", None)


def test_a_long_list_of_columns_says_how_many_there_are():
    from ce_ray.messages import column_list

    assert column_list([f"c{i}" for i in range(12)]) == ", ".join(f"c{i}" for i in range(12))
    assert column_list([f"c{i}" for i in range(13)]).endswith("c11, ... (13 in all)")


def test_a_relative_model_folder_that_is_missing_is_said_so_and_max_length_is_taken_to_the_last_position(
        tmp_path, tiny_model):
    """`./my-modl` (a typo) was asked of the model hub; a max_length of the model's last position is taken, one
    past it refused before any work."""
    from ce_ray.model_folder import check_max_length, local_model_path

    with pytest.raises(ModelError, match=r"^model folder \./no-such-model does not exist$"):
        local_model_path("./no-such-model")
    check_max_length(str(tiny_model), "m", 512)
    with pytest.raises(ConfigError, match=r"max_length \(--max-length\) 513: m takes at most 512 tokens"):
        check_max_length(str(tiny_model), "m", 513)


def test_a_dashboards_https_address_is_no_ray_address():
    from ce_ray.runtime import RayStartError, _client_server

    assert _client_server("ray://head:10001") == "head:10001"
    with pytest.raises(RayStartError, match=r"RAY_ADDRESS=https://head:8265\): that is a dashboard's address"):
        _client_server("https://head:8265")


def test_input_checks_of_json_lines_files_named_ndjson_keys_left_out_and_null_columns(tmp_path):
    """`.ndjson` is JSON Lines; a file whose every line leaves out a key that another file has, or whose lines
    checked hold only nulls in a text column, is checked as the reader reads it (nulls, rejected row by row); a
    hive key that the file has as a column of its own is the file's."""
    from ce_ray.input_files import list_files

    (tmp_path / "in" / "query_id=7").mkdir(parents=True)
    (tmp_path / "in" / "a.ndjson").write_text('{"query": "q", "document": "d"}\n')
    (tmp_path / "in" / "b.ndjson").write_text('{"query": "q"}\n')
    (tmp_path / "in" / "c.ndjson").write_text('{"query": null, "document": "d"}\n')
    (tmp_path / "in" / "query_id=7" / "d.ndjson").write_text('{"query_id": "own", "query": "q", "document": "d"}\n')
    files, input_format, fs, _, _ = list_files(str(tmp_path / "in"))
    assert input_format == "jsonl" and len(files) == 4
    checks, _ = check_inputs(fs, files, input_format, ["query", "document"])
    own = next(c for c in checks if c.path.endswith("d.ndjson"))
    assert own.columns.count("query_id") == 1
