"""Pair tokenization on one CPU core: the Hugging Face pair encoding against ce-ray's nanotoken path.

Two inputs, both tokenized with the shared L12 reranker's tokenizer at max_length 512:
- the 6,165 WikiQA test (question, sentence) pairs (each question repeats ~10 times);
- an MS MARCO-like reranking input: each of 200 WikiQA questions with 100 distinct three-sentence passages.
Both paths run single-threaded in this process and must give identical ids and token types.
Writes bench/results/tokenize_cpu.json.

    .venv/bin/python bench/tokenize_cpu.py [--repeats N]
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core for Hugging Face too

import argparse
import datetime
import json
import platform
import sys
import time

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MODEL = os.path.join(ROOT, "..", "shared", "models", "ms-marco-MiniLM-L12-v2")
WIKIQA = os.path.join(ROOT, "..", "shared", "data", "wikiqa")
MAX_LENGTH = 512


def wikiqa(split: str) -> pd.DataFrame:
    return pd.read_csv(os.path.join(WIKIQA, f"WikiQA-{split}.tsv.gz"), sep="\t", quoting=3, keep_default_na=False)


def reranking_input(queries: int = 200, per_query: int = 100, seed: int = 0):
    """Each question with `per_query` passages, as a first stage hands them to a reranker.

    Passages are windows of three consecutive WikiQA sentences, all different: only queries repeat.
    """
    train = wikiqa("train")
    sentences = train["Sentence"].tolist()
    passages = [" ".join(sentences[i : i + 3]) for i in range(len(sentences) - 2)]
    questions = train["Question"].drop_duplicates().tolist()[:queries]
    picks = np.random.default_rng(seed).permutation(len(passages))[: len(questions) * per_query]
    return [q for q in questions for _ in range(per_query)], [passages[i] for i in picks]


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def versions() -> dict:
    import pyarrow
    import tokenizers
    import transformers
    from importlib.metadata import version

    return {"python": platform.python_version(), "nanotoken": version("nanotoken"),
            "tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
            "pyarrow": pyarrow.__version__, "numpy": np.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (best is kept)")
    args = parser.parse_args()

    from ce_ray import fast_tokenize
    from ce_ray.batching import encode_pairs_hf
    from ce_ray.model_folder import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    assert fast_tokenize.supports(tokenizer)
    test = wikiqa("test")
    inputs = {
        "WikiQA test pairs": (test["Question"].tolist(), test["Sentence"].tolist()),
        "reranking input (200 queries x 100 passages)": reranking_input(),
    }
    load_before = os.getloadavg()
    results = []
    for name, (queries, documents) in inputs.items():
        n = len(queries)
        expected = encode_pairs_hf(tokenizer, queries, documents, MAX_LENGTH)
        fast_tokenize.pair_plan(tokenizer).encoder.clear_cache()
        start = time.perf_counter()
        got = fast_tokenize.encode_pairs(tokenizer, queries, documents, MAX_LENGTH, parallel=False)
        cold_s = time.perf_counter() - start
        identical = got[0].equals(expected[0]) and got[1].equals(expected[1])
        hf_s = best_time(lambda: encode_pairs_hf(tokenizer, queries, documents, MAX_LENGTH), args.repeats)
        fast_s = best_time(
            lambda: fast_tokenize.encode_pairs(tokenizer, queries, documents, MAX_LENGTH, parallel=False), args.repeats
        )
        row = {
            "input": name,
            "pairs": n,
            "distinct_queries": len(set(queries)),
            "distinct_documents": len(set(documents)),
            "tokens": int(len(expected[0].values)),
            "hf_pairs_per_s": n / hf_s,
            "fast_pairs_per_s": n / fast_s,
            "fast_cold_cache_pairs_per_s": n / cold_s,
            "speedup": hf_s / fast_s,
            "speedup_cold_cache": hf_s / cold_s,
            "identical_ids_and_types": identical,
        }
        results.append(row)
        print(f"\n{name}: {n:,} pairs, {row['tokens']:,} tokens, max_length {MAX_LENGTH}, one thread")
        print(f"  Hugging Face (encode_pairs_hf)          {row['hf_pairs_per_s']:>12,.0f} pairs/s")
        print(f"  nanotoken (fast_tokenize.encode_pairs)  {row['fast_pairs_per_s']:>12,.0f} pairs/s"
              f"  {row['speedup']:.1f}x  (cold cache: {row['fast_cold_cache_pairs_per_s']:,.0f}, "
              f"{row['speedup_cold_cache']:.1f}x)")
        print(f"  identical ids and token types: {identical}")

    report = {
        "benchmark": "pair tokenization, one CPU thread, max_length 512, shared L12 reranker tokenizer",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "load_average_1_5_15": [round(x, 2) for x in load_before]},
        "versions": versions(),
        "repeats": args.repeats,
        "results": results,
    }
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    path = os.path.join(ROOT, "bench", "results", "tokenize_cpu.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {path}")
    if not all(r["identical_ids_and_types"] for r in results):
        sys.exit("the two paths disagree")


if __name__ == "__main__":
    main()
