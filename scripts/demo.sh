#!/usr/bin/env bash
# Sets everything up (.venv) and runs the main job on local Ray: rerank every WikiQA test question's
# candidate sentences with the shared L12 reranker, evaluate, and print the summary.
set -euo pipefail
# Run from where the user is, so that a relative --data or --output is theirs (it was the project's); the default
# output is the project's out/demo/.
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup.sh" dev
unset PYTHONPATH PYTHONHOME
export TOKENIZERS_PARALLELISM=false
exec "$root/.venv/bin/python" -m ce_ray.demo "$@"
