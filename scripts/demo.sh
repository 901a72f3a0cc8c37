#!/usr/bin/env bash
# Sets everything up (.venv) and runs the main job on local Ray: rerank every WikiQA test question's
# candidate sentences with the shared L12 reranker, evaluate, and print the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m ce_ray.demo "$@"
