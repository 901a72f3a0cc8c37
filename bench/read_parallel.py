"""Reading one large parquet file: one read task for the file (as before `readers.read_ranges`) against one task per
range of row groups (ce-ray's default), in the same Ray session.

Writes --pairs synthetic MS MARCO-like pairs (`common.synthetic_pairs`) as ONE parquet file of --row-group rows
per row group, starts a local Ray with --cpus CPUs and reads the file with `ce_ray.readers.read_dataset` into Ray's
object store (`materialize`), as a job's read stage hands blocks to tokenizing: with `rows_per_read` the whole
file (one task), and with the default (`readers.PARQUET_ROWS_PER_READ`), alternated over --repeats rounds after a
warm-up read. Prints rows/s and the ratio; writes bench/results/read_parallel.json.

    .venv/bin/python bench/read_parallel.py                     # 3M pairs, row groups of 250,000, 2 CPUs
    python3 bench/read_parallel.py --pairs 16000000 --cpus 16   # a GPU machine's CPUs
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import pyarrow.parquet as pq

import common


def read_seconds(folder: str, rows_per_read: int) -> float:
    from ce_ray.readers import read_dataset

    start = time.perf_counter()
    ds, _, _, _, _ = read_dataset(folder, "parquet", ["query", "document"], rows_per_read=rows_per_read)
    materialized = ds.materialize()
    seconds = time.perf_counter() - start
    del materialized
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3_000_000)
    parser.add_argument("--row-group", type=int, default=250_000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from ce_ray import readers
    from ce_ray.input_files import check_inputs
    from ce_ray.storage import filesystem

    with tempfile.TemporaryDirectory() as work:
        table = common.synthetic_pairs(args.pairs)
        pq.write_table(table, os.path.join(work, "pairs.parquet"), row_group_size=args.row_group)
        del table
        path = os.path.join(work, "pairs.parquet")
        size = os.path.getsize(path)
        fs, local = filesystem(path)
        [check], _ = check_inputs(fs, [local], "parquet", ["query", "document"])
        ranges = len(readers.read_ranges(check, readers.PARQUET_ROWS_PER_READ))
        common.init_ray(args.cpus)
        systems = {"one task for the file": args.pairs, f"ranges of >= {readers.PARQUET_ROWS_PER_READ:,} rows": None}
        read_seconds(work, args.pairs)  # warm-up: Ray's workers start, the file enters the page cache
        seconds = {name: [] for name in systems}
        for _ in range(args.repeats):
            for name, rows_per_read in systems.items():
                seconds[name].append(read_seconds(work, rows_per_read or readers.PARQUET_ROWS_PER_READ))

    rates = {name: args.pairs / min(times) for name, times in seconds.items()}
    before, after = rates.values()
    print(f"{args.pairs:,} pairs in one parquet file ({size / 2**20:,.0f} MiB, row groups of {args.row_group:,}; "
          f"{ranges} ranges), {args.cpus} CPUs, best of {args.repeats}:")
    print(common.table([("read", "rows/s", "seconds")] +
                       [(name, f"{rates[name]:,.0f}", " ".join(f"{s:.2f}" for s in seconds[name])) for name in systems],
                       (34, 12, 24)))
    print(f"ratio: {after / before:.2f}x")
    result = {**common.header("cpu"), "pairs": args.pairs, "file_mib": size / 2**20, "row_group": args.row_group,
              "cpus": args.cpus, "rows_per_read": readers.PARQUET_ROWS_PER_READ, "seconds": seconds,
              "rows_per_s": rates, "ratio": after / before}
    print("wrote", common.write_result("read_parallel", result))


if __name__ == "__main__":
    main()
