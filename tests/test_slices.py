"""Slices for the viewer and the annotated overview (app/outputs/slices.py, overlay.py, compact.py), no server:
the compressed HU stack, orientation letters and positions from the LPS geometry, per-slice mask unpacking, slice
PNGs, and key slices that never fall on an empty vertex slice."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from service_fixtures import phantom_volume
from test_outputs import _decode_png_rgb

from app.outputs import CompactResult, key_slices, render_overlay_png, render_panels
from app.outputs.compact import NOT_DETECTED_LABEL, OutputUnavailable
from app.outputs.overlay import ANNOTATION_RGB, PanelAnnotations, intracranial_areas
from app.outputs.slices import (
    DISPLAY_RANGE_HU,
    WINDOWS,
    SliceStack,
    orientation_labels,
    outline,
    render_slice_png,
    slice_positions_mm,
)


def test_slice_stack_round_trip_and_display_clip() -> None:
    rng = np.random.default_rng(7)
    hu = rng.normal(40, 300, (5, 33, 17)).astype(np.float32)
    hu[0, 0, 0], hu[1, 0, 0] = -3000.0, 4000.0
    stack = SliceStack.from_hu(hu)
    expected = np.clip(np.rint(hu), *DISPLAY_RANGE_HU).astype(np.int16)
    for k in range(5):
        assert np.array_equal(stack.slice(k), expected[k])
    assert stack.slice(0)[0, 0] == DISPLAY_RANGE_HU[0] and stack.slice(1)[0, 0] == DISPLAY_RANGE_HU[1]
    assert DISPLAY_RANGE_HU == (min(w[0] for w in WINDOWS.values()), max(w[1] for w in WINDOWS.values()))
    assert stack.nbytes < hu.size * 2 + 64 * 5
    with pytest.raises(IndexError):
        stack.slice(5)
    air = np.full((4, 64, 64), -1000.0, np.float32)  # one value after clipping: almost nothing to keep
    assert SliceStack.from_hu(air).nbytes < 0.05 * air.size * 2


@pytest.mark.parametrize(("direction", "expected"), [
    ((1, 0, 0, 0, 1, 0, 0, 0, 1), {"left": "R", "right": "L", "top": "A", "bottom": "P"}),
    ((-1, 0, 0, 0, 1, 0, 0, 0, 1), {"left": "L", "right": "R", "top": "A", "bottom": "P"}),
    ((1, 0, 0, 0, -1, 0, 0, 0, -1), {"left": "R", "right": "L", "top": "P", "bottom": "A"}),
    ((0, 1, 0, 1, 0, 0, 0, 0, 1), {"left": "A", "right": "P", "top": "R", "bottom": "L"}),
])
def test_orientation_labels_follow_the_direction_cosines(direction: tuple, expected: dict) -> None:
    assert orientation_labels(direction) == expected


def test_slice_positions_are_lps_z_of_slice_centres() -> None:
    identity = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert slice_positions_mm((3, 4, 4), (0.0, 0.0, -10.0), (1.0, 1.0, 2.5), identity) == [-10.0, -7.5, -5.0]
    flipped = (1, 0, 0, 0, 1, 0, 0, 0, -1)  # slices stored superior to inferior
    assert slice_positions_mm((3, 4, 4), (0.0, 0.0, 20.0), (1.0, 1.0, 5.0), flipped) == [20.0, 15.0, 10.0]


def _compact(mask: np.ndarray, hu: np.ndarray, *, detected: bool = True, **kwargs) -> CompactResult:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing((0.7, 0.9, 5.0))
    image.SetOrigin((-10.0, -12.0, -20.0))
    series = SimpleNamespace(source_headers=[], hu_array=hu)
    return CompactResult.from_arrays(series, image, np.zeros((0, *mask.shape[1:]), np.uint8), algorithm_name="t",
                                     algorithm_version="1", detected=detected, **kwargs)


def test_mask_slices_unpack_alone_on_odd_shapes() -> None:
    rng = np.random.default_rng(3)
    mask = (rng.random((5, 7, 9)) > 0.6).astype(np.uint8)  # 63 bits per slice: slices straddle bytes
    compact = _compact(mask, np.zeros(mask.shape, np.float32))
    for k in range(5):
        assert np.array_equal(compact.mask_slice(k), mask[k])
    with pytest.raises(IndexError):
        compact.mask_slice(5)


def test_slice_png_outline_window_and_index() -> None:
    hu, truth, _, _ = phantom_volume(8, 48, seed=1)
    compact = _compact(truth, hu.astype(np.float32), keep_slices=True, volume_ml=3.25, probability=0.4)
    index = compact.slice_index()
    assert index["count"] == 8 and index["columns"] == 48 and index["rows"] == round(48 * 0.9 / 0.7)
    assert index["mask_pixels"] == [int(v) for v in truth.reshape(8, -1).sum(axis=1)]
    assert index["positions_mm"][:2] == [-20.0, -15.0] and index["key_slices"] == list(compact.overlay_indices)
    k = int(np.argmax(index["mask_pixels"]))
    rgb = _decode_png_rgb(compact.render_slice(k, "bone"))
    assert rgb.shape == (index["rows"], 48, 3)
    square = _decode_png_rgb(render_slice_png(np.rint(hu[k]).astype(np.int16), truth[k], (5.0, 1.0, 1.0),
                                              window="bone"))
    red = (square == (255, 0, 0)).all(axis=2)
    assert np.array_equal(red, outline(truth[k]))
    grey = square[~red][:, 0]
    lo, hi = WINDOWS["bone"]
    expected = np.clip((np.rint(hu[k]).astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    assert np.array_equal(grey, expected[~red])
    with pytest.raises(ValueError):
        compact.render_slice(k, "lung")
    with pytest.raises(IndexError):
        compact.render_slice(8)
    assert compact.nbytes > _compact(truth, hu.astype(np.float32)).nbytes  # the kept volume is charged
    with pytest.raises(OutputUnavailable) as info:
        _compact(truth, hu.astype(np.float32)).slice_index()
    assert info.value.code == "slices_unavailable"


def test_key_slices_follow_area_and_skip_a_stray_vertex_voxel() -> None:
    mask = np.zeros((30, 20, 20), np.uint8)
    mask[8:14, 4:14, 4:14] = 1
    mask[11, 2:18, 2:18] = 1
    mask[29, 10, 10] = 1  # one false-positive voxel at the vertex
    picks = key_slices(mask, 3)
    assert 11 in picks and len(picks) == 3 and all(mask[z].any() for z in picks) and 29 not in picks
    thin = np.zeros((30, 20, 20), np.uint8)
    thin[5, 5:8, 5:8] = 1
    assert key_slices(thin, 3) == [4, 5, 6]  # fewer mask slices than panels: the peak's neighbours


def test_empty_mask_picks_slices_through_the_brain_not_the_vertex_or_neck() -> None:
    hu, _, _, _ = phantom_volume(24, 64)
    hu = hu.astype(np.float32)
    hu[:6] = np.where(hu[:6] > 300, 40.0, hu[:6])  # "neck": soft tissue without a skull ring
    areas = intracranial_areas(hu)
    assert areas[:6].max() == 0 and areas[12] > 0 and areas[12] > areas[22]
    picks = key_slices(np.zeros(hu.shape, np.uint8), 3, hu)
    assert len(picks) == 3 and all(areas[z] > 0 for z in picks)
    assert all(abs(z - 12) <= 8 for z in picks), picks  # around the middle of the brain
    assert key_slices(np.zeros((10, 4, 4), np.uint8), 3, np.zeros((10, 4, 4))) == [4, 5, 6]  # no skull: central


def test_overview_carries_orientation_positions_volume_and_probability() -> None:
    hu, truth, _, _ = phantom_volume(12, 64, seed=2)
    compact = _compact(truth, hu.astype(np.float32), volume_ml=12.34, probability=0.27)
    png = compact.render("overlay.png")
    assert b"Comment\x00Haematoma 12.3 mL  expansion probability 0.27" in png
    assert b"image left R, right L, top A, bottom P" in png and b"z (mm, LPS)" in png
    rgb = _decode_png_rgb(png)
    plain = _decode_png_rgb(render_overlay_png(hu.astype(np.float32), truth, compact.spacing_zyx,
                                               indices=list(compact.overlay_indices)))
    assert rgb.shape[1] == plain.shape[1] and rgb.shape[0] > plain.shape[0]  # banner above, captions below
    assert (rgb == ANNOTATION_RGB).all(axis=2).sum() > 100
    empty = _compact(np.zeros_like(truth), hu.astype(np.float32), detected=False)
    assert b"Comment\x00" + NOT_DETECTED_LABEL.encode() in empty.render("overlay.png")
    assert all(0 < z < 11 for z in empty.overlay_indices)
    with pytest.raises(ValueError):  # one position per panel
        render_panels(hu[1:3], truth[1:3], [1, 2], 12, (5.0, 1.0, 1.0), annotations=PanelAnnotations(
            orientation_labels((1, 0, 0, 0, 1, 0, 0, 0, 1)), [0.0]))


def test_real_head_without_haematoma_gets_slices_through_the_brain(normal_head_nifti) -> None:  # type: ignore[no-untyped-def]
    """A real head CT (190 x 240 x 95, neck to vertex): with an empty mask the overview's slices cross the brain
    near its largest section (the skull-stripping brain mask of preprocessing is the reference)."""
    from app.ingestion import load_series
    from app.preprocessing import brain_mask

    series = load_series([str(normal_head_nifti)])
    hu = series.hu_array
    picks = key_slices(np.zeros(hu.shape, np.uint8), 3, hu)
    brain = sitk.GetArrayFromImage(brain_mask(series.image))
    areas = brain.reshape(len(brain), -1).sum(axis=1)
    assert len(picks) == 3 and all(areas[z] >= 0.5 * areas.max() for z in picks), (picks, areas.tolist())
    extent = np.flatnonzero(areas)
    assert all(extent[0] + 5 < z < extent[-1] - 5 for z in picks)  # neither the skull base nor the vertex
