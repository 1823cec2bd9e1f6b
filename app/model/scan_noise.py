"""The scan's noise level around the clot, which the marker reader reads beside the clot's density measurements.

A clot's mottling, its density SD and the contrast of a small dark focus all rise with the scanner's noise, which
spans about 2-9 HU across real head CTs (slice thickness, dose, reconstruction kernel): a reader that sees the
noise can tell texture from noise. The noise is measured where it matters, in the brain around the clot, as the
spread of the in-plane high-pass residual (the image minus its 5 x 5 in-plane mean; robust SD = 1.4826 x median
absolute deviation), which anatomy varies far less than the noise:

* :func:`residual_noise_hu`: that spread over any region (also used to put a scan's own noise into the
  haematomas that ``model_training`` inserts into real heads);
* :func:`surround_noise_hu`: over the brain-density voxels (``BRAIN_HU`` after a 1 mm in-plane Gaussian, so that
  the noise itself does not decide which voxels count) in a ring ``RING_MM`` around the clot, on the clot's
  largest axial section and the slices next to it (``SLICES``: enough voxels for a robust spread, a small cost
  per request).

The residual's spread is not the noise SD itself (spatially correlated noise loses part of its variance to the
5 x 5 mean): it is a monotone measure of it, in HU, comparable between scans of similar pixel size.
Arrays are z-y-x, HU; spacing in mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

NOISE_UNITS: dict[str, str] = {"surround_noise_hu": "HU"}
BRAIN_HU = (15.0, 50.0)
RING_MM = (3.0, 15.0)
MIN_VOXELS = 200
SLICES = 3


def residual_noise_hu(hu: np.ndarray, region: np.ndarray) -> float:
    """Robust SD (HU) of the in-plane high-pass residual of ``hu`` (image minus its 5 x 5 in-plane mean) over
    the boolean ``region`` (same shape, z-y-x); 0 for an empty region."""
    a = np.asarray(hu, dtype=np.float32)
    where = np.asarray(region, dtype=bool)
    if not where.any():
        return 0.0
    r = (a - ndimage.uniform_filter(a, size=(1, 5, 5)))[where]
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def surround_noise_hu(hu_zyx: np.ndarray, mask_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """The noise measure of the module docstring around the clot ``mask_zyx`` ({0, 1}); 0 when the mask is empty
    or fewer than ``MIN_VOXELS`` brain-density voxels lie in the ring."""
    mask = np.asarray(mask_zyx) > 0
    if not mask.any():
        return 0.0
    _, dy, dx = (float(s) for s in spacing_zyx)
    reach = int(np.ceil(RING_MM[1] / min(dy, dx))) + 3
    largest = int(np.argmax(mask.sum(axis=(1, 2))))
    z0, z1 = max(largest - SLICES // 2, 0), min(largest + SLICES // 2 + 1, mask.shape[0])
    idx = np.argwhere(mask[z0:z1]) + (z0, 0, 0)
    lo = np.maximum(idx.min(0) - (0, reach, reach), 0)
    hi = np.minimum(idx.max(0) + (1, reach + 1, reach + 1), mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    hu = np.asarray(hu_zyx[box], dtype=np.float32)
    clot = mask[box]
    outside = ndimage.distance_transform_edt(~clot, sampling=(1e4, dy, dx))
    ring = (outside >= RING_MM[0]) & (outside <= RING_MM[1])
    smooth = ndimage.gaussian_filter(hu, (0.0, 1.0 / dy, 1.0 / dx))
    region = ring & (smooth >= BRAIN_HU[0]) & (smooth <= BRAIN_HU[1])
    region[:, :2, :] = region[:, -2:, :] = region[:, :, :2] = region[:, :, -2:] = False
    if int(region.sum()) < MIN_VOXELS:
        return 0.0
    return residual_noise_hu(hu, region)
