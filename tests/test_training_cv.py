"""``python -m model_training cv`` on a tiny synthetic NIfTI cohort (smoke preset, one epoch).

Checks the protocol, not the model's quality: five stratified folds ran (one run folder each, with its metrics
log), every training case was validated exactly once by the fold that did not train on it, and the per-fold and
pooled summaries (JSON and Markdown) hold finite Dice and AUC. Budget: under 60 s on 2 CPU cores.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from model_training.cli import main

N_CASES = 10
FOLDS = 5
#: follow-up growth (mL) given to the positive cases: above the paper's 6 mL absolute rule
POSITIVE_GROWTH_ML = 8.0
SHRINK_XYZ = (4, 4, 1)


def _write_cohort(root: Path) -> tuple[Path, dict[str, int], dt.date]:
    """10 synthetic cases (20 slices, the generator's minimum; 128x128 in-plane) as NIfTI + manifest.

    Every other case grows by 8 mL at follow-up, so the label the manifest's rule derives is balanced (5/5) and
    each stratified fold holds both classes. Returns (manifest, {case_id: expected label}, a cut-off after every
    admission, so that the whole cohort is the training set)."""
    from model_training.cohort.manifest import MARKER_COLUMNS
    from model_training.synthetic.case import generate_case

    rows, labels, dates = [], {}, []
    for i in range(N_CASES):
        c = generate_case(77, i, n_slices=20)
        img = sitk.GetImageFromArray(c.hu)
        img.SetSpacing(tuple(float(s) for s in c.spacing_zyx[::-1]))
        img.SetOrigin(c.origin_xyz)
        mask = sitk.GetImageFromArray(c.mask.astype(np.float32))
        mask.CopyInformation(img)
        # block-average in-plane to 128x128 (about 2 mm): the smoke grid is 48x48, so nothing is lost, and
        # skull stripping / caching get 16x cheaper
        img = sitk.BinShrink(img, SHRINK_XYZ)
        mask = sitk.BinaryThreshold(sitk.BinShrink(mask, SHRINK_XYZ), 0.5, 1e9, 1, 0)
        sitk.WriteImage(img, str(root / f"{c.case_id}.nii.gz"))
        sitk.WriteImage(mask, str(root / f"{c.case_id}_mask.nii.gz"))
        positive = i % 2 == 0
        followup = c.baseline_volume_ml + (POSITIVE_GROWTH_ML if positive else 0.0)
        markers = ",".join(str(c.markers.get(m, "")) for m in MARKER_COLUMNS)
        rows.append(f"{c.case_id},{c.case_id}.nii.gz,{c.case_id}_mask.nii.gz,{followup:.4f},,"
                    f"{c.baseline_volume_ml:.4f},{c.admission_date.isoformat()},{c.onset_to_ct_hours:.2f},"
                    f"{markers},,")
        labels[c.case_id] = int(positive)
        dates.append(c.admission_date)
    header = ("case_id,image,mask,followup_volume_ml,followup_mask,baseline_volume_ml,admission_date,"
              "onset_to_ct_hours," + ",".join(MARKER_COLUMNS) + ",label,scanner")
    manifest = root / "manifest.csv"
    manifest.write_text(header + "\n" + "\n".join(rows) + "\n")
    return manifest, labels, max(dates) + dt.timedelta(days=1)


def _assert_metrics(m: dict, n: int, n_positive: int) -> None:
    assert m["n"] == n and m["n_positive"] == n_positive
    assert 0.0 <= m["dice_mean"] <= 1.0 and math.isfinite(m["dice_sd"]) and m["dice_sd"] >= 0.0
    if 0 < n_positive < n:
        lo, hi = m["auc_ci95"]
        assert 0.0 <= m["auc"] <= 1.0 and math.isfinite(lo) and math.isfinite(hi)
        assert lo <= m["auc"] <= hi
    else:  # one class only: no AUC
        assert m["auc"] is None and m["auc_ci95"] is None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cv_five_folds_each_case_validated_once(tmp_path, capsys):
    data = tmp_path / "cohort"
    data.mkdir()
    manifest, labels, cutoff = _write_cohort(data)
    out = tmp_path / "cv"
    assert main(["cv", "--manifest", str(manifest), "--preset", "smoke", "--out", str(out), "--epochs", "1",
                 "--folds", str(FOLDS), "--cutoff", cutoff.isoformat(), "--seed", "3",
                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["out"] == str(out)

    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["folds"] == FOLDS and summary["preset"] == "smoke"
    assert [f["fold"] for f in summary["per_fold"]] == list(range(1, FOLDS + 1))
    for k in range(1, FOLDS + 1):
        fold_dir = out / f"fold_{k}"
        assert (fold_dir / "model.safetensors").is_file() and (fold_dir / "metrics.csv").is_file()

    # every training case is predicted exactly once, by one fold, with the label the manifest rule derives
    oof = summary["out_of_fold"]
    assert sorted(p["case_id"] for p in oof) == sorted(labels)
    assert {p["case_id"]: p["label"] for p in oof} == labels
    for p in oof:
        assert 0.0 <= p["probability"] <= 1.0 and 0.0 <= p["dice"] <= 1.0
    for fold in summary["per_fold"]:
        members = [p for p in oof if p["fold"] == fold["fold"]]
        assert len(members) == N_CASES // FOLDS
        _assert_metrics(fold, len(members), sum(p["label"] for p in members))
    _assert_metrics(summary["pooled"], N_CASES, sum(labels.values()))
    assert printed["pooled"] == summary["pooled"]

    table = (out / "cv_summary.md").read_text().splitlines()
    fold_rows = [line for line in table if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(fold_rows) == FOLDS and any(line.startswith("| pooled |") for line in table)
