#!/usr/bin/env bash
# The README's service command: set up (idempotent) and start the service on the bundled default weights
# (CUDA when present, CPU otherwise). Settings come from ICH_* environment variables (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m app serve "$@"
