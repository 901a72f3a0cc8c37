"""Ray Job entrypoint: rerank candidates: scores plus each document's rank within its query (optionally top-k).

    ray job submit --working-dir . -- python jobs/rerank.py --config jobs/configs/rerank.yaml

The same config runs locally with `ce-ray rerank --config jobs/configs/rerank.yaml`; flags after the config
override it, as they do for the command.
"""

import sys

from ce_ray.cli import command

if __name__ == "__main__":
    sys.exit(command(["rerank", *sys.argv[1:]]))
