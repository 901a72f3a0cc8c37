"""What a job's driver takes from a model's tokenizer (`ce_ray.tokenizer_facts`): transformers' answer,
recorded per tokenizer files and library versions, so that later drivers load neither transformers nor torch."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

from ce_ray.tokenizer_facts import _from_transformers, tokenizer_facts

from conftest import L12, ROOT


def records(cache) -> list:
    return sorted((cache / "tokenizers").glob("*.json"))


def test_recorded_facts_are_transformers_and_a_later_driver_loads_neither_transformers_nor_torch(
        tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CE_RAY_CACHE", str(cache))
    first = tokenizer_facts(str(L12))
    assert first == _from_transformers(str(L12), False)
    assert first.plan is not None and first.max_length == 512 and len(records(cache)) == 1

    # A new driver: the facts and the score job's plan (built, not run) from the record alone.
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
                         timeout=180, cwd=ROOT)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    facts, loaded = pickle.loads((tmp_path / "out.pickle").read_bytes())
    assert facts == first and loaded == [] and len(records(cache)) == 1


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
