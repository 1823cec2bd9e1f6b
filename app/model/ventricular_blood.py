"""Intraventricular blood and CSF in the haematoma mask: steps 5, 6, 6a and the lobes of
:func:`app.model.mask_refinement.refine_mask`.

Intraventricular blood (which the haematoma volume excludes, as the paper's planimetry does) layers in the dependent
part of a ventricle, with a fluid level against the CSF in front of it (anterior, -y in LPS).

* Step 5 (:func:`drop_ventricular_components`): a connected component other than the largest is dropped when,
  ``probe_mm`` in front of it, at least ``ventricle_anterior_csf`` of the voxels are CSF (``CSF_HU``) and behind it
  at most ``ventricle_posterior_csf`` are.
* Step 6 (:func:`layered_blood`): on an axial slice, the mask's columns (runs along y) whose anterior end lies
  against CSF (at least ``layer_csf_fraction`` of the ``layer_probe_mm`` in front of it, after a ``layer_gap_mm``
  partial-volume gap) and whose anterior ends line up on a horizontal line (SD of their y position <=
  ``layer_max_sd_mm`` over at least ``layer_min_width_mm`` of adjacent columns) are intraventricular blood. CSF here
  is ``(-5, layer_csf_max_hu)`` HU, below the serum of a fluid level (12-24 HU). With ``layer_front_min_hu`` a
  column's front is its first voxel at or above that HU, so that CSF the network took in front of the level does
  not hide the line.
* Step 6a (:func:`enclosed_csf`, before step 6): a ventricle that the haematoma surrounds is a hole that the slice
  fill closed: regions of CSF density (``(-5, enclosed_csf_max_hu)`` HU after a 0.7 mm in-plane Gaussian, at least
  ``enclosed_csf_min_mm2`` on the slice) leave the mask, so that blood layering there shows its level to step 6.
* Lobes (:func:`layered_lobes`, with ``drop_layered_lobes``): step 6 removes only the columns whose front is the
  level; where the clot lies in front of the same ventricle, the rest of the ventricle's blood continues the clot's
  columns. The mask is split into lobes by a watershed of its 3D distance map on a ~1 mm in-plane grid
  (:func:`lobes_of`: immersion in ``lobe_step_mm`` levels, one lobe per maximum at least ``lobe_min_peak_mm`` deep
  that stands ``lobe_dynamic_mm`` above its saddle). A lobe leaves the mask when at least ``lobe_layer_share`` of it
  is step 6's layered blood and its other voxels' median HU is within ``lobe_hu_tolerance`` of the layered blood's:
  the ventricle's blood, not clot. With ``lobe_min_contrast_hu`` no lobe is dropped unless the layered blood's
  median differs from the thickest lobe's by at least that much (blood diluted by CSF is lighter than the clot,
  while a clot behind the curved wall of a ventricle can read as a level and is as dense as the rest of the clot).
  The thickest lobe (the clot's bulk) always stays, and nothing is dropped when the lobes would take more than
  ``lobe_max_share`` of the mask.

All distances in mm (z, y, x); arrays are the refinement's bounding box on the analysis grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from app.model.mask_refinement import BoundaryRefinement

CSF_HU = (-5.0, 16.0)
CSF_MIN_HU = -5.0


def _csf_share(hu: np.ndarray, where: np.ndarray) -> float:
    n = int(where.sum())
    return float(((hu[where] > CSF_HU[0]) & (hu[where] < CSF_HU[1])).sum()) / n if n else 0.0


def drop_ventricular_components(mask: np.ndarray, hu: np.ndarray, shift: int, settings: BoundaryRefinement) -> np.ndarray:
    """``mask`` without the non-largest components that layer in a ventricle (step 5 of :mod:`app.model.mask_refinement`)."""
    labels, n = ndimage.label(mask, np.ones((3, 3, 3), dtype=bool))
    if n < 2 or shift >= mask.shape[1]:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    keep = mask.copy()
    for index in range(1, n + 1):
        if index == largest:
            continue
        comp = labels == index
        front = np.zeros_like(comp)
        front[:, :-shift, :] = comp[:, shift:, :]  # the voxels `shift` rows anterior (smaller y) of the component
        behind = np.zeros_like(comp)
        behind[:, shift:, :] = comp[:, :-shift, :]
        front &= ~comp
        behind &= ~comp
        if (_csf_share(hu, front) >= settings.ventricle_anterior_csf
                and _csf_share(hu, behind) <= settings.ventricle_posterior_csf):
            keep &= ~comp
    return keep


def _column_runs(column: np.ndarray) -> list[tuple[int, int]]:
    ys = np.flatnonzero(column)
    if ys.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(ys) > 1)
    return list(zip(np.r_[ys[0], ys[breaks + 1]].tolist(), np.r_[ys[breaks], ys[-1]].tolist(), strict=True))


def _front_groups(mask2d: np.ndarray, against: np.ndarray, probe: int, gap: int, fraction: float,
                  dense: np.ndarray | None = None) -> list[list[tuple[int, int, int, int]]]:
    """Runs (x, first y, last y, front y) of one slice's mask columns whose front lies against ``against``
    (at least ``fraction`` of ``probe`` voxels after a ``gap``), grouped into adjacent columns with close fronts.
    The front is the run's first voxel, or with ``dense`` its first ``dense`` voxel."""
    runs: list[tuple[int, int, int, int]] = []
    for x in np.flatnonzero(mask2d.any(axis=0)):
        for y0, y1 in _column_runs(mask2d[:, x]):
            front = y0
            if dense is not None:
                hits = np.flatnonzero(dense[y0:y1 + 1, x])
                if hits.size == 0:
                    continue
                front = y0 + int(hits[0])
            a, b = max(0, front - gap - probe), max(0, front - gap)
            if b > a and against[a:b, x].mean() >= fraction:
                runs.append((int(x), y0, y1, front))
    groups: list[list[tuple[int, int, int, int]]] = []
    for run in runs:
        last = groups[-1][-1] if groups else None
        if last is not None and run[0] - last[0] <= 1 and abs(run[3] - last[3]) <= 2:
            groups[-1].append(run)
        else:
            groups.append([run])
    return groups


def csf_smoothed(hu: np.ndarray, spacing_yx: tuple[float, float]) -> np.ndarray:
    """The 0.7 mm in-plane Gaussian of ``hu`` on which steps 6 and 6a read CSF."""
    dy, dx = spacing_yx
    return ndimage.gaussian_filter(hu, (0.0, 0.7 / dy, 0.7 / dx))


def layered_blood(mask: np.ndarray, smoothed: np.ndarray, spacing_yx: tuple[float, float],
                   settings: BoundaryRefinement) -> np.ndarray:
    """The mask's voxels of intraventricular blood with a fluid level against CSF (module docstring)."""
    dy, dx = spacing_yx
    csf = (smoothed > CSF_MIN_HU) & (smoothed < settings.layer_csf_max_hu)
    dense = None if settings.layer_front_min_hu is None else smoothed >= settings.layer_front_min_hu
    probe = max(1, int(round(settings.layer_probe_mm / dy)))
    gap = int(round(settings.layer_gap_mm / dy))
    min_columns = max(2, int(round(settings.layer_min_width_mm / dx)))
    out = np.zeros_like(mask)
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        for group in _front_groups(mask[z], csf[z], probe, gap, settings.layer_csf_fraction,
                                   None if dense is None else dense[z]):
            fronts = np.array([r[3] for r in group], dtype=np.float64) * dy
            if len(group) >= min_columns and fronts.std() <= settings.layer_max_sd_mm:
                for x, y0, y1, _ in group:
                    out[z, y0:y1 + 1, x] = True
    return out & mask


def enclosed_csf(mask: np.ndarray, smoothed: np.ndarray, spacing_yx: tuple[float, float],
                  settings: BoundaryRefinement) -> np.ndarray:
    """The mask's voxels in regions of CSF density (module docstring), slice by slice."""
    dy, dx = spacing_yx
    csf = mask & (smoothed > CSF_MIN_HU) & (smoothed < settings.enclosed_csf_max_hu)
    min_px = settings.enclosed_csf_min_mm2 / (dy * dx)
    out = np.zeros_like(mask)
    for z in np.flatnonzero(csf.any(axis=(1, 2))):
        labels, n = ndimage.label(csf[z])
        sizes = np.bincount(labels.ravel())
        big = np.flatnonzero(sizes >= min_px)
        out[z] = np.isin(labels, big[big > 0])
    return out


def _nearest_label(labels: np.ndarray, where: np.ndarray, sampling: tuple[float, ...]) -> None:
    """Give the voxels ``where`` the label of their nearest labelled voxel, in place."""
    idx = ndimage.distance_transform_edt(labels == 0, sampling=sampling, return_distances=False, return_indices=True)
    labels[where] = labels[tuple(i[where] for i in idx)]


def lobes_of(mask: np.ndarray, spacing_zyx: tuple[float, float, float], min_peak_mm: float,
             dynamic_mm: float, step_mm: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(lobes, depth): a watershed of ``mask``'s 3D distance map by immersion (int32 labels, 0 outside; the
    distance map in mm). Levels go down from the deepest voxel in ``step_mm`` steps; a component of the level set
    that holds no lobe yet starts one when it lies at least ``min_peak_mm`` deep, and a lobe whose peak stands less
    than ``dynamic_mm`` above the level where it meets a deeper one joins it (maxima of a ridge are one lobe)."""
    depth = ndimage.distance_transform_edt(mask, sampling=spacing_zyx).astype(np.float32)
    lobes = np.zeros(mask.shape, dtype=np.int32)
    peaks: list[float] = [0.0]
    full = np.ones((3, 3, 3), dtype=bool)
    for level in np.arange(float(depth.max()), -step_mm, -step_mm):
        level_set = depth >= max(level, 1e-6)
        parts, n = ndimage.label(level_set, full)
        labelled = lobes > 0
        held = np.bincount(parts[labelled], minlength=n + 1) > 0
        for part in np.flatnonzero(~held[1:]) + 1:
            if level >= min_peak_mm or len(peaks) == 1:
                lobes[parts == part] = len(peaks)
                peaks.append(float(depth[parts == part].max()))
        labelled = lobes > 0
        pairs = np.unique(parts[labelled].astype(np.int64) * (len(peaks) + 1) + lobes[labelled])
        pairs = np.stack([pairs // (len(peaks) + 1), pairs % (len(peaks) + 1)])
        for part in np.unique(pairs[0]):
            members = pairs[1][pairs[0] == part]
            if members.size > 1:
                top = members[np.argmax([peaks[m] for m in members])]
                for m in members:
                    if m != top and peaks[m] - level < dynamic_mm:
                        lobes[lobes == m] = top
        fresh = level_set & (lobes == 0)
        for _ in range(2):  # the new shell of the level set, a voxel or two thick, from the lobes it borders
            if not fresh.any():
                break
            grown = ndimage.grey_dilation(lobes, footprint=full)
            lobes[fresh] = grown[fresh]
            fresh &= lobes == 0
        if fresh.any():
            _nearest_label(lobes, fresh, spacing_zyx)
    return lobes, depth


def layered_lobes(mask: np.ndarray, layered: np.ndarray, hu: np.ndarray, spacing_zyx: tuple[float, float, float],
                  settings: BoundaryRefinement) -> np.ndarray:
    """The lobes of ``mask`` that hold the layered blood ``layered`` (module docstring, lobes), bool like ``mask``.
    ``hu`` in HU on the same box; ``spacing_zyx`` in mm."""
    out = np.zeros_like(mask)
    if not layered.any():
        return out
    dz, dy, dx = spacing_zyx
    fy, fx = max(1, int(round(1.0 / dy))), max(1, int(round(1.0 / dx)))  # the lobes on a ~1 mm in-plane grid
    coarse, edt = lobes_of(mask[:, ::fy, ::fx], (dz, dy * fy, dx * fx), settings.lobe_min_peak_mm,
                           settings.lobe_dynamic_mm, settings.lobe_step_mm)
    n = int(coarse.max())
    if n < 2:
        return out
    lobes = np.zeros(mask.shape, dtype=np.int32)
    lobes[:, ::fy, ::fx] = coarse
    _nearest_label(lobes, mask & (lobes == 0), spacing_zyx)
    lobes[~mask] = 0
    index = np.arange(1, n + 1)
    sizes = np.bincount(lobes.ravel(), minlength=n + 2)[index]
    shares = np.bincount(lobes[layered].ravel(), minlength=n + 2)[index] / np.maximum(sizes, 1)
    bulk = int(index[np.argmax(ndimage.maximum(edt, coarse, index))])  # the thickest lobe is the clot's
    blood_hu = float(np.median(hu[layered]))
    bulk_part = (lobes == bulk) & ~layered
    if not bulk_part.any() or abs(float(np.median(hu[bulk_part])) - blood_hu) < settings.lobe_min_contrast_hu:
        return out  # blood as dense as the clot: the step cannot tell the ventricle's lobe from the clot's
    drop = []
    for b in index[(shares >= settings.lobe_layer_share) & (index != bulk)]:
        rest = (lobes == b) & ~layered
        if rest.any() and abs(float(np.median(hu[rest])) - blood_hu) <= settings.lobe_hu_tolerance:
            drop.append(int(b))
    if not drop or sizes[np.asarray(drop) - 1].sum() > settings.lobe_max_share * float(mask.sum()):
        return out
    return np.isin(lobes, drop)
