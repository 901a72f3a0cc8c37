"""What a job's driver takes from a model's tokenizer (`ce_ray.tokenizer_facts`): transformers' answer, asked in
a process of its own and recorded per tokenizer files and library versions, so that drivers load neither
transformers nor torch."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys

from ce_ray.tokenizer_facts import _from_transformers, tokenizer_facts

from conftest import L12, ROOT


def records(cache) -> list:
    return sorted((cache / "tokenizers").glob("*.json"))


def a_drivers_facts(tmp_path, cache) -> tuple:
    """A new driver's: the facts and the score job's plan (built, not run), with `cache` as ce-ray's cache; the
    facts it took, and which of transformers and torch it loaded."""
    code = (
        "import pickle, sys\n"
        "import ray\n"
        "from ce_ray import score\n"
        "from ce_ray.tokenizer_facts import tokenizer_facts\n"
        "ray.init(address='local', num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
        "score(ray.data.from_items([{'query': 'q', 'document': 'd'}]), model=sys.argv[1], use_gpu=False)\n"
        "loaded = [m for m in ('transformers', 'torch') if m in sys.modules]\n"
        "pickle.dump((tokenizer_facts(sys.argv[1]), loaded), open(sys.argv[2], 'wb'))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(L12), str(tmp_path / "out.pickle")], capture_output=True,
                         timeout=180, cwd=ROOT, env={**os.environ, "CE_RAY_CACHE": str(cache)})
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    return pickle.loads((tmp_path / "out.pickle").read_bytes())


def test_recorded_facts_are_transformers_and_a_later_driver_loads_neither_transformers_nor_torch(
        tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CE_RAY_CACHE", str(cache))
    first = tokenizer_facts(str(L12))
    assert first == _from_transformers(str(L12), False)
    assert first.plan is not None and first.max_length == 512 and len(records(cache)) == 1
    facts, loaded = a_drivers_facts(tmp_path, cache)
    assert facts == first and loaded == [] and len(records(cache)) == 1


def test_a_first_driver_has_another_process_ask_transformers_and_loads_neither_itself(tmp_path):
    """The first job with a tokenizer asks for its facts in a process of its own, while it starts Ray: its driver
    imports neither transformers nor torch (a first job's driver peaked at 952 MiB on the H200 machine,
    later ones at 264-276 MiB)."""
    cache = tmp_path / "cache"
    facts, loaded = a_drivers_facts(tmp_path, cache)
    assert loaded == [] and len(records(cache)) == 1
    assert facts == _from_transformers(str(L12), False)


def test_a_first_drivers_model_errors_are_as_before_and_a_process_without_an_answer_leaves_it_to_ask(tmp_path):
    """A tokenizer that cannot be loaded fails the job with transformers' first line, as when the job asked itself;
    an asking process that dies before it answers (killed, out of memory) costs the job its time, not the facts.
    In a new driver: one with torch loaded (this one) asks itself."""
    unknown = tmp_path / "unknown-type"
    shutil.copytree(L12, unknown, ignore=shutil.ignore_patterns("*.safetensors"))
    (unknown / "model.safetensors").symlink_to(L12 / "model.safetensors")
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps(config | {"model_type": "no-such-type"}))
    code = (
        "import pickle, sys\n"
        "import ce_ray.tokenizer_facts as asking\n"
        "from ce_ray.model_folder import ModelError\n"
        "from ce_ray.score import ScoreConfig, scoring_model\n"
        "try:\n"
        "    scoring_model(ScoreConfig(model=sys.argv[1]))\n"
        "    error = None\n"
        "except ModelError as e:\n"
        "    error = str(e)\n"
        "unloaded = 'transformers' not in sys.modules\n"
        "asking.ASK = 'import os; os._exit(9)'\n"
        "facts = asking.facts_ahead(sys.argv[2])()\n"
        "pickle.dump((error, unloaded, facts), open(sys.argv[3], 'wb'))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(unknown), str(L12), str(tmp_path / "out.pickle")],
                         capture_output=True, timeout=180, cwd=ROOT, env={**os.environ, "CE_RAY_CACHE": str(tmp_path)})
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    error, unloaded, facts = pickle.loads((tmp_path / "out.pickle").read_bytes())
    assert unloaded and re.fullmatch(r"cannot load model \S+unknown-type: ValueError: .*model type `no-such-type` but "
                                     r"Transformers does not recognize this architecture[^\n]*", error), error
    assert facts == _from_transformers(str(L12), False) and len(records(tmp_path)) == 1


def test_a_changed_file_of_the_folder_is_asked_of_transformers_again(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CE_RAY_CACHE", str(cache))
    folder = tmp_path / "model"
    shutil.copytree(L12, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    before = tokenizer_facts(str(folder))
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    # Same files, other bytes.
    (folder / "tokenizer_config.json").write_text(json.dumps(settings | {"do_lower_case": False,
                                                                          "model_max_length": 128}))
    after = tokenizer_facts(str(folder))
    # transformers takes do_lower_case from tokenizer_config.json over tokenizer.json's normalizer.
    assert json.loads(after.plan.spec)["normalizer"]["lowercase"] is False and after.max_length == 128
    assert json.loads(before.plan.spec)["normalizer"]["lowercase"] is True and before.max_length == 512
    assert after == _from_transformers(str(folder), False) and len(records(cache)) == 2
    assert tokenizer_facts(str(folder)) == after and len(records(cache)) == 2
