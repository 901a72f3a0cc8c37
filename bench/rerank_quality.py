"""Zero-shot reranking quality of a reranker: WikiQA test (the demo) or SciFact BM25 top-k, recorded.

    .venv/bin/python bench/rerank_quality.py wikiqa                  # the demo: original order vs reranked
    .venv/bin/python bench/rerank_quality.py scifact --top-k 100     # BM25 top-k vs reranked; for a GPU

SciFact abstracts are long (about 5 pairs/s on 2 CPU cores, so top-100 of the 300 test queries is ~100 min
there). Writes bench/results/rerank_wikiqa.json or rerank_scifact_top<k>.json with the device and versions.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import common

SHARED = os.path.join(common.ROOT, "..", "shared")
METRICS = (("MAP", "map"), ("MRR@10", "mrr@10"), ("NDCG@10", "ndcg@10"))


def wikiqa(model: str, work: str) -> dict:
    from ce_ray.demo import run_demo

    record = run_demo(model=model, output=work)
    record["eval"] = {k: v for k, v in record["eval"].items() if k != "per_query"}
    return record | {"dataset": "WikiQA test", "baseline": "original order (WikiQA's sentence order)"}


def scifact(model: str, work: str, top_k: int) -> dict:
    from ce_ray.candidates import run_candidates
    from ce_ray.config import CandidatesConfig, EvalConfig, RerankConfig
    from ce_ray.evaluate import run_eval
    from ce_ray.rerank import run_rerank

    data = os.path.join(SHARED, "data", "scifact")
    candidates = os.path.join(work, "candidates")
    found = run_candidates(CandidatesConfig(data=data, split="test", output=candidates, top_k=top_k))
    reranked = os.path.join(work, "reranked")
    summary = run_rerank(RerankConfig(model=model, input=candidates, output=reranked, mode="overwrite"))
    result = run_eval(EvalConfig(input=reranked, qrels=os.path.join(data, "qrels", "test.tsv"),
                                 baseline_column="bm25_rank", output=os.path.join(work, "eval.json")))
    return {"dataset": f"SciFact test, BM25 top-{top_k}", "baseline": "BM25 order", "model": model,
            "candidates": found, "eval": {k: v for k, v in result.items() if k != "per_query"},
            "rerank": {"pairs": summary.rows_scored, "seconds": summary.seconds,
                       "pairs_per_second": summary.rows_scored / summary.seconds}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["wikiqa", "scifact"])
    parser.add_argument("--model", default=os.path.normpath(common.SHARED_MODEL))
    parser.add_argument("--top-k", type=int, default=100, help="SciFact: BM25 candidates per query")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = common.pick_device(args.device)
    common.init_ray()
    with tempfile.TemporaryDirectory(prefix="ce-ray-bench-") as work:
        record = wikiqa(args.model, work) if args.dataset == "wikiqa" else scifact(args.model, work, args.top_k)
    name = "rerank_wikiqa" if args.dataset == "wikiqa" else f"rerank_scifact_top{args.top_k}"
    base, new = record["eval"]["baseline"], record["eval"]["reranked"]
    print(f"\n{record['dataset']}, {record['eval']['queries']:,} queries ({record['eval']['counted']})")
    print(f"  {'':<9}{record['baseline'].split(' (')[0]:>16}{'reranked':>10}")
    for label, key in METRICS:
        print(f"  {label:<9}{base[key]:>16.4f}{new[key]:>10.4f}")
    path = common.write_result(name, common.header(device) | record)
    print(f"written {os.path.relpath(path, common.ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
