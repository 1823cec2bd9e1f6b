"""The four CT scanners of the paper's Supplemental Table 1 (Zhong et al., SVN 2021).

Every scanner reconstructs a 512 x 512 matrix of 5.0 mm axial slices, window level 35 HU / width 90 HU.
The pixel spacing is the reconstruction field of view (mm) divided by 512, as in the table (250 mm -> 0.4883 mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MATRIX = 512
SLICE_THICKNESS_MM = 5.0
WINDOW_CENTER_HU = 35.0
WINDOW_WIDTH_HU = 90.0


@dataclass(frozen=True)
class ScannerProfile:
    """Acquisition envelope of one scanner (Supplemental Table 1)."""

    key: str
    manufacturer: str
    model_name: str
    fov_mm: tuple[float, float]  # reconstruction field of view range (square), mm
    n_slices: tuple[int, int]  # inclusive range of axial slices
    weight: float  # sampling weight in the synthetic cohort (the paper does not report the mix)


SCANNERS: tuple[ScannerProfile, ...] = (
    ScannerProfile("ge_optima_ct540", "GE MEDICAL SYSTEMS", "Optima CT540", (250.0, 250.0), (28, 34), 0.40),
    ScannerProfile("siemens_definition_flash", "SIEMENS", "SOMATOM Definition Flash", (200.0, 285.0), (26, 28), 0.30),
    ScannerProfile("siemens_force", "SIEMENS", "SOMATOM Force", (200.0, 228.0), (27, 27), 0.15),
    ScannerProfile("siemens_perspective", "SIEMENS", "SOMATOM Perspective", (230.0, 230.0), (27, 27), 0.15),
)
SCANNERS_BY_KEY = {s.key: s for s in SCANNERS}


def pixel_spacing_mm(fov_mm: float) -> float:
    """In-plane pixel spacing (mm) of a 512-matrix reconstruction, rounded to 6 decimals as written to DICOM."""
    return round(float(fov_mm) / MATRIX, 6)


def draw_scanner(rng: np.random.Generator) -> ScannerProfile:
    """Draw a scanner with the cohort weights."""
    weights = np.array([s.weight for s in SCANNERS], dtype=float)
    return SCANNERS[int(rng.choice(len(SCANNERS), p=weights / weights.sum()))]


def draw_fov_mm(rng: np.random.Generator, scanner: ScannerProfile, min_fov_mm: float) -> float:
    """Draw a whole-millimetre FOV within the scanner's range and at least ``min_fov_mm`` where the range allows.

    The returned FOV may be smaller than ``min_fov_mm`` when the scanner's maximum is; the caller then scales the
    head down so that it fits.
    """
    lo, hi = scanner.fov_mm
    lo = min(max(lo, float(np.ceil(min_fov_mm))), hi)
    return float(round(rng.uniform(lo, hi))) if hi > lo else float(hi)


def draw_n_slices(rng: np.random.Generator, scanner: ScannerProfile) -> int:
    lo, hi = scanner.n_slices
    return int(rng.integers(lo, hi + 1))
