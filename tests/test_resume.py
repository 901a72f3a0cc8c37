"""Re-runs and faults: stable per-input names, --mode resume after a killed driver, a killed scoring replica."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ce_ray import ScoreConfig, readers, run_score, sink
from ce_ray.config import ConfigError
from ce_ray.input_files import check_inputs, list_files
from ce_ray.messages import InputError
from ce_ray.output_state import job_summary
from ce_ray.readers import input_key
from ce_ray.rerank import RankedSink
from ce_ray.sink import STALL_ENV, OutputExistsError, OutputLostError, PairsSink, ResumeError, scan_parts
from ce_ray.storage import filesystem

from conftest import ROOT, wikiqa_pairs

FILES, ROWS_PER_FILE = 8, 25


def results(out) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(out, "results")).sort_values("pair_id").reset_index(drop=True)


def part_files(out) -> dict:
    """name -> (size, mtime_ns) of every visible part."""
    found = {}
    for sub in ("results", "rejects"):
        folder = os.path.join(out, sub)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if not name.startswith("."):
                stat = os.stat(os.path.join(folder, name))
                found[f"{sub}/{name}"] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def wikiqa_files(tmp_path_factory):
    """200 WikiQA pairs in 8 parquet files; one row per file has a null query (a reject)."""
    folder = tmp_path_factory.mktemp("resume-in")
    pairs = wikiqa_pairs("test", FILES * ROWS_PER_FILE)[["query", "document"]].copy()
    pairs["pair_id"] = np.arange(len(pairs))
    pairs.loc[pairs.index % ROWS_PER_FILE == 7, "query"] = None
    for i in range(FILES):
        pairs.iloc[i * ROWS_PER_FILE:(i + 1) * ROWS_PER_FILE].to_parquet(folder / f"shard-{i}.parquet")
    return folder, pairs


ROWS_PER_BLOCK = 5  # many small blocks: the kill tests need a job that is still running when they act


@pytest.fixture(scope="module")
def reference(ray_local, wikiqa_files, tiny_model, tmp_path_factory):
    """An uninterrupted run over the 8 files: what every interrupted run must end up equal to."""
    out = tmp_path_factory.mktemp("reference") / "out"
    summary = run_score(ScoreConfig(model=str(tiny_model), input=str(wikiqa_files[0]), output=str(out),
                                    rows_per_block=ROWS_PER_BLOCK))
    assert (summary.rows_in, summary.rows_rejected) == (FILES * ROWS_PER_FILE, FILES)
    return out


def copy_of(out, tmp_path):
    shutil.copytree(out, tmp_path / "out")
    return tmp_path / "out"


def config_for(out, model, folder, **settings) -> ScoreConfig:
    return ScoreConfig(model=str(model), input=str(folder), output=str(out),
                       **({"rows_per_block": ROWS_PER_BLOCK} | settings))


def test_output_names_come_from_the_input_and_are_stable(ray_local, tmp_path, tiny_model, wikiqa_files,
                                                         reference):
    folder, pairs = wikiqa_files
    out = copy_of(reference, tmp_path)
    first = part_files(out)
    run_score(config_for(out, tiny_model, folder, mode="overwrite"))
    again = part_files(out)
    assert sorted(first) == sorted(again), "a re-run must write the same file names"
    keys = {input_key(str(folder / f"shard-{i}.parquet")) for i in range(FILES)}
    assert {name.split("/")[1].rsplit("-r", 1)[0] for name in first} == keys
    for name in first:  # each part holds rows of its own input file only, in input order
        table = pq.read_table(out / name).to_pandas()
        shard = int(name.split("shard-")[1].split("-")[0])
        assert (table["pair_id"] // ROWS_PER_FILE == shard).all()
        assert table["pair_id"].is_monotonic_increasing
    state = scan_parts(str(out))
    assert state.complete == keys and all(p.input_rows == ROWS_PER_FILE for p in state.parts.values())


def test_resume_of_a_complete_output_redoes_nothing(ray_local, tmp_path, tiny_model, wikiqa_files, reference):
    folder, _ = wikiqa_files
    out = copy_of(reference, tmp_path)
    before = part_files(out)
    with pytest.raises(OutputExistsError, match="--mode resume"):
        run_score(config_for(out, tiny_model, folder))  # the default mode refuses an output that has results
    summary = run_score(config_for(out, tiny_model, folder, mode="resume"))
    assert part_files(out) == before
    assert (summary.files_kept, summary.rows_kept) == (FILES, FILES * ROWS_PER_FILE)
    assert (summary.rows_in, summary.rows_scored, summary.rows_rejected) == \
        (FILES * ROWS_PER_FILE, FILES * (ROWS_PER_FILE - 1), FILES)
    assert json.loads((out / "_SUCCESS").read_text())["rows_in"] == FILES * ROWS_PER_FILE


def test_resume_and_overwrite_remove_evals_measures_of_the_results_they_change(ray_local, tmp_path, tiny_model,
                                                                               wikiqa_files):
    """`ce-ray eval` writes its measures beside the results (`eval.json`; `results.eval.json` for the results/ folder
    given). A resume that scored a rewritten input again kept them, figures of other scores than the output's; and
    an overwrite left `results.eval.json`."""
    folder, pairs = wikiqa_files
    shutil.copytree(folder, tmp_path / "in")
    out = tmp_path / "out"
    run_score(config_for(out, tiny_model, tmp_path / "in"))
    for name in ("eval.json", "results.eval.json"):
        (out / name).write_text('{"reranked": {"ndcg@10": 0.5}}')
    pairs.iloc[:10].to_parquet(tmp_path / "in" / "shard-0.parquet")  # rewritten since
    assert run_score(config_for(out, tiny_model, tmp_path / "in", mode="resume")).files_kept == FILES - 1
    assert not (out / "eval.json").exists() and not (out / "results.eval.json").exists()
    (out / "results.eval.json").write_text("{}")
    run_score(config_for(out, tiny_model, tmp_path / "in", mode="overwrite"))
    assert not (out / "results.eval.json").exists()


def test_an_overwrite_killed_as_it_clears_the_output_is_run_again(ray_local, tmp_path, tiny_model, wikiqa_files,
                                                                    monkeypatch):
    """An overwrite deleted `_ce_ray/` before results/: killed between the two, it left results/ that every later job
    refused as no job's (`holds results/ ... that no ce-ray score or rerank job wrote`), the overwrite that would
    finish the clearing too, and the user had to delete the folder by hand. `_ce_ray/` goes last."""
    import ce_ray.sink

    folder, _ = wikiqa_files
    out = tmp_path / "out"
    run_score(config_for(out, tiny_model, folder))
    removing = ce_ray.sink.remove

    def killed_at_the_results(fs, path):
        if path.endswith("/results"):
            raise KeyboardInterrupt  # as a kill there leaves the output
        removing(fs, path)

    monkeypatch.setattr(ce_ray.sink, "remove", killed_at_the_results)
    with pytest.raises(KeyboardInterrupt):
        run_score(config_for(out, tiny_model, folder, mode="overwrite"))
    assert (out / "results").is_dir() and (out / "_ce_ray").is_dir() and not (out / "_SUCCESS").exists()
    monkeypatch.setattr(ce_ray.sink, "remove", removing)
    assert run_score(config_for(out, tiny_model, folder, mode="overwrite")).rows_scored > 0
    assert (out / "_SUCCESS").is_file()


def test_the_temporaries_of_a_kill_as_success_or_the_settings_were_written_go(ray_local, tmp_path, tiny_model,
                                                                             wikiqa_files, reference):
    """A job killed as it wrote `_SUCCESS` or `_ce_ray/job.json` left their hidden temporaries beside the output for
    good: a resume and an overwrite passed them over."""
    folder, _ = wikiqa_files
    out = copy_of(reference, tmp_path)
    for mode in ("resume", "overwrite"):
        left = [out / "._SUCCESS.1234abcd.tmp", out / "_ce_ray" / ".job.json.5678abcd.tmp"]
        for file in left:
            file.write_bytes(b'{"half": ')
        run_score(config_for(out, tiny_model, folder, mode=mode))
        assert not [file for file in left if file.exists()], mode
        assert (out / "_SUCCESS").is_file() and (out / "_ce_ray" / "job.json").is_file()


def test_resume_removes_partial_parts_and_temporaries(ray_local, tmp_path, tiny_model, wikiqa_files, reference,
                                                      capsys):
    """A parquet input whose parts do not add up to its row count keeps them and has only the rows they lack scored;
    a JSON Lines one is redone from scratch, saying so (it was done without a word); complete ones are kept;
    temporaries are removed."""
    folder, pairs = wikiqa_files
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    for i in range(FILES):
        pairs.iloc[i * ROWS_PER_FILE:(i + 1) * ROWS_PER_FILE].to_json(jsonl / f"shard-{i}.jsonl", orient="records",
                                                                       lines=True)
    run_score(config_for(tmp_path / "out-jsonl", tiny_model, jsonl))
    for inputs, kind, out, in_part in ((folder, "parquet", copy_of(reference, tmp_path), 1),
                                       (jsonl, "jsonl", tmp_path / "out-jsonl", 0)):
        damaged = input_key(str(inputs / f"shard-3.{kind}"))
        last_part = sorted(n for n in os.listdir(out / "results") if n.startswith(damaged))[-1]
        os.remove(out / "results" / last_part)  # as if the driver died before this part was written
        (out / "results" / f".{last_part}.1234abcd.tmp").write_bytes(b"half a parquet file")
        os.remove(out / "_SUCCESS")
        before = part_files(out)
        capsys.readouterr()
        summary = run_score(config_for(out, tiny_model, inputs, mode="resume"))
        after = part_files(out)
        said = ("ce-ray score: note: 1 JSON Lines, CSV or TSV file(s) left unfinished are scored again whole, their "
                f"parts written replaced: a resume keeps the rows written of a parquet file alone (e.g. {damaged})\n")
        assert (said in capsys.readouterr().err) == (not in_part)
        assert (summary.files_kept, summary.files_kept_in_part) == (FILES - 1 + in_part, in_part)
        for name, stat in before.items():
            if in_part or damaged not in name:
                assert after[name] == stat, f"{name} was rewritten"
            else:
                assert after[name] != stat, f"{name} of a JSON Lines input left unfinished was kept"
        assert not [n for n in os.listdir(out / "results") if n.startswith(".")]
        got, want = results(out), results(reference)
        pd.testing.assert_frame_equal(got.drop(columns="score"), want.drop(columns="score"), check_dtype=False)
        np.testing.assert_allclose(got["score"], want["score"], atol=1e-6)


def test_resume_scores_again_the_inputs_of_parts_cut_short_or_short_of_rows(ray_local, tmp_path, tiny_model,
                                                                           wikiqa_files, reference, capsys):
    """A part cut short (no footer to read) failed the resume with pyarrow's `Parquet magic bytes not found`,
    naming no file; a part holding fewer rows than it did disagrees with the input's row count its footer
    recorded. Both inputs are scored again, the others kept."""
    folder, _ = wikiqa_files
    out = copy_of(reference, tmp_path)
    cut, short = (sorted((out / "results").glob(f"{input_key(str(folder / f'shard-{i}.parquet'))}-r*"))[0]
                  for i in (3, 5))
    cut.write_bytes(cut.read_bytes()[:100])
    table = pq.read_table(short)
    pq.write_table(table.slice(0, table.num_rows - 1), short)  # its schema's metadata (the input's rows) kept
    os.remove(out / "_SUCCESS")
    summary = run_score(config_for(out, tiny_model, folder, mode="resume"))
    assert summary.files_kept == FILES - 2
    assert f"1 part(s) of the output cannot be read (cut short, or not parquet; e.g. {cut})" in capsys.readouterr().err
    got, want = results(out), results(reference)
    pd.testing.assert_frame_equal(got.drop(columns="score"), want.drop(columns="score"))
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-6)


def test_a_finished_job_whose_output_lost_parts_since_is_made_whole_by_resume(ray_local, tmp_path, tiny_model,
                                                                             wikiqa_files, reference, capsys):
    """A finished job (`_SUCCESS` written) whose output lost parts since, every part of one input and one part of
    another: the default mode refuses it, naming --mode resume; a resume scores those inputs again, says so, and
    writes `_SUCCESS` for the whole output. It scored them again without a word of why. A job reading the output
    in between (a cascade, eval) refuses it, where it read the rows left as the whole, naming each part missing or
    changed in the words of the job's own check before `_SUCCESS` (it named one). A part rewritten with fewer
    rows (of a third input) is said so, where the note said that parts were lost; so is a part of rejects/ rewritten
    with other rows (`_SUCCESS` counts them too: `reject_rows`), which was said lost, and one deleted is lost."""
    from ce_ray.config import EvalConfig
    from ce_ray.evaluate import run_eval

    folder, _ = wikiqa_files
    out = copy_of(reference, tmp_path)
    whole, one = (input_key(str(folder / f"shard-{i}.parquet")) for i in (2, 6))
    parts = len(list((out / "results").iterdir()))
    lost = [*(out / "results").glob(f"{whole}-r*"), *(out / "rejects").glob(f"{whole}-r*"),
            sorted((out / "results").glob(f"{one}-r*"))[0]]
    for part in lost:
        os.remove(part)
    short = sorted((out / "results").glob(f"{input_key(str(folder / 'shard-4.parquet'))}-r*"))[0]
    table = pq.read_table(short)
    pq.write_table(table.slice(1), short)
    rejected, doubled = (sorted((out / "rejects").glob(f"{input_key(str(folder / f'shard-{i}.parquet'))}-r*"))[0]
                         for i in (1, 0))
    os.remove(rejected)
    twice = pq.read_table(doubled)
    pq.write_table(pa.concat_tables([twice, twice]).replace_schema_metadata(twice.schema.metadata), doubled)
    held = len(list((out / "results").iterdir()))
    assert held < parts
    counted = json.loads((out / "_SUCCESS").read_text())["result_rows"]
    said = sorted([(part.name, f"is missing ({counted[part.name]} rows)") for part in lost
                   if part.parent.name == "results"] + [(short.name, f"holds {table.num_rows - 1} rows of the "
                                                                     f"{table.num_rows} written")])
    lost = re.escape(f"input {out} is the output of a job whose results/ no longer holds what its _SUCCESS counts: "
                     + "; ".join(f"results/{name} {what}" for name, what in said) + "; rerun that job")
    with pytest.raises(InputError, match=lost):
        readers.read_dataset(str(out), required=["query", "document"])
    with pytest.raises(InputError, match=lost):
        run_eval(EvalConfig(input=str(out)))
    with pytest.raises(OutputExistsError, match="--mode resume"):
        run_score(config_for(out, tiny_model, folder))
    summary = run_score(config_for(out, tiny_model, folder, mode="resume"))
    said = capsys.readouterr().err
    gone = min(whole, one, rejected.name.rsplit("-r", 1)[0])
    # Those with parts left (one of results/, one of rejects/) keep them: only their rows missing are scored.
    assert ("the output of the finished job lost parts of 3 input file(s) since (deleted or lost by the store; e.g. "
            f"{gone}-r*.parquet): they are scored again (2 of them only their rows missing)") in said
    assert (f"2 part(s) of the finished job's output were rewritten since with other rows (e.g. {doubled}: "
            f"{twice.num_rows} row{'s' if twice.num_rows != 1 else ''}, now {2 * twice.num_rows}): their 2 input "
            "file(s) are scored again") in said
    assert (summary.files_kept, summary.files_kept_in_part, summary.rows_in) == (FILES - 3, 2, FILES * ROWS_PER_FILE)
    assert json.loads((out / "_SUCCESS").read_text())["rows_in"] == FILES * ROWS_PER_FILE
    assert len(list_files(str(out)).files) == parts
    got, want = results(out), results(reference)
    pd.testing.assert_frame_equal(got.drop(columns="score"), want.drop(columns="score"))
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-6)


def test_an_output_read_again_gets_one_answer_for_each_success_marker(tmp_path, reference):
    """The `_SUCCESS` of an output given as input is read by a later job (a cascade: `list_files`) and by eval (its
    settings: `job_summary`, then its rows: `list_files`), which read it each their own way: an empty marker (as
    Spark and Hadoop write) passed both, other text passed the job and made eval read the folder as no output, a
    JSON list failed eval with a TypeError. One reader now, one answer a case; an earlier version's summary (no
    counts) is read as it was."""
    out = copy_of(reference, tmp_path)
    marker = out / "_SUCCESS"
    not_ours = "whose _SUCCESS is not the summary ce-ray writes"
    for content, answer in ((None, r"did not finish \(no _SUCCESS\)"), (b"", rf"{not_ours} \(empty\)"),
                            (b"done\n", rf"{not_ours} \(not a JSON object\)"), (b"[1]", "not a JSON object")):
        if content is None:
            marker.unlink()
        else:
            marker.write_bytes(content)
        for read in (list_files, job_summary):
            with pytest.raises(InputError, match=answer):
                read(str(out))
    marker.write_text(json.dumps({"rows_in": FILES * ROWS_PER_FILE}))
    assert len(list_files(str(out)).files) == len(os.listdir(out / "results"))
    assert job_summary(str(out))["settings"]["query_column"] == "query"
    marker.unlink()  # the way out that the refusal names: its results/ folder, read as plain files
    assert len(list_files(str(out / "results")).files) == len(os.listdir(out / "results"))


def test_a_finished_output_whose_part_was_rewritten_or_cut_short_since_is_refused_as_input(ray_local, tmp_path,
                                                                                          reference):
    """A part of a finished output replaced since by one of fewer rows (its footer whole) was read by a later job
    (a cascade) and by eval, the rows left taken as the whole; one cut short failed eval with pyarrow's `Parquet
    magic bytes not found`, naming no file. `_SUCCESS` holds each part's rows (`result_rows`), which the footers
    that the input check reads anyway are held to. An output of a version that did not count them reads as before."""
    from ce_ray.config import EvalConfig
    from ce_ray.evaluate import run_eval

    out = copy_of(reference, tmp_path)
    summary = json.loads((out / "_SUCCESS").read_text())
    part = sorted((out / "results").iterdir())[0]
    assert summary["result_rows"][part.name] == pq.read_metadata(part).num_rows
    table = pq.read_table(part)
    pq.write_table(table.slice(1), part)
    rewritten = re.escape(f"input {out} is the output of a job whose results/ no longer holds what its _SUCCESS "
                          f"counts: results/{part.name} holds {table.num_rows - 1} rows of the {table.num_rows} "
                          "written; rerun that job")
    with pytest.raises(InputError, match=rewritten):
        readers.read_dataset(str(out), required=["query", "document"])
    with pytest.raises(InputError, match=rewritten):
        run_eval(EvalConfig(input=str(out)))
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(InputError, match=rf"cannot read {re.escape(str(part))}: .*magic bytes"):
        run_eval(EvalConfig(input=str(out)))
    pq.write_table(table.slice(1), part)
    for count in ("result_rows", "result_parts"):  # as earlier versions wrote it: the rows read as they are
        summary.pop(count)
        (out / "_SUCCESS").write_text(json.dumps(summary))
        _, checks, _, _, _ = readers.read_dataset(str(out), required=["query", "document"])
        assert sum(check.rows for check in checks) == summary["rows_scored"] - 1


@pytest.mark.parametrize("sink_class, finish", [(PairsSink, "--mode resume finishes it"),
                                                (RankedSink, "rerun it with --mode overwrite")])
def test_success_is_written_only_where_the_output_holds_every_part_the_job_wrote(ray_local, tmp_path, sink_class,
                                                                                 finish):
    """Parts lost after they were written (a store that lost writes, a folder cleared, another job's
    --mode overwrite) failed nothing: `_SUCCESS` counted rows that were not there. The footers are checked first."""
    import ray

    from ce_ray.sink import prepare_output

    out = tmp_path / "out"
    sink = sink_class(str(out), ["score"])
    prepare_output(str(out), "error", run=sink.run)
    ray.data.range(30, override_num_blocks=3).write_datasink(sink)
    parts = sorted((out / "results").iterdir())
    assert [pq.read_metadata(p).num_rows for p in parts] == [10, 10, 10] and sink.counts["rows_scored"] == 30
    sink.write_success({"rows_in": 30})  # the output as written: whole
    os.remove(out / "_SUCCESS")
    parts[0].unlink()
    parts[1].write_bytes(parts[1].read_bytes()[:100])
    pq.write_table(pq.read_table(parts[2]).slice(0, 4), parts[2])
    shutil.copy(parts[2], out / "results" / "part-of-another-job.parquet")
    with pytest.raises(OutputLostError) as lost:
        sink.write_success({"rows_in": 30})
    assert str(lost.value) == (
        f"{out} does not hold the parts this job counts: results/{parts[0].name} is missing (10 rows); "
        f"results/{parts[1].name} cannot be read as parquet (cut short?; 10 rows written); "
        f"results/{parts[2].name} holds 4 rows of the 10 written; "
        f"results/part-of-another-job.parquet was not written by this job. No _SUCCESS written; {finish}")
    assert not (out / "_SUCCESS").exists()


def test_a_job_begun_on_the_output_meanwhile_leaves_neither_said_finished(ray_local, tmp_path):
    """Two jobs at once on one output (a command run again while the first still ran, the second begun before the
    first wrote a part: mode error refused nothing) wrote their parts under the same names, of other rows, and the
    first to end wrote `_SUCCESS` over both: rows twice in results/. The first to end finds the output begun again
    (`_ce_ray/run.json` is the other's) and writes none; the other, finding parts it did not write, none either."""
    import ray

    from ce_ray.sink import prepare_output

    out = str(tmp_path / "out")
    first, second = PairsSink(out, ["score"]), PairsSink(out, ["score"])
    prepare_output(out, "error", job={"model": "m"}, run=first.run)
    prepare_output(out, "error", job={"model": "m"}, run=second.run)  # no results yet: nothing refuses it
    ray.data.range(30, override_num_blocks=3).write_datasink(first)
    with pytest.raises(OutputLostError) as begun:
        first.write_success({"rows_in": 30})
    assert str(begun.value) == (f"another job began writing {out} while this one did (_ce_ray/run.json is not this "
                                "job's): their parts are mixed. No _SUCCESS written; once no other job writes it, "
                                "rerun it with --mode overwrite")
    ray.data.range(20, override_num_blocks=2).write_datasink(second)
    with pytest.raises(OutputLostError, match=r"results/part-000002\.parquet was not written by this job"):
        second.write_success({"rows_in": 20})
    # Parts of the same names and rows, written again by the other job: its rows, which the counts do not tell.
    third = PairsSink(out, ["score"])
    prepare_output(out, "overwrite", job={"model": "m"}, run=third.run)
    ray.data.range(20, override_num_blocks=2).write_datasink(third)
    ray.data.range(20, override_num_blocks=2).map(lambda row: {"id": -row["id"]}).write_datasink(second)
    with pytest.raises(OutputLostError) as again:
        third.write_success({"rows_in": 20})
    assert str(again.value) == (f"{out} does not hold the parts this job counts: results/part-000000.parquet was "
                                "written again by another job; results/part-000001.parquet was written again by "
                                "another job. No _SUCCESS written; once no other job writes it, rerun it with --mode "
                                "overwrite")
    assert not os.path.exists(f"{out}/_SUCCESS")


@pytest.mark.timeout(90)
def test_a_part_lost_while_the_job_runs_fails_it_without_success(ray_local, tmp_path, tiny_model, wikiqa_files,
                                                                  capsys):
    """A part deleted from the output while the job writes the others (as by another job's --mode overwrite):
    the job wrote `_SUCCESS` counting its rows. It fails naming the part, and a resume would redo its input alone.
    On the command line it is a failure during the work, as one of a task: it ended `ce-ray score: error:`,
    exit 2, the status of an error found before any work."""
    from ce_ray.cli import main

    folder, _ = wikiqa_files
    out = tmp_path / "out"
    deleted = []

    def delete_the_first_part():
        deadline = time.monotonic() + 60
        while not deleted and time.monotonic() < deadline:
            names = [n for n in os.listdir(out / "results") if not n.startswith(".")] \
                if (out / "results").is_dir() else []
            if names:
                os.remove(out / "results" / names[0])
                deleted.append(names[0])
            time.sleep(0.005)

    watcher = threading.Thread(target=delete_the_first_part, daemon=True)
    watcher.start()
    # A block per input: fewer tasks than the other tests' jobs, and still a write for each of the 8 inputs.
    assert main(["score", "--model", str(tiny_model), "--input", str(folder), "--output", str(out),
                 "--rows-per-block", str(ROWS_PER_FILE)]) == 1
    watcher.join()
    last = capsys.readouterr().err.splitlines()[-1]
    # The way to finish is said once: the error's message says it.
    assert re.fullmatch(rf"ce-ray score: failed: OutputLostError: {re.escape(str(out))} does not hold the parts this "
                        rf"job counts: results/{re.escape(deleted[0])} is missing \(\d+ rows\)\. No _SUCCESS written; "
                        r"--mode resume finishes it", last), last
    assert not (out / "_SUCCESS").exists()
    assert len(scan_parts(str(out)).complete) == FILES - 1


def test_resume_refuses_other_settings_and_regrouping_jobs(ray_local, tmp_path, tiny_model, wikiqa_files,
                                                           reference):
    folder, _ = wikiqa_files
    out = copy_of(reference, tmp_path)
    with pytest.raises(ResumeError, match=r"other settings \(max_length\)"):
        run_score(config_for(out, tiny_model, folder, mode="resume", max_length=64))
    with pytest.raises(ConfigError, match="groups rows across files"):
        run_score(config_for(out, tiny_model, folder, mode="resume"), transform=lambda ds: ds)


def test_resume_refuses_another_version_of_the_same_model(ray_local, tmp_path, tiny_model, wikiqa_files):
    """An output records its model by path: a folder trained again in place (or a hub id at a new commit) resumed
    with the new weights after the old ones' parts, one output of two models' scores, `done`. The model's version
    is now recorded too (its files' names, sizes and times here) and another one is refused; an output of an
    earlier ce-ray, without it, resumes as before."""
    from safetensors.torch import load_file, save_file

    folder, _ = wikiqa_files
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    one = tmp_path / "in"
    one.mkdir()
    shutil.copy(folder / "shard-0.parquet", one)
    out = tmp_path / "out"
    run_score(config_for(out, model, one))
    weights = load_file(model / "model.safetensors")
    save_file({name: tensor * 1.5 for name, tensor in weights.items()}, model / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ResumeError, match=rf"^{re.escape(str(out))} was scored by another version of "
                                          rf"{re.escape(str(model))} \(its files changed since\): resuming would mix "
                                          r"two models' scores; pass --mode overwrite, or score with the model it "
                                          r"was scored with$"):
        run_score(config_for(out, model, one, mode="resume"))
    job_file = out / "_ce_ray" / "job.json"
    earlier = {k: v for k, v in json.loads(job_file.read_text()).items() if k != "model_version"}
    job_file.write_text(json.dumps(earlier))
    assert run_score(config_for(out, model, one, mode="resume")).files_kept == 1


def test_resume_refuses_input_files_added_with_other_columns_than_its_kept_parts(ray_local, tmp_path, tiny_model):
    """A file added to the input with a wider type (int64 ids past int32's range) or a column more: its parts were
    written in the input's columns now and the kept parts left as they were, `done`, and the results read back as
    no one table (`Integer value 3000000000 not in range`), or, with small ids, as the first part's columns, the new
    column dropped. Such a resume is refused before any work; a file added with the same columns resumes (an input
    column named `reason`, as the rows of rejects/ name theirs, among them)."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    pairs = {"query": ["q"] * 20, "document": [None] + [f"document {i}" for i in range(1, 20)], "reason": ["r"] * 20}
    pq.write_table(pa.table({"qid": pa.array(range(20), pa.int32()), **pairs}), folder / "a.parquet")
    run_score(config_for(out, tiny_model, folder))
    pq.write_table(pa.table({"qid": pa.array(range(20), pa.int32()), **pairs}), folder / "b.parquet")
    assert run_score(config_for(out, tiny_model, folder, mode="resume")).files_kept == 1
    kept = part_files(out)
    wider = {"qid": pa.array(range(3_000_000_000, 3_000_000_020), pa.int64()), **pairs, "source": ["web"] * 20}
    pq.write_table(pa.table(wider), folder / "c.parquet")
    with pytest.raises(ResumeError, match=rf"^{re.escape(str(out))} holds parts written from input of other columns "
                                          rf"\({re.escape(str(out))}/results/a-\S+\.parquet: 'qid' of int32, the "
                                          r"input's now of int64\): kept, they would not read back as one table with "
                                          r"the parts written now; pass --mode overwrite$"):
        run_score(config_for(out, tiny_model, folder, mode="resume"))
    assert part_files(out) == kept  # nothing done
    pq.write_table(pa.table({"qid": pa.array(range(20), pa.int32()), **pairs, "source": ["web"] * 20}),
                   folder / "c.parquet")
    with pytest.raises(ResumeError, match=r"\(\S+/a-\S+\.parquet: no column 'source', which the input has now\)"):
        run_score(config_for(out, tiny_model, folder, mode="resume"))
    assert run_score(config_for(out, tiny_model, folder, mode="overwrite")).files_kept == 0
    assert pq.read_table(out / "results").num_rows == 57 and pq.read_table(out / "rejects").num_rows == 3


def test_resume_compares_the_dtype_the_earlier_run_scored_in(ray_local, tmp_path, tiny_model, wikiqa_files,
                                                             reference):
    """dtype `auto` is float16 on GPUs and float32 on CPUs: an output scored on GPUs and resumed on CPUs (or the
    reverse), `auto` both times, was taken, its float16 scores mixed with float32 ones; and `--dtype float32` over CPUs'
    `auto` (the dtype it scored in) was refused as other settings. The dtype a run scored in is recorded and
    compared now; an output of an earlier ce-ray, without it, is compared by the dtype as typed, as before."""
    folder, _ = wikiqa_files
    out = copy_of(reference, tmp_path)
    job_file = out / "_ce_ray" / "job.json"
    assert json.loads(job_file.read_text())["dtype_scored"] == "float32"
    assert run_score(config_for(out, tiny_model, folder, mode="resume", dtype="float32")).files_kept == FILES
    on_gpus = json.loads(job_file.read_text()) | {"dtype": "auto", "dtype_scored": "float16"}  # as a GPU's run records
    job_file.write_text(json.dumps(on_gpus))
    with pytest.raises(ResumeError, match=r"other settings \(dtype: scored in float16, here float32\): resuming "
                                          r"would mix their scores"):
        run_score(config_for(out, tiny_model, folder, mode="resume"))
    job_file.write_text(json.dumps({k: v for k, v in on_gpus.items() if k != "dtype_scored"}))
    assert run_score(config_for(out, tiny_model, folder, mode="resume")).files_kept == FILES


def test_resume_compares_the_cut_and_the_activation_the_earlier_run_resolved(ray_local, tmp_path, tiny_model,
                                                                             wikiqa_files, reference):
    """A job given no max_length or activation takes the model's own, and the record held them as given (null): a
    resume after an upgrade of ce-ray or transformers that resolved them otherwise (a position table's bound, a config
    key read anew) mixed pairs cut at two lengths, or two activations, under the same settings. Those resolved are
    recorded and compared where the record holds them; a resume with nothing to score keeps them; a record of an
    earlier ce-ray, without them, resumes as then and holds them after."""
    folder, _ = wikiqa_files
    out = copy_of(reference, tmp_path)
    job_file = out / "_ce_ray" / "job.json"
    recorded = json.loads(job_file.read_text())
    assert (recorded["max_length"], recorded["activation_scored"]) == (None, "torch.nn.modules.activation.Sigmoid")
    cut = recorded["max_length_scored"]
    lost = next((out / "results").glob("*.parquet"))

    def resumed_after(record: dict, left_to_score: bool = True):
        job_file.write_text(json.dumps(record))
        if left_to_score:
            lost.unlink(missing_ok=True)  # an input scored again: the model is checked, its cut and activation known
        return run_score(config_for(out, tiny_model, folder, mode="resume"))

    with pytest.raises(ResumeError, match=rf"other settings \(max_length: pairs cut at 64 tokens, here {cut}\): "
                                          "resuming would mix their scores"):
        resumed_after(recorded | {"max_length_scored": 64})
    with pytest.raises(ResumeError, match=r"other settings \(activation: torch.nn.Identity, here "
                                          r"torch.nn.modules.activation.Sigmoid\)"):
        resumed_after(recorded | {"activation_scored": "torch.nn.Identity"})
    assert lost.exists() is False  # nothing written
    earlier = {k: v for k, v in recorded.items() if k not in ("max_length_scored", "activation_scored")}
    assert resumed_after(earlier).files_kept_in_part == 1  # the input of the part lost: its other parts kept
    assert json.loads(job_file.read_text()) == recorded
    assert resumed_after(recorded | {"max_length_scored": 64}, left_to_score=False).files_kept == FILES
    assert json.loads(job_file.read_text())["max_length_scored"] == 64  # kept: nothing was scored with another


def test_parts_of_inputs_of_any_name_are_read_and_an_s3_input_spelled_otherwise_resumes(tmp_path):
    """An input whose name began with a letter outside ASCII or a sign (`ü.parquet`, `#1.parquet`, `(copy).parquet`)
    had its parts named `_…`, which pyarrow, pandas and Spark skip as metadata: its rows were lost to whoever read
    the output, and a job reading the output refused it as missing a part. And an `s3://` input or model was recorded
    as typed: the same one resumed as `s3a://` or with a `/` more was refused as other settings."""
    from ce_ray.model_folder import model_source
    from ce_ray.sink import INPUT_ROWS, resume_state
    from ce_ray.storage import absolute

    names = ["ü.parquet", "#1.parquet", " 2024.parquet", "(copy).parquet", "é-fr.jsonl", "_x.csv.gz"]
    keys = [input_key(f"s3://b/in/{name}") for name in names]
    assert not [key for key in keys if key.startswith(("_", ".", "-"))]
    (tmp_path / "results").mkdir()
    for i, key in enumerate(keys):
        pq.write_table(pa.table({"row": [i]}), tmp_path / "results" / f"{key}-r000000000000.parquet")
    assert sorted(pq.read_table(tmp_path / "results")["row"].to_pylist()) == list(range(len(names)))
    assert len(pd.read_parquet(tmp_path / "results")) == len(names)

    out = tmp_path / "out"
    (out / "_ce_ray").mkdir(parents=True)
    (out / "_ce_ray" / "job.json").write_text(json.dumps({"model": "s3a://b/models/rr/", "input": "s3a://b/in/"}))
    (out / "results").mkdir()
    part = pa.table({"query": ["q"]}).replace_schema_metadata({INPUT_ROWS: b"1"})
    pq.write_table(part, out / "results" / f"{input_key('s3://b/in/a.parquet')}-r000000000000.parquet")
    job = {"model": model_source("s3://b/models/rr"), "input": absolute("s3://b/in")}
    assert len(resume_state(str(out), job).complete) == 1
    with pytest.raises(ResumeError, match=r"other settings \(input\)"):
        resume_state(str(out), job | {"input": absolute("s3://b/in2/")})


def test_resume_follows_the_input_files_not_how_their_path_is_spelled(ray_local, tmp_path, tiny_model,
                                                                        wikiqa_files, reference, monkeypatch,
                                                                        capsys):
    """The same folder given relative to another working directory resumes (it was refused as other settings,
    where the same relative words in another directory, other files, were taken); an input file an earlier run
    completed and that is no longer in the input has its results removed (they were kept and counted), and one
    rewritten since is scored again. Outputs of the earlier version, which recorded the input as typed, still
    resume."""
    folder, pairs = wikiqa_files
    out = copy_of(reference, tmp_path)
    monkeypatch.chdir(folder.parent)
    summary = run_score(config_for(out, os.path.relpath(tiny_model), folder.name, mode="resume"))
    assert summary.files_kept == FILES
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    for i in range(3):
        shutil.copy(folder / f"shard-{i}.parquet", tmp_path / "in")
    run_score(config_for(tmp_path / "three", tiny_model, "in"))  # relative, from tmp_path
    # An earlier version recorded the input as typed: its output resumes from the same working directory.
    job_file = tmp_path / "three" / "_ce_ray" / "job.json"
    job_file.write_text(json.dumps(json.loads(job_file.read_text()) | {"input": "in"}))
    assert run_score(config_for(tmp_path / "three", tiny_model, tmp_path / "in", mode="resume")).files_kept == 3
    (tmp_path / "elsewhere" / "in").mkdir(parents=True)  # the same words, other files
    shutil.copy(folder / "shard-5.parquet", tmp_path / "elsewhere" / "in")
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ResumeError, match=r"other settings \(input\)"):
        run_score(config_for(tmp_path / "three", tiny_model, "in", mode="resume"))
    os.remove(tmp_path / "in" / "shard-1.parquet")
    summary = run_score(config_for(tmp_path / "three", tiny_model, tmp_path / "in", mode="resume"))
    assert (summary.files_in, summary.files_kept, summary.rows_in) == (2, 2, 2 * ROWS_PER_FILE)
    assert "1 input file(s) that an earlier run completed are no longer in the input" in capsys.readouterr().err
    assert sorted(results(tmp_path / "three")["pair_id"] // ROWS_PER_FILE) == [0] * 24 + [2] * 24
    # A file rewritten under the same name (its first 10 rows, one of them a reject) is scored again; its
    # earlier results were kept as complete, and counted.
    pairs.iloc[2 * ROWS_PER_FILE:2 * ROWS_PER_FILE + 10].to_parquet(tmp_path / "in" / "shard-2.parquet")
    summary = run_score(config_for(tmp_path / "three", tiny_model, tmp_path / "in", mode="resume"))
    assert (summary.files_in, summary.files_kept, summary.rows_in) == (2, 1, ROWS_PER_FILE + 10)
    assert "1 input file(s) that an earlier run completed were rewritten since" in capsys.readouterr().err
    assert sorted(results(tmp_path / "three")["pair_id"] // ROWS_PER_FILE) == [0] * 24 + [2] * 9


def test_a_parquet_file_is_read_in_ranges_of_row_groups_and_resumed_in_part(ray_local, tmp_path, tiny_model,
                                                                            wikiqa_files, reference, monkeypatch,
                                                                            capsys):
    """One file of 8 row groups read by 3 tasks: every row once, numbered by its row in the file, the file
    complete, each part saying which rows it holds (`ce_ray.row_runs`). With the parts of two row groups lost (as a
    killed job leaves a file), resume keeps the others, reads only the rows they lack and writes each row once,
    where it scored the whole file again; a part without the key (an earlier version's) has the file redone whole."""
    _, pairs = wikiqa_files
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "all.parquet"
    pq.write_table(pa.Table.from_pandas(pairs, preserve_index=False), path, row_group_size=ROWS_PER_FILE)
    monkeypatch.setattr(readers, "PARQUET_ROWS_PER_READ", 3 * ROWS_PER_FILE)
    monkeypatch.setattr(sink, "CPU_PART_BYTES", None)  # a part of each scored block: a row group here
    fs, local = filesystem(str(path))
    [check], _ = check_inputs(fs, [local], "parquet", ["query", "document"])
    ranges = readers.read_ranges(check, readers.PARQUET_ROWS_PER_READ)
    assert [(r.row_groups, r.first_row, r.rows, r.ends_file) for r in ranges] == \
        [([0, 1, 2], 0, 75, False), ([3, 4, 5], 75, 75, False), ([6, 7], 150, 50, True)]
    held = [[0, 75], [100, 150], [175, 200]]
    assert [(r.row_groups, r.first_row, r.rows, r.ends_file, r.skip) for r in
            readers.read_ranges(check, readers.PARQUET_ROWS_PER_READ, [[0, 80], [100, 150], [175, 200]])] == \
        [([3], 75, 20, False, ((75, 80),)), ([6], 150, 25, False, ())]

    def check_output(out):
        got, want = results(out), results(reference)
        pd.testing.assert_frame_equal(got.drop(columns="score"), want.drop(columns="score"))
        np.testing.assert_allclose(got["score"], want["score"], atol=1e-6)
        rejects = pd.read_parquet(out / "rejects")
        assert sorted([*got["pair_id"], *rejects["pair_id"]]) == list(range(FILES * ROWS_PER_FILE))  # each row once
        state = scan_parts(str(out))
        assert state.complete == {input_key(local)}
        assert state.parts[input_key(local)].input_rows == FILES * ROWS_PER_FILE

    out = tmp_path / "out"
    run_score(config_for(out, tiny_model, path.parent, rows_per_block=ROWS_PER_FILE))
    check_output(out)
    for name in part_files(out):  # the rows each part holds, as its pair ids give them
        ids = pq.read_table(out / name).column("pair_id").to_pylist()
        assert json.loads(pq.read_schema(out / name).metadata[sink.ROW_RUNS]) == sink.row_runs(np.array(ids))
    lost = [name for name in part_files(out) if not any(a <= int(name.rsplit("-r", 1)[1][:12]) < b for a, b in held)]
    lost_rows = sum(pq.read_metadata(out / name).num_rows for name in lost)
    assert lost and lost_rows == 2 * ROWS_PER_FILE
    for name in lost:
        os.remove(out / name)
    os.remove(out / "_SUCCESS")
    kept = part_files(out)
    capsys.readouterr()
    summary = run_score(config_for(out, tiny_model, path.parent, mode="resume"))
    assert (summary.files_kept, summary.files_kept_in_part, summary.rows_kept, summary.rows_in) == \
        (1, 1, FILES * ROWS_PER_FILE - lost_rows, FILES * ROWS_PER_FILE)
    said = capsys.readouterr().out
    assert f"ce-ray score: {lost_rows} pairs in 1 file(s) to score" in said
    assert f"kept          1 file(s), {FILES * ROWS_PER_FILE - lost_rows} rows (resumed; 1 of them in part)" in said
    assert json.loads((out / "_SUCCESS").read_text())["files_kept_in_part"] == 1
    assert {name: stat for name, stat in part_files(out).items() if name in kept} == kept, "a kept part was rewritten"
    check_output(out)

    # An earlier version's part, which does not say its rows: the file is scored again whole.
    first, second = sorted(n for n in part_files(out) if n.startswith("results/"))[:2]
    table = pq.read_table(out / first)
    pq.write_table(table.replace_schema_metadata({k: v for k, v in table.schema.metadata.items()
                                                  if k != sink.ROW_RUNS}), out / first)
    os.remove(out / second)
    os.remove(out / "_SUCCESS")
    summary = run_score(config_for(out, tiny_model, path.parent, mode="resume"))
    assert (summary.files_kept, summary.files_kept_in_part, summary.rows_in) == (0, 0, FILES * ROWS_PER_FILE)
    said = capsys.readouterr()
    assert f"ce-ray score: {FILES * ROWS_PER_FILE} pairs in 1 file(s) to score" in said.out
    assert ("ce-ray score: note: 1 parquet file(s) left unfinished are scored again whole: their parts were written "
            f"by an earlier ce-ray, which did not record the rows each holds (e.g. {input_key(str(path))})") in said.err
    check_output(out)


def test_small_files_are_read_several_to_a_task_each_in_parts_of_its_own(ray_local, tmp_path, tiny_model,
                                                                        wikiqa_files, reference, monkeypatch):
    """40 parquet or JSON Lines files of 5 rows were read one to a task, and came as 40 blocks, each a task of Ray's
    in every stage (2,000 files of 5-20 rows: 68 s to read, where the model scored them in 3.5 s): now 16 files to
    a task, a block each. A large file's ranges stay tasks of their own. Each file still has its own parts, complete,
    and the rows are the uninterrupted run's."""
    _, pairs = wikiqa_files
    monkeypatch.setattr(readers, "TASK_FILES", 16, raising=False)
    monkeypatch.setattr(readers, "PARQUET_ROWS_PER_READ", 3 * ROWS_PER_FILE)
    for kind in ("parquet", "jsonl"):
        folder = tmp_path / kind
        folder.mkdir()
        for i in range(40):
            rows = pairs.iloc[i * 5:(i + 1) * 5]
            if kind == "parquet":
                rows.to_parquet(folder / f"part-{i:02d}.parquet")
            else:
                rows.to_json(folder / f"part-{i:02d}.jsonl", orient="records", lines=True)
        ds, checks, _, _, _ = readers.read_dataset(str(folder), required=["query", "document"])
        assert ds.materialize().num_blocks() == 3
        out = tmp_path / f"out-{kind}"
        run_score(config_for(out, tiny_model, folder))
        got, want = results(out), results(reference)
        pd.testing.assert_frame_equal(got.drop(columns="score"), want.drop(columns="score"), check_dtype=False)
        np.testing.assert_allclose(got["score"], want["score"], atol=1e-6)
        assert scan_parts(str(out)).complete == {input_key(c.path) for c in checks}
        assert len(os.listdir(out / "results")) == 40
    # a file of 3 ranges before the 40 small ones: 3 tasks, then 3 of the small files
    pq.write_table(pa.Table.from_pandas(pairs, preserve_index=False), tmp_path / "parquet" / "all.parquet",
                   row_group_size=ROWS_PER_FILE)
    ds, _, _, _, _ = readers.read_dataset(str(tmp_path / "parquet"), required=["query", "document"])
    assert ds.materialize().num_blocks() == 6


def test_a_parquet_file_that_ends_in_an_empty_row_group_is_complete(ray_local, tmp_path, tiny_model, monkeypatch):
    """An empty row group (a writer's last, empty write) that makes a read range of its own: the range holds no row
    to carry the file's row count, so the file was never complete and every resume scored it again."""
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "p.parquet"
    table = pa.table({"query": ["q"] * 6, "document": [f"document {i}" for i in range(6)]})
    with pq.ParquetWriter(path, table.schema) as writer:
        for rows in (table.slice(0, 3), table.slice(3), table.slice(0, 0)):
            writer.write_table(rows)
    monkeypatch.setattr(readers, "PARQUET_ROWS_PER_READ", 3)
    out = tmp_path / "out"
    run_score(config_for(out, tiny_model, path.parent))
    assert scan_parts(str(out)).complete == {input_key(str(path))}
    summary = run_score(config_for(out, tiny_model, path.parent, mode="resume"))
    assert (summary.files_kept, summary.rows_kept, summary.rows_in) == (1, 6, 6)


def test_each_part_records_its_rows_and_is_named_after_its_own_first_row(tmp_path):
    """A write task's rows of a file (here rows 100-104 and 110-111, row 100 rejected): the results part and the
    rejects part each record the rows they hold (`ce_ray.row_runs`) and are named after their own first row, so that
    a resume that reads row 100 again with others never writes over the results part it kept."""
    from types import SimpleNamespace

    from ce_ray.batching import REJECT

    rows = [100, 101, 102, 103, 104, 110, 111]
    block = pa.table({"query": [f"q{i}" for i in rows], "score": [None] + [0.5] * 6,
                      REJECT: ["query is null"] + [None] * 6, readers.ROW_INPUT: ["in-0123abcd"] * 7,
                      readers.ROW_INDEX: rows, readers.FILE_ROWS: [None] * 6 + [112]})
    pairs_sink = PairsSink(str(tmp_path / "out"), ["score"])
    pairs_sink.on_write_start()
    written = pairs_sink.write([block], SimpleNamespace(task_idx=0))
    assert written["parts"] == {"results/in-0123abcd-r000000000101.parquet": 6,
                                "rejects/in-0123abcd-r000000000100.parquet": 1}
    runs = {name: json.loads(pq.read_schema(tmp_path / "out" / name).metadata[sink.ROW_RUNS])
            for name in written["parts"]}
    assert runs == {"results/in-0123abcd-r000000000101.parquet": [[101, 105], [110, 112]],
                    "rejects/in-0123abcd-r000000000100.parquet": [[100, 101]]}
    # The rows of the input file, from its last row (FILE_ROWS): a resume keeps a file whose parts hold them all,
    # where a JSON Lines, CSV or TSV file was scored again whole.
    assert {pq.read_schema(tmp_path / "out" / name).metadata[sink.INPUT_ROWS] for name in written["parts"]} == {b"112"}
    state = scan_parts(str(tmp_path / "out"))
    assert state.parts["in-0123abcd"].input_rows == 112
    state.stamps = {"in-0123abcd": "stamp"}
    assert state.held_rows("in-0123abcd", "stamp", 112) == [[100, 105], [110, 112]]
    assert state.held_rows("in-0123abcd", "rewritten", 112) is None  # another stamp: the file redone whole
    assert state.held_rows("in-0123abcd", "stamp", 111) is None  # rows past the file's end: not its parts
    # A part of no rows (none a job writes; a file put there) holds none: it failed the resume with an IndexError.
    empty = sink.InputParts(files={"in-0123abcd-r000000000000.parquet": 0},
                            runs={"in-0123abcd-r000000000000.parquet": []})
    state = sink.ResumeState({"in-0123abcd": empty}, [], {"in-0123abcd": "stamp"})
    assert state.held_rows("in-0123abcd", "stamp", 112) == []


def _scorer_pids() -> list:
    """Scoring replicas of this process's own local Ray (named after their class, ScoringReplica, by Ray)."""
    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "ScoringReplica" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            pass
    return pids


@pytest.mark.timeout(300)
def test_killed_scoring_replica_is_restarted_and_rows_are_scored_exactly_once(
        ray_local, tmp_path, tiny_model, wikiqa_files, reference, monkeypatch):
    folder, _ = wikiqa_files
    # A part of each scored block, written as it comes, so that the replica is killed with blocks left to score:
    # gathered up to 8 MiB (a CPU job's), the 200 rows would be written only once all are scored.
    monkeypatch.setattr(sink, "CPU_PART_BYTES", None)
    out = tmp_path / "out"
    killed = []

    def kill_mid_job():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            written = part_files(out)
            pids = _scorer_pids()
            if written and pids and not (out / "_SUCCESS").exists():
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], len(written)))
            time.sleep(0.02)

    killer = threading.Thread(target=kill_mid_job, daemon=True)
    killer.start()
    summary = run_score(config_for(out, tiny_model, folder))
    killer.join(timeout=5)
    assert killed, "the scoring replica was never seen alive mid-job"
    assert killed[0][1] < len(part_files(out)), "the replica was killed after the last block"
    assert (summary.rows_in, summary.rows_rejected) == (FILES * ROWS_PER_FILE, FILES)
    got, want = results(out), results(reference)
    assert list(got["pair_id"]) == list(want["pair_id"])  # every row once: none lost, none twice
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-6)


# `ce-ray score` whose write tasks write a part of each scored block (`CPU_PART_BYTES`, as the tests in process set
# it), so that one file is written in many parts and a job killed part-way leaves some of them.
PARTS_OF_BLOCKS = ("import sys; from ce_ray import cli, sink; sink.CPU_PART_BYTES = None; "
                   "sys.exit(cli.main(['score', *sys.argv[1:]]))")


def _cli(*args, parts_of_blocks: bool = False, **env_vars):
    env = {**os.environ, **env_vars, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
           "RAY_ADDRESS": "local"}  # a Ray of its own, never a cluster another program started
    command = ["-c", PARTS_OF_BLOCKS] if parts_of_blocks else ["-m", "ce_ray.cli", "score"]
    # A session of its own: the driver and every process of the local Ray it starts can be found and killed.
    return subprocess.Popen([sys.executable, *command, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _killed_once(job: subprocess.Popen, ready, seconds: float = 240) -> str:
    """Kills the job's session (`_kill_session`) once `ready()` holds, or after `seconds`; its log. The job must not
    have ended by itself first."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and job.poll() is None and not ready():
            time.sleep(0.2)
    finally:
        _kill_session(job)
        log, _ = job.communicate(timeout=60)
    assert job.returncode == -signal.SIGKILL, log[-3000:]
    return log


def _kill_session(job: subprocess.Popen) -> None:
    """SIGKILL to every process of the session the job started (driver, GCS, raylet, workers)."""
    job.kill()  # the driver first, reaped by Popen itself so that its return code is kept
    job.wait(timeout=60)
    for _ in range(50):
        members = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == job.pid:
                    members.append(proc)
            except (OSError, psutil.Error):
                pass
        if not members:
            return
        for proc in members:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(members, timeout=5)


@pytest.mark.timeout(400)
def test_killed_driver_then_resume_gives_the_uninterrupted_output(tmp_path, tiny_model, wikiqa_files, reference):
    folder, _ = wikiqa_files
    out = tmp_path / "out"
    args = ["--model", str(tiny_model), "--input", str(folder), "--output", str(out),
            "--rows-per-block", str(ROWS_PER_BLOCK)]
    # The write of the last file hangs (test-only fault injection), so the kill lands at a known point:
    # seven inputs complete, one not.
    job = _cli(*args, **{STALL_ENV: "shard-7-"})
    _killed_once(job, lambda: (out / "results").exists() and len(scan_parts(str(out)).complete) == FILES - 1)
    assert not (out / "_SUCCESS").exists()
    state = scan_parts(str(out))
    assert len(state.complete) == FILES - 1, {k: (p.rows, p.input_rows) for k, p in state.parts.items()}
    for name in part_files(out):  # a killed writer leaves no visible partial file
        pq.read_metadata(out / name)
    finished = {n: s for n, s in part_files(out).items() if any(k in n for k in state.complete)}

    resumed = _cli(*args, "--mode", "resume")
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log[-3000:]
    assert f"kept          {len(state.complete)} file(s)" in log, log[-1500:]
    after = part_files(out)
    for name, stat in finished.items():
        assert after[name] == stat, f"{name} was redone"
    got, want = results(out), results(reference)
    pd.testing.assert_frame_equal(got.drop(columns="score"), want.drop(columns="score"))
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-6)
    rejects = pd.read_parquet(out / "rejects").sort_values("pair_id")
    assert list(rejects["pair_id"]) == [i for i in range(FILES * ROWS_PER_FILE) if i % ROWS_PER_FILE == 7]
    success = json.loads((out / "_SUCCESS").read_text())
    assert (success["rows_in"], success["rows_rejected"]) == (FILES * ROWS_PER_FILE, FILES)


@pytest.mark.timeout(400)
def test_a_parquet_file_killed_part_way_resumes_scoring_only_its_rows_missing(tmp_path, tiny_model, wikiqa_files,
                                                                             reference):
    """One parquet file of 200 pairs, its job killed with part of its rows written: the resume kept nothing of it
    and scored it again from its first row. It keeps the parts written (untouched), scores only the rows they lack
    and says so; the output holds every input row once, scored as an uninterrupted run scores it."""
    _, pairs = wikiqa_files
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "all.parquet"
    pq.write_table(pa.Table.from_pandas(pairs, preserve_index=False), path, row_group_size=ROWS_PER_FILE)
    key = input_key(str(path))
    out = tmp_path / "out"
    args = ["--model", str(tiny_model), "--input", str(path.parent), "--output", str(out),
            "--rows-per-block", str(ROWS_PER_BLOCK)]
    # The write of a part whose first row is 100-199 hangs (test-only fault injection): the file is never complete.
    job = _cli(*args, parts_of_blocks=True, **{STALL_ENV: f"{key}-r0000000001"})
    log = _killed_once(job, lambda: (out / "results").exists()
                       and scan_parts(str(out)).parts.get(key, sink.InputParts()).rows >= 50)
    state = scan_parts(str(out))
    held = state.parts[key].rows
    assert 50 <= held < FILES * ROWS_PER_FILE and not state.complete, log[-3000:]
    written = part_files(out)

    resumed = _cli(*args, "--mode", "resume")
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log[-3000:]
    assert f"ce-ray score: {FILES * ROWS_PER_FILE - held} pairs in 1 file(s) to score" in log, log[-1500:]
    assert f"kept          1 file(s), {held} rows (resumed; 1 of them in part)" in log, log[-1500:]
    after = part_files(out)
    assert {name: after.get(name) for name in written} == written, "a part written before the kill was redone"
    got, want = results(out), results(reference)
    rejects = pd.read_parquet(out / "rejects")
    assert sorted([*got["pair_id"], *rejects["pair_id"]]) == list(range(FILES * ROWS_PER_FILE))  # each row once
    pd.testing.assert_frame_equal(got.drop(columns="score"), want.drop(columns="score"))
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-6)
    success = json.loads((out / "_SUCCESS").read_text())
    assert (success["rows_in"], success["rows_kept"], success["files_kept"], success["files_kept_in_part"]) == \
        (FILES * ROWS_PER_FILE, held, 1, 1)
    assert scan_parts(str(out)).complete == {key}


def test_a_cpu_jobs_write_tasks_gather_little_so_that_the_files_done_are_on_disk(ray_local, tmp_path, tiny_model,
                                                                                   wikiqa_files, reference,
                                                                                   monkeypatch):
    """A job's write tasks gathered 128 MiB of rows before writing parts, hours of scoring on CPUs: 48 files of
    5,000 pairs killed half-way had written no part, and the resume scored every file again. On CPUs they gather
    `CPU_PART_BYTES` (8 MiB; 29 files on disk and kept then): here made a byte, a write task a scored block."""
    folder, _ = wikiqa_files
    monkeypatch.setattr(sink, "CPU_PART_BYTES", 1, raising=False)
    gathered, write_tasks = [], []

    class Counted(PairsSink):
        def on_write_complete(self, write_result) -> None:
            gathered.append(self.part_bytes)
            write_tasks.append(len(write_result.write_returns))
            super().on_write_complete(write_result)

    monkeypatch.setattr(sink, "PairsSink", Counted)
    out = tmp_path / "out"
    run_score(config_for(out, tiny_model, folder))
    assert gathered == [1]
    assert write_tasks[0] > 1
    got, want = results(out), results(reference)
    pd.testing.assert_frame_equal(got.drop(columns="score"), want.drop(columns="score"))
    assert len(scan_parts(str(out)).complete) == FILES


def test_every_mode_prepares_an_output_that_holds_nothing_yet(tmp_path):
    """A new output (or one a failed job left with its settings alone) is prepared in every mode: the first run of
    a job given --mode overwrite or --mode resume (as the demo runs) writes its settings and goes on."""
    from ce_ray.sink import prepare_output

    for mode in ("error", "overwrite", "resume"):
        out = tmp_path / mode
        assert not prepare_output(str(out), mode, job={"model": "m"}).parts
        assert json.loads((out / "_ce_ray" / "job.json").read_text()) == {"model": "m"}
        assert not prepare_output(str(out), mode, job={"model": "m"}).parts  # a job that failed before its writes


def test_an_output_that_holds_only_a_temporary_has_no_results(tmp_path):
    """A job killed as it wrote its first part left its settings and that part's temporary: the next run of the
    same command was refused as an output that `already has results`, which it had not."""
    from ce_ray.sink import check_output

    out = tmp_path / "out"
    (out / "_ce_ray").mkdir(parents=True)
    (out / "_ce_ray" / "job.json").write_text("{}")
    (out / "results").mkdir()
    (out / "results" / ".shard-0-abcd1234-r000000000000.parquet.1a2b3c4d.tmp").write_bytes(b"PAR1")
    check_output(str(out), "error")
    (out / "results" / "shard-0-abcd1234-r000000000000.parquet").write_bytes(b"PAR1")
    with pytest.raises(OutputExistsError, match="already has results"):
        check_output(str(out), "error")


def test_a_part_or_success_the_disk_does_not_take_whole_is_removed_and_named(tmp_path, capsys):
    """A disk that filled as a part was written failed the job naming no file (the output's disk, Ray's spill or the
    cache: which?), and left the part's temporary; one that filled at `_SUCCESS` left its temporary beside the
    output until a resume. The error names what was being written, the temporary removed."""
    from conftest import files_of_at_most

    from ce_ray.runtime import failed_during_work
    from ce_ray.storage import write_table_atomic

    fs, path = filesystem(str(tmp_path))
    table = pa.table({"query": ["q"] * 1000, "document": [f"document {i}" for i in range(1000)]})
    with files_of_at_most(2000), pytest.raises(OSError) as failed:
        write_table_atomic(fs, f"{path}/part-0.parquet", table, remote=False)
    assert failed.value.__notes__ == [f"writing {path}/part-0.parquet"]
    sink_of = PairsSink(str(tmp_path / "out"), schema=None, written=["score"])
    sink_of.run = "r"
    (tmp_path / "out" / "_ce_ray").mkdir(parents=True)
    (tmp_path / "out" / "_ce_ray" / "run.json").write_text('{"run": "r"}')
    with files_of_at_most(20), pytest.raises(sink.OutputError, match=rf"^cannot write the output {tmp_path}/out: "
                                                                      r"\[Errno 27\] .*File too large") as failed:
        sink_of.write_success({"rows": 0, "padding": "x" * 100})
    # after the job's work, which `--mode resume` finishes (an error of a usage error's type: exit 2, none said)
    assert failed_during_work(failed.value)
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == ["_ce_ray"]


def test_a_part_that_two_write_tasks_wrote_is_counted_with_the_rows_of_both(tmp_path):
    """Two tasks writing one part's name (rows of one input file that reached two writers): the second file took
    the first's place, and the rows of both are counted, so that the check before `_SUCCESS` finds rows lost."""
    from types import SimpleNamespace

    pairs_sink = PairsSink(str(tmp_path / "out"), ["score"])
    returns = [{"rows_scored": rows, "rows_rejected": 0, "parts": {"results/in-0123abcd-r000000000000.parquet": rows}}
               for rows in (3, 2)]
    pairs_sink.on_write_complete(SimpleNamespace(write_returns=returns))
    assert pairs_sink.parts == {"results/in-0123abcd-r000000000000.parquet": 5}
    assert pairs_sink.counts == {"rows_scored": 5, "rows_rejected": 0}


def test_the_parts_that_differ_are_said_with_a_count_of_one_in_the_singular():
    """A part's words said `is missing (1 rows)` and `holds 1 rows of the 2 written`."""
    from ce_ray.output_state import part_differences

    counted = {"out/results/a.parquet": 1, "out/results/b.parquet": 1, "out/results/c.parquet": 2,
               "out/results/e.parquet": 2}
    held = {"out/results/b.parquet": None, "out/results/c.parquet": 1, "out/results/d.parquet": 3,
            "out/results/e.parquet": 3}
    assert part_differences(counted, held, "this job", base="out/") == [
        "results/a.parquet is missing (1 row)",
        "results/b.parquet cannot be read as parquet (cut short?; 1 row written)",
        "results/c.parquet holds 1 row of the 2 written", "results/e.parquet holds 3 rows of the 2 written",
        "results/d.parquet was not written by this job"]


def test_the_parts_of_results_and_rejects_are_counted_as_scored_and_rejected(tmp_path):
    """What a resume keeps is counted so in its summary and `_SUCCESS` (`kept_scored`, `kept_rejected`)."""
    for sub, rows, first in (("results", 3, 0), ("rejects", 1, 3)):
        (tmp_path / sub).mkdir()
        table = pa.table({"id": list(range(first, first + rows))}).replace_schema_metadata(
            {sink.INPUT_ROWS: b"4", sink.ROW_RUNS: f"[[{first},{first + rows}]]".encode()})
        pq.write_table(table, tmp_path / sub / f"in-0123abcd-r{first:012d}.parquet")
    parts = scan_parts(str(tmp_path)).parts["in-0123abcd"]
    assert (parts.rows, parts.rows_scored, parts.rows_rejected, parts.input_rows, parts.complete) == (4, 3, 1, 4, True)


def test_results_get_no_reject_reason_column_where_the_input_had_one():
    """An input holding `reject_reason` (an earlier job's rejects): its rows scored now are written without it,
    and the rows rejected again carry this job's reason in it, after the input's columns."""
    from ce_ray.batching import REJECT

    schema = pa.schema([("id", pa.int64()), ("query", pa.string()), (REJECT, pa.string())])
    scored = sink.conform(pa.table({"id": [1], "query": ["q"], "score": pa.array([0.5], pa.float32())}), schema)
    assert scored.column_names == ["id", "query", "score"]
    rejected = sink.conform(pa.table({"id": [2], "query": [None], "reason": ["r"], REJECT: ["query is null"]}), schema)
    assert rejected.column_names == ["id", "query", "reason", REJECT]


def test_success_counts_the_parts_of_results_and_rejects_apart(tmp_path):
    """`_SUCCESS` says how many parts results/ holds (`result_parts`), and each part of results/ and rejects/ with
    its rows; a part of rejects/ is none of results/."""
    out = tmp_path / "out"
    written = PairsSink(str(out), ["score"])
    sink.prepare_output(str(out), "error", job={"model": "m"}, run=written.run)
    for sub, name, rows in (("results", "in-0123abcd-r000000000000.parquet", 3),
                            ("results", "in-0123abcd-r000000000004.parquet", 2),
                            ("rejects", "in-0123abcd-r000000000003.parquet", 1)):
        (out / sub).mkdir(exist_ok=True)
        pq.write_table(pa.table({"id": list(range(rows))}).replace_schema_metadata(
            {b"ce_ray.run": written.run.encode()}), out / sub / name)
        written.parts[f"{sub}/{name}"] = rows
    written.write_success({"rows_scored": 5, "rows_rejected": 1})
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["result_parts"] == 2
    assert success["result_rows"] == {"in-0123abcd-r000000000000.parquet": 3, "in-0123abcd-r000000000004.parquet": 2}
    assert success["reject_rows"] == {"in-0123abcd-r000000000003.parquet": 1}


def test_an_earlier_versions_output_that_counted_parts_alone_is_refused_with_parts_lost_or_added():
    """`_SUCCESS` of the version that counted parts alone (`result_parts`, no `result_rows`): results/ now holding
    fewer or more parts is refused, saying both counts; the same count reads."""
    from ce_ray.output_state import Finished, refuse_changed_output

    held = {"out/results/a.parquet": 5}
    with pytest.raises(InputError, match=r"finished with 2 part\(s\) in results/, which now holds 1: parts were lost"):
        refuse_changed_output("out", Finished({}, 2), held)
    with pytest.raises(InputError, match=r"finished with 1 part\(s\) in results/, which now holds 2"):
        refuse_changed_output("out", Finished({}, 1), held | {"out/results/b.parquet": 3})
    refuse_changed_output("out", Finished({}, 1), held)
    refuse_changed_output("out", Finished({}, None), held | {"out/results/b.parquet": 3})  # older: nothing counted


def test_results_of_an_output_inside_a_folder_named_results_are_that_outputs(tmp_path):
    """The output whose results/ an input is in is the one right above its last `results`, not its first."""
    from ce_ray.output_state import job_of_results

    out = tmp_path / "results" / "job"
    (out / "_ce_ray").mkdir(parents=True)
    (out / "_ce_ray" / "job.json").write_text(json.dumps({"model": "m"}))
    (out / "results").mkdir()
    (out / "_SUCCESS").write_text(json.dumps({"rows_scored": 1, "rows_cut": 3, "top_k": 1}))
    job = job_of_results(str(out / "results"))
    assert job is not None and job["rows_cut"] == 3 and job["settings"] == {"model": "m"}


def test_a_success_marker_of_blank_lines_is_said_empty(tmp_path):
    """A `_SUCCESS` holding only a newline (`echo > _SUCCESS`) is empty, as Spark's, not "not a JSON object"."""
    from ce_ray.output_state import finished_job

    (tmp_path / "_SUCCESS").write_text("\n")
    fs, path = filesystem(str(tmp_path))
    with pytest.raises(InputError, match=r"is not the summary ce-ray writes \(empty\)"):
        finished_job(fs, path, str(tmp_path))
