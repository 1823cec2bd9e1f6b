"""ROC curves of several scores on one test set, like the paper's Supplemental Figure 2 (PNG, Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve


def plot_roc_curves(
    y: np.ndarray,
    curves: Mapping[str, tuple[np.ndarray, str]],
    out_path: Path,
    *,
    title: str = "ROC curves, test set",
    dpi: int = 150,
) -> Path:
    """Write a PNG with one ROC curve per entry of ``curves``: ``name -> (score, legend label)``.

    Scores are "higher = case"; a score whose values are not all finite is drawn on its finite rows. A curve
    that cannot be drawn (one class only, or no finite value) is listed in the legend as "not estimable".
    The x axis is 1 - specificity and the y axis sensitivity, both in [0, 1]. Uses the object-oriented
    matplotlib API with the Agg canvas, so no display and no global pyplot state are involved.
    """
    y = np.asarray(y)
    fig = Figure(figsize=(5.5, 5.5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="Chance")
    for name, (score, label) in curves.items():
        s = np.asarray(score, dtype=np.float64)
        keep = np.isfinite(s)
        yk = y[keep]
        if keep.sum() == 0 or len(np.unique(yk)) < 2:
            ax.plot([], [], label=f"{label or name} (not estimable)")
            continue
        fpr, tpr, _ = roc_curve(yk, s[keep])
        ax.plot(fpr, tpr, linewidth=1.8, drawstyle="default", label=label or name)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 - Specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, frameon=True)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png")
    return out_path


def auc_label(name: str, auc: float, lower: float, upper: float) -> str:
    """Legend text ``"CNN (AUC 0.80, 95% CI 0.70-0.90)"``; NaN AUCs read "AUC n/a"."""
    if not math.isfinite(auc):
        return f"{name} (AUC n/a)"
    return f"{name} (AUC {auc:.2f}, 95% CI {lower:.2f}-{upper:.2f})"
