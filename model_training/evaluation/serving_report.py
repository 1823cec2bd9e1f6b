"""The serving-path evaluation report: what a radiologist asks of the numbers a client receives.

Input: the per-case rows of :func:`model_training.evaluation.serving_path.predict_cases` (volumes in mL on the
analysis grid, probabilities 0-1). Sections of ``serving_report.json`` (and ``serving_report.md``):

* ``detection``: heads with a haematoma (non-empty ground-truth mask) against haematoma-free heads: sensitivity and
  specificity of the ``detected`` flag, and the rate of haematoma-free heads with a haematoma reported (a
  non-empty returned mask); refused cases count as not detected.
* ``segmentation``: Dice on the analysis grid (haematoma cases): median, mean, by intraventricular blood
  yes/no and by true volume < 5 mL / >= 5 mL.
* ``volume``: the returned planimetric volume and ABC/2 against the true volume: fraction within +/- 10 % and
  +/- 20 % (all haematoma cases and those >= 5 mL), Bland-Altman bias and 95 % limits of agreement (mL).
* ``ivh_in_mask``: the share of intraventricular blood included in the returned mask (the truth excludes it).
* ``expansion``: on detected haematoma cases with a label: AUC with DeLong 95 % CI of the reported (calibrated)
  probability, of the raw probability and of the manifest's ``risk_true`` / ``risk_image`` (the true and
  image-only ceilings of synthetic cohorts) where present; Brier score against the prevalence-only reference
  prevalence x (1 - prevalence); calibration slope and intercept (logistic regression of the label on
  logit(p)); a 10-bin reliability table and ``reliability.png``.
* ``ncct_markers``: the markers and the BAT score read from the image against the marker truth
  (:mod:`model_training.evaluation.marker_report`); null for weights that do not assess markers.

Also written: ``cases.csv`` (the rows; no identifier but ``case_id``) and ``bland_altman.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_training.evaluation.binary_metrics import CIMethod, proportion_ci
from model_training.evaluation.delong import auc_ci
from model_training.evaluation.marker_report import marker_section, render_marker_markdown
from model_training.evaluation.serialization import json_safe
from model_training.evaluation.serving_plots import plot_bland_altman, plot_reliability

SCHEMA = "ich-expansion/serving-evaluation/v1"
SMALL_VOLUME_ML = 5.0
RELIABILITY_BINS = 10
LOGIT_EPS = 1e-6
Row = Mapping[str, Any]


def _interval(k: int, n: int, method: CIMethod) -> dict[str, Any]:
    iv = proportion_ci(k, n, method)
    return {"estimate": iv.estimate, "lower": iv.lower, "upper": iv.upper, "k": k, "n": n}


def _auc(y: np.ndarray, score: np.ndarray) -> dict[str, Any] | None:
    keep = np.isfinite(score)
    y, score = y[keep], score[keep]
    if y.size < 2 or np.unique(y).size < 2:
        return None
    a = auc_ci(y.astype(int), score)
    return {"estimate": a.auc, "lower": a.lower, "upper": a.upper, "n": int(y.size), "n_positive": int(y.sum())}


def _values(rows: Sequence[Row], key: str) -> np.ndarray:
    return np.array([math.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=np.float64)


# --- sections -------------------------------------------------------------------------------------------------
def detection_section(rows: Sequence[Row], method: CIMethod = "wilson") -> dict[str, Any]:
    ich = [r for r in rows if r["has_ich"]]
    free = [r for r in rows if not r["has_ich"]]
    tp = sum(bool(r["detected"]) for r in ich)
    fp = sum(bool(r["detected"]) for r in free)
    reported = sum(bool(r["haematoma_reported"]) for r in free)
    false_ml = [r["volume_ml"] for r in free if r.get("volume_ml")]
    return {
        "n_ich": len(ich), "n_ich_free": len(free), "true_positive": tp, "false_negative": len(ich) - tp,
        "false_positive": fp, "true_negative": len(free) - fp,
        "sensitivity": _interval(tp, len(ich), method),
        "specificity": _interval(len(free) - fp, len(free), method),
        "ich_free_reported_rate": _interval(reported, len(free), method),
        "ich_free_reported_volume_ml_median": float(np.median(false_ml)) if false_ml else None,
        "n_refused": sum(r.get("refusal") is not None for r in rows),
        "n_infratentorial_flagged": sum(r.get("infratentorial") is True for r in rows),
    }


def _dice_stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return {"n": 0, "median": None, "mean": None, "sd": None, "q1": None, "q3": None}
    return {"n": int(v.size), "median": float(np.median(v)), "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "q1": float(np.percentile(v, 25)), "q3": float(np.percentile(v, 75))}


def segmentation_section(rows: Sequence[Row]) -> dict[str, Any]:
    seg = [r for r in rows if r.get("dice") is not None]
    return {
        "grid": "analysis grid (the ingested series' grid, as returned to clients)",
        **_dice_stats([r["dice"] for r in seg]),
        "by_ivh": {"ivh": _dice_stats([r["dice"] for r in seg if r.get("ivh") is True]),
                   "no_ivh": _dice_stats([r["dice"] for r in seg if r.get("ivh") is False])},
        "by_volume": {"lt_5ml": _dice_stats([r["dice"] for r in seg if r["true_volume_ml"] < SMALL_VOLUME_ML]),
                      "ge_5ml": _dice_stats([r["dice"] for r in seg if r["true_volume_ml"] >= SMALL_VOLUME_ML])},
    }


def bland_altman(estimate: np.ndarray, truth: np.ndarray) -> dict[str, Any] | None:
    """Bias (mean of estimate - truth, mL), SD of the differences and the 95 % limits of agreement."""
    if estimate.size < 2:
        return None
    d = estimate - truth
    bias, sd = float(d.mean()), float(d.std(ddof=1))
    return {"n": int(d.size), "bias_ml": bias, "sd_ml": sd, "loa_ml": [bias - 1.96 * sd, bias + 1.96 * sd]}


def _agreement(estimate: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    rel = np.abs(estimate - truth) / truth
    big = truth >= SMALL_VOLUME_ML

    def frac(ok: np.ndarray) -> float | None:
        return float(ok.mean()) if ok.size else None

    return {
        "within_10pct": {"all": frac(rel <= 0.10), "ge_5ml": frac(rel[big] <= 0.10)},
        "within_20pct": {"all": frac(rel <= 0.20), "ge_5ml": frac(rel[big] <= 0.20)},
        "bland_altman": bland_altman(estimate, truth),
    }


def volume_section(rows: Sequence[Row]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    ich = [r for r in rows if r["has_ich"] and r.get("refusal") is None]
    truth = _values(ich, "true_volume_ml")
    est = {"planimetric": _values(ich, "volume_ml"), "abc2": _values(ich, "abc2_volume_ml")}
    section = {"n": len(ich), "n_ge_5ml": int((truth >= SMALL_VOLUME_ML).sum()),
               **{k: _agreement(v, truth) for k, v in est.items()}}
    return section, {"truth": truth, **est}


def ivh_section(rows: Sequence[Row]) -> dict[str, Any]:
    f = _values([r for r in rows if r.get("ivh_in_mask_fraction") is not None], "ivh_in_mask_fraction")
    return {"n_cases_with_ivh": int(f.size), "mean": float(f.mean()) if f.size else None,
            "median": float(np.median(f)) if f.size else None, "max": float(f.max()) if f.size else None,
            "n_over_10pct": int((f > 0.10).sum())}


def logistic_calibration(y: np.ndarray, p: np.ndarray, max_iter: int = 100) -> dict[str, Any]:
    """Unpenalised logistic regression of ``y`` on logit(``p``) (Newton-Raphson): ``slope`` (1 = ideal spread)
    with its Wald 95 % interval ``slope_ci95`` and ``intercept`` (0 = no offset at p = 0.5). Not estimable (None)
    with one class or separated data."""
    if y.size < 3 or np.unique(y).size < 2:
        return {"slope": None, "intercept": None, "converged": False, "note": "needs both classes"}
    q = np.clip(p, LOGIT_EPS, 1.0 - LOGIT_EPS)
    x = np.column_stack([np.ones_like(q), np.log(q) - np.log1p(-q)])
    beta = np.zeros(2)
    for _ in range(max_iter):
        mu = np.exp(-np.logaddexp(0.0, -(x @ beta)))
        hess = x.T @ (x * (mu * (1.0 - mu))[:, None])
        try:
            step = np.linalg.solve(hess, x.T @ (y - mu))
        except np.linalg.LinAlgError:
            break
        beta = beta + step
        if not np.all(np.isfinite(beta)) or np.abs(beta).max() > 1e3:
            break
        if np.abs(step).max() < 1e-10:
            mu = np.exp(-np.logaddexp(0.0, -(x @ beta)))
            se = float(np.sqrt(np.linalg.inv(x.T @ (x * (mu * (1.0 - mu))[:, None]))[1, 1]))
            return {"slope": float(beta[1]), "intercept": float(beta[0]), "converged": True, "note": None,
                    "slope_ci95": [float(beta[1] - 1.959964 * se), float(beta[1] + 1.959964 * se)]}
    return {"slope": None, "intercept": None, "converged": False,
            "note": "not estimable (the labels are separated by the probability, or the fit diverged)"}


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = RELIABILITY_BINS) -> list[dict[str, Any]]:
    """Equal-width bins on [0, 1] (the last one closed): cases, mean predicted probability, observed rate."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = index == b
        n = int(sel.sum())
        out.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "n": n,
                    "mean_predicted": float(p[sel].mean()) if n else None,
                    "observed": float(y[sel].mean()) if n else None})
    return out


def expansion_section(rows: Sequence[Row], out_dir: Path) -> dict[str, Any]:
    sub = [r for r in rows if r["has_ich"] and r["detected"] and r.get("refusal") is None
           and r.get("label") is not None]
    y = np.array([int(r["label"]) for r in sub], dtype=np.int64)
    raw = _values(sub, "raw_probability")
    reported = _values(sub, "probability")
    p = np.where(np.isfinite(reported), reported, raw)
    n_pos = int(y.sum())
    prevalence = float(y.mean()) if y.size else None
    brier = float(np.mean((p - y) ** 2)) if y.size else None
    reference = None if prevalence is None else prevalence * (1.0 - prevalence)
    bins = reliability_bins(y.astype(float), p)
    plot_reliability(bins, out_dir / "reliability.png", title=f"Reliability, detected haematomas (n = {y.size})")
    labelled = [r for r in rows if r["has_ich"] and r.get("refusal") is None and r.get("label") is not None]
    return {
        "subset": "detected haematoma cases with an expansion label",
        "n": int(y.size), "n_positive": n_pos, "prevalence": prevalence,
        "n_reported_probability_missing": int((~np.isfinite(reported)).sum()),
        "auc": _auc(y, p),
        "auc_raw": _auc(y, raw),
        "auc_risk_true": _auc(y, _values(sub, "risk_true")),
        "auc_risk_image": _auc(y, _values(sub, "risk_image")),
        "auc_raw_all_labelled": _auc(np.array([int(r["label"]) for r in labelled]), _values(labelled, "raw_probability")),
        "brier": brier,
        "brier_reference": reference,
        "brier_skill": None if brier is None or not reference else 1.0 - brier / reference,
        "calibration": logistic_calibration(y.astype(float), p),
        "reliability": {"bins": bins, "plot": "reliability.png"},
    }


# --- rendering ------------------------------------------------------------------------------------------------
def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _ci(iv: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not iv or iv.get("estimate") is None:
        return "n/a"
    return f"{_f(iv['estimate'], digits)} ({_f(iv.get('lower'), digits)}-{_f(iv.get('upper'), digits)})"


def render_markdown(report: Mapping[str, Any]) -> str:
    d, s, v, i, e = (report[k] for k in ("detection", "segmentation", "volume", "ivh_in_mask", "expansion"))
    m = report.get("model", {})
    lines = [f"# Serving-path evaluation: {m.get('name', '?')} {m.get('version', '')}", "",
             f"{report['n']['cases']} cases ({d['n_ich']} with a haematoma, {d['n_ich_free']} haematoma-free, "
             f"{d['n_refused']} refused), predicted through `app.inference.Predictor` on the ingested series.", "",
             "## Detection", "", "| Metric | Value (95% CI) |", "|---|---|",
             f"| Sensitivity | {_ci(d['sensitivity'])} ({d['true_positive']}/{d['n_ich']}) |",
             f"| Specificity | {_ci(d['specificity'])} ({d['true_negative']}/{d['n_ich_free']}) |",
             f"| Haematoma-free heads with a haematoma reported | {_ci(d['ich_free_reported_rate'])} |",
             f"| Infratentorial flag raised | {d['n_infratentorial_flagged']} |", "",
             "## Segmentation (Dice, analysis grid)", "", "| Group | n | Median | Mean ± SD |", "|---|---|---|---|"]
    groups = [("All haematomas", s), ("With IVH", s["by_ivh"]["ivh"]), ("Without IVH", s["by_ivh"]["no_ivh"]),
              ("< 5 mL", s["by_volume"]["lt_5ml"]), ("≥ 5 mL", s["by_volume"]["ge_5ml"])]
    lines += [f"| {name} | {g['n']} | {_f(g['median'])} | {_f(g['mean'])} ± {_f(g['sd'])} |" for name, g in groups]
    lines += ["", "## Volume agreement (mL)", "",
              "| Estimate | within ±10% (all / ≥ 5 mL) | within ±20% (all / ≥ 5 mL) | Bias | 95% limits |",
              "|---|---|---|---|---|"]
    for key, name in (("planimetric", "Mask volume"), ("abc2", "ABC/2")):
        a = v[key]
        ba = a["bland_altman"] or {}
        loa = ba.get("loa_ml") or [None, None]
        lines.append(f"| {name} | {_f(a['within_10pct']['all'], 2)} / {_f(a['within_10pct']['ge_5ml'], 2)} | "
                     f"{_f(a['within_20pct']['all'], 2)} / {_f(a['within_20pct']['ge_5ml'], 2)} | "
                     f"{_f(ba.get('bias_ml'), 2)} | {_f(loa[0], 2)} to {_f(loa[1], 2)} |")
    lines += ["", f"Intraventricular blood included in the mask: mean {_f(i['mean'])}, median {_f(i['median'])}, "
              f"max {_f(i['max'])} over {i['n_cases_with_ivh']} cases with IVH ({i['n_over_10pct']} above 10 %).",
              "", f"## Expansion ({e['subset']}: n = {e['n']}, {e['n_positive']} expanded)", "",
              "| Score | AUC (95% CI, DeLong) |", "|---|---|"]
    for key, name in (("auc", "Reported probability"), ("auc_raw", "Raw probability"),
                      ("auc_risk_true", "True risk (ceiling)"), ("auc_risk_image", "Image-only risk (ceiling)"),
                      ("auc_raw_all_labelled", "Raw probability, all labelled haematomas")):
        lines.append(f"| {name} | {_ci(e[key])} |")
    c = e["calibration"]
    lines += ["", f"Brier score {_f(e['brier'])} (prevalence-only reference {_f(e['brier_reference'])}, skill "
              f"{_f(e['brier_skill'])}); calibration slope {_f(c['slope'])}"
              + (f" (95 % CI {_f(c['slope_ci95'][0])}-{_f(c['slope_ci95'][1])})" if c.get("slope_ci95") else "")
              + f", intercept {_f(c['intercept'])}"
              + (f" ({c['note']})" if c.get("note") else "") + ". Reliability diagram: `reliability.png`; "
              "Bland-Altman plots: `bland_altman.png`."]
    lines += render_marker_markdown(report.get("ncct_markers"), _f)
    return "\n".join(lines) + "\n"


def _write_cases_csv(rows: Sequence[Row], path: Path) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in fields})


def write_serving_report(rows: Sequence[Row], out_dir: str | Path, meta: Mapping[str, Any] | None = None,
                         *, ci_method: CIMethod = "wilson") -> dict[str, Any]:
    """Compute every section (module docstring) and write ``serving_report.json`` (with the per-case rows under
    ``cases``), ``serving_report.md``, ``cases.csv``, ``reliability.png`` and ``bland_altman.png`` into
    ``out_dir``. Returns the JSON-safe report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    volume, arrays = volume_section(rows)
    truth = arrays.pop("truth")
    names = {"planimetric": "Mask volume vs truth", "abc2": "ABC/2 vs truth"}
    plot_bland_altman(truth, {names[k]: arrays[k] for k in names},
                      {names[k]: volume[k]["bland_altman"] for k in names}, out / "bland_altman.png")
    report = json_safe({
        "schema": SCHEMA,
        **dict(meta or {}),
        "n": {"cases": len(rows), "ich": sum(bool(r["has_ich"]) for r in rows),
              "ich_free": sum(not r["has_ich"] for r in rows),
              "labelled": sum(r.get("label") is not None for r in rows)},
        "settings": {"ci_method": ci_method, "auc_ci": "DeLong", "small_volume_ml": SMALL_VOLUME_ML,
                     "reliability_bins": RELIABILITY_BINS},
        "detection": detection_section(rows, ci_method),
        "segmentation": segmentation_section(rows),
        "volume": {**volume, "plot": "bland_altman.png"},
        "ivh_in_mask": ivh_section(rows),
        "expansion": expansion_section(rows, out),
        "ncct_markers": marker_section(rows),
        "files": {"json": "serving_report.json", "markdown": "serving_report.md", "cases": "cases.csv",
                  "reliability": "reliability.png", "bland_altman": "bland_altman.png"},
        "cases": [dict(r) for r in rows],
    })
    (out / "serving_report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (out / "serving_report.md").write_text(render_markdown(report), encoding="utf-8")
    _write_cases_csv(rows, out / "cases.csv")
    return report
