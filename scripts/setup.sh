#!/usr/bin/env bash
# Creates .venv in the project and installs ce-ray with what it needs. Safe to run again: it reinstalls only
# when pyproject.toml changed. Torch: the CPU build where there is no GPU (set TORCH_SPEC to choose another).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-dev}
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.ce-ray-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$extras"
if [ -f "$stamp" ]; then exit 0; fi
echo "ce-ray: installing into .venv (a few minutes the first time)"
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch<=2.14.1}"
  else
    # 2.13.0's CPU build is what this project is tested with on CPU machines.
    .venv/bin/python -m pip install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
.venv/bin/python -m pip install -q -e ".[$extras]"
rm -f .venv/.ce-ray-*
touch "$stamp"
