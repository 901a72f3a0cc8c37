#!/usr/bin/env bash
# Builds here, in one command, what the GPU benches carry to the GPU machine (bench/README.md, "Run them on the
# GPU machine"): the wheels it lacks in .whl/ (Ray, slimmed; nanotoken; datasets, dill and multiprocess for
# CrossEncoderTrainer) and the shared reranker's config and tokenizer in .cache/bench-assets. Both folders are
# git-ignored, so a new checkout builds them again. Then: carry [".whl", ".cache/bench-assets"] and run
# `bash bench/gpu_suite.sh ...` there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev >/dev/null
# Built anew: a wheel of an earlier version left beside a newer one stops the suite's install.
rm -rf .whl
bash ../shared/device/ray-wheels.sh .whl >/dev/null
# The GPU machine's Python is 3.12; these are pure Python or abi3 wheels.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl nanotoken==0.1.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
.venv/bin/python bench/common.py assets  # with the commit the tree holds (common.commit)
carried=$(du -cm .whl .cache/bench-assets | tail -1 | cut -f1)
echo "kit: $(ls .whl | wc -l) wheels in .whl, assets in .cache/bench-assets, ${carried} MiB to carry (64 at most)"
(( carried < 64 )) || { echo "kit: over the 64 MiB a device call carries" >&2; exit 1; }
