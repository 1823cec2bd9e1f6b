#!/usr/bin/env bash
# Creates .venv and installs the project. CPU machines get the pinned CPU build of PyTorch (torch==2.13.0);
# set ICH_TORCH_SPEC to choose another (e.g. a CUDA build from the PyTorch index). Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "${ICH_TORCH_SPEC:-torch==2.13.0}"
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install --quiet -e ".[dev]"
else
  .venv/bin/python -m pip install --quiet -e .
fi
