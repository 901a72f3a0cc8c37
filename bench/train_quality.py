"""Fine-tuning quality: ce-ray against sentence-transformers' CrossEncoderTrainer, in one run.

Both fine-tune the shared MiniLM-L12 reranker for one epoch on WikiQA train (each question that has a
correct answer, with all its candidate sentences and their labels), with the seeds' recipe (BCE on logits,
AdamW lr 5e-5, no weight decay, linear schedule without warmup, grad-norm clip 1.0, batch 16, seed 42). Then
the zero-shot model and both fine-tuned models rerank WikiQA test (questions with a correct and a wrong
candidate); MAP, MRR@10 and NDCG@10 are computed the same way for all three (CrossEncoder.predict, then
ce_ray.metrics). Writes bench/results/train_quality.json.

`--ce-ray BATCH,LR[,EPOCHS[,WARMUP]]` (repeatable) trains ce-ray with other recipes in the same run, each
against the same CrossEncoderTrainer model: what large batches need to keep the seeds' recipe's quality.

    .venv/bin/python bench/train_quality.py [--max-train-pairs N]
    .venv/bin/python bench/train_quality.py --batch-tokens 8192 --ce-ray 256,2e-4,1,0.1 \
        --ce-ray 512,4e-4,1,0.1 --out bench/results/train_quality_large_batch.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SHARED = (ROOT / ".." / "shared").resolve()
L12 = SHARED / "models" / "ms-marco-MiniLM-L12-v2"
WIKIQA = SHARED / "data" / "wikiqa"
RECIPE = dict(lr=5e-5, batch_size=16, epochs=1, weight_decay=0.0, warmup_ratio=0.0, max_grad_norm=1.0, seed=42)


def wikiqa(split: str) -> pd.DataFrame:
    df = pd.read_csv(WIKIQA / f"WikiQA-{split}.tsv.gz", sep="\t", quoting=3, keep_default_na=False)
    df = df.rename(columns={"Question": "query", "Sentence": "document", "QuestionID": "query_id", "Label": "label"})
    positives = df.groupby("query_id").label.transform("sum")
    if split == "train":
        return df[positives > 0].reset_index(drop=True)
    sizes = df.groupby("query_id").label.transform("count")
    return df[(positives > 0) & (positives < sizes)].reset_index(drop=True)


def evaluate(model_path: str, test: pd.DataFrame) -> dict:
    from sentence_transformers import CrossEncoder

    from ce_ray.metrics import mean_metrics, ranking_metrics

    model = CrossEncoder(model_path, device="cpu")
    scores = model.predict(list(zip(test["query"], test["document"])), batch_size=64)
    frame = test.assign(score=scores)
    per_query = [ranking_metrics(group.sort_values("score", ascending=False, kind="stable").label.to_numpy(), k=10)
                 for _, group in frame.groupby("query_id", sort=False)]
    means = mean_metrics(per_query)
    return {"map": means["map"], "mrr@10": means["mrr@10"], "ndcg@10": means["ndcg@10"]}


def recipe_option(text: str) -> dict:
    """BATCH,LR[,EPOCHS[,WARMUP]] -> the seeds' recipe with those values."""
    parts = text.split(",")
    if not 2 <= len(parts) <= 4:
        raise argparse.ArgumentTypeError(f"expected BATCH,LR[,EPOCHS[,WARMUP]], got {text!r}")
    names, kinds = ("batch_size", "lr", "epochs", "warmup_ratio"), (int, float, int, float)
    try:
        return {**RECIPE, **{name: kind(part) for name, kind, part in zip(names, kinds, parts)}}
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None


def train_ce_ray(train: pd.DataFrame, work: Path, recipe: dict, batch_tokens: int | None) -> dict:
    import ray

    from ce_ray.config import TrainConfig
    import ce_ray.train  # noqa: F401

    path = work / "pairs.parquet"
    train[["query", "document", "label"]].astype({"label": "float32"}).to_parquet(path)
    # With the dashboard: Ray Train watches its run through the state API that it serves (ce-ray's own runs
    # start their local Ray so, `runtime.ensure_ray`).
    ray.init(num_cpus=os.cpu_count(), include_dashboard=True, address="local")
    start = time.perf_counter()
    output = work / f"ce-ray-{recipe['batch_size']}-{recipe['lr']}-{recipe['epochs']}-{recipe['warmup_ratio']}"
    try:
        outcome = sys.modules["ce_ray.train"].train(TrainConfig(
            model=str(L12), train_data=str(path), output=str(output), num_workers=1,
            cpus_per_worker=float(os.cpu_count()), log_every=max(50 * 16 // recipe["batch_size"], 1),
            batch_tokens=batch_tokens, **recipe))
    finally:
        ray.shutdown()
    wall = time.perf_counter() - start
    return {"recipe": recipe, "batch_tokens": batch_tokens, "model": str(output),
            "samples_per_second": outcome.samples_per_second, "wall_seconds": wall, "steps": outcome.steps,
            "final_loss": outcome.log[-1]["loss"]}


def train_sentence_transformers(train: pd.DataFrame, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (CrossEncoder, CrossEncoderTrainer,
                                                     CrossEncoderTrainingArguments)
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    torch.set_num_threads(os.cpu_count())
    model = CrossEncoder(str(L12), device="cpu")
    dataset = Dataset.from_pandas(train[["query", "document", "label"]].astype({"label": "float32"}),
                                  preserve_index=False)
    args = CrossEncoderTrainingArguments(
        output_dir=str(work / "st-checkpoints"), num_train_epochs=RECIPE["epochs"],
        per_device_train_batch_size=RECIPE["batch_size"], learning_rate=RECIPE["lr"],
        weight_decay=RECIPE["weight_decay"], warmup_ratio=RECIPE["warmup_ratio"],
        max_grad_norm=RECIPE["max_grad_norm"], seed=RECIPE["seed"], lr_scheduler_type="linear",
        save_strategy="no", logging_steps=50, report_to="none", use_cpu=True, dataloader_num_workers=0)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=BinaryCrossEntropyLoss(model))
    start = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - start
    model.save_pretrained(str(work / "st"))
    return {"model": str(work / "st"), "samples_per_second": output.metrics.get("train_samples_per_second"),
            "wall_seconds": wall, "steps": output.global_step, "final_loss": output.training_loss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-train-pairs", type=int, default=None, help="first N pairs only (a quick check)")
    parser.add_argument("--ce-ray", type=recipe_option, action="append", metavar="BATCH,LR[,EPOCHS[,WARMUP]]",
                        help="a ce-ray recipe (repeatable); default: the seeds' recipe, CrossEncoderTrainer's")
    parser.add_argument("--batch-tokens", type=int, default=None,
                        help="ce-ray's padded tokens per forward pass (default: the library's)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_quality.json"))
    args = parser.parse_args()
    recipes = args.ce_ray or [RECIPE]
    train, test = wikiqa("train"), wikiqa("test")
    if args.max_train_pairs:
        train = train.head(args.max_train_pairs)
    print(f"train pairs {len(train):,} ({train.query_id.nunique()} questions); test pairs {len(test):,} "
          f"({test.query_id.nunique()} questions)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {"zero_shot": {"metrics": evaluate(str(L12), test)}}
        print("zero-shot", results["zero_shot"], flush=True)
        results["ce_ray"] = []
        for recipe in recipes:
            try:
                run = train_ce_ray(train, work, recipe, args.batch_tokens)
            except Exception as error:  # a failed recipe (out of memory, say) is a result; the others go on
                print(f"ce-ray {recipe}: {type(error).__name__}", flush=True)
                results["ce_ray"].append({"recipe": recipe, "batch_tokens": args.batch_tokens,
                                          "error": f"{type(error).__name__}: {str(error)[:500]}"})
                continue
            run["metrics"] = evaluate(run.pop("model"), test)
            print("ce-ray", run, flush=True)
            results["ce_ray"].append(run)
        results["sentence_transformers"] = train_sentence_transformers(train, work)
        results["sentence_transformers"]["metrics"] = evaluate(results["sentence_transformers"].pop("model"), test)
        print("CrossEncoderTrainer", results["sentence_transformers"], flush=True)
    anchor = results["sentence_transformers"]["metrics"]["ndcg@10"]
    for run in (run for run in results["ce_ray"] if "metrics" in run):
        run["ndcg@10_gap_points"] = 100 * (run["metrics"]["ndcg@10"] - anchor)
        run["within_one_point"] = abs(run["ndcg@10_gap_points"]) <= 1.0
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})",
        "versions": {p: md.version(p) for p in ("ray", "torch", "transformers", "sentence-transformers")},
        "data": {"train": "WikiQA train, questions with a correct answer", "train_pairs": len(train),
                 "test": "WikiQA test, questions with a correct and a wrong candidate", "test_pairs": len(test),
                 "test_questions": int(test.query_id.nunique())},
        "recipe": RECIPE, **results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all(run.get("within_one_point") for run in results["ce_ray"]) else 1


if __name__ == "__main__":
    sys.exit(main())
