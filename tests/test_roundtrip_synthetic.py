"""Round trip of a synthetic head-CT phantom through real DICOM files and ingestion (the end-to-end acceptance check).

phantom (model_training.synthetic) -> DICOM series with shuffled file names -> ``load_series`` -> the phantom's
ground-truth mask resampled (nearest neighbour, physical LPS coordinates) onto the ingested grid -> volume in mL
equal to the phantom's ground truth within 1 %; the HU volume equals the phantom voxel for voxel, and JPEG 2000
lossless and RLE lossless encodings decode to the identical HU volume. Budget: about 10 s (one 512x512 case).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEG2000Lossless, RLELossless

from app.ingestion import IngestedSeries, load_series
from app.volumetry import volume_ml
from model_training.synthetic import generate_case, write_dicom_series
from model_training.synthetic.case import SyntheticCase


@pytest.fixture(scope="module")
def case() -> SyntheticCase:
    return generate_case(11, 3)


def _shuffled_copy(paths: list[Path], out: Path, seed: int) -> Path:
    """Copy the files into ``out`` under random names in random order (ingestion must not use names)."""
    out.mkdir(parents=True)
    rng = random.Random(seed)
    order = list(paths)
    rng.shuffle(order)
    for p in order:
        shutil.copyfile(p, out / f"{rng.getrandbits(48):012x}")
    return out


def _truth_mask_on(series: IngestedSeries, case: SyntheticCase) -> np.ndarray:
    """The phantom's ground-truth mask, placed in LPS and resampled onto the ingested grid (nearest)."""
    truth = sitk.GetImageFromArray(case.mask.astype(np.uint8))
    truth.SetOrigin(case.origin_xyz)
    truth.SetSpacing(tuple(reversed(case.spacing_zyx)))
    on_grid = sitk.Resample(truth, series.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(on_grid)


@pytest.fixture(scope="module")
def ingested(case: SyntheticCase, tmp_path_factory: pytest.TempPathFactory) -> IngestedSeries:
    tmp = tmp_path_factory.mktemp("roundtrip")
    paths = write_dicom_series(case, tmp / "written")
    return load_series([_shuffled_copy(paths, tmp / "shuffled", seed=7)])


def test_geometry_matches_the_phantom(ingested: IngestedSeries, case: SyntheticCase) -> None:
    assert not ingested.resampled
    assert ingested.image.GetSize() == tuple(reversed(case.hu.shape))
    np.testing.assert_allclose(ingested.spacing_zyx, case.spacing_zyx, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ingested.image.GetOrigin(), case.origin_xyz, rtol=0, atol=1e-3)
    np.testing.assert_allclose(ingested.image.GetDirection(), np.eye(3).ravel(), atol=1e-9)


def test_hu_identical_to_the_phantom(ingested: IngestedSeries, case: SyntheticCase) -> None:
    np.testing.assert_array_equal(ingested.hu_array, case.hu.astype(np.float32))


def test_volume_in_ml_matches_ground_truth_within_1_percent(ingested: IngestedSeries, case: SyntheticCase) -> None:
    mask = _truth_mask_on(ingested, case)
    measured = volume_ml(mask, ingested.spacing_zyx)
    assert case.baseline_volume_ml > 1.0
    assert measured == pytest.approx(case.baseline_volume_ml, rel=0.01)


@pytest.mark.parametrize("transfer_syntax", [JPEG2000Lossless, RLELossless], ids=["jpeg2000-lossless", "rle"])
def test_lossless_encodings_give_identical_hu(
    case: SyntheticCase, ingested: IngestedSeries, transfer_syntax: str, tmp_path: Path
) -> None:
    paths = write_dicom_series(case, tmp_path / "written", transfer_syntax=transfer_syntax)
    series = load_series([_shuffled_copy(paths, tmp_path / "shuffled", seed=8)])
    assert series.transfer_syntaxes == [str(transfer_syntax)]
    assert series.image.GetOrigin() == ingested.image.GetOrigin()
    assert series.image.GetSpacing() == ingested.image.GetSpacing()
    np.testing.assert_array_equal(series.hu_array, ingested.hu_array)
