"""Evaluate a training run: fix the CNN threshold on the development predictions (Youden's J), then predict the
test cases through the serving path and build the paper's Table 2 and the serving-path report from them.

Development (training + validation) cases are predicted with the fast cached path
(:func:`model_training.training.prediction.predict_cached`, model grid; tests/test_evaluation_serving_path.py shows
it equals the serving path), only to fix the threshold. Test cases go through
:func:`model_training.evaluation.serving_path.predict_cases`: ingestion as the service does it,
:class:`app.inference.Predictor` with the run's model and that threshold, Dice on the original (analysis) grid.
Writes into ``out_dir``: ``predictions.csv`` (case id, split, label, raw probability, Dice: no other
identifiers), ``table2.md``, ``table2.json``, ``roc.png``, the serving-path report (``serving_report.json`` /
``.md``, ``cases.csv``, ``reliability.png``, ``bland_altman.png``) and ``evaluation.json`` (the metrics and the
threshold ``register`` consumes); a copy of ``evaluation.json`` is also written into the run directory.
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
from app.model.device import device_name
from app.model.unet import DualOutputUNet3D
from app.preprocessing.plans import Plans
from app.weights.registry import LoadedWeights, sha256_file
from model_training.cohort.cache import build_cache, cache_path, default_cache_dir
from model_training.cohort.manifest import CaseRecord, fill_baseline_volumes, read_manifest
from model_training.evaluation.serialization import json_safe
from model_training.evaluation.serving_path import ImageColumn
from model_training.training.prediction import predict_cached


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


def _table2_row(case: CaseRecord, probability: float, dice: float | None) -> dict[str, Any]:
    row = case.as_row()
    row.update({"cnn_probability": probability, "dice": dice})
    return row


def run_weights(model: DualOutputUNet3D, plans: Plans, config: dict[str, Any], run_dir: Path,
                threshold: float) -> LoadedWeights:
    """The run's final model as :class:`~app.weights.registry.LoadedWeights` (as ``register`` would store it,
    without a post-processing block, so the documented defaults apply), for :class:`app.inference.Predictor`."""
    return LoadedWeights(model=model, plans=plans, config=ModelConfig.model_validate(config["model_config"]),
                         manifest={}, name=f"run:{Path(run_dir).name}", version="unregistered",
                         weights_sha256=sha256_file(Path(run_dir) / "model.safetensors"), path=Path(run_dir),
                         threshold=float(threshold))


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def evaluate_run(
    run_dir: Path,
    manifest_path: Path,
    out_dir: Path,
    *,
    cache_dir: Path | None = None,
    device: str = "auto",
    preprocess_workers: int | None = None,
    inclusive: bool = False,
    progress: bool = True,
    ci_method: str = "wilson_cc",
    image_column: ImageColumn = "image",
) -> dict[str, Any]:
    """Evaluate ``run_dir`` on the train/test split recorded in the run (see the module docstring).

    ``ci_method`` is the interval for sensitivity and specificity: ``wilson_cc`` (default; Wilson with continuity
    correction, R's ``prop.test``, which reproduces the paper's Table 2 intervals), ``wilson`` or ``exact``
    (Clopper-Pearson). ``image_column="image_nifti"`` predicts the test cases' NIfTI copies where present.
    Heads without a haematoma (no expansion label) are left out of the threshold and of Table 2; the serving-path
    report counts them for detection.
    """
    from app.inference import Predictor
    from model_training.evaluation.binary_metrics import youden_threshold
    from model_training.evaluation.delong import auc_ci
    from model_training.evaluation.report import build_table2
    from model_training.evaluation.serving_path import evaluation_case, predict_cases
    from model_training.evaluation.serving_report import write_serving_report

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    device = device_name(device)
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
    build_cache(train, plans, cache_dir, preprocess_workers, progress)
    amp = bool(config["preset"]["schedule"].get("amp", False))
    pred_train = predict_cached(model, [cache_path(cache_dir, c, plans) for c in train], [c.case_id for c in train],
                                [c.label for c in train], plans.mask_threshold, device, amp)
    labelled_train = [(c, p) for c, p in zip(train, pred_train, strict=True) if c.label is not None]
    youden = youden_threshold(np.array([c.label for c, _ in labelled_train]),
                              np.array([p["probability"] for _, p in labelled_train]))
    threshold = youden.threshold

    predictor = Predictor(run_weights(model, plans, config, run_dir, threshold), device,
                          amp="auto" if amp else "off")
    rows = predict_cases(predictor, [evaluation_case(c, image_column) for c in test], progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    serving = write_serving_report(rows, out_dir, {"model": {"name": f"training run {run_dir.name}", "version": "",
                                                             "threshold": threshold, "run": str(run_dir.resolve())}},
                                   ci_method=ci_method)
    # Table 2 needs a probability: a refused case (no result for the client) is counted in the serving report
    labelled_test = [(c, r) for c, r in zip(test, rows, strict=True)
                     if c.label is not None and r.get("refusal") is None]
    table = build_table2([_table2_row(c, p["probability"], None) for c, p in labelled_train],
                         [_table2_row(c, r["raw_probability"], r.get("dice")) for c, r in labelled_test],
                         out_dir, dice={c.case_id: r["dice"] for c, r in labelled_test if r.get("dice") is not None},
                         cnn_threshold=threshold, ci_method=ci_method)
    with open(out_dir / "predictions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["case_id", "split", "label", "probability", "dice"])
        w.writeheader()
        for p in pred_train:
            w.writerow({"case_id": p["case_id"], "split": "train", "label": p["label"],
                        "probability": f"{p['probability']:.6f}", "dice": f"{p['dice']:.6f}"})
        for r in rows:
            w.writerow({"case_id": r["case_id"], "split": "test", "label": r["label"],
                        "probability": f"{r['raw_probability']:.6f}" if r.get("raw_probability") is not None else "",
                        "dice": "" if r.get("dice") is None else f"{r['dice']:.6f}"})

    y_test = np.array([c.label for c, _ in labelled_test])
    s_test = np.array([r["raw_probability"] for _, r in labelled_test])
    dice_test = [r["dice"] for r in rows if r.get("dice") is not None]
    dice_train = [p["dice"] for c, p in zip(train, pred_train, strict=True) if c.label is not None]
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
        "n": {"train": len(train), "test": len(test), "test_positive": int(y_test.sum()),
              "test_refused": sum(r.get("refusal") is not None for r in rows)},
        "test": {
            "dice_mean": float(np.mean(dice_test)) if dice_test else None,
            "dice_sd": _sd(dice_test),
            "auc": None if auc is None else auc.auc,
            "auc_ci95": None if auc is None else [auc.lower, auc.upper],
            "cnn_row": cnn_row,
            "serving": {k: serving[k] for k in ("detection", "segmentation", "volume", "ivh_in_mask", "expansion")},
        },
        "train": {"dice_mean": float(np.mean(dice_train)) if dice_train else None, "dice_sd": _sd(dice_train)},
        "dice_grid": "original grid (serving path)",
        "train_dice_grid": "model grid (plans.matrix_zyx, cached fast path)",
        "table2": {"markdown": "table2.md", "json": "table2.json", "roc": "roc.png"},
        "serving_report": {"json": "serving_report.json", "markdown": "serving_report.md"},
        "report_dir": str(out_dir.resolve()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n"
    (out_dir / "evaluation.json").write_text(text)
    (run_dir / "evaluation.json").write_text(text)
    return result
