"""The straightforward baseline of the benchmarks: the same weights and the same preprocessing steps, written the plain way.

* read: SimpleITK ``ImageSeriesReader`` (GDCM sorts the files), cast to float32 HU;
* preprocess: the project's skull strip (it *defines* the brain mask, so both paths share it) and FOV centre, then
  ``sitk.Mask`` and one ``sitk.Resample`` of the whole stripped volume onto the model grid with SimpleITK's cubic
  B-spline, the brain mask with nearest neighbour, window and z-score in numpy;
* forward: eager float32 NCDHW ``model.predict`` under ``torch.no_grad``;
* inverse: :func:`app.preprocessing.probabilities_to_reference` (already the plain way: one linear
  ``sitk.Resample`` of the probability map back onto the DICOM grid), threshold 0.5.

What the optimised path does differently (``bench/pipeline.py``): the project's reader (parallel-capable decoding,
geometry checks), cropping to the field of view and the separable B-spline fast path in
:func:`app.preprocessing.preprocess` (equal to ``sitk.Resample`` within ~2e-5 HU), and
:class:`app.model.runtime.InferenceRunner` (inductor with freezing on CPU; channels-last, autocast, CUDA graphs on
GPU). Arrays are z-y-x, intensities HU, geometry LPS mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from app.preprocessing.pipeline import _fov_centre, model_grid
from app.preprocessing.plans import Plans
from app.preprocessing.skull_strip import brain_mask

_INTERPOLATORS = {"bspline": sitk.sitkBSpline, "linear": sitk.sitkLinear}


def read_series_sitk(folder: Path) -> sitk.Image:
    """The straightforward reader: GDCM file names sorted by SimpleITK, float32 HU."""
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    if not names:
        raise ValueError(f"no DICOM series in {folder}")
    reader.SetFileNames(names)
    return sitk.Cast(reader.Execute(), sitk.sitkFloat32)


def preprocess_plain(image: sitk.Image, plans: Plans) -> tuple[np.ndarray, sitk.Image]:
    """The paper's preprocessing written plainly. Returns (float32 (D,H,W) model input, model grid)."""
    mask = brain_mask(image, plans.skull_strip)
    direction = image.GetDirection() if plans.orientation == "source" else None
    grid = model_grid(_fov_centre(image, mask, plans), plans, direction)
    stripped = sitk.Mask(image, mask, outsideValue=plans.background_hu)
    resampled = sitk.Resample(stripped, grid, sitk.Transform(), _INTERPOLATORS[plans.interpolation],
                              plans.background_hu, sitk.sitkFloat32)
    brain = sitk.GetArrayFromImage(sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    tensor = np.clip(sitk.GetArrayFromImage(resampled), *plans.window_hu)
    values = tensor[brain]
    tensor = (tensor - values.mean(dtype=np.float64)) / values.std(dtype=np.float64)
    return np.maximum(tensor, 0.0).astype(np.float32), grid


def forward_eager(model: nn.Module, tensor: np.ndarray) -> tuple[np.ndarray, float]:
    """Eager float32 NCDHW forward pass on the CPU: (probability map (D,H,W), expansion probability)."""
    with torch.no_grad():
        seg, cls = model.predict(torch.from_numpy(tensor)[None, None])
    return seg[0, 0].numpy(), float(cls[0])
