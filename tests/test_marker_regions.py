"""Where the reported NCCT markers lie: the regions of :mod:`app.model.marker_regions` on rendered phantoms with
known marker structures, their outlines and legend in the overview PNG, and the path from a prediction to the
stored result's overlay."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from test_outputs import _decode_png_rgb

from app.model.marker_regions import marker_regions
from app.outputs import CompactResult, render_panels
from app.outputs.overlay import MARKER_STYLE
from model_training.synthetic import generate_case
from model_training.synthetic.haematoma import STRUCTURE_LABELS

SEED = 11


def _overlap(region: np.ndarray, truth: np.ndarray) -> float:
    """Share of ``truth`` covered by ``region``."""
    return float((region & truth).sum()) / max(float(truth.sum()), 1.0)


@pytest.fixture(scope="module")
def swirl_case():
    return generate_case(SEED, 7, markers={"swirl": 1, "hypodensity": 0, "irregular_shape": 0},
                         haematoma_volume_ml=35.0, n_slices=26)


def test_swirl_region_lies_on_the_rendered_swirl(swirl_case):
    c = swirl_case
    spacing = tuple(float(v) for v in c.spacing_zyx)
    regions = marker_regions(c.hu.astype(np.float32), c.mask, spacing, {"swirl": True, "blend": False})
    assert set(regions) == {"swirl"}
    truth = c.structure_labels == STRUCTURE_LABELS["swirl"]
    swirl = regions["swirl"]
    assert swirl.shape == c.mask.shape and swirl.dtype == bool
    assert _overlap(swirl, truth) > 0.4  # finds the swirl (its rim is left to the clot surface)
    assert _overlap(truth, swirl) > 0.6  # and little else
    assert not (swirl & (c.mask == 0)).any()  # inside the haematoma


def test_blend_region_is_the_darker_part():
    c = generate_case(SEED, 5, markers={"blend": 1}, haematoma_volume_ml=35.0, n_slices=26)
    spacing = tuple(float(v) for v in c.spacing_zyx)
    regions = marker_regions(c.hu.astype(np.float32), c.mask, spacing,
                             {"blend": True, "heterogeneous_density": True, "hypodensity": False})
    truth = c.structure_labels == STRUCTURE_LABELS["blend_hypo"]
    assert _overlap(regions["blend"], truth) > 0.6 and _overlap(truth, regions["blend"]) > 0.7
    # heterogeneous density is outlined by the hypodense foci, under the hypodensity's name
    assert "heterogeneous_density" not in regions


def test_nothing_present_or_no_mask_gives_no_regions(swirl_case):
    c = swirl_case
    spacing = tuple(float(v) for v in c.spacing_zyx)
    hu = c.hu.astype(np.float32)
    assert marker_regions(hu, c.mask, spacing, {"swirl": False}) == {}
    assert marker_regions(hu, np.zeros_like(c.mask), spacing, {"swirl": True}) == {}


def test_overview_outlines_each_marker_in_its_colour_with_a_legend():
    hu = np.full((2, 40, 60), 40.0, np.float32)
    mask = np.zeros(hu.shape, np.uint8)
    mask[:, 5:35, 5:55] = 1
    swirl = np.zeros(hu.shape, bool)
    swirl[1, 10:20, 10:20] = True
    plain = _decode_png_rgb(render_panels(hu, mask, [3, 4], 8, (5.0, 1.0, 1.0)))
    data = render_panels(hu, mask, [3, 4], 8, (5.0, 1.0, 1.0), markers={"swirl": swirl, "blend": np.zeros_like(swirl)})
    rgb = _decode_png_rgb(data)
    colour = MARKER_STYLE["swirl"][0]
    panel_w = 60 + 4
    on = (rgb[:40] == colour).all(axis=2)
    assert on[10, panel_w + 10] and on[19, panel_w + 15] and not on[15, panel_w + 15]  # edge, not the inside
    assert not on[:, :60].any()  # the first panel holds no swirl
    assert rgb.shape[0] > plain.shape[0]  # the legend strip under the panels
    legend = rgb[plain.shape[0]:]
    assert (legend == colour).all(axis=2).any() and not (legend == MARKER_STYLE["blend"][0]).all(axis=2).any()
    assert b"NCCT markers outlined: swirl" in data and b"blend" not in data
    with pytest.raises(ValueError, match="marker region swirl"):
        render_panels(hu, mask, [3, 4], 8, (5.0, 1.0, 1.0), markers={"swirl": swirl[:1]})


def test_stored_result_keeps_the_regions_for_its_overlay(swirl_case):
    c = swirl_case
    image = sitk.GetImageFromArray(c.hu.astype(np.float32))
    image.SetSpacing(tuple(float(v) for v in c.spacing_zyx[::-1]))
    mask = sitk.GetImageFromArray(c.mask.astype(np.uint8))
    mask.CopyInformation(image)
    regions = marker_regions(c.hu.astype(np.float32), c.mask, tuple(float(v) for v in c.spacing_zyx),
                             {"swirl": True})
    series = SimpleNamespace(source_headers=[], hu_array=c.hu.astype(np.float32))
    result = SimpleNamespace(mask=mask, source_slice_masks=np.zeros((0, 512, 512), np.uint8), detected=True,
                             volume_ml=35.0,
                             probability=0.4, marker_regions=regions)
    compact = CompactResult.from_prediction(series, result, algorithm_name="t", algorithm_version="0")
    assert [name for name, _ in compact.marker_bits] == ["swirl"]
    png = compact.render("overlay.png")
    assert b"NCCT markers outlined: swirl" in png
    assert (_decode_png_rgb(png) == MARKER_STYLE["swirl"][0]).all(axis=2).any()
    bare = CompactResult.from_prediction(series, SimpleNamespace(**{**vars(result), "marker_regions": {}}),
                                         algorithm_name="t", algorithm_version="0")
    assert b"NCCT markers outlined" not in bare.render("overlay.png")
