"""Synthetic haematomas inserted into real head CTs: real anatomy around a haematoma whose truth is known.

A phantom head is the generator's; a real scan has the anatomy, partial-volume bone, beam hardening and noise
texture that no phantom reproduces, but no open head CT with haemorrhage comes with masks. Lesion insertion joins
the two: a real head without haemorrhage (any series the service ingests: DICOM folder/ZIP or HU NIfTI) is read
through :func:`app.ingestion.load_series`, put on an LPS axis-aligned grid, and the generator's own haematoma
(:func:`~model_training.synthetic.haematoma.render_haematoma`: shape, location, the NCCT markers, density,
intraventricular blood) is painted into it, with CT noise of the scan's own level inside the painted clot.

The real head stands in for the phantom's anatomy:

* brain: the service's skull strip (:func:`app.preprocessing.skull_strip.brain_mask`);
* parenchyma (where a clot may lie): brain voxels of 15-60 HU after a 1 mm Gaussian, slightly blurred to a
  partial-volume fraction;
* ventricles (where intraventricular blood layers): CSF (< 15 HU after the same Gaussian) in the brain eroded by
  ``VENTRICLE_DEPTH_MM``, so that sulcal CSF under the skull does not count;
* head frame: centred on the brain centroid, axes along LPS (a real head's pitch and roll are not estimated).

Truth is the generator's: the mask of the clot (partial-volume fraction >= 0.5), the structure labels and the
markers drawn for it; the follow-up volume comes from the same growth model as a phantom's, so an inserted cohort
has expansion labels and the ceilings ``risk_true`` / ``risk_image``. Arrays are z-y-x, HU, LPS mm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from model_training.synthetic.anatomy import HeadPhantom
from model_training.synthetic.geometry import Grid
from model_training.synthetic.haematoma import HaematomaResult, render_haematoma

PARENCHYMA_HU = (15.0, 60.0)
CSF_MAX_HU = 15.0
SMOOTH_MM = 1.0
VENTRICLE_DEPTH_MM = 12.0
HU_MIN, HU_MAX = -1024, 3071
MAX_ATTEMPTS = 6


@dataclass(frozen=True)
class HeadPose:
    """The head frame of a real head: ``centre`` (LPS mm) and ``rotation`` (3 x 3, head frame -> LPS)."""

    centre: tuple[float, float, float]
    rotation: np.ndarray


@dataclass
class RealHead:
    """A real head prepared for insertion: the axis-aligned HU image (float32 array, z-y-x, on ``grid``), the
    phantom-like anatomy the generator paints into, its head frame, and its noise level (HU, SD)."""

    image: sitk.Image
    grid: Grid
    phantom: HeadPhantom
    pose: HeadPose
    noise_sd_hu: float


def axis_aligned(image: sitk.Image) -> sitk.Image:
    """``image`` with an identity direction (LPS axes), resampled linearly (-1024 HU outside) over its physical
    bounding box at its own spacing when it is oblique (e.g. a gantry-tilt-corrected series); as is otherwise."""
    if np.allclose(np.asarray(image.GetDirection()), np.eye(3).ravel(), atol=1e-6):
        return image
    size = np.asarray(image.GetSize())
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (i, j, k)])
               for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    lo, hi = np.min(corners, axis=0), np.max(corners, axis=0)
    spacing = np.asarray(image.GetSpacing())
    new_size = [int(n) for n in np.ceil((hi - lo) / spacing).astype(int) + 1]
    ref = sitk.Image(new_size, sitk.sitkFloat32)
    ref.SetSpacing(tuple(float(s) for s in spacing))
    ref.SetOrigin(tuple(float(v) for v in lo))
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, -1024.0)


def noise_level_hu(hu: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> float:
    """The CT noise SD (HU) in ``region`` of ``hu``, in the generator's noise model: the service's noise measure
    (:func:`app.model.scan_noise.residual_noise_hu`) divided by the same measure on the generator's noise of SD 1,
    so that the noise painted into a clot has the scan's own level."""
    from app.model.scan_noise import residual_noise_hu
    from model_training.synthetic.case import ct_noise

    unit = ct_noise(rng, (4, 64, 64), 1.0)
    return residual_noise_hu(hu, region) / residual_noise_hu(unit, np.ones(unit.shape, dtype=bool))


def prepare_head(image: sitk.Image, rng: np.random.Generator) -> RealHead:
    """A real head CT (HU, any LPS geometry, as ingestion returns it) ready for :func:`insert_haematoma`.
    Raises :class:`app.errors.IngestionError` when no brain is found."""
    from app.preprocessing.skull_strip import brain_mask

    aligned = axis_aligned(image)
    hu = sitk.GetArrayFromImage(aligned).astype(np.float32)
    spacing = tuple(float(s) for s in aligned.GetSpacing()[::-1])  # z, y, x
    brain = sitk.GetArrayFromImage(brain_mask(aligned)).astype(bool)
    smooth = ndimage.gaussian_filter(hu, [SMOOTH_MM / s for s in spacing])
    tissue = brain & (smooth >= PARENCHYMA_HU[0]) & (smooth <= PARENCHYMA_HU[1])
    parenchyma = np.clip(ndimage.gaussian_filter(tissue.astype(np.float32), [0.0, 0.5, 0.5]), 0, 1)
    deep = ndimage.distance_transform_edt(brain, sampling=spacing) >= VENTRICLE_DEPTH_MM
    ventricles = (deep & (smooth < CSF_MAX_HU) & (smooth > -5.0)).astype(np.float32)
    zyx = np.asarray(ndimage.center_of_mass(brain))
    centroid = tuple(float(v) for v in aligned.TransformContinuousIndexToPhysicalPoint(
        [float(zyx[2]), float(zyx[1]), float(zyx[0])]))
    grid = Grid(hu.shape, spacing, tuple(float(v) for v in aligned.GetOrigin()))
    phantom = HeadPhantom(hu=hu, parenchyma=parenchyma, ventricles=ventricles, brain_centroid=centroid)
    region = ndimage.binary_erosion(tissue, iterations=2)
    sd = noise_level_hu(hu, region if region.any() else tissue, rng)
    return RealHead(aligned, grid, phantom, HeadPose(centroid, np.eye(3)), sd)


def insert_haematoma(head: RealHead, rng: np.random.Generator, noise_rng: np.random.Generator, volume_ml: float,
                     markers: dict[str, int], location: str | None = None) -> tuple[np.ndarray, HaematomaResult]:
    """Paint one haematoma of about ``volume_ml`` (and the intraventricular blood of ``markers['ivh']``) into a
    copy of the real head; returns the HU array (int16, z-y-x, on ``head.grid``) and the generator's result (mask,
    structure labels, location). The painted clot carries noise of the scan's level (the real noise under it is
    replaced by the clot's density). A draw that falls outside the parenchyma is redrawn (``MAX_ATTEMPTS``)."""
    from model_training.synthetic.case import ct_noise

    last: Exception | None = None
    for _ in range(MAX_ATTEMPTS):
        phantom = dataclasses.replace(head.phantom, hu=head.phantom.hu.copy())
        try:
            result = render_haematoma(rng, head.grid, head.pose, phantom, volume_ml, markers, location)  # type: ignore[arg-type]
        except RuntimeError as exc:  # outside the parenchyma
            last = exc
            continue
        painted = np.abs(phantom.hu - head.phantom.hu) > 0.5
        weight = ndimage.gaussian_filter(painted.astype(np.float32), [0.0, 0.7, 0.7])
        hu = phantom.hu + weight * ct_noise(noise_rng, head.grid.shape, head.noise_sd_hu)
        np.rint(hu, out=hu)
        return np.clip(hu, HU_MIN, HU_MAX).astype(np.int16), result
    raise RuntimeError(f"no haematoma fitted the parenchyma in {MAX_ATTEMPTS} draws") from last


def head_image(head: RealHead, array: np.ndarray) -> sitk.Image:
    """``array`` (z-y-x) as an image on the head's axis-aligned grid."""
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(head.image)
    return out


def load_head(path: str | Path, rng: np.random.Generator) -> RealHead:
    """Ingest a real head (DICOM folder/ZIP or HU NIfTI) as the service does, and prepare it."""
    from app import ingestion

    return prepare_head(ingestion.load_series([Path(path)]).image, rng)
