"""Cubic B-spline resampling as three separable sparse 1D passes, for grids that share one direction matrix.

When the input image and the target grid have the same direction cosines (the usual axial case: both along the
input's axes, or both along L, P, S), the map from target index to input continuous index is separable, one
affine function per axis. The cubic B-spline interpolation is then scipy's cubic B-spline prefilter (mirror
boundary) followed by one sparse (n_out, n_in) matrix of 4 taps per axis. Mirror taps and the inside-buffer rule
(a point is inside when its continuous index lies in [-0.5, n - 0.5] on every axis) are ITK's, so the result is
numerically ``sitk.Resample(..., sitk.sitkBSpline)`` (tests/test_preprocessing.py). Arrays are (z, y, x);
positions in LPS mm.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import SimpleITK as sitk
from scipy import ndimage

#: direction cosines closer than this are treated as equal (the separable B-spline path applies)
SAME_DIRECTION_ATOL = 1e-6


def _cubic_bspline(x: np.ndarray) -> np.ndarray:
    """Centred cubic B-spline basis function beta3(x)."""
    ax = np.abs(x)
    return np.where(ax < 1.0, 2.0 / 3.0 - ax**2 + 0.5 * ax**3, np.where(ax < 2.0, (2.0 - ax) ** 3 / 6.0, 0.0))


def _axis_weights(t: np.ndarray, n_in: int) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """Sparse (n_out, n_in) cubic B-spline evaluation matrix for continuous input indices ``t``.

    Taps beyond the edges are mirrored (d c b | a b c d | c b a), the boundary condition of both ITK's and
    scipy's B-spline decomposition. Rows of points outside [-0.5, n_in - 0.5] (ITK's inside-buffer rule) are
    zero; the second return value marks the valid rows.
    """
    valid = (t >= -0.5) & (t <= n_in - 0.5)
    j0 = np.floor(t).astype(np.int64) - 1
    taps = j0[:, None] + np.arange(4)[None, :]
    weights = _cubic_bspline(t[:, None] - taps) * valid[:, None]
    if n_in == 1:
        taps = np.zeros_like(taps)
    else:
        period = 2 * (n_in - 1)
        taps = np.abs(np.mod(taps, period))
        taps = np.where(taps > n_in - 1, period - taps, taps)
    rows = np.repeat(np.arange(t.size), 4)
    matrix = scipy.sparse.coo_matrix(
        (weights.ravel().astype(np.float32), (rows, taps.ravel())), shape=(t.size, n_in)
    ).tocsr()  # duplicate (mirrored) taps are summed
    return matrix, valid


def separable_bspline_resample(
    image: sitk.Image, values: np.ndarray, grid: sitk.Image, background: float
) -> np.ndarray:
    """Cubic B-spline resampling of ``values`` (z, y, x on ``image``'s grid) onto ``grid`` when both share one
    direction matrix: the index mapping is then separable, so the interpolation is three sparse 1D passes
    (4 taps each) after scipy's cubic B-spline prefilter. Numerically equivalent to
    ``sitk.Resample(..., sitk.sitkBSpline)`` (same mirror boundary, same inside-buffer rule) and much faster
    (bench/README.md). Points outside ``image`` get ``background``; returns float32 (z, y, x) on ``grid``.
    """
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    offset = d.T @ (np.asarray(grid.GetOrigin()) - np.asarray(image.GetOrigin()))  # along the image axes, mm
    coeffs = ndimage.spline_filter(values, order=3, mode="mirror", output=np.float32)
    nz, ny, nx = coeffs.shape
    out_x, out_y, out_z = grid.GetSize()
    mats, valids = [], []
    for axis, n_out, n_in in ((0, out_x, nx), (1, out_y, ny), (2, out_z, nz)):
        t = (offset[axis] + np.arange(n_out) * grid.GetSpacing()[axis]) / image.GetSpacing()[axis]
        mat, valid = _axis_weights(t, n_in)
        mats.append(mat)
        valids.append(valid)
    wx, wy, wz = mats
    a = (wx @ coeffs.reshape(-1, nx).T).T.reshape(nz, ny, out_x)  # x pass
    a = np.ascontiguousarray(a.transpose(0, 2, 1)).reshape(-1, ny)  # (z, x, y)
    a = (wy @ a.T).T.reshape(nz, out_x, out_y).transpose(0, 2, 1)  # y pass -> (z, y, x)
    a = (wz @ np.ascontiguousarray(a).reshape(nz, -1)).reshape(out_z, out_y, out_x)  # z pass
    inside = valids[2][:, None, None] & valids[1][None, :, None] & valids[0][None, None, :]
    a[~inside] = background
    return a.astype(np.float32, copy=False)


def same_direction(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images share one direction matrix (within :data:`SAME_DIRECTION_ATOL`)."""
    return bool(np.allclose(a.GetDirection(), b.GetDirection(), atol=SAME_DIRECTION_ATOL))
