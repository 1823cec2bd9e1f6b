"""End to end on a synthetic cohort: synth (NIfTI) -> train (smoke) -> evaluate -> register -> load verifies ->
one corrupted byte refused -> edited plans refused. Budget: about a minute on 2 CPU cores."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from app.weights.registry import WeightsError, load_weights
from model_training.cli import main

N_CASES = 24


def _write_cohort(root: Path) -> tuple[Path, dt.date]:
    """24 cases from the synthetic generator as NIfTI + a manifest; returns (manifest, cut-off at 2/3)."""
    from model_training.cohort.manifest import MARKER_COLUMNS
    from model_training.synthetic.case import generate_case

    rows, dates = [], []
    for i in range(N_CASES):
        c = generate_case(2024, i)
        img = sitk.GetImageFromArray(c.hu)
        img.SetSpacing(tuple(float(s) for s in c.spacing_zyx[::-1]))
        img.SetOrigin(c.origin_xyz)
        mask = sitk.GetImageFromArray(c.mask)
        mask.CopyInformation(img)
        sitk.WriteImage(img, str(root / f"{c.case_id}.nii.gz"))
        sitk.WriteImage(mask, str(root / f"{c.case_id}_mask.nii.gz"))
        markers = ",".join(str(c.markers.get(m, "")) for m in MARKER_COLUMNS)
        rows.append(f"{c.case_id},{c.case_id}.nii.gz,{c.case_id}_mask.nii.gz,{c.followup_volume_ml:.4f},,"
                    f"{c.baseline_volume_ml:.4f},{c.admission_date.isoformat()},{c.onset_to_ct_hours:.2f},"
                    f"{markers},,{c.scanner.key if hasattr(c.scanner, 'key') else ''}")
        dates.append(c.admission_date)
    header = ("case_id,image,mask,followup_volume_ml,followup_mask,baseline_volume_ml,admission_date,"
              "onset_to_ct_hours," + ",".join(MARKER_COLUMNS) + ",label,scanner")
    manifest = root / "manifest.csv"
    manifest.write_text(header + "\n" + "\n".join(rows) + "\n")
    cutoff = sorted(dates)[2 * N_CASES // 3]
    return manifest, cutoff


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_synth_train_evaluate_register_load(tmp_path, capsys):
    data = tmp_path / "cohort"
    data.mkdir()
    manifest, cutoff = _write_cohort(data)
    run, report, weights, cache = tmp_path / "run", tmp_path / "report", tmp_path / "weights", tmp_path / "cache"
    common = ["--cache-dir", str(cache), "--device", "cpu", "--no-progress"]
    assert main(["train", "--manifest", str(manifest), "--preset", "smoke", "--out", str(run),
                 "--cutoff", cutoff.isoformat(), "--threads", "2", "--epochs", "1", *common]) == 0
    assert (run / "model.safetensors").exists() and (run / "metrics.csv").exists()
    test_ids = (run / "test_ids.txt").read_text().split()
    assert 0 < len(test_ids) < N_CASES

    assert main(["evaluate", "--run", str(run), "--manifest", str(manifest), "--out", str(report), *common]) == 0
    ev = json.loads((report / "evaluation.json").read_text())
    assert 0.0 <= ev["threshold"] <= 1.0 and 0.0 <= ev["test"]["dice_mean"] <= 1.0
    table = json.loads((report / "table2.json").read_text())
    assert {r["key"] for r in table["rows"]} >= {"cnn", "volume_model", "bat_model"}
    assert (report / "table2.md").read_text().count("|") > 20 and (report / "roc.png").stat().st_size > 1000

    assert main(["register", str(run), "--version", "0.0.1", "--weights-dir", str(weights), "--default",
                 "--synthetic"]) == 0
    loaded = load_weights(weights)
    assert loaded.version == "0.0.1" and loaded.threshold == pytest.approx(ev["threshold"])
    assert loaded.plans.matrix_zyx == (16, 48, 48)
    card = (loaded.path / "MODEL_CARD.md").read_text()
    assert "not for clinical use" in card and "synthetic" in card and "3,802,578" in card
    x = np.zeros((1, 1, 16, 48, 48), np.float32)
    import torch

    seg, cls = loaded.model.predict(torch.from_numpy(x))
    assert seg.shape == (1, 1, 16, 48, 48) and cls.shape == (1,)

    f = loaded.path / "model.safetensors"
    data_bytes = bytearray(f.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0xFF
    f.write_bytes(bytes(data_bytes))
    with pytest.raises(WeightsError) as info:
        load_weights(weights)
    assert info.value.code == "checksum_mismatch"
    data_bytes[len(data_bytes) // 2] ^= 0xFF
    f.write_bytes(bytes(data_bytes))
    load_weights(weights)
    m = json.loads((loaded.path / "manifest.json").read_text())
    m["plans"]["window_hu"] = [0.0, 80.0]
    (loaded.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(WeightsError) as info:
        load_weights(weights)
    assert info.value.code == "plans_mismatch"
