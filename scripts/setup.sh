#!/usr/bin/env bash
# Creates .venv in the project and installs ce-ray with what it needs. Safe to run again: it reinstalls only
# when pyproject.toml changed. Torch: 2.13.0 where there is no GPU (the CPU build where the index has it; PyPI's
# Linux wheels are CUDA builds), the newest up to 2.14.1 where there is one; TORCH_SPEC chooses another version (on
# the first install), TORCH_INDEX another index (https://download.pytorch.org/whl/cpu for the CPU build, a CUDA
# build of PyTorch's own index for an older driver).
set -euo pipefail
cd "$(dirname "$0")/.."
case "$PWD" in
  *[[:space:]]*)
    # Ray's raylet starts some workers through a shell line that does not quote the interpreter's path: a job
    # failed after 6 minutes of "Failed to startup worker".
    echo "ce-ray: the project's path holds a blank ($PWD), which Ray cannot start its workers from: move or link" \
      "the project to a path without blanks" >&2
    exit 2;;
esac
extras=${1:-dev}
python=${PYTHON:-python3}
# A .venv left half-made (a first run interrupted, python3-venv missing then installed) or whose interpreter is
# gone is made again: it was reused, and every later run failed on it.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    found=$("$python" -V 2>/dev/null) || found="not found"
    echo "ce-ray: needs Python 3.10 or later; $python is $found: set PYTHON" >&2
    exit 2
  fi
  "$python" -m venv --clear .venv
fi
stamp=".venv/.ce-ray-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$extras"
if [ -f "$stamp" ]; then exit 0; fi
echo "ce-ray: installing into .venv (a few minutes the first time)"
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "${TORCH_SPEC:-torch<=2.14.1}"
  else
    # 2.13.0's CPU build is what this project is tested with on CPU machines.
    .venv/bin/python -m pip install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
.venv/bin/python -m pip install -q -e ".[$extras]"
rm -f .venv/.ce-ray-*
touch "$stamp"
