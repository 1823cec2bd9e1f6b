"""Fit the post-processing of registered weights on a validation cohort, through the serving path.

The weights are run on every case of a validation manifest exactly as the service runs them
(:func:`model_training.evaluation.serving_path.evaluate_weights`); from the per-case rows:

* the detection rule (:func:`app.model.postprocessing_fit.fit_detection`) on the segmented volume (mL, before any
  rule) and the mean haematoma probability inside the mask, haematoma-free heads against heads with a haematoma;
* Platt scaling of the raw expansion probability (:func:`app.model.postprocessing_fit.fit_platt`) on the cases the
  fitted rule detects that have an expansion label;
* the decision threshold on the calibrated probability: Youden's J on the same cases.

The result is written into the weights' ``manifest.json`` (``postprocessing``, ``threshold``,
``threshold_source``, ``calibration_fit``), checked by loading the weights back, and summarised in a section of
``MODEL_CARD.md``. The validation cohort must be disjoint from the training and test cohorts.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CARD_SECTION = "## Post-processing (fitted on validation data)"


def replace_card_section(card: str, heading: str, body: str) -> str:
    """``card`` with the section under ``heading`` (up to the next ``## `` heading) replaced by ``body``, or
    appended when absent."""
    lines = card.rstrip("\n").split("\n")
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:start] + lines[end:]
    return "\n".join(lines).rstrip("\n") + "\n\n" + heading + "\n\n" + body.strip("\n") + "\n"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_model_card(weights_path: Path, text: str) -> None:
    """Rewrite ``MODEL_CARD.md`` of a registered model and its sha256 in ``manifest.json`` (the registry verifies
    every listed file at load)."""
    import hashlib

    card = weights_path / "MODEL_CARD.md"
    _atomic_write(card, text)
    manifest_path = weights_path / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data.setdefault("files", {})["MODEL_CARD.md"] = hashlib.sha256(card.read_bytes()).hexdigest()
    _atomic_write(manifest_path, json.dumps(data, indent=2) + "\n")


def fit_from_rows(rows: list[dict[str, Any]], cohort: str, max_false_positive_rate: float = 0.05,
                  current: Any = None) -> dict[str, Any]:
    """The post-processing block, threshold and fit summary from serving-path rows of a validation cohort;
    the parts not fitted here (the expansion model, the infratentorial rule) are kept from ``current``."""
    from app.model.postprocessing import Calibration, Postprocessing
    from app.model.postprocessing_fit import fit_detection, fit_platt
    from model_training.evaluation.binary_metrics import youden_threshold

    usable = [r for r in rows if not r.get("refusal")]
    volumes = [float(r["segmented_volume_ml"]) for r in usable]
    means = [float(r["mean_probability"]) for r in usable]
    has_ich = [int(bool(r["has_ich"])) for r in usable]
    rule = fit_detection(volumes, means, has_ich, max_false_positive_rate=max_false_positive_rate,
                         fitted_on=cohort)
    scored = [r for r in usable if r["has_ich"] and r.get("label") is not None
              and rule.detected(float(r["segmented_volume_ml"]), float(r["mean_probability"]))]
    raw = np.array([float(r["raw_probability"]) for r in scored])
    y = np.array([int(r["label"]) for r in scored])
    slope, intercept = fit_platt(raw, y)
    calibration = Calibration(method="platt", slope=slope, intercept=intercept,
                              fitted_on=f"{cohort}: {len(scored)} detected haematomas with a label "
                                        f"({int(y.sum())} expanding)")
    calibrated = calibration.apply_array(raw)
    youden = youden_threshold(y, calibrated)
    if current is not None and current.detection.min_dense_hu is not None:  # a guard set by hand, not fitted
        rule = rule.model_copy(update={"min_dense_hu": current.detection.min_dense_hu})
    post = (current or Postprocessing()).model_copy(update={"detection": rule, "calibration": calibration})
    from sklearn.metrics import roc_auc_score

    return {
        "postprocessing": post.model_dump(mode="json"),
        "threshold": float(youden.threshold),
        "threshold_source": f"Youden's J on the calibrated probabilities of {cohort} ({len(scored)} cases)",
        "calibration_fit": {
            "cohort": cohort, "n_cases": len(usable), "n_ich": int(sum(has_ich)),
            "n_ich_free": len(usable) - int(sum(has_ich)), "n_scored": len(scored), "n_expanding": int(y.sum()),
            "validation_auc": float(roc_auc_score(y, raw)) if len(set(y.tolist())) == 2 else None,
            "youden": {"j": youden.youden_j, "sensitivity": youden.sensitivity,
                       "specificity": youden.specificity},
        },
    }


def _card_body(fit: dict[str, Any]) -> str:
    det = fit["postprocessing"]["detection"]
    cal = fit["postprocessing"]["calibration"]
    f = fit["calibration_fit"]
    auc = "n/a" if f["validation_auc"] is None else f"{f['validation_auc']:.3f}"
    return "\n".join([
        f"Fitted through the serving path on `{f['cohort']}` ({f['n_cases']} cases: {f['n_ich']} with a "
        f"haematoma, {f['n_ich_free']} without), disjoint from the training and test cohorts.",
        "",
        "| Setting | Value |",
        "|---|---|",
        f"| Detection: segmented volume at least | {det['min_volume_ml']:g} mL |",
        f"| Detection: mean haematoma probability in the mask at least | {det['min_mean_probability']:g} |",
        f"| Detection fit | {det['fitted_on']} |",
        f"| Calibration | Platt: sigmoid({cal['slope']:.4f} x logit(p_raw) + {cal['intercept']:.4f}) |",
        f"| Calibration fit | {cal['fitted_on']} |",
        f"| Decision threshold (calibrated probability) | {fit['threshold']:.4f} ({fit['threshold_source']}) |",
        f"| Raw-probability AUC on the validation haematomas | {auc} |",
    ])


def calibrate_weights(weights_dir: str | Path, version: str | None, manifest: str | Path, out_dir: str | Path, *,
                      device: str = "cpu", max_false_positive_rate: float = 0.05,
                      progress: bool = False) -> dict[str, Any]:
    """Fit detection, calibration and threshold on ``manifest`` and write them into the weights (module
    docstring). Returns the fit (also written to ``out_dir/calibration_fit.json``)."""
    from app.weights.registry import load_weights
    from model_training.evaluation.serving_path import evaluate_weights, resolve_weights

    registry, version = resolve_weights(weights_dir, version)
    report = evaluate_weights(registry, version, manifest, out_dir, device=device, progress=progress)
    loaded = load_weights(registry, version)
    fit = fit_from_rows(report["cases"], Path(manifest).parent.name or Path(manifest).name,
                        max_false_positive_rate, loaded.postprocessing)
    manifest_path = loaded.path / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data.update({k: fit[k] for k in ("postprocessing", "threshold", "threshold_source", "calibration_fit")})
    _atomic_write(manifest_path, json.dumps(data, indent=2) + "\n")
    card = loaded.path / "MODEL_CARD.md"
    if card.exists():
        write_model_card(loaded.path, replace_card_section(card.read_text(), CARD_SECTION, _card_body(fit)))
    load_weights(registry, version)  # validates the new block and the checksums
    (Path(out_dir) / "calibration_fit.json").write_text(json.dumps(fit, indent=2) + "\n")
    return fit


def write_evaluation_to_card(weights_dir: str | Path, version: str | None, manifest: str | Path,
                             report_dir: str | Path) -> Path:
    """Put the serving-path report of ``report_dir`` (``serving_report.md``) into the weights' model card, in a
    section named after the evaluation cohort (replaced when the same cohort is evaluated again)."""
    from app.weights.registry import load_weights
    from model_training.evaluation.serving_path import resolve_weights

    registry, version = resolve_weights(weights_dir, version)
    loaded = load_weights(registry, version)
    cohort = Path(manifest).parent.name or Path(manifest).name
    body = (Path(report_dir) / "serving_report.md").read_text().split("\n", 1)[1]
    body = "\n".join("#" + line if line.startswith("## ") else line for line in body.split("\n"))
    heading = f"## Evaluation through the serving path: `{cohort}`"
    card = loaded.path / "MODEL_CARD.md"
    write_model_card(loaded.path, replace_card_section(card.read_text(), heading, body))
    load_weights(registry, version)
    return card
