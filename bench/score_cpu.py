"""CPU scoring: sentence-transformers' CrossEncoder.predict and `ce-ray score` on the same pairs, one run.

Both score the 6,165 WikiQA test (question, sentence) pairs with the shared L12 reranker on this machine's
CPU cores. ce-ray is timed end to end, parquet to parquet, with and without the start of local Ray.
Writes bench/results/score_cpu.json.

    .venv/bin/python bench/score_cpu.py [--pairs N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "..", "shared", "models", "ms-marco-MiniLM-L12-v2")
WIKIQA = os.path.join(ROOT, "..", "shared", "data", "wikiqa", "WikiQA-test.tsv.gz")


def versions() -> dict:
    import ray
    import sentence_transformers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "transformers": transformers.__version__, "sentence_transformers": sentence_transformers.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=None, help="score only the first N pairs")
    args = parser.parse_args()

    df = pd.read_csv(WIKIQA, sep="\t", quoting=3, keep_default_na=False)
    df = df.rename(columns={"Question": "query", "Sentence": "document"})
    if args.pairs:
        df = df.head(args.pairs)
    df["pair_id"] = np.arange(len(df))
    n = len(df)
    work = tempfile.mkdtemp(prefix="ce-ray-bench-")
    df.to_parquet(os.path.join(work, "pairs.parquet"))

    from sentence_transformers import CrossEncoder

    model = CrossEncoder(MODEL, device="cpu")
    start = time.perf_counter()
    expected = model.predict(list(zip(df["query"], df["document"])), batch_size=32, show_progress_bar=False)
    predict_s = time.perf_counter() - start
    del model

    import ray

    from ce_ray import ScoreConfig, run_score

    start = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - start
    summary = run_score(ScoreConfig(model=MODEL, input=os.path.join(work, "pairs.parquet"),
                                    output=os.path.join(work, "out"), mode="overwrite"))
    total_s = time.perf_counter() - start
    job_s = total_s - ray_start_s
    out = pd.read_parquet(os.path.join(work, "out", "results")).sort_values("pair_id")
    max_diff = float(np.abs(out["score"].to_numpy() - expected).max())
    ray.shutdown()

    rows = [
        ("CrossEncoder.predict (fp32, batch 32)", n / predict_s, 1.0),
        ("ce-ray score, parquet to parquet", n / job_s, (n / job_s) / (n / predict_s)),
        ("ce-ray score, including Ray's start", n / total_s, (n / total_s) / (n / predict_s)),
    ]
    print(f"\n{n:,} WikiQA test pairs, shared L12 reranker, {os.cpu_count()} CPU cores")
    print(f"{'system':<42} {'pairs/s':>9} {'x predict':>10}")
    for name, rate, ratio in rows:
        print(f"{name:<42} {rate:>9.1f} {ratio:>10.2f}")
    print(f"max |score - predict| = {max_diff:.2e}; rows in {summary.rows_in:,}, scored {summary.rows_scored:,}")

    result = {
        "bench": "score_cpu",
        "date": time.strftime("%Y-%m-%d"),
        "device": f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})",
        "versions": versions(),
        "pairs": n,
        "predict_pairs_per_s": n / predict_s,
        "ce_ray_pairs_per_s": n / job_s,
        "ce_ray_pairs_per_s_with_ray_start": n / total_s,
        "ray_start_s": ray_start_s,
        "ratio_vs_predict": (n / job_s) / (n / predict_s),
        "ratio_vs_predict_with_ray_start": (n / total_s) / (n / predict_s),
        "max_abs_diff_vs_predict": max_diff,
    }
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "score_cpu.json"), "w") as f:
        json.dump(result, f, indent=2)
    print("written bench/results/score_cpu.json", file=sys.stderr)


if __name__ == "__main__":
    main()
