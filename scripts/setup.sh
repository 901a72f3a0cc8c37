#!/usr/bin/env bash
# Creates .venv in the project and installs ce-ray with what it needs. Safe to run again: it reinstalls only
# when pyproject.toml changed. Torch: 2.13.0 where there is no GPU (the CPU build where the index has it; PyPI's
# Linux wheels are CUDA builds), the newest up to 2.14.1 where there is one; TORCH_SPEC chooses another version (for
# a new .venv), TORCH_INDEX another index (https://download.pytorch.org/whl/cpu for the CPU build, a CUDA
# build of PyTorch's own index for an older driver).
set -euo pipefail
cd "$(dirname "$0")/.."
# A user's PYTHONPATH (a cluster's `module load`) put its packages before the .venv's: the checks below found torch
# and ce-ray's dependencies there, and a .venv of pip alone was stamped as installed.
unset PYTHONPATH PYTHONHOME
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
# Two setups at once (the README's two commands, started together) made the .venv under each other: one failed in pip.
# (Where the project is read-only, an installed .venv is used as it is: no lock there.)
if command -v flock >/dev/null 2>&1 && { exec 9>.venv.lock; } 2>/dev/null; then
  flock 9
fi
# A .venv left half-made (a first run interrupted, python3-venv missing then installed), whose interpreter is gone
# or older than 3.10 (made by hand, or by an older Python) is made again: it was reused, and every later run failed
# on it (for an old Python, pip saying torch's versions conflict).
new_python='import sys; sys.exit(sys.version_info < (3, 10))'
if ! .venv/bin/python -c "$new_python" 2>/dev/null || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  if ! "$python" -c "$new_python" 2>/dev/null; then
    found=$("$python" -V 2>/dev/null) || found="not found"
    echo "ce-ray: needs Python 3.10 or later; $python is $found: set PYTHON" >&2
    exit 2
  fi
  "$python" -m venv --clear .venv
fi
if [ -n "${TORCH_SPEC:-}${TORCH_INDEX:-}" ] &&
    torch_found=$(.venv/bin/python -c "import torch; print(torch.__version__)" 2>/dev/null); then
  # They were taken by a new .venv alone, and a later setup with them changed nothing, without a word.
  echo "ce-ray: .venv has torch $torch_found already: TORCH_SPEC and TORCH_INDEX choose the torch of a new .venv" \
    "(rm -rf .venv, then run this again)" >&2
fi
stamp=".venv/.ce-ray-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$extras"
if [ -f "$stamp" ]; then exit 0; fi
echo "ce-ray: installing into .venv (a few minutes the first time)"
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then  # a torch whose install was cut short too
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
