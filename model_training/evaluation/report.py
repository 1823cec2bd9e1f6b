"""The paper's Table 2 on a test set: NCCT markers, the volume and BAT logistic models, and the CNN.

For every row: sensitivity and specificity (Wilson or exact 95 % CI) at a threshold fixed before looking at
the test set (markers: present; models: Youden's J on the training rows), the standard likelihood ratios with
log-method CIs and the paper's prevalence-weighted ones, the AUC with its DeLong 95 % CI, and the two-sided
paired DeLong p value of the CNN against the row. Written as ``table2.md``, ``table2.json`` (full precision,
thresholds, counts, model coefficients, Dice) and ``roc.png`` (Supplemental Figure 2).

Input rows are dicts with ``label`` (0/1, 1 = expansion), ``cnn_probability`` (in [0, 1]),
``baseline_volume_ml`` (mL), ``onset_to_ct_hours`` (hours), any of the seven markers (0/1; absent or empty =
unknown), optionally ``case_id`` and ``dice``. Nothing here logs or writes patient identifiers beyond the
``case_id`` the caller supplies for per-case Dice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model_training.evaluation.binary_metrics import (
    CIMethod,
    Interval,
    binary_metrics,
    youden_threshold,
)
from model_training.evaluation.comparators import (
    MARKERS,
    UnivariateLogisticModel,
    bat_scores,
    column,
    markers_in,
    to_float,
)
from model_training.evaluation.delong import auc_ci, paired_delong
from model_training.evaluation.roc_plot import auc_label, plot_roc_curves
from model_training.evaluation.serialization import json_safe

ROW_LABELS: dict[str, str] = {
    "hypodensity": "Hypodensities",
    "black_hole": "Black hole sign",
    "swirl": "Swirl sign",
    "blend": "Blend sign",
    "fluid_level": "Fluid level",
    "irregular_shape": "Irregular shape",
    "heterogeneous_density": "Heterogeneous density",
    "volume_model": "Haematoma volume",
    "bat_model": "BAT score",
    "cnn": "CNN",
}
MD_COLUMNS = (
    "Sensitivity (95% CI)",
    "Specificity (95% CI)",
    "LR+ (95% CI)",
    "LR- (95% CI)",
    "LR+ weighted* (95% CI)",
    "LR- weighted* (95% CI)",
    "AUC (95% CI)",
    "P vs CNN†",
)
MARKER_THRESHOLD = 0.5  # a 0/1 marker is "positive" when present


def _interval_dict(iv: Interval) -> dict[str, float]:
    return {"estimate": iv.estimate, "lower": iv.lower, "upper": iv.upper}


def _nan_interval() -> dict[str, float]:
    return {"estimate": math.nan, "lower": math.nan, "upper": math.nan}


def _labels(rows: Sequence[Mapping[str, Any]], which: str) -> np.ndarray:
    y = column(rows, "label")
    bad = np.isfinite(y) & ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise ValueError(f"{which} labels must be 0 or 1 (found {sorted(set(y[bad].tolist()))})")
    return y


def _evaluate_row(
    key: str,
    y_test: np.ndarray,
    s_test: np.ndarray,
    cnn_test: np.ndarray,
    threshold: float,
    threshold_source: str,
    *,
    ci_method: CIMethod,
    alpha: float,
    extra_notes: Sequence[str] = (),
) -> dict[str, Any]:
    """All Table-2 statistics of one score on the test rows where it and the label are known."""
    notes = list(extra_notes)
    keep = np.isfinite(y_test) & np.isfinite(s_test)
    y, s = y_test[keep].astype(int), s_test[keep]
    n_missing = int((np.isfinite(y_test) & ~np.isfinite(s_test)).sum())
    if n_missing:
        notes.append(f"{n_missing} test case(s) without this score were left out")
    entry: dict[str, Any] = {
        "key": key,
        "label": ROW_LABELS.get(key, key),
        "n": int(keep.sum()),
        "n_cases": int((y == 1).sum()),
        "n_controls": int((y == 0).sum()),
        "threshold": threshold,
        "threshold_source": threshold_source,
    }
    if math.isfinite(threshold) and y.size:
        m = binary_metrics(y, s, threshold, ci_method=ci_method, alpha=alpha)
        notes.extend(m.notes)
        entry.update(
            counts={"tp": m.tp, "fp": m.fp, "tn": m.tn, "fn": m.fn},
            prevalence=m.prevalence,
            pretest_odds=m.pretest_odds,
            sensitivity=_interval_dict(m.sensitivity),
            specificity=_interval_dict(m.specificity),
            lr_positive=_interval_dict(m.lr_positive),
            lr_negative=_interval_dict(m.lr_negative),
            lr_positive_weighted=_interval_dict(m.lr_positive_weighted),
            lr_negative_weighted=_interval_dict(m.lr_negative_weighted),
        )
    else:
        if not math.isfinite(threshold):
            notes.append("no threshold: sensitivity, specificity and likelihood ratios not estimable")
        entry.update(
            counts=None,
            prevalence=math.nan,
            pretest_odds=math.nan,
            **{
                k: _nan_interval()
                for k in (
                    "sensitivity",
                    "specificity",
                    "lr_positive",
                    "lr_negative",
                    "lr_positive_weighted",
                    "lr_negative_weighted",
                )
            },
        )
    try:
        a = auc_ci(y, s, alpha=alpha)
        entry["auc"] = {"estimate": a.auc, "lower": a.lower, "upper": a.upper, "variance": a.variance}
        if np.unique(s).size == 1:
            notes.append("constant score: AUC 0.5 by construction")
    except ValueError as exc:
        entry["auc"] = {**_nan_interval(), "variance": math.nan}
        notes.append(f"AUC not estimable: {exc}")
    if key == "cnn":
        entry["vs_cnn"] = None
    else:
        both = np.isfinite(y_test) & np.isfinite(s_test) & np.isfinite(cnn_test)
        try:
            d = paired_delong(y_test[both].astype(int), cnn_test[both], s_test[both], alpha=alpha)
            entry["vs_cnn"] = {
                "n": int(both.sum()),
                "auc_cnn": d.auc1,
                "auc_row": d.auc2,
                "diff": d.diff,
                "diff_lower": d.ci_lower,
                "diff_upper": d.ci_upper,
                "z": d.z,
                "p": d.p,
            }
            if d.note:
                notes.append(d.note)
        except ValueError as exc:
            entry["vs_cnn"] = {"n": int(both.sum()), "diff": math.nan, "z": math.nan, "p": math.nan}
            notes.append(f"paired DeLong test not possible: {exc}")
    entry["notes"] = notes
    return entry


def _model_threshold(name: str, y_train: np.ndarray, s_train: np.ndarray) -> tuple[float, str, list[str]]:
    keep = np.isfinite(y_train) & np.isfinite(s_train)
    try:
        t = youden_threshold(y_train[keep].astype(int), s_train[keep])
    except ValueError as exc:
        return math.nan, "Youden on training rows", [f"{name}: threshold not estimable ({exc})"]
    notes = (
        [f"{t.n_tied} thresholds tied at Youden's J; the most sensitive was taken"] if t.n_tied > 1 else []
    )
    return t.threshold, f"Youden on training rows (J = {t.youden_j:.4f})", notes


def _fit_model(
    key: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None, list[str]]:
    """Fit the univariate logistic model; return (train probabilities, test probabilities, description, notes)."""
    keep = np.isfinite(y_train)
    try:
        model = UnivariateLogisticModel.fit(ROW_LABELS[key], x_train[keep], y_train[keep].astype(int))
    except ValueError as exc:
        nan_tr, nan_te = np.full(x_train.shape, np.nan), np.full(x_test.shape, np.nan)
        return nan_tr, nan_te, None, [f"model not fitted: {exc}"]
    return model.predict_proba(x_train), model.predict_proba(x_test), model.describe(), []


def _dice_summary(
    test_rows: Sequence[Mapping[str, Any]], dice: Sequence[float] | Mapping[str, float] | None
) -> dict[str, Any] | None:
    ids = [str(r.get("case_id", i)) for i, r in enumerate(test_rows)]
    if dice is None:
        values = column(test_rows, "dice")
    elif isinstance(dice, Mapping):
        values = np.array([to_float(dice.get(i)) for i in ids], dtype=np.float64)
    else:
        values = np.asarray([to_float(v) for v in dice], dtype=np.float64)
        if values.shape[0] != len(test_rows):
            raise ValueError(f"dice has {values.shape[0]} values for {len(test_rows)} test rows")
    finite = np.isfinite(values)
    if not finite.any():
        return None
    v = values[finite]
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan,
        "median": float(np.median(v)),
        "per_case": [{"case_id": ids[i], "dice": float(values[i])} for i in np.flatnonzero(finite)],
    }


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def format_interval(iv: Mapping[str, Any] | None, digits: int = 2) -> str:
    """``"0.91 (0.69 to 0.98)"`` as the paper prints; ``n/a`` for missing parts (JSON ``null`` or NaN)."""
    if not iv or iv.get("estimate") is None or not math.isfinite(iv["estimate"]):
        return "n/a"
    return (
        f"{_fmt(iv['estimate'], digits)} ({_fmt(iv.get('lower'), digits)} to {_fmt(iv.get('upper'), digits)})"
    )


def format_p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def render_markdown(table: Mapping[str, Any]) -> str:
    """Table 2 as Markdown from the (JSON-safe) report dict."""
    test = table["test_set"]
    lines = [
        "# Table 2: scores of the NCCT markers and models on the test set",
        "",
        f"Test set: {test['n']} cases, {test['n_cases']} with haematoma expansion "
        f"(prevalence {_fmt(test['prevalence'], 3)}); training set: {table['train_set']['n']} cases.",
        "",
        "| | " + " | ".join(MD_COLUMNS) + " |",
        "|---|" + "---|" * len(MD_COLUMNS),
    ]
    for e in table["rows"]:
        p = "N/A" if e["vs_cnn"] is None else format_p(e["vs_cnn"].get("p"))
        cells = [
            format_interval(e["sensitivity"]),
            format_interval(e["specificity"]),
            format_interval(e["lr_positive"]),
            format_interval(e["lr_negative"]),
            format_interval(e["lr_positive_weighted"]),
            format_interval(e["lr_negative_weighted"]),
            format_interval(e["auc"]),
            p,
        ]
        lines.append(f"| {e['label']} | " + " | ".join(cells) + " |")
    ci_name = {
        "wilson": "Wilson score",
        "wilson_cc": "continuity-corrected Wilson",
        "exact": "Clopper-Pearson exact",
    }[table["settings"]["ci_method"]]
    lines += [
        "",
        "*Weighted by prevalence: the likelihood ratio multiplied by the test set's pre-test odds "
        "prevalence / (1 - prevalence), as in Zhong et al. 2021, Table 2. "
        f"Sensitivity and specificity: {ci_name} 95% CIs; likelihood ratios: log method (Simel et al. 1991).",
        "",
        "†Two-sided paired DeLong test of the CNN's AUC against the row's AUC; AUC CIs are DeLong's.",
        "",
        "## Thresholds and counts",
        "",
        "| | Threshold | Source | TP | FP | TN | FN | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in table["rows"]:
        c = e["counts"] or {}
        lines.append(
            f"| {e['label']} | {_fmt(e['threshold'], 4)} | {e['threshold_source']} | "
            f"{c.get('tp', 'n/a')} | {c.get('fp', 'n/a')} | {c.get('tn', 'n/a')} | {c.get('fn', 'n/a')} | {e['n']} |"
        )
    dice = table.get("dice")
    lines += ["", "## Segmentation", ""]
    if dice:
        lines.append(
            f"Dice: {_fmt(dice['mean'], 3)} ± {_fmt(dice['sd'], 3)} (mean ± SD, n = {dice['n']}; "
            f"median {_fmt(dice['median'], 3)}). Per-case values are in table2.json."
        )
    else:
        lines.append("Dice: not available.")
    notes = [f"{e['label']}: {n}" for e in table["rows"] for n in e["notes"]] + list(table["notes"])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def build_table2(
    train_rows: list[dict],
    test_rows: list[dict],
    out_dir: Path,
    *,
    markers_present: Literal["auto"] | Sequence[str] = "auto",
    dice: Sequence[float] | Mapping[str, float] | None = None,
    cnn_threshold: float | None = None,
    ci_method: CIMethod = "wilson",
    alpha: float = 0.05,
) -> dict:
    """Compute Table 2 and write ``table2.md``, ``table2.json`` and ``roc.png`` into ``out_dir``.

    ``markers_present``: ``"auto"`` keeps every marker with a value in the test rows; or the marker names.
    ``dice``: per-test-row values (aligned with ``test_rows``) or ``case_id -> dice``; default: rows' ``dice``.
    ``cnn_threshold``: the CNN's decision threshold if already fixed (e.g. stored with the weights);
    default: Youden's J on the training rows' ``cnn_probability``.
    Returns the JSON-safe dict written to ``table2.json``. Degenerate inputs give ``None`` values and notes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y_train = _labels(train_rows, "training")
    y_test = _labels(test_rows, "test")
    notes: list[str] = []
    if (n_unlab := int((~np.isfinite(y_test)).sum())) > 0:
        notes.append(f"{n_unlab} test case(s) without a label were left out")
    known = y_test[np.isfinite(y_test)]
    if known.size and np.unique(known).size < 2:
        notes.append("the test set has one class only: AUCs, DeLong tests and some ratios are not estimable")

    if markers_present == "auto":
        markers = markers_in(test_rows)
    else:
        unknown = [m for m in markers_present if m not in MARKERS]
        if unknown:
            raise ValueError(f"unknown markers {unknown}; expected some of {list(MARKERS)}")
        markers = [m for m in MARKERS if m in markers_present]

    cnn_test = column(test_rows, "cnn_probability")
    cnn_train = column(train_rows, "cnn_probability")
    common = {"ci_method": ci_method, "alpha": alpha}
    rows: list[dict[str, Any]] = []
    for m in markers:
        s = column(test_rows, m)
        bad = np.isfinite(s) & ~np.isin(s, (0.0, 1.0))
        if bad.any():
            raise ValueError(f"marker {m} must be 0 or 1")
        rows.append(_evaluate_row(m, y_test, s, cnn_test, MARKER_THRESHOLD, "marker present", **common))

    models: dict[str, Any] = {}
    curves: dict[str, np.ndarray] = {}
    inputs = {
        "volume_model": (column(train_rows, "baseline_volume_ml"), column(test_rows, "baseline_volume_ml")),
        "bat_model": (bat_scores(train_rows), bat_scores(test_rows)),
    }
    for key, (x_train, x_test) in inputs.items():
        p_train, p_test, desc, fit_notes = _fit_model(key, x_train, y_train, x_test)
        models[key] = desc
        threshold, source, t_notes = _model_threshold(ROW_LABELS[key], y_train, p_train)
        rows.append(
            _evaluate_row(
                key, y_test, p_test, cnn_test, threshold, source, extra_notes=fit_notes + t_notes, **common
            )
        )
        curves[key] = p_test

    if cnn_threshold is not None:
        threshold, source, t_notes = float(cnn_threshold), "given (fixed before evaluation)", []
    else:
        threshold, source, t_notes = _model_threshold("CNN", y_train, cnn_train)
    rows.append(
        _evaluate_row("cnn", y_test, cnn_test, cnn_test, threshold, source, extra_notes=t_notes, **common)
    )
    curves["cnn"] = cnn_test

    def summary(y: np.ndarray) -> dict[str, Any]:
        yk = y[np.isfinite(y)]
        return {
            "n": int(yk.size),
            "n_cases": int((yk == 1).sum()),
            "n_controls": int((yk == 0).sum()),
            "prevalence": float(yk.mean()) if yk.size else math.nan,
        }

    table = json_safe(
        {
            "schema": "ich-expansion/table2/v1",
            "settings": {
                "ci_method": ci_method,
                "confidence_level": 1.0 - alpha,
                "auc_ci": "DeLong (normal approximation, clipped to [0, 1])",
                "lr_ci": "log method (Simel et al. 1991)",
                "lr_weighting": "multiplied by pre-test odds prevalence/(1-prevalence) of the test set",
                "positive_if": "score >= threshold",
            },
            "train_set": summary(y_train),
            "test_set": summary(y_test),
            "markers": markers,
            "models": models,
            "rows": rows,
            "dice": _dice_summary(test_rows, dice),
            "notes": notes,
        }
    )
    (out_dir / "table2.json").write_text(
        json.dumps(table, indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    (out_dir / "table2.md").write_text(render_markdown(table), encoding="utf-8")

    by_key = {e["key"]: e for e in table["rows"]}
    y_plot = np.where(np.isfinite(y_test), y_test, -1)
    plot_curves: dict[str, tuple[np.ndarray, str]] = {}
    for key in ("cnn", "volume_model", "bat_model"):
        a = by_key[key]["auc"]
        label = auc_label(
            ROW_LABELS[key] + (" model" if key != "cnn" else ""),
            *(math.nan if a[k] is None else a[k] for k in ("estimate", "lower", "upper")),
        )
        s = np.where(np.isfinite(y_test), curves[key], np.nan)
        plot_curves[key] = (s, label)
    plot_roc_curves(y_plot, plot_curves, out_dir / "roc.png", title="ROC curves of the test set")
    return table
