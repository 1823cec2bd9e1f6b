"""Trainer: a run interrupted after epoch 1 and resumed gives bit-identical weights to an uninterrupted run (CPU,
seeded); files of the run directory; resume refuses a changed preset."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from safetensors.torch import load_file

from model_training.cohort.cache import _atomic_savez, cache_path
from model_training.cohort.manifest import CaseRecord
from model_training.training.presets import get_preset
from model_training.training.runs import override_preset
from model_training.training.trainer import TrainOptions, fit


def _cases(tmp: Path, plans, n: int = 4) -> list[CaseRecord]:
    """Cases whose cache entries are written directly (the trainer reads only the cache)."""
    rng = np.random.default_rng(0)
    out = []
    cache = tmp / "cache"
    for i in range(n):
        img = tmp / f"c{i}.nii.gz"
        sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16) + i, str(img))
        case = CaseRecord(case_id=f"c{i}", image=img, mask=img, admission_date=dt.date(2015, 1, 1 + i),
                          label=i % 2, label_derived=False)
        d, h, w = plans.matrix_zyx
        tensor = rng.random((d, h, w), dtype=np.float32)
        mask = np.zeros((d, h, w), np.uint8)
        mask[d // 2 - 2 : d // 2 + 2, 10 + i : 20 + i, 15:25] = 1
        tensor[mask > 0] += 2.0
        _atomic_savez(cache_path(cache, case, plans), tensor=tensor, mask=mask)
        out.append(case)
    return out


def _opts(tmp: Path, **kw) -> TrainOptions:
    return TrainOptions(seed=7, device="cpu", cache_dir=tmp / "cache", progress=False, threads=1, **kw)


def test_resume_is_identical_to_uninterrupted(tmp_path):
    preset = override_preset(get_preset("smoke"), epochs=2)
    preset = preset.model_copy(update={"schedule": preset.schedule.model_copy(update={"aug_copies": 2,
                                                                                      "include_original": True})})
    cases = _cases(tmp_path, preset.plans())
    val = cases[:2]
    full = fit(cases, preset, tmp_path / "full", _opts(tmp_path), val_cases=val)
    assert full.completed and len(full.history) == 2
    part = fit(cases, preset, tmp_path / "part", _opts(tmp_path, stop_after_epoch=1), val_cases=val)
    assert not part.completed and not (tmp_path / "part" / "model.safetensors").exists()
    with pytest.raises(FileExistsError):
        fit(cases, preset, tmp_path / "part", _opts(tmp_path), val_cases=val)
    resumed = fit(cases, preset, tmp_path / "part", _opts(tmp_path, resume=True), val_cases=val)
    assert resumed.completed
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k
    for h1, h2 in zip(full.history, resumed.history, strict=True):
        assert h1["train_loss"] == h2["train_loss"] and h1["val_dice"] == h2["val_dice"]

    run = tmp_path / "full"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[1]["lr"]) == pytest.approx(1e-4)
    assert rows[0]["val_dice"] != "" and rows[0]["val_auc"] != ""
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["plans"]["matrix_zyx"] == [16, 48, 48] and cfg["parameters"] > 0
    assert (run / "train_ids.txt").read_text().split() == ["c0", "c1", "c2", "c3"]
    assert len(list((run / "checkpoints").glob("epoch_*.pt"))) == 2

    changed = override_preset(preset, epochs=3)
    with pytest.raises(ValueError, match="preset differs"):
        fit(cases, changed, tmp_path / "part", _opts(tmp_path, resume=True), val_cases=val)
