"""Shared pytest fixtures. Real third-party data lives in ../shared/data relative to the project root."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ICH_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def require_shared(path: Path) -> Path:
    """``path`` (inside ../shared/data) when it exists; otherwise skip the test with a message, or fail it under
    ``CI=true``, where missing real data must not pass unnoticed."""
    if not path.exists():
        message = f"real test data not found at {path} (set ICH_SHARED_DATA)"
        if os.environ.get("CI", "").strip().lower() in ("true", "1"):
            pytest.fail(message + "; CI=true requires it")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; tests that need it are skipped (with a message) when it is absent, and fail
    under ``CI=true``."""
    return require_shared(SHARED_DATA)


@pytest.fixture(scope="session")
def normal_head_nifti(shared_data: Path) -> Path:
    """../shared/data/normal_heads/dicom2stl_ct_head.nii.gz: a real head CT without haemorrhage, HU NIfTI
    (190 x 240 x 95 voxels, 1.01 x 1.01 x 2.5 mm; see its PROVENANCE.md)."""
    return require_shared(shared_data / "normal_heads" / "dicom2stl_ct_head.nii.gz")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
