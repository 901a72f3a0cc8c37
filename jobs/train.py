"""Ray Job entrypoint: fine-tune a reranker on Ray Train; checkpoints, resumes, evaluates, saves a CrossEncoder folder.

    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/train.yaml

The same config runs locally with `ce-ray train --config jobs/configs/train.yaml`; flags after the config
override it, as they do for the command.
"""

import sys

from ce_ray.cli import command

if __name__ == "__main__":
    sys.exit(command(["train", *sys.argv[1:]]))
