"""Fit the expansion model of registered weights (:class:`app.model.clot_features.ExpansionModel`) on a
training cohort, through the serving path.

The weights predict every case of the manifest as the service does; on the detected haematomas that have an
expansion label, a logistic regression (L2, ``C``; standardised inputs) of the label on the logit of the network's
expansion probability and the clot measurements (:data:`app.model.clot_features.FEATURE_NAMES`) is fitted and
written into the weights' ``manifest.json`` under ``postprocessing.expansion_model``. Use the training cohort (or
part of it) here, a separate validation cohort for ``calibrate`` afterwards, and a third for ``evaluate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from app.model.clot_features import FEATURE_NAMES, ExpansionModel

INPUTS: tuple[str, ...] = ("network_logit", *FEATURE_NAMES)


def design_matrix(rows: list[dict[str, Any]]) -> np.ndarray:
    """(n, len(INPUTS)) inputs of serving-path rows (``network_probability`` and ``clot_*`` columns)."""
    out = []
    for r in rows:
        p = min(max(float(r["network_probability"]), 1e-6), 1 - 1e-6)
        out.append([np.log(p / (1 - p)), *(float(r[f"clot_{k}"]) for k in FEATURE_NAMES)])
    return np.asarray(out, dtype=np.float64)


def fit_expansion_model(rows: list[dict[str, Any]], cohort: str, c: float = 1.0) -> ExpansionModel:
    """The logistic expansion model from serving-path rows (module docstring)."""
    from sklearn.linear_model import LogisticRegression

    usable = [r for r in rows if r.get("detected") and r.get("label") is not None
              and r.get("network_probability") is not None and f"clot_{FEATURE_NAMES[0]}" in r]
    y = np.array([int(r["label"]) for r in usable])
    if len(usable) < 20 or len(set(y.tolist())) < 2:
        raise ValueError(f"fitting the expansion model needs >= 20 detected, labelled haematomas of both classes "
                         f"(got {len(usable)})")
    x = design_matrix(usable)
    means, scales = x.mean(0), x.std(0)
    scales[scales < 1e-9] = 1.0
    lr = LogisticRegression(C=c, max_iter=5000).fit((x - means) / scales, y)
    return ExpansionModel(method="network+clot", feature_names=INPUTS, means=tuple(means.tolist()),
                          scales=tuple(scales.tolist()), coefficients=tuple(lr.coef_[0].tolist()),
                          intercept=float(lr.intercept_[0]),
                          fitted_on=f"{cohort}: {len(usable)} detected haematomas with a label ({int(y.sum())} "
                                    f"expanding), L2 C={c:g}")


def fit_weights_expansion_model(weights_dir: str | Path, version: str | None, manifest: str | Path,
                                out_dir: str | Path, *, device: str = "cpu", c: float = 1.0,
                                progress: bool = False) -> ExpansionModel:
    """Predict ``manifest`` with the weights, fit the model and write it into the weights' manifest."""
    from app.weights.registry import load_weights
    from model_training.calibration import _atomic_write
    from model_training.evaluation.serving_path import evaluate_weights, resolve_weights

    registry, version = resolve_weights(weights_dir, version)
    report = evaluate_weights(registry, version, manifest, out_dir, device=device, progress=progress)
    model = fit_expansion_model(report["cases"], Path(manifest).parent.name or Path(manifest).name, c)
    path = load_weights(registry, version).path / "manifest.json"
    data = json.loads(path.read_text())
    data.setdefault("postprocessing", {})["expansion_model"] = model.model_dump(mode="json")
    _atomic_write(path, json.dumps(data, indent=2) + "\n")
    load_weights(registry, version)
    (Path(out_dir) / "expansion_model.json").write_text(json.dumps(model.model_dump(mode="json"), indent=2) + "\n")
    return model
