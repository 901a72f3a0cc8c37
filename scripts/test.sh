#!/usr/bin/env bash
# Sets everything up (.venv) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export RAY_DATA_DISABLE_PROGRESS_BARS=1 DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=20 "$@"
