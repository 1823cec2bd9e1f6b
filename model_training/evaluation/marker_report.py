"""The NCCT markers and the BAT score read from the image, against the cohort's marker truth.

For every marker of :data:`app.model.ncct_markers.NCCT_MARKERS`, on the detected haematomas whose manifest row has
the marker's truth (serving-path rows with ``marker_<name>`` and ``truth_<name>``): prevalence, Cohen's kappa,
sensitivity and specificity, beside the inter-rater kappa of the paper's two readers (Zhong et al. 2021, Methods).
The BAT score (Supplemental Table 3) from the image markers and the manifest's onset time is compared with the BAT
score from the true markers and the same onset time: exact agreement and Cohen's kappa of the score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from app.model.bat_score import bat_score
from app.model.ncct_markers import NCCT_MARKERS

#: inter-rater Cohen's kappa of the paper's two readers, per marker (Zhong et al. 2021, Methods)
PAPER_INTER_RATER_KAPPA: dict[str, float] = {
    "hypodensity": 0.886, "black_hole": 0.906, "swirl": 0.848, "blend": 0.951, "fluid_level": 0.892,
    "irregular_shape": 0.859, "heterogeneous_density": 0.932,
}

Row = Mapping[str, Any]


def _kappa(a: np.ndarray, b: np.ndarray) -> float | None:
    from sklearn.metrics import cohen_kappa_score

    if a.size == 0 or (len(set(a.tolist())) < 2 and len(set(b.tolist())) < 2):
        return None
    return float(cohen_kappa_score(a, b))


def _rate(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if hits.size else None


def marker_section(rows: Sequence[Row]) -> dict[str, Any] | None:
    """Per-marker agreement and the BAT comparison (module docstring); None when no row has both a marker decision
    and its truth."""
    usable = [r for r in rows if r.get("detected") and f"marker_{NCCT_MARKERS[0]}" in r
              and f"truth_{NCCT_MARKERS[0]}" in r]
    if not usable:
        return None
    markers: dict[str, Any] = {}
    for name in NCCT_MARKERS:
        y = np.array([int(r[f"truth_{name}"]) for r in usable])
        p = np.array([int(bool(r[f"marker_{name}"])) for r in usable])
        markers[name] = {"n": int(y.size), "prevalence": float(y.mean()), "kappa": _kappa(y, p),
                         "sensitivity": _rate(p[y == 1] == 1), "specificity": _rate(p[y == 0] == 0),
                         "paper_inter_rater_kappa": PAPER_INTER_RATER_KAPPA[name]}
    kappas = [m["kappa"] for m in markers.values() if m["kappa"] is not None]
    timed = [r for r in usable if r.get("onset_to_ct_hours") is not None]
    image_bat = np.array([bat_score({k: bool(r[f"marker_{k}"]) for k in NCCT_MARKERS},
                                    float(r["onset_to_ct_hours"])).score for r in timed])
    true_bat = np.array([bat_score({k: bool(r[f"truth_{k}"]) for k in NCCT_MARKERS},
                                   float(r["onset_to_ct_hours"])).score for r in timed])
    return {
        "subset": "detected haematomas with marker truth",
        "n": len(usable),
        "markers": markers,
        "mean_kappa": float(np.mean(kappas)) if kappas else None,
        "min_kappa": float(np.min(kappas)) if kappas else None,
        "bat": {"n": len(timed), "exact_agreement": _rate(image_bat == true_bat) if timed else None,
                "kappa": _kappa(true_bat, image_bat) if timed else None},
    }


def render_marker_markdown(section: Mapping[str, Any] | None, fmt) -> list[str]:
    """Markdown lines of :func:`marker_section` (``fmt``: the report's number formatter)."""
    if not section:
        return []
    lines = ["", f"## NCCT markers from the image ({section['subset']}: n = {section['n']})", "",
             "| Marker | Prevalence | Kappa | Sensitivity | Specificity | Paper inter-rater kappa |",
             "|---|---|---|---|---|---|"]
    for name, m in section["markers"].items():
        lines.append(f"| {name} | {fmt(m['prevalence'], 2)} | {fmt(m['kappa'], 2)} | {fmt(m['sensitivity'], 2)} | "
                     f"{fmt(m['specificity'], 2)} | {fmt(m['paper_inter_rater_kappa'], 3)} |")
    b = section["bat"]
    lines += ["", f"Mean kappa {fmt(section['mean_kappa'], 2)} (lowest {fmt(section['min_kappa'], 2)}). BAT score "
              f"from the image markers and the onset time vs from the true markers: exact agreement "
              f"{fmt(b['exact_agreement'], 2)}, kappa {fmt(b['kappa'], 2)} (n = {b['n']})."]
    return lines
