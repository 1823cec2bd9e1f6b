"""Manifest reading/validation, label derivation (strict vs inclusive), temporal split, cache keys."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from app.preprocessing.plans import Plans
from model_training.cohort.cache import cache_key
from model_training.cohort.manifest import ManifestError, read_manifest, temporal_split

HEADER = ("case_id,image,mask,followup_volume_ml,followup_mask,baseline_volume_ml,admission_date,"
          "onset_to_ct_hours,hypodensity,black_hole,swirl,blend,fluid_level,irregular_shape,"
          "heterogeneous_density,ivh,label,scanner")


def _mask(path: Path, n_vox: int, spacing=(1.0, 1.0, 2.0)) -> None:
    arr = np.zeros((10, 10, 10), np.uint8)
    arr.reshape(-1)[:n_vox] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        _mask(tmp_path / "imgs" / f"m{i}.nii.gz", 500)  # 500 voxels x 2 mm^3 = 1.0 mL
    _mask(tmp_path / "imgs" / "fu.nii.gz", 700)  # 1.4 mL: +40 % -> expansion
    rows = [
        "a,imgs/m0.nii.gz,imgs/m0.nii.gz,20,,10,2018-08-31,2.5,1,0,,,,,,,,S1",  # +10 mL -> 1
        "b,imgs/m1.nii.gz,imgs/m1.nii.gz,36,,30,2018-09-01,3,0,0,,,,,,,,S1",  # +6 mL exactly (20 %)
        "c,imgs/m2.nii.gz,imgs/m2.nii.gz,,imgs/fu.nii.gz,,2012-02-01,,,,,,,,,,,",  # volumes from masks
        "d,imgs/m3.nii.gz,imgs/m3.nii.gz,,,,2019-10-31,,,,,,,,,,0,",  # explicit label
    ]
    path = tmp_path / "manifest.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return path


def test_read_manifest_resolves_paths_and_derives_labels(cohort: Path):
    m = read_manifest(cohort)
    cases = m.by_id()
    assert cases["a"].image == (cohort.parent / "imgs" / "m0.nii.gz").resolve()
    assert cases["a"].label == 1 and cases["a"].label_derived
    assert cases["b"].label == 0  # strict: +6 mL is not > 6 mL
    assert cases["c"].baseline_volume_ml == pytest.approx(1.0) and cases["c"].followup_volume_ml == pytest.approx(1.4)
    assert cases["c"].label == 1
    assert cases["d"].label == 0 and not cases["d"].label_derived
    assert cases["a"].markers["hypodensity"] == 1 and cases["a"].markers["swirl"] is None
    assert m.marker_columns == ("hypodensity", "black_hole")
    assert read_manifest(cohort, inclusive=True).by_id()["b"].label == 1  # supplement: >= 6 mL
    assert len(m.fingerprint) == 64 and m.fingerprint == read_manifest(cohort).fingerprint


def test_temporal_split_puts_dates_on_the_correct_side(cohort: Path):
    train, test = temporal_split(read_manifest(cohort).cases)
    assert sorted(c.case_id for c in train) == ["a", "c"]  # 2018-08-31 and 2012 before the 2018-09-01 cut-off
    assert sorted(c.case_id for c in test) == ["b", "d"]  # the cut-off day itself is test
    train2, test2 = temporal_split(read_manifest(cohort).cases, dt.date(2012, 2, 2))
    assert [c.case_id for c in train2] == ["c"] and len(test2) == 3


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a,imgs/m0.nii.gz,imgs/m0.nii.gz,,,,2018-01-01,,,,,,,,,,,", "cannot be derived"),
        ("a,imgs/m0.nii.gz,imgs/m0.nii.gz,,,,01/02/2018,,,,,,,,,,1,", "YYYY-MM-DD"),
        ("a,imgs/missing.nii.gz,imgs/m0.nii.gz,,,,2018-01-01,,,,,,,,,,1,", "does not exist"),
        ("a,imgs/m0.nii.gz,imgs/m0.nii.gz,,,,2018-01-01,,2,,,,,,,,1,", "0 or 1"),
        ("a,imgs/m0.nii.gz,imgs/m0.nii.gz,-3,,,2018-01-01,,,,,,,,,,,", ">= 0"),
    ],
)
def test_invalid_rows_are_refused_with_the_row_number(cohort: Path, row: str, message: str):
    bad = cohort.parent / "bad.csv"
    bad.write_text(HEADER + "\n" + row + "\n")
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(bad)
    assert "row 2" in str(info.value)


def test_duplicate_ids_and_missing_columns_are_refused(cohort: Path):
    lines = cohort.read_text().splitlines()
    dup = cohort.parent / "dup.csv"
    dup.write_text("\n".join([lines[0], lines[1], lines[1]]) + "\n")
    with pytest.raises(ManifestError, match="duplicate case_id"):
        read_manifest(dup)
    nocol = cohort.parent / "nocol.csv"
    nocol.write_text("case_id,image\nx,y\n")
    with pytest.raises(ManifestError, match="mask, admission_date"):
        read_manifest(nocol)


def test_cache_key_changes_with_plans_and_file_content(cohort: Path):
    case = read_manifest(cohort).by_id()["a"]
    k1 = cache_key(case, Plans())
    assert k1 == cache_key(case, Plans())
    assert k1 != cache_key(case, Plans(matrix_zyx=(32, 96, 96)))
    _mask(case.image, 10)  # rewrite the source file
    assert k1 != cache_key(case, Plans())
