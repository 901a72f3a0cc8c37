#!/usr/bin/env bash
# Sets everything up (.venv) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests read the shared data and models beside the project: without them, hundreds failed one by one, each on
# a model path taken for a hub id.
if [ ! -d ../shared/models ] || [ ! -d ../shared/data ]; then
  echo "ce-ray: the tests read ../shared/models and ../shared/data beside the project ($(cd .. && pwd)/shared):" \
    "not found (see README.md)" >&2
  exit 2
fi
bash scripts/setup.sh dev
# A user's Python path and Ray cluster address stay out: a RAY_ADDRESS sent the tests' jobs to that cluster.
unset PYTHONPATH PYTHONHOME RAY_ADDRESS
export RAY_DATA_DISABLE_PROGRESS_BARS=1 DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=20 "$@"
