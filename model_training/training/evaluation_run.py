"""Evaluate a training run: predict the training and test cases, fix the CNN threshold on the training
predictions (Youden's J), and build the paper's Table 2 with the evaluation package.

Segmentation Dice is computed on the model grid (the cached mask resampled to the plans' grid with
nearest-neighbour, the prediction thresholded at ``plans.mask_threshold``). Writes into ``out_dir``:
``predictions.csv`` (case id, split, label, probability, Dice: no other identifiers), ``table2.md``,
``table2.json``, ``roc.png`` and ``evaluation.json`` (the metrics and the threshold ``register`` consumes); a copy
of ``evaluation.json`` is also written into the run directory.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file

from app.model.config import ModelConfig
from app.model.unet import DualOutputUNet3D
from app.preprocessing.plans import Plans
from model_training.cohort.cache import build_cache, cache_path
from model_training.cohort.manifest import CaseRecord, fill_baseline_volumes, read_manifest
from model_training.training.distributed import resolve_device
from model_training.training.trainer import predict_cached


def load_run_model(run_dir: Path, device: str = "cpu") -> tuple[DualOutputUNet3D, Plans, dict[str, Any]]:
    """The final model of a run (``model.safetensors`` + ``config.json``), its plans and its config."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found: the run has not finished (resume it with --resume)")
    model = DualOutputUNet3D(ModelConfig.model_validate(config["model_config"]))
    model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    return model.to(device).eval(), Plans.model_validate(config["plans"]), config


def _ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _rows(cases: list[CaseRecord], preds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for c, p in zip(cases, preds, strict=True):
        row = c.as_row()
        row.update({"cnn_probability": p["probability"], "dice": p["dice"]})
        rows.append(row)
    return rows


def evaluate_run(
    run_dir: Path,
    manifest_path: Path,
    out_dir: Path,
    *,
    cache_dir: Path = Path(".cache/preprocessed"),
    device: str = "auto",
    preprocess_workers: int | None = None,
    inclusive: bool = False,
    progress: bool = True,
    ci_method: str = "wilson_cc",
) -> dict[str, Any]:
    """Evaluate ``run_dir`` on the train/test split recorded in the run (see the module docstring).

    ``ci_method`` is the interval for sensitivity and specificity: ``wilson_cc`` (default; Wilson with continuity
    correction, R's ``prop.test``, which reproduces the paper's Table 2 intervals), ``wilson`` or ``exact``
    (Clopper-Pearson).
    """
    from model_training.evaluation.binary_metrics import youden_threshold
    from model_training.evaluation.delong import auc_ci
    from model_training.evaluation.report import build_table2

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    device = resolve_device(device)
    model, plans, config = load_run_model(run_dir, device)
    manifest = fill_baseline_volumes(read_manifest(manifest_path, inclusive=inclusive))
    by_id = manifest.by_id()
    split: dict[str, list[CaseRecord]] = {}
    for name in ("train", "val", "test"):
        ids = _ids(run_dir / f"{name}_ids.txt")
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ValueError(f"{len(missing)} {name} case(s) of the run are not in {manifest_path}")
        split[name] = [by_id[i] for i in ids]
    train = split["train"] + split["val"]  # the threshold is fixed on all development data
    test = split["test"]
    if not test:
        raise ValueError("the run has no test cases (all admissions are before the cut-off?)")
    t0 = time.perf_counter()
    build_cache(train + test, plans, cache_dir, preprocess_workers, progress)
    amp = bool(config["preset"]["schedule"].get("amp", False))

    def predict(cases: list[CaseRecord]) -> list[dict[str, Any]]:
        return predict_cached(model, [cache_path(cache_dir, c, plans) for c in cases], [c.case_id for c in cases],
                              [c.label for c in cases], plans.mask_threshold, device, amp)

    pred_train, pred_test = predict(train), predict(test)
    y_train = np.array([p["label"] for p in pred_train])
    s_train = np.array([p["probability"] for p in pred_train])
    youden = youden_threshold(y_train, s_train)
    threshold = youden.threshold
    out_dir.mkdir(parents=True, exist_ok=True)
    table = build_table2(_rows(train, pred_train), _rows(test, pred_test), out_dir,
                         dice=[p["dice"] for p in pred_test], cnn_threshold=threshold,
                         ci_method=ci_method)
    with open(out_dir / "predictions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["case_id", "split", "label", "probability", "dice"])
        w.writeheader()
        for name, preds in (("train", pred_train), ("test", pred_test)):
            for p in preds:
                w.writerow({"case_id": p["case_id"], "split": name, "label": p["label"],
                            "probability": f"{p['probability']:.6f}", "dice": f"{p['dice']:.6f}"})

    y_test = np.array([p["label"] for p in pred_test])
    s_test = np.array([p["probability"] for p in pred_test])
    dice_test = np.array([p["dice"] for p in pred_test])
    dice_train = np.array([p["dice"] for p in pred_train])
    auc = auc_ci(y_test, s_test) if len(set(y_test.tolist())) == 2 else None
    cnn_row = next(r for r in table["rows"] if r["key"] == "cnn")
    result = {
        "schema": "ich-expansion/evaluation/v1",
        "run": str(run_dir.resolve()),
        "manifest_fingerprint": manifest.fingerprint,
        "run_manifest_fingerprint": config.get("manifest", {}).get("fingerprint"),
        "threshold": threshold,
        "threshold_source": "Youden's J on the training (development) predictions",
        "youden": {"j": youden.youden_j, "sensitivity": youden.sensitivity, "specificity": youden.specificity},
        "n": {"train": len(train), "test": len(test), "test_positive": int(y_test.sum())},
        "test": {
            "dice_mean": float(dice_test.mean()),
            "dice_sd": float(dice_test.std(ddof=1)) if dice_test.size > 1 else 0.0,
            "auc": None if auc is None else auc.auc,
            "auc_ci95": None if auc is None else [auc.lower, auc.upper],
            "cnn_row": cnn_row,
        },
        "train": {"dice_mean": float(dice_train.mean()),
                  "dice_sd": float(dice_train.std(ddof=1)) if dice_train.size > 1 else 0.0},
        "dice_grid": "model grid (plans.matrix_zyx)",
        "table2": {"markdown": "table2.md", "json": "table2.json", "roc": "roc.png"},
        "report_dir": str(out_dir.resolve()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    (out_dir / "evaluation.json").write_text(text)
    (run_dir / "evaluation.json").write_text(text)
    return result
