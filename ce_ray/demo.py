"""The demo: rerank every WikiQA test question's candidate sentences on local Ray, then evaluate.

    python -m ce_ray.demo [--model PATH] [--data WikiQA-test.tsv.gz] [--output <project>/out/demo] [--max-questions N]

WikiQA lists, for each question, the sentences of a Wikipedia summary in their original order; the
demo reranks them with a cross-encoder (`ce_ray.rerank`), then compares the original order with the
reranked one (MAP, MRR@10, NDCG@10) over the questions that have a correct answer, as WikiQA is
usually evaluated. Outputs: <output>/input (pairs parquet), <output>/reranked (results/, _SUCCESS),
<output>/eval.json.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
DEFAULT_MODEL = os.path.normpath(os.path.join(SHARED, "models", "ms-marco-MiniLM-L12-v2"))
DEFAULT_DATA = os.path.normpath(os.path.join(SHARED, "data", "wikiqa", "WikiQA-test.tsv.gz"))
DEFAULT_OUTPUT = os.path.join(ROOT, "out", "demo")  # the project's, wherever the demo is run from


def wikiqa_pairs(path: str, max_questions=None):
    """WikiQA's TSV as pairs: query_id, query, doc_id, document, label, and original_rank (1 = first)."""
    import pandas as pd

    df = pd.read_csv(path, sep="\t", quoting=3, keep_default_na=False)
    df = df.rename(columns={"QuestionID": "query_id", "Question": "query", "SentenceID": "doc_id",
                            "Sentence": "document", "Label": "label"})
    if max_questions:
        df = df[df["query_id"].isin(df["query_id"].unique()[:max_questions])]
    return df.assign(original_rank=df.groupby("query_id", sort=False).cumcount() + 1)


def run_demo(model: str = DEFAULT_MODEL, data: str = DEFAULT_DATA, output: str = DEFAULT_OUTPUT,
             max_questions=None) -> dict:
    """Reranks and evaluates, prints the table, and returns what it measured (the benches record it)."""
    import dataclasses

    import ray

    from .config import EvalConfig, RerankConfig
    from .evaluate import run_eval
    from .rerank import run_rerank

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    pairs = wikiqa_pairs(data, max_questions)
    input_dir = os.path.join(output, "input")
    os.makedirs(input_dir, exist_ok=True)
    pairs.to_parquet(os.path.join(input_dir, "wikiqa-test.parquet"), index=False)
    questions = pairs["query_id"].nunique()
    answered = int(pairs.groupby("query_id")["label"].max().sum())
    print(f"WikiQA test: {len(pairs):,} (question, sentence) pairs, {questions:,} questions, "
          f"{answered:,} with a correct answer", flush=True)

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)  # a local Ray, in process
    try:
        reranked = os.path.join(output, "reranked")
        summary = run_rerank(RerankConfig(model=model, input=input_dir, output=reranked, mode="overwrite"))
        result = run_eval(EvalConfig(input=reranked, output=os.path.join(output, "eval.json"),
                                     baseline_column="original_rank", only_with_relevant=True))
    finally:
        if started_here:
            ray.shutdown()
    base, new = result["baseline"], result["reranked"]
    print("\n".join([
        "",
        f"WikiQA test, {result['queries']:,} questions with a correct answer (the others left out), "
        f"model {model}",
        f"  {'':<9}{'original':>10}{'reranked':>10}",
        *(f"  {label:<9}{base[name]:>10.4f}{new[name]:>10.4f}"
          for label, name in (("MAP", "map"), ("MRR@10", "mrr@10"), ("NDCG@10", "ndcg@10"))),
        f"  {summary.rows_in:,} pairs in {summary.seconds:.1f} s: {summary.pairs_per_second:,.1f} pairs/s "
        "(reading, scoring, ranking, writing)",
        f"  outputs: {os.path.join(reranked, 'results')}, {os.path.join(output, 'eval.json')}",
    ]), flush=True)
    return {"model": model, "pairs": len(pairs), "questions": int(questions), "questions_answered": answered,
            "eval": result, "rerank": dataclasses.asdict(summary) | {"pairs_per_second": summary.pairs_per_second}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ce_ray.demo", description=__doc__.split("\n")[0],
                                     allow_abbrev=False)  # as the commands': `--max 5` is no `--max-questions 5`
    parser.add_argument("--model", default=DEFAULT_MODEL, help="reranker: folder or hub id")
    parser.add_argument("--data", default=DEFAULT_DATA, help="WikiQA's test split, WikiQA-test.tsv.gz")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help="folder of the pairs (input/), the reranked pairs (reranked/) and eval.json")
    parser.add_argument("--max-questions", type=int, default=None, help="the first n questions; unset: all")
    args = parser.parse_args(argv)
    if args.max_questions is not None and args.max_questions < 1:  # 0 ran every question, -1 all but the last
        parser.error(f"--max-questions must be 1 or more, got {args.max_questions}")
    # The data and the default model come from ../shared: without it, one line, before Ray starts (a traceback,
    # and for the model 24 s in).
    for flag, path in (("--data", args.data), ("--model", args.model if args.model == DEFAULT_MODEL else None)):
        if path is not None and not os.path.exists(path):
            parser.exit(2, f"{parser.prog}: error: {path} does not exist: the demo reads WikiQA and the reranker "
                           f"from {os.path.normpath(SHARED)} beside the project (see its README.md), or another with "
                           f"{flag}\n")
    try:
        run_demo(args.model, args.data, args.output, args.max_questions)
    except KeyboardInterrupt:  # a line, not the traceback of wherever the demo was waiting
        print(f"\n{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # as the commands say theirs: a wrong setting in one line, a failure with its cause
        from .cli import USAGE_ERRORS, report_error

        return report_error(parser.prog, "demo", e, usage_errors=USAGE_ERRORS + (OSError,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
