#!/usr/bin/env bash
# The README's test command: set up (idempotent) and run lint + the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
bash scripts/system_packages.sh
bash scripts/install_helm.sh
.venv/bin/ruff check app model_training tests bench
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
