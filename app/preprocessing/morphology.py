"""Binary morphology of (z, y, x) boolean masks for skull stripping: balls as sequences of 3x3x3 steps,
erosion/dilation by shifted whole-array boolean operations, hole filling and the largest component.

Distances are in mm and converted with the (z, y, x) voxel spacing; outside the array counts as background
(``scipy.ndimage``'s ``border_value=0``). Labelling and hole filling use ``scipy.ndimage`` (faster than the
equivalent SimpleITK filters; bench/README.md).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: 3x3x3 (z, y, x) structure: the centre and its four in-plane face neighbours (4-connectivity in a slice)
IN_PLANE_CROSS = np.array(
    [[[0, 0, 0], [0, 0, 0], [0, 0, 0]], [[0, 1, 0], [1, 1, 1], [0, 1, 0]], [[0, 0, 0], [0, 0, 0], [0, 0, 0]]],
    dtype=bool,
)

#: one 3x3x3 structuring element: ("cross", axes) = the centre and its face neighbours along ``axes``;
#: ("box", axes) = the full 3-voxel box spanned by ``axes`` (z=0, y=1, x=2)
Step = tuple[str, tuple[int, ...]]
#: one in-plane cross step (a 1-voxel in-plane erosion/dilation)
IN_PLANE_CROSS_STEP: Step = ("cross", (1, 2))


def ball_steps(radius_mm: float, spacing_zyx: tuple[float, float, float], in_plane_only: bool = False) -> list[Step]:
    """A ball of ``radius_mm`` as a sequence of 3x3x3 structuring elements (z, y, x).

    Eroding (or dilating) with each element in turn equals one erosion with their Minkowski sum: alternating
    a cross and a box gives the octagon (in 3D, the rhombicuboctahedron), the classic fast approximation of a
    disc/ball. An axis takes part for round(radius / spacing) steps: with 5 mm slices a 3 mm radius erodes
    one slice, which on real scans (the GE head series of dcm_qa_ct) is what separates the brain from the
    soft tissue of the face and neck through the skull base; without it the mask leaks into the neck.
    """
    radii = [
        0 if (in_plane_only and axis == 0) else int(round(radius_mm / s))
        for axis, s in enumerate(spacing_zyx)
    ]
    return [
        ("cross" if i % 2 == 0 else "box", tuple(axis for axis in range(3) if i < radii[axis]))
        for i in range(max(radii))
    ]


def structure_of(step: Step) -> np.ndarray:
    """The boolean 3x3x3 (z, y, x) array of a step, as ``scipy.ndimage`` would take it (reference and tests)."""
    kind, axes = step
    structure = np.zeros((3, 3, 3), dtype=bool)
    if kind == "cross":
        structure[1, 1, 1] = True
        for axis in axes:
            for offset in (0, 2):
                index = [1, 1, 1]
                index[axis] = offset
                structure[tuple(index)] = True
    else:
        structure[tuple(slice(0, 3) if axis in axes else slice(1, 2) for axis in range(3))] = True
    return structure


def _along(axis: int, sl: slice) -> tuple[slice, ...]:
    return tuple(sl if a == axis else slice(None) for a in range(3))


def _line(mask: np.ndarray, axis: int, erode: bool, out: np.ndarray) -> None:
    """``out`` (a copy of ``mask`` or an accumulator) AND/OR-ed with ``mask`` shifted by +-1 voxel along
    ``axis``; outside the array counts as background (``scipy.ndimage``'s default ``border_value=0``)."""
    lo, hi = _along(axis, slice(None, -1)), _along(axis, slice(1, None))
    if erode:
        out[lo] &= mask[hi]
        out[hi] &= mask[lo]
        out[_along(axis, slice(0, 1))] = False
        out[_along(axis, slice(-1, None))] = False
    else:
        out[lo] |= mask[hi]
        out[hi] |= mask[lo]


def morph_step(mask: np.ndarray, step: Step, erode: bool) -> np.ndarray:
    """Binary erosion or dilation by one cross/box step, by shifted boolean operations on whole arrays;
    identical to ``scipy.ndimage.binary_erosion/dilation(mask, structure_of(step))`` and much faster
    (bench/README.md). A box is separable: the sequence of its 3-voxel lines (a line step never leaves the array
    and comes back)."""
    kind, axes = step
    if kind == "cross":
        out = mask.copy()
        for axis in axes:
            _line(mask, axis, erode, out)
        return out
    for axis in axes:
        out = mask.copy()
        _line(mask, axis, erode, out)
        mask = out
    return mask


def erode(mask: np.ndarray, steps: list[Step]) -> np.ndarray:
    """Binary erosion of a (z, y, x) mask by the steps in turn (their Minkowski sum)."""
    for step in steps:
        mask = morph_step(mask, step, erode=True)
    return mask


def dilate(mask: np.ndarray, steps: list[Step]) -> np.ndarray:
    """Binary dilation of a (z, y, x) mask by the steps in turn (their Minkowski sum)."""
    for step in steps:
        mask = morph_step(mask, step, erode=False)
    return mask


def fill_holes(mask: np.ndarray, slicewise: bool) -> np.ndarray:
    """Fill the holes of a (z, y, x) mask: background regions not connected to the array's border.

    ``slicewise=True`` fills every axial slice on its own (background 4-connected in-plane, the slice's four
    edges are the border), so a ventricle cut open at the top of the scan is still filled; otherwise 3D with
    6-connected background. One labelling pass, much faster than iterative hole filling.
    """
    structure = IN_PLANE_CROSS if slicewise else ndimage.generate_binary_structure(3, 1)
    labels, n = ndimage.label(~mask, structure=structure)
    outside = np.zeros(n + 1, dtype=bool)
    outside[0] = True  # label 0 is the foreground itself
    edges = [labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]]
    if not slicewise:
        edges += [labels[0], labels[-1]]
    for edge in edges:
        outside[edge] = True
    return mask | ~outside[labels]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a (z, y, x) mask (the mask itself when it has at most one)."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))
