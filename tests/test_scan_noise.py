"""The scan-noise measure around the clot that the marker reader reads: monotone in the noise, blind to the clot
itself, zero where there is nothing to measure; the same measure puts a real head's noise into inserted clots."""

from __future__ import annotations

import numpy as np
import pytest

from app.model.clot_texture import TEXTURE_UNITS, measure_texture
from app.model.marker_reader import READER_INPUTS
from app.model.scan_noise import residual_noise_hu, surround_noise_hu
from model_training.synthetic.case import ct_noise
from model_training.synthetic.insertion import noise_level_hu

SPACING = (5.0, 0.45, 0.45)


def _head(noise_sd: float, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Brain of 32 HU with a 60 HU ellipsoidal clot and a dark focus in it, plus generator noise (HU, z-y-x)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:8, :200, :200]
    clot = ((z - 4) / 2.5) ** 2 + ((y - 100) / 40.0) ** 2 + ((x - 100) / 30.0) ** 2 <= 1.0
    focus = ((z - 4) / 1.2) ** 2 + ((y - 100) / 10.0) ** 2 + ((x - 95) / 10.0) ** 2 <= 1.0
    hu = np.full((8, 200, 200), 32.0, dtype=np.float32)
    hu[clot] = 62.0
    hu[focus] = 35.0
    return hu + ct_noise(rng, hu.shape, noise_sd), clot.astype(np.uint8)


def test_surround_noise_rises_with_the_noise_and_ignores_the_clot() -> None:
    levels = [1.5, 3.0, 4.5, 7.0, 10.0]
    measured = [surround_noise_hu(*_head(sd), SPACING) for sd in levels]
    assert all(b > a for a, b in zip(measured, measured[1:], strict=False))
    for sd, m in zip(levels, measured, strict=True):
        assert 0.7 * sd < m < 1.1 * sd
    hu, clot = _head(4.5)
    brighter = hu.copy()
    brighter[clot > 0] += 25.0  # a denser clot: the ring around it is unchanged
    assert surround_noise_hu(brighter, clot, SPACING) == pytest.approx(surround_noise_hu(hu, clot, SPACING))


def test_surround_noise_is_zero_without_a_clot_or_a_ring_of_brain() -> None:
    hu, clot = _head(4.5)
    assert surround_noise_hu(hu, np.zeros_like(clot), SPACING) == 0.0
    air = np.full_like(hu, -1000.0)
    air[clot > 0] = 60.0
    assert surround_noise_hu(air, clot, SPACING) == 0.0
    assert residual_noise_hu(hu, np.zeros(hu.shape, dtype=bool)) == 0.0


def test_the_reader_sees_the_noise_beside_the_texture() -> None:
    assert "surround_noise_hu" in TEXTURE_UNITS and "surround_noise_hu" in READER_INPUTS
    quiet, noisy = (measure_texture(*_head(sd), SPACING) for sd in (2.0, 8.0))
    assert noisy["surround_noise_hu"] > 3.0 * quiet["surround_noise_hu"] > 0.0


def test_insertion_reads_the_noise_in_the_generators_units() -> None:
    rng = np.random.default_rng(5)
    for sd in (2.0, 6.0):
        hu = 30.0 + ct_noise(rng, (6, 128, 128), sd)
        assert noise_level_hu(hu, np.ones(hu.shape, dtype=bool), np.random.default_rng(1)) == pytest.approx(sd, rel=0.1)
