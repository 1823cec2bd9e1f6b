"""Volumetry: planimetric volume, ABC/2 (Kothari) and the field-of-view edge check, on masks of known size."""

from __future__ import annotations

import numpy as np
import pytest

from app import volumetry
from app.volumetry import abc2_volume_ml, touches_fov_edge, volume_ml


def _ellipsoid(shape, spacing, semi_mm, centre_mm=None):
    centre_mm = centre_mm or [n * s / 2 for n, s in zip(shape, spacing, strict=True)]
    axes = [
        ((np.arange(n) + 0.5) * s - c) / r
        for n, s, c, r in zip(shape, spacing, centre_mm, semi_mm, strict=True)
    ]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    return (z**2 + y**2 + x**2) <= 1.0


def test_volume_ml_is_exact_for_boxes():
    mask = np.zeros((10, 40, 50), np.uint8)
    mask[2:7, 5:25, 10:40] = 1  # 5 x 20 x 30 voxels
    assert volume_ml(mask, (5.0, 0.5, 0.4)) == pytest.approx(
        5 * 20 * 30 * 5.0 * 0.5 * 0.4 / 1000.0, rel=1e-12
    )
    assert volume_ml(mask.astype(bool), (1.0, 1.0, 1.0)) == 3.0
    assert volume_ml(np.zeros((3, 3, 3)), (5.0, 0.5, 0.5)) == 0.0


def test_volume_ml_rejects_bad_input():
    with pytest.raises(ValueError):
        volume_ml(np.zeros((3, 3)), (1.0, 1.0))
    with pytest.raises(ValueError):
        volume_ml(np.zeros((3, 3, 3)), (0.0, 1.0, 1.0))


@pytest.mark.parametrize("semi_mm", [(30.0, 20.0, 15.0), (15.0, 25.0, 12.0), (40.0, 30.0, 22.0)])
def test_abc2_count_is_close_to_ellipsoid_volume(semi_mm):
    spacing = (5.0, 0.45, 0.45)
    shape = (24, 160, 160)
    mask = _ellipsoid(shape, spacing, semi_mm)
    true_ml = 4.0 / 3.0 * np.pi * np.prod(semi_mm) / 1000.0
    assert volume_ml(mask, spacing) == pytest.approx(true_ml, rel=0.05)
    # ABC/2 approximates pi/6 * ABC; with 5 mm slices C is quantised, so allow 12 %
    assert abc2_volume_ml(mask, spacing, c_method="count") == pytest.approx(true_ml, rel=0.12)


def test_abc2_diameters_and_kothari_weighting_on_a_known_stack():
    """Slices of a 40 x 20 mm rectangle (A = 40, B = 20 on the largest slice) with decreasing areas."""
    spacing = (5.0, 0.5, 0.5)
    mask = np.zeros((6, 100, 100), bool)
    mask[1, 10:50, 10:90] = True  # largest: 20 mm x 40 mm
    mask[2, 10:44, 10:90] = True  # 85 % -> 1
    mask[3, 10:30, 10:90] = True  # 50 % -> 0.5
    mask[4, 10:14, 10:90] = True  # 10 % -> 0
    # rectangle: the largest edge-to-edge diameter is the diagonal; B is the width perpendicular to it
    a = np.hypot(40.0, 20.0)
    b = 2 * 40.0 * 20.0 / a
    expected_kothari = a * b * (2.5 * 5.0) / 2 / 1000
    expected_count = a * b * (4 * 5.0) / 2 / 1000
    assert abc2_volume_ml(mask, spacing, c_method="kothari") == pytest.approx(expected_kothari, rel=1e-9)
    assert abc2_volume_ml(mask, spacing, c_method="count") == pytest.approx(expected_count, rel=1e-9)
    assert abc2_volume_ml(mask, spacing) == abc2_volume_ml(mask, spacing, c_method="count")  # the default


def test_abc2_kothari_on_sphere_matches_its_rule():
    spacing = (5.0, 0.5, 0.5)
    mask = _ellipsoid((20, 120, 120), spacing, (25.0, 25.0, 25.0))
    areas = mask.sum(axis=(1, 2))
    frac = areas / areas.max()
    weighted = (frac >= 0.75).sum() + 0.5 * ((frac >= 0.25) & (frac < 0.75)).sum()
    ratio = abc2_volume_ml(mask, spacing, c_method="kothari") / abc2_volume_ml(mask, spacing, c_method="count")
    assert ratio == pytest.approx(weighted / np.count_nonzero(areas), rel=1e-12)
    assert ratio < 0.8  # Kothari's weighting undercounts a sphere's tapering ends


def _rotated_ellipsoid(shape_zyx, spacing_zyx, semi_zyx, centre_zyx, yaw_rad: float) -> np.ndarray:
    """Voxels (z, y, x) whose centres lie inside an ellipsoid with semi-axes ``semi_zyx`` (mm), its in-plane
    axes rotated by ``yaw_rad`` about z, centred at ``centre_zyx`` (mm from the grid corner)."""
    z, y, x = (
        ((np.arange(n) + 0.5) * s - c)
        for n, s, c in zip(shape_zyx, spacing_zyx, centre_zyx, strict=True)
    )
    z, y, x = np.meshgrid(z, y, x, indexing="ij", sparse=True)
    u = np.cos(yaw_rad) * x + np.sin(yaw_rad) * y  # along the x semi-axis
    v = -np.sin(yaw_rad) * x + np.cos(yaw_rad) * y
    return (z / semi_zyx[0]) ** 2 + (v / semi_zyx[1]) ** 2 + (u / semi_zyx[2]) ** 2 <= 1.0


# ellipsoids of 5-73 mL (semi-axes z, y, x in mm): flat and tall, round and elongated
ELLIPSOIDS_MM = [(8.0, 10.0, 15.0), (12.0, 10.0, 10.0), (10.0, 12.0, 16.0), (12.0, 15.0, 20.0), (20.0, 15.0, 12.0),
                 (15.0, 20.0, 30.0), (20.0, 25.0, 35.0)]
YAWS_RAD = [0.0, 0.5, 1.2]


@pytest.mark.parametrize("semi_mm", ELLIPSOIDS_MM)
@pytest.mark.parametrize("yaw", YAWS_RAD)
def test_abc2_of_ellipsoids_on_5mm_slices(semi_mm, yaw):
    """ABC/2 (C = slices x 5 mm) against the true volume of ellipsoids of 5 mL and more, axis-aligned and rotated
    in-plane, 0.45 mm pixels. Where the slices cut the haematoma is chance, so it is sampled at ten evenly spaced
    offsets: the mean over them is within 10 % of the truth, and each one within 10 % plus the one slice that
    the position can add or remove (5 mm of C)."""
    spacing = (5.0, 0.45, 0.45)
    shape = (20, 200, 200)
    true_ml = 4.0 / 3.0 * np.pi * np.prod(semi_mm) / 1000.0
    assert true_ml >= 5.0
    errors = []
    for offset in np.linspace(0.0, spacing[0], 10, endpoint=False):
        mask = _rotated_ellipsoid(shape, spacing, semi_mm, (50.0 + offset, 45.1, 44.9), yaw)
        errors.append(abc2_volume_ml(mask, spacing) / true_ml - 1.0)
    one_slice = spacing[0] / (2 * semi_mm[0])
    assert abs(float(np.mean(errors))) <= 0.10, errors
    assert max(abs(e) for e in errors) <= 0.10 + one_slice, errors


@pytest.mark.parametrize("semi_mm", ELLIPSOIDS_MM[:4])
@pytest.mark.parametrize("yaw", YAWS_RAD)
def test_abc2_of_ellipsoids_on_thin_slices(semi_mm, yaw):
    """With 1 mm slices the slice count hardly depends on the position: every placement is within 10 %."""
    spacing = (1.0, 0.5, 0.5)
    shape = (60, 140, 140)
    true_ml = 4.0 / 3.0 * np.pi * np.prod(semi_mm) / 1000.0
    for offset in (0.0, 0.3, 0.5, 0.8):
        mask = _rotated_ellipsoid(shape, spacing, semi_mm, (30.0 + offset, 35.2, 34.9), yaw)
        assert abc2_volume_ml(mask, spacing) == pytest.approx(true_ml, rel=0.10), offset
        kothari = abc2_volume_ml(mask, spacing, c_method="kothari")
        assert 0.55 * true_ml < kothari < 0.80 * true_ml  # the partial-slice weighting undercounts an ellipsoid


def test_abc2_edge_cases():
    assert abc2_volume_ml(np.zeros((4, 10, 10)), (5.0, 0.5, 0.5)) == 0.0
    single = np.zeros((3, 10, 10), bool)
    single[1, 4, 4] = True  # one 0.5 mm pixel: A = diagonal, B = diagonal
    assert abc2_volume_ml(single, (5.0, 0.5, 0.5)) == pytest.approx(np.sqrt(0.5) ** 2 * 5.0 / 2 / 1000)
    line = np.zeros((1, 10, 10), bool)
    line[0, 2, 1:9] = True
    assert abc2_volume_ml(line, (5.0, 1.0, 1.0)) > 0.0
    with pytest.raises(ValueError):
        abc2_volume_ml(single, (5.0, 0.5, 0.5), c_method="median")  # type: ignore[arg-type]


def test_touches_fov_edge():
    m = np.zeros((8, 16, 16), np.uint8)
    m[3:5, 5:9, 5:9] = 1
    assert not touches_fov_edge(m)
    for index in [(0, 7, 7), (7, 7, 7), (4, 0, 7), (4, 15, 7), (4, 7, 0), (4, 7, 15)]:
        edge = m.copy()
        edge[index] = 1
        assert touches_fov_edge(edge), index
    assert not touches_fov_edge(np.zeros((2, 2, 2)))


def _diameters_from_all_corners(slice_mask: np.ndarray, dy: float, dx: float) -> tuple[float, float]:
    """Reference: A and B from the corners of *every* foreground pixel, brute force (no hull)."""
    rows, cols = np.nonzero(slice_mask)
    pts = np.concatenate([np.column_stack([(rows + oy) * dy, (cols + ox) * dx])
                          for oy in (-0.5, 0.5) for ox in (-0.5, 0.5)])
    pts = np.unique(pts, axis=0)
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    a = float(np.sqrt(d2[i, j]))
    u = (pts[j] - pts[i]) / a
    proj = pts @ np.array([-u[1], u[0]])
    return a, float(proj.max() - proj.min())


@pytest.mark.parametrize("seed", range(6))
def test_abc2_diameters_from_row_extremes_equal_all_pixel_corners(seed: int) -> None:
    """The O(rows) corner set gives the same A and B as all pixel corners, for irregular and holed shapes."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((24, 24), dtype=bool)
    for _ in range(3):  # a union of random blobs, with random holes
        cy, cx, ry, rx = rng.uniform(5, 19), rng.uniform(5, 19), rng.uniform(1, 7), rng.uniform(1, 7)
        yy, xx = np.mgrid[:24, :24]
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    mask &= rng.random(mask.shape) > 0.15
    dy, dx = rng.uniform(0.3, 1.0, 2)
    got = volumetry._diameters_mm(mask, dy, dx)
    want = _diameters_from_all_corners(mask, dy, dx)
    assert got[0] == pytest.approx(want[0], rel=1e-9)
    assert got[1] == pytest.approx(want[1], rel=1e-6)
