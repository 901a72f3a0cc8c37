"""DeepSpeed ZeRO-2 and ZeRO-3 on CPU (gloo, torch's AdamW: nothing compiled), 2 workers, through Ray Train."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from conftest import wikiqa_pairs

os.environ.setdefault("DS_ACCELERATOR", "cpu")
try:
    import deepspeed  # noqa: F401
except ImportError as e:  # pragma: no cover - deepspeed is in the dev extra
    pytest.skip(f"deepspeed cannot be imported ({e}): pip install 'ce-ray[deepspeed]'", allow_module_level=True)

pytestmark = pytest.mark.timeout(600)


def test_zero2_trains_and_saves_a_crossencoder(ray_local, tiny_model, tmp_path):
    from safetensors.torch import load_file
    from sentence_transformers import CrossEncoder

    import ce_ray.train  # noqa: F401
    from ce_ray.config import DeepSpeedConfig, TrainConfig

    frame = wikiqa_pairs("train", 32)[["query", "document", "label"]].astype({"label": "float32"})
    frame.to_parquet(tmp_path / "pairs.parquet")
    out = tmp_path / "zero2"
    outcome = sys.modules["ce_ray.train"].train(TrainConfig(
        model=str(tiny_model), train_data=str(tmp_path / "pairs.parquet"), output=str(out), num_workers=2,
        batch_size=4, epochs=1, lr=1e-3, log_every=1, deepspeed=DeepSpeedConfig(stage=2)))
    assert outcome.steps == 4  # 16 pairs per worker, 4 per device
    assert outcome.replica_divergence == 0.0
    start, trained = load_file(tiny_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert max(float((start[k] - trained[k]).abs().max()) for k in start) > 1e-4
    checkpoint = os.path.join(outcome.result.checkpoint.path, "zero")
    assert sorted(f for f in os.listdir(checkpoint) if "optim_states" in f) == [  # each rank its partition
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    model = CrossEncoder(str(out), device="cpu")
    scores = model.predict(list(zip(frame["query"], frame["document"])))
    assert scores.shape == (32,) and np.all((scores > 0) & (scores < 1))
    assert "DeepSpeed ZeRO-2" in (out / "README.md").read_text()
    # A resume reads the checkpoint's files without unpickling code (DeepSpeed's own engine unpickled them): each
    # file DeepSpeed wrote loads so, and one that would run code is refused.
    import pickle

    import torch

    load = sys.modules["ce_ray.train"]._load_weights_only
    for name in os.listdir(checkpoint):
        load(os.path.join(checkpoint, name), map_location="cpu")
    torch.save({"step": Payload(str(tmp_path / "ran"))}, tmp_path / "planted.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load(str(tmp_path / "planted.pt"))
    assert not (tmp_path / "ran").exists()


def test_zero3_offloaded_trains_as_data_parallel_training_does_and_evaluates_on_every_rank(ray_local, tiny_model,
                                                                                            tmp_path):
    """ZeRO-3 partitions the parameters themselves: every rank takes part in each evaluation pass (each scores all
    the candidates), the model is gathered from the ranks to be saved, and replicas hold no whole weights to
    compare. Its steps, with the optimizer's states and the parameters offloaded to CPU memory (the offload of
    the optimizer failed as DeepSpeed started), are those of plain data-parallel training on the same pairs."""
    from safetensors.torch import load_file

    import ce_ray
    import ce_ray.train  # noqa: F401
    from ce_ray.config import DeepSpeedConfig, TrainConfig

    frame = wikiqa_pairs("train", 32)[["query", "document", "label"]].astype({"label": "float32"})
    frame.to_parquet(tmp_path / "pairs.parquet")
    common = dict(model=str(tiny_model), train_data=str(tmp_path / "pairs.parquet"), num_workers=2, batch_size=4,
                  epochs=1, lr=1e-3, log_every=1, eval_data=str(tmp_path / "pairs.parquet"))
    zero3 = sys.modules["ce_ray.train"].train(TrainConfig(**common, output=str(tmp_path / "zero3"),
                                                          deepspeed=DeepSpeedConfig(stage=3, offload_optimizer=True,
                                                                                    offload_params=True)))
    plain = sys.modules["ce_ray.train"].train(TrainConfig(**common, output=str(tmp_path / "ddp")))
    assert zero3.steps == plain.steps == 4 and zero3.replica_divergence is None
    assert [e["loss"] for e in zero3.log if "loss" in e] == pytest.approx([e["loss"] for e in plain.log if "loss" in e],
                                                                          abs=1e-5)
    assert zero3.final_metrics == pytest.approx(plain.final_metrics, abs=1e-4) and zero3.final_metrics
    start = load_file(tiny_model / "model.safetensors")
    three, ddp = (load_file(tmp_path / name / "model.safetensors") for name in ("zero3", "ddp"))
    assert max(float((start[k] - three[k]).abs().max()) for k in start) > 1e-4
    assert max(float((three[k] - ddp[k]).abs().max()) for k in ddp) < 1e-5
    pairs = list(zip(frame["query"], frame["document"]))
    assert ce_ray.predict(str(tmp_path / "zero3"), pairs) == pytest.approx(ce_ray.predict(str(tmp_path / "ddp"), pairs),
                                                                            abs=1e-5)
    assert "DeepSpeed ZeRO-3" in (tmp_path / "zero3" / "README.md").read_text()


class Payload:
    """An object whose unpickling runs code: it makes the folder `path`."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_a_bf16_run_of_transformers_model_is_saved_in_float32(ray_local, tiny_model, tmp_path):
    """DeepSpeed's bf16 casts the module itself: a model of transformers' code (XLM-R, ModernBERT, DeBERTa: those
    ce-ray's BERT does not run) was saved in bf16, config and weights, and CrossEncoder loaded and scored it so,
    unlike ce-ray; the docs say a DeepSpeed bf16 run's model is saved in float32, as ce-ray's BERT saves it."""
    import json

    import torch
    from safetensors.torch import load_file
    from sentence_transformers import CrossEncoder

    import ce_ray.train  # noqa: F401
    from ce_ray.config import DeepSpeedConfig, TrainConfig

    frame = wikiqa_pairs("train", 16)[["query", "document", "label"]].astype({"label": "float32"})
    frame.to_parquet(tmp_path / "pairs.parquet")
    out = tmp_path / "bf16"
    sys.modules["ce_ray.train"].train(TrainConfig(
        model=str(tiny_model), train_data=str(tmp_path / "pairs.parquet"), output=str(out), batch_size=8,
        max_steps=2, lr=1e-3, implementation="transformers", deepspeed=DeepSpeedConfig(stage=2, bf16=True)))
    assert {tensor.dtype for tensor in load_file(out / "model.safetensors").values()} == {torch.float32}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert CrossEncoder(str(out), device="cpu").model.dtype == torch.float32
