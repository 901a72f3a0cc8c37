"""Half precision on the real reranker: how far ce-ray's scores in float16 and bfloat16 are from predict's fp32.

The design's bound for scores in half precision is 1e-2 from `CrossEncoder.predict` fp32 (after the
sigmoid, in fp32). This scores the 6,165 WikiQA test pairs and the --scifact longest SciFact (claim,
abstract) pairs (truncated at 512 tokens) with the shared L12 reranker: predict fp32 as the reference, then
ce-ray's replica (`Scorer`, no Ray) in float16, bfloat16 and float32, and reports per dtype the largest and
mean difference and how many pairs pass 1e-2. `dtype="auto"` is chosen from this. Writes
bench/results/half_precision_{cpu,gpu}.json.

    .venv/bin/python bench/half_precision.py              # ~4 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa

import common

DATA = os.path.join(common.ROOT, "..", "shared", "data")
BOUND = 1e-2


def wikiqa_test() -> pd.DataFrame:
    df = pd.read_csv(os.path.join(DATA, "wikiqa", "WikiQA-test.tsv.gz"), sep="\t", quoting=3, keep_default_na=False)
    return df.rename(columns={"Question": "query", "Sentence": "document"})[["query", "document"]]


def scifact_longest(n: int) -> pd.DataFrame:
    """The test qrels' (claim, title + abstract) pairs with the longest abstracts."""
    folder = os.path.join(DATA, "scifact")
    with open(os.path.join(folder, "queries.jsonl")) as f:
        queries = {q["_id"]: q["text"] for q in map(json.loads, f)}
    with open(os.path.join(folder, "corpus.jsonl")) as f:
        corpus = {d["_id"]: (d["title"] + " " + d["text"]).strip() for d in map(json.loads, f)}
    qrels = pd.read_csv(os.path.join(folder, "qrels", "test.tsv"), sep="\t", dtype=str)
    rows = sorted(((queries[q], corpus[d]) for q, d in zip(qrels["query-id"], qrels["corpus-id"])),
                  key=lambda row: -len(row[1]))
    return pd.DataFrame(rows[:n], columns=["query", "document"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact", type=int, default=50, help="the N SciFact pairs with the longest abstracts")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from sentence_transformers import CrossEncoder

    from ce_ray import ScoreConfig
    from ce_ray.batching import pair_encoder, tokenize_table
    from ce_ray.replica import Scorer

    device = common.pick_device(args.device)
    model = common.SHARED_MODEL
    result = common.header(device) | {"bench": "half_precision", "model": "ms-marco-MiniLM-L12-v2", "bound": BOUND,
                                      "sets": {}}
    sets = (("wikiqa_test", wikiqa_test()), (f"scifact_longest_{args.scifact}", scifact_longest(args.scifact)))
    for name, df in sets:
        expected = CrossEncoder(model, device=device).predict(list(zip(df["query"], df["document"])), batch_size=32,
                                                              show_progress_bar=False)
        table = tokenize_table(pa.Table.from_pandas(df, preserve_index=False), pair_encoder(model),
                               "query", "document", 512)
        figures = {}
        for dtype in ("float16", "bfloat16", "float32"):
            scorer = Scorer(ScoreConfig(model=model, dtype=dtype), device=device.split(":")[0])
            diff = np.abs(scorer(table).column("score").to_numpy() - expected)
            figures[dtype] = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                              "p999_abs_diff": float(np.quantile(diff, 0.999)),
                              "pairs_over_bound": int((diff > BOUND).sum())}
            print(f"{name} ({len(df):,} pairs) {dtype:>8}: max {diff.max():.2e}, mean {diff.mean():.2e}, "
                  f"{figures[dtype]['pairs_over_bound']} over {BOUND:g}", flush=True)
        result["sets"][name] = {"pairs": len(df), "dtypes": figures}
    print(f"wrote {common.write_result('half_precision_' + ('gpu' if device.startswith('cuda') else 'cpu'), result)}")


if __name__ == "__main__":
    main()
