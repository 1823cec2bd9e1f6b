"""End-to-end stage timings for one study: the optimised path vs the straightforward baseline, same weights.

Optimised (what the service runs): ``app.ingestion.load_series`` (content sniffing, parallel-capable decoding,
geometry checks) -> ``app.preprocessing.preprocess`` -> :class:`app.model.runtime.InferenceRunner` (inductor
with freezing on CPU; channels-last, autocast on GPU) -> ``probabilities_to_reference`` + per-source-slice masks;
the outputs (NIfTI, PNG overlay, DICOM SEG), which the service renders lazily after answering, are timed apart.
Baseline: :mod:`bench.baseline` (SimpleITK reader, plain ``sitk.Resample`` preprocessing, eager fp32 NCDHW).

Arrays are z-y-x, intensities HU, geometry LPS mm. Both paths' outputs are compared: expansion probability and
model-grid probability map (max absolute difference), and the thresholded mask on the DICOM grid (Dice).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import SimpleITK as sitk
from torch import nn

from app.model.runtime import InferenceRunner
from app.outputs.nifti import mask_nifti_bytes
from app.outputs.overlay import render_overlay_png
from app.outputs.seg import build_seg, seg_bytes
from app.preprocessing.inverse import probabilities_to_reference
from app.preprocessing.plans import Plans
from bench import baseline

T = TypeVar("T")
_encoders_warm = False


@dataclass
class PathResult:
    """Timings (seconds) per stage, plus the outputs needed for the agreement check."""

    stages_s: dict[str, float] = field(default_factory=dict)
    probability_map: np.ndarray | None = None  # float32 (D,H,W) on the model grid
    expansion_probability: float = float("nan")
    mask_reference: np.ndarray | None = None  # uint8 (z,y,x) on the DICOM grid

    @property
    def total_s(self) -> float:
        return float(sum(self.stages_s.values()))


def _timed(stages: dict[str, float], name: str, fn: Callable[[], T]) -> T:
    t0 = time.perf_counter()
    out = fn()
    stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two binary masks (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denom


def run_baseline(folder: Path, model: nn.Module, plans: Plans) -> PathResult:
    """The straightforward path (:mod:`bench.baseline`) on CPU; ``model`` in NCDHW layout, eval mode."""
    res = PathResult()
    st = res.stages_s
    image = _timed(st, "read_decode_assemble", lambda: baseline.read_series_sitk(folder))
    tensor, grid = _timed(st, "preprocess", lambda: baseline.preprocess_plain(image, plans))
    res.probability_map, res.expansion_probability = _timed(st, "forward",
                                                            lambda: baseline.forward_eager(model, tensor))
    prob_ref = _timed(st, "inverse_mapping", lambda: probabilities_to_reference(res.probability_map, grid, image))
    res.mask_reference = (prob_ref >= plans.mask_threshold).astype(np.uint8)
    return res


def run_optimised(folder: Path, runner: InferenceRunner, plans: Plans, *, encode: bool = True,
                  skull_strip_breakdown: bool = True) -> tuple[PathResult, dict[str, Any]]:
    """Optimised path. Returns the result and extra figures (encoding sizes, skull-strip share, errors)."""
    from app.ingestion import load_series
    from app.preprocessing import mask_to_source_slices, preprocess

    res = PathResult()
    st = res.stages_s
    extra: dict[str, Any] = {}
    series = _timed(st, "read_decode_assemble", lambda: load_series([folder]))
    case = _timed(st, "preprocess", lambda: preprocess(series.image, plans))
    prob, cls = _timed(st, "forward", lambda: runner.run(case.tensor))
    res.probability_map, res.expansion_probability = prob, cls

    def inverse() -> tuple[np.ndarray, np.ndarray]:
        prob_ref = probabilities_to_reference(prob, case.grid, series.image)
        mask = (prob_ref >= plans.mask_threshold).astype(np.uint8)
        if not series.resampled and mask.shape[0] == len(series.slices):
            per_slice = mask
        else:
            img = sitk.GetImageFromArray(mask)
            img.CopyInformation(series.image)
            per_slice = np.asarray(mask_to_source_slices(img, series.slices), dtype=np.uint8)
        return mask, per_slice

    mask, per_slice = _timed(st, "inverse_mapping", inverse)
    res.mask_reference = mask
    if skull_strip_breakdown:  # measured separately (it is part of "preprocess"), not added to the total
        from app.preprocessing.skull_strip import brain_mask

        t0 = time.perf_counter()
        brain_mask(series.image, plans.skull_strip)
        extra["skull_strip_s"] = time.perf_counter() - t0
        extra["resample_normalise_s"] = max(0.0, st["preprocess"] - extra["skull_strip_s"])
    if encode:
        extra["encode_s"], extra["encode_errors"] = _encode(series, mask, per_slice)
    return res, extra


def _encode(series: Any, mask: np.ndarray, per_slice: np.ndarray) -> tuple[dict[str, float], dict[str, str]]:
    """Time the three output encoders; an encoder that fails is reported, not fatal to the benchmark. One-off
    costs are not timed (imports with this module, a first untimed round): a running service paid them once."""
    times: dict[str, float] = {}
    errors: dict[str, str] = {}
    mask_img = sitk.GetImageFromArray(mask)
    mask_img.CopyInformation(series.image)

    def nifti() -> bytes:
        return mask_nifti_bytes(mask_img)

    def png() -> bytes:
        return render_overlay_png(series.hu_array, mask, series.spacing_zyx)

    def seg() -> bytes:
        return seg_bytes(build_seg(series.source_headers, per_slice, algorithm_name="bench",
                                   algorithm_version="0.0.0"))

    global _encoders_warm
    if not _encoders_warm:  # first use in a process: highdicom builds its lookup tables (~0.8 s), once per service
        _encoders_warm = True
        _encode(series, mask, per_slice)
    for name, fn in (("nifti", nifti), ("png", png), ("seg", seg)):
        t0 = time.perf_counter()
        try:
            fn()
            times[name] = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - reported in the JSON
            errors[name] = f"{type(exc).__name__}: {exc}"
    return times, errors


def agreement(optimised: PathResult, baseline: PathResult) -> dict[str, float]:
    """Max |Δprobability| on the model grid, |Δexpansion probability|, and mask Dice on the DICOM grid."""
    assert optimised.probability_map is not None and baseline.probability_map is not None
    assert optimised.mask_reference is not None and baseline.mask_reference is not None
    return {
        "max_abs_probability_map_diff": float(np.abs(optimised.probability_map - baseline.probability_map).max()),
        "abs_expansion_probability_diff": abs(optimised.expansion_probability - baseline.expansion_probability),
        "mask_dice": dice(optimised.mask_reference, baseline.mask_reference),
        "mask_voxels_baseline": int(baseline.mask_reference.sum()),
    }
