"""Preprocessing plans: every parameter that turns an HU volume into the model's input tensor.

The plans are saved beside the weights (``manifest.json``) and reloaded at inference, so that training and
serving preprocess identically (the nnU-Net "plans" idea). Defaults reproduce the paper's supplement:
skull stripping with Otsu's method, resampling to a 112 x 112 x 160 mm field of view and a 256 x 256 x 32
matrix with cubic interpolation, window 0-100 HU, z-score inside the brain with negatives set to zero.

Conventions: tuples named ``*_zyx`` are ordered (slice, row, column) = (S-I, A-P, R-L for an axial LPS
image); millimetres for lengths; HU for intensities.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SkullStripSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["otsu"] = "otsu"
    # Otsu's threshold is computed on HU clipped to this range; the bone threshold is the upper Otsu class boundary.
    otsu_range_hu: tuple[float, float] = (-100.0, 1000.0)
    # brain candidate voxels: soft tissue between these HU values (haemorrhage is < 100 HU)
    soft_tissue_hu: tuple[float, float] = (-15.0, 100.0)
    erosion_radius_mm: float = 3.0
    min_brain_volume_ml: float = 50.0


class Plans(BaseModel):
    """Versioned preprocessing settings. Change ``name``/``version`` when any value changes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "zhong2021"
    version: str = "1.0.0"
    fov_mm_zyx: tuple[float, float, float] = (160.0, 112.0, 112.0)
    matrix_zyx: tuple[int, int, int] = (32, 256, 256)
    # SimpleITK interpolator for the HU image: "bspline" (cubic B-spline, the paper's "bicubic") or "linear"
    interpolation: Literal["bspline", "linear"] = "bspline"
    # where the field of view is centred: the centroid of the skull-stripped brain (112 mm is narrower than a head)
    centre: Literal["brain_centroid", "image_centre"] = "brain_centroid"
    # output axes: "identity" (LPS-aligned axial grid) or "source" (the input image's direction cosines)
    orientation: Literal["identity", "source"] = "identity"
    # HU given to everything outside the brain after skull stripping and to points outside the input. 0 HU, the
    # lower window bound, is identical to air after windowing, but leaves only the brain-to-CSF contrast (~30 HU)
    # at the brain edge instead of a ~1050 HU step: the cubic B-spline (an interpolating, ringing kernel) would
    # otherwise overshoot by up to ~100 HU into the outer millimetre of the brain and inflate its SD.
    background_hu: float = 0.0
    window_hu: tuple[float, float] = (0.0, 100.0)
    # "brain_zscore_clip_negative" (the paper): z-score inside the brain, negatives set to zero, so everything less
    # dense than the brain's mean (white matter, CSF, a fluid level's serum, much of a swirl) reads 0;
    # "brain_zscore": the same z-score with the negatives kept, so those densities stay apart
    normalisation: Literal["brain_zscore_clip_negative", "brain_zscore"] = "brain_zscore_clip_negative"
    skull_strip: SkullStripSettings = Field(default_factory=SkullStripSettings)
    # probability threshold for the binary haematoma mask, applied after mapping back to the original grid
    mask_threshold: float = 0.5

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(f / m for f, m in zip(self.fov_mm_zyx, self.matrix_zyx, strict=True))  # type: ignore[return-value]

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: the cache key for preprocessed tensors and the weights compatibility check."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


PAPER_PLANS = Plans()
