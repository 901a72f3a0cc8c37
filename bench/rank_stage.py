"""The rank stage of `ce-ray rerank` alone: Ray Data's plain group-by against ce-ray's `rerank.rank`.

Writes --pairs synthetic MS MARCO-like pairs (`common.synthetic_pairs`, 100 candidates per query) as --files
parquet files, starts a local Ray with --cpus CPUs, and runs, in the same Ray session and alternated over
--repeats rounds after a warm-up, each of these from the files to parquet:
- no ranking: read (`ce_ray.readers.read_dataset`), a score column, write: what every system below also does;
- Ray's recipe: `groupby(query_id).map_groups(rank_queries)`, Ray's default partitions (200), every row shuffled;
- the same with ce-ray's partitions (with the top k only: what the partitions alone change);
- ce-ray: `rerank.rank`, as `ce-ray rerank` runs it: its partitions (`rerank.default_partitions`: one per CPU,
  more for inputs past 256 MiB a CPU) and, with a top k, each block's best k of a query before the shuffle;
with --top-k K and without (all rows ranked). The scores stand in for a model's (deterministic, spread, with
ties), so that the stage, not the model, is measured. Checks that both give the same ranks, prints rows/s,
the rank stage's own seconds (a system's time less the no-ranking one) and the ratios; writes
bench/results/rank_stage_cpu.json (or --name).

    .venv/bin/python bench/rank_stage.py                       # 400,000 pairs, 4 files, top 10, 2 CPUs
    python3 bench/rank_stage.py --pairs 4000000 --files 16     # a GPU machine's CPUs
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow as pa

import common


def with_scores(table: pa.Table) -> pa.Table:
    """A score per row from its pair id: spread over (0, 1), with ties (256 values)."""
    from ce_ray.score import SCORE

    pair = table.column("pair_id").to_numpy()
    return table.append_column(SCORE, pa.array(np.floor((np.sin(pair * 12.9898) * 43758.5453) % 1 * 256) / 256,
                                               pa.float32()))


def run(folder: str, out: str, system: str, top_k) -> float:
    from ce_ray.readers import input_key, read_dataset
    from ce_ray.rerank import default_partitions, rank, rank_queries

    start = time.perf_counter()
    ds, files, input_bytes, _, _ = read_dataset(folder, "parquet", ["query", "document"], present=["query_id"])
    ds = ds.map_batches(with_scores, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
    order = [input_key(f.path) for f in files]
    if system in ("ray", "ray-partitions"):
        partitions = default_partitions(input_bytes) if system == "ray-partitions" else None
        ds = ds.groupby("query_id", num_partitions=partitions).map_groups(
            rank_queries, fn_kwargs=dict(top_k=top_k, input_order=order), batch_format="pyarrow")
    elif system == "ce-ray":
        ds = rank(ds, "query_id", top_k, order, partitions=default_partitions(input_bytes))
    ds.write_parquet(out, mode="overwrite")
    return time.perf_counter() - start


def ranks(out: str) -> pd.DataFrame:
    return pd.read_parquet(out, columns=["query_id", "doc_id", "rank"]).sort_values(["query_id", "rank"],
                                                                                    ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=400_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--name", default="rank_stage_cpu")
    args = parser.parse_args()

    names = {"none": "no ranking (read, score, write)", "ray": "Ray's groupby().map_groups, 200 partitions",
             "ray-partitions": "the same, ce-ray's partitions", "ce-ray": "ce-ray rank()"}
    cases = [("none", None), ("ray", args.top_k), ("ray-partitions", args.top_k), ("ce-ray", args.top_k), ("ray", None),
             ("ce-ray", None)]
    with tempfile.TemporaryDirectory() as work:
        common.write_pairs(common.synthetic_pairs(args.pairs), os.path.join(work, "in"), args.files)
        common.init_ray(args.cpus)
        run(os.path.join(work, "in"), os.path.join(work, "warm-up"), "ce-ray", args.top_k)
        seconds = {case: [] for case in cases}
        for _ in range(args.repeats):
            for system, top_k in cases:
                out = os.path.join(work, f"{system}-{top_k}")
                seconds[(system, top_k)].append(run(os.path.join(work, "in"), out, system, top_k))
        for top_k in (args.top_k, None):
            ray_ranks, ce_ranks = (ranks(os.path.join(work, f"{s}-{top_k}")) for s in ("ray", "ce-ray"))
            pd.testing.assert_frame_equal(ray_ranks, ce_ranks)  # the same rows kept, the same ranks
        outputs = {f"{s}-{k}": len(os.listdir(os.path.join(work, f"{s}-{k}"))) for s, k in cases}

    best = {case: min(times) for case, times in seconds.items()}
    stage = {case: best[case] - best[("none", None)] for case in cases[1:]}
    rows = [("system", "top k", "rows/s", "rank stage s", "files out", "seconds")]
    for system, top_k in cases:
        rows.append((names[system], top_k or ("-" if system == "none" else "all"),
                     f"{args.pairs / best[(system, top_k)]:,.0f}",
                     f"{stage[(system, top_k)]:.2f}" if system != "none" else "",
                     outputs[f"{system}-{top_k}"], " ".join(f"{s:.2f}" for s in seconds[(system, top_k)])))
    print(f"{args.pairs:,} pairs (100 per query) in {args.files} parquet files, {args.cpus} CPUs, best of "
          f"{args.repeats}; the same ranks from both")
    print(common.table(rows, (42, 5, 9, 12, 9, 16)))
    ratios = {f"top {k or 'all'}": best[("ray", k)] / best[("ce-ray", k)] for k in (args.top_k, None)}
    print("ratio, ce-ray to Ray's recipe, whole job: " + ", ".join(f"{k} {r:.2f}x" for k, r in ratios.items()))
    result = {**common.header("cpu"), "pairs": args.pairs, "files": args.files, "cpus": args.cpus,
              "top_k": args.top_k, "seconds": {f"{s} top {k or 'all'}": t for (s, k), t in seconds.items()},
              "rank_stage_seconds": {f"{s} top {k or 'all'}": t for (s, k), t in stage.items()},
              "files_out": outputs, "ratio": ratios}
    print("wrote", common.write_result(args.name, result))


if __name__ == "__main__":
    main()
