"""Ray Job entrypoint: score (query, document) pairs: every input row plus a float32 score.

    ray job submit --working-dir . -- python jobs/score.py --config jobs/configs/score.yaml

The same config runs locally with `ce-ray score --config jobs/configs/score.yaml`; flags after the config
override it, as they do for the command.
"""

import sys

from ce_ray.cli import command

if __name__ == "__main__":
    sys.exit(command(["score", *sys.argv[1:]]))
