"""Ray Job entrypoint: BM25 top-k candidates of each query of a BEIR split, as pairs parquet.

    ray job submit --working-dir . -- python jobs/candidates.py --config jobs/configs/candidates.yaml

The same config runs locally with `ce-ray candidates --config jobs/configs/candidates.yaml`; flags after the
config override it, as they do for the command.
"""

import sys

from ce_ray.cli import command

if __name__ == "__main__":
    sys.exit(command(["candidates", *sys.argv[1:]]))
