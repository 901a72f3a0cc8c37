"""Ray Job entrypoint: IR metrics (NDCG@10, MRR@10, MAP) of a reranker over a candidate set.

    ray job submit --working-dir . -- python jobs/eval.py --config jobs/configs/eval.yaml

The same config runs locally with `ce-ray eval --config jobs/configs/eval.yaml`; flags after the config
override it, as they do for the command.
"""

import sys

from ce_ray.cli import command

if __name__ == "__main__":
    sys.exit(command(["eval", *sys.argv[1:]]))
