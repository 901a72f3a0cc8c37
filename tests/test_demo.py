"""The demo end to end on a few WikiQA questions with a tiny model (the real run is the README's)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ce_ray.demo import main

from conftest import WIKIQA


def test_demo_on_a_few_questions(ray_local, tiny_model, tmp_path, capsys):
    assert main(["--model", str(tiny_model), "--max-questions", "8", "--output", str(tmp_path),
                 "--data", str(WIKIQA / "WikiQA-test.tsv.gz")]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "eval.json").read_text())
    answered = result["queries"]
    assert 0 < answered < 8 and result["queries_skipped_without_relevant"] == 8 - answered
    assert f"{answered} questions with a correct answer (the others left out)" in printed
    assert "pairs/s" in printed
    for label, name in (("MAP", "map"), ("MRR@10", "mrr@10"), ("NDCG@10", "ndcg@10")):  # original, then reranked
        assert f"  {label:<9}{result['baseline'][name]:>10.4f}{result['reranked'][name]:>10.4f}\n" in printed
    ranked = pd.read_parquet(tmp_path / "reranked" / "results")
    assert ranked["query_id"].nunique() == 8
    assert {"rank", "score", "original_rank", "label", "DocumentTitle"} <= set(ranked.columns)
    # A model folder that is none: one line and status 2, as the commands say it (a traceback of 15 frames, status 1).
    (tmp_path / "no-model").mkdir()
    (tmp_path / "no-model" / "notes.txt").write_text("not a model")
    capsys.readouterr()
    assert main(["--model", str(tmp_path / "no-model"), "--max-questions", "1", "--output", str(tmp_path / "again"),
                 "--data", str(WIKIQA / "WikiQA-test.tsv.gz")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"python -m ce_ray.demo: error: {tmp_path}/no-model has no config.json: not a " \
        "Hugging Face model folder" and "Traceback" not in err


def test_demo_help_describes_each_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    described = " ".join(capsys.readouterr().out.split())
    assert "--output OUTPUT folder of the pairs (input/), the reranked pairs (reranked/) and eval.json" in described
    assert "--max-questions MAX_QUESTIONS the first n questions; unset: all" in described


def test_data_or_a_model_not_there_and_no_questions_are_one_line(tmp_path, capsys):
    """Without ../shared the demo failed with a traceback, its model 24 s in (Ray started); `--max-questions 0` ran
    every question and -1 all but the last; `--max 5` was taken for `--max-questions 5`, unlike the commands."""
    for argv, said in ((["--data", str(tmp_path / "WikiQA-test.tsv.gz")], f"{tmp_path}/WikiQA-test.tsv.gz does not "
                        "exist: the demo reads WikiQA and the reranker from "),
                       (["--max-questions", "0"], "--max-questions must be 1 or more, got 0"),
                       (["--max", "5"], "unrecognized arguments: --max 5")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and said in capsys.readouterr().err
