"""Fit the NCCT-marker thresholds and the expansion model of registered weights on a training cohort, through
the serving path.

The weights predict every case of the manifest as the service does. When the weights measure the NCCT markers
(``postprocessing.markers.enabled``) and the manifest has the marker truth, each marker's threshold on its
measurement (:data:`app.model.ncct_markers.MEASUREMENT_OF`) is the one of maximum Cohen's kappa on the detected
haematomas (candidates: the 1st-99th percentiles of the measurement). Then, on the detected haematomas that have
an expansion label, a logistic regression (L2, ``C``; standardised inputs) of the label on the logit of the
network's expansion probability, the log volume and the marker measurements (:data:`MARKER_INPUTS`; the clot
measurements :data:`CLOT_INPUTS` for weights without markers) is fitted. Both are written into the weights'
``manifest.json`` (``postprocessing.markers.thresholds``, ``postprocessing.expansion_model``). With
``--marker-reader`` the markers are read by the learned reader and the expansion model sits on its probabilities
instead (:mod:`model_training.marker_reader_fit`; ``postprocessing.marker_reader``). Use the training
cohort (or part of it) here, a separate validation cohort for ``calibrate`` afterwards, and a third for
``evaluate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from app.model.clot_features import FEATURE_NAMES, ExpansionModel
from app.model.ncct_markers import MEASUREMENT_OF, MEASUREMENT_UNITS, NCCT_MARKERS, MarkerRules

CLOT_INPUTS: tuple[str, ...] = ("network_logit", *FEATURE_NAMES)
MARKER_INPUTS: tuple[str, ...] = ("network_logit", "log_volume_ml", *MEASUREMENT_UNITS)
INPUTS = CLOT_INPUTS  # the inputs of weights without marker measurements


def design_matrix(rows: list[dict[str, Any]], inputs: tuple[str, ...] = CLOT_INPUTS) -> np.ndarray:
    """(n, len(inputs)) inputs of serving-path rows (``network_probability`` and ``clot_*`` columns)."""
    out = []
    for r in rows:
        p = min(max(float(r["network_probability"]), 1e-6), 1 - 1e-6)
        out.append([np.log(p / (1 - p)) if k == "network_logit" else float(r[f"clot_{k}"]) for k in inputs])
    return np.asarray(out, dtype=np.float64)


def fit_marker_thresholds(rows: list[dict[str, Any]], cohort: str, rules: MarkerRules) -> MarkerRules:
    """``rules`` with each marker's threshold of maximum Cohen's kappa on the detected haematomas of ``rows``
    (serving-path rows with ``clot_<measurement>`` and ``truth_<marker>``)."""
    from sklearn.metrics import cohen_kappa_score

    usable = [r for r in rows if r.get("detected") and all(f"truth_{k}" in r for k in NCCT_MARKERS)
              and all(f"clot_{m}" in r for m in MEASUREMENT_OF.values())]
    if len(usable) < 20:
        raise ValueError(f"fitting marker thresholds needs >= 20 detected haematomas with marker truth "
                         f"(got {len(usable)})")
    thresholds, kappas = {}, {}
    for name in NCCT_MARKERS:
        y = np.array([int(r[f"truth_{name}"]) for r in usable])
        x = np.array([float(r[f"clot_{MEASUREMENT_OF[name]}"]) for r in usable])
        candidates = np.unique(np.percentile(x, np.linspace(1, 99, 197)))
        scored = [(float(cohen_kappa_score(y, x >= t)) if len(set(y.tolist())) > 1 else 0.0, float(t))
                  for t in candidates]
        kappas[name], thresholds[name] = max(scored)
    summary = ", ".join(f"{k} {kappas[k]:.2f}" for k in NCCT_MARKERS)
    return rules.model_copy(update={"thresholds": thresholds, "fitted_on": (
        f"{cohort}: {len(usable)} detected haematomas with marker truth; maximum Cohen's kappa per marker "
        f"(training kappa: {summary})")})


def fit_expansion_model(rows: list[dict[str, Any]], cohort: str, c: float = 1.0,
                        inputs: tuple[str, ...] = CLOT_INPUTS) -> ExpansionModel:
    """The logistic expansion model from serving-path rows (module docstring)."""
    from sklearn.linear_model import LogisticRegression

    usable = [r for r in rows if r.get("detected") and r.get("label") is not None
              and r.get("network_probability") is not None
              and all(f"clot_{k}" in r for k in inputs if k != "network_logit")]
    y = np.array([int(r["label"]) for r in usable])
    if len(usable) < 20 or len(set(y.tolist())) < 2:
        raise ValueError(f"fitting the expansion model needs >= 20 detected, labelled haematomas of both classes "
                         f"(got {len(usable)})")
    x = design_matrix(usable, inputs)
    means, scales = x.mean(0), x.std(0)
    scales[scales < 1e-9] = 1.0
    lr = LogisticRegression(C=c, max_iter=5000).fit((x - means) / scales, y)
    return ExpansionModel(method="network+clot", feature_names=inputs, means=tuple(means.tolist()),
                          scales=tuple(scales.tolist()), coefficients=tuple(lr.coef_[0].tolist()),
                          intercept=float(lr.intercept_[0]),
                          fitted_on=f"{cohort}: {len(usable)} detected haematomas with a label ({int(y.sum())} "
                                    f"expanding), L2 C={c:g}")


def fit_weights_expansion_model(weights_dir: str | Path, version: str | None, manifest: str | Path,
                                out_dir: str | Path, *, device: str = "cpu", c: float = 1.0,
                                marker_reader: bool = False, reader_c: float = 0.3, reader_kind: str = "logistic",
                                progress: bool = False) -> ExpansionModel:
    """Predict ``manifest`` with the weights, fit the model and write it into the weights' manifest. With
    ``marker_reader`` (weights that measure the markers): the learned marker reader (``reader_kind``; L2
    ``reader_c`` for the logistic one) and the expansion model on its probabilities (L2 ``c``) of
    :mod:`model_training.marker_reader_fit` instead."""
    from model_training.evaluation.serving_path import evaluate_weights, resolve_weights

    registry, version = resolve_weights(weights_dir, version)
    report = evaluate_weights(registry, version, manifest, out_dir, device=device, progress=progress)
    cohort = Path(manifest).parent.name or Path(manifest).name
    return store_expansion_model(registry, version, report["cases"], cohort, out_dir, c=c,
                                 marker_reader=marker_reader, reader_c=reader_c, reader_kind=reader_kind)


def store_expansion_model(registry: Path, version: str | None, rows: list[dict[str, Any]], cohort: str,
                          out_dir: str | Path, *, c: float = 1.0, marker_reader: bool = False,
                          reader_c: float = 0.3, reader_kind: str = "logistic") -> ExpansionModel:
    """Fit the marker thresholds, the reader (with ``marker_reader``) and the expansion model on serving-path
    ``rows`` of these weights and write them into the weights' manifest (and ``out_dir/expansion_model.json``)."""
    from app.weights.registry import load_weights
    from model_training.calibration import _atomic_write

    loaded = load_weights(registry, version)
    markers = loaded.postprocessing.markers
    reader = None
    if marker_reader and not markers.enabled:
        raise ValueError("a marker reader needs weights that measure the NCCT markers (postprocessing.markers)")
    if markers.enabled:
        markers = fit_marker_thresholds(rows, cohort, markers)
    if marker_reader:
        from model_training.marker_reader_fit import fit_marker_expansion_model, fit_marker_reader

        reader, crossfit = fit_marker_reader(rows, cohort, c=reader_c, kind=reader_kind)
        model = fit_marker_expansion_model(rows, crossfit, cohort, c=c)
    elif markers.enabled:
        model = fit_expansion_model(rows, cohort, c, MARKER_INPUTS)
    else:
        model = fit_expansion_model(rows, cohort, c)
    path = loaded.path / "manifest.json"
    data = json.loads(path.read_text())
    data.setdefault("postprocessing", {})["expansion_model"] = model.model_dump(mode="json")
    if markers.enabled:
        data["postprocessing"]["markers"] = markers.model_dump(mode="json")
    if reader is not None:
        data["postprocessing"]["marker_reader"] = reader.model_dump(mode="json")
    else:
        data["postprocessing"].pop("marker_reader", None)
    _atomic_write(path, json.dumps(data, indent=2) + "\n")
    load_weights(registry, version)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "expansion_model.json").write_text(json.dumps(
        {"expansion_model": model.model_dump(mode="json"), "markers": markers.model_dump(mode="json"),
         "marker_reader": None if reader is None else reader.model_dump(mode="json")},
        indent=2) + "\n")
    return model
