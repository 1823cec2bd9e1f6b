"""Figures of the serving-path evaluation (PNG, Agg canvas, no pyplot state): the reliability diagram of the
expansion probability and the Bland-Altman plots of the haematoma volume (mL) against the ground truth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_reliability(bins: Sequence[Mapping[str, Any]], out_path: Path, *, title: str, dpi: int = 120) -> Path:
    """Observed expansion rate against the mean predicted probability per bin (``bins`` as
    :func:`model_training.evaluation.serving_report.reliability_bins` returns them; empty bins are skipped), with
    the number of cases per bin and the identity line."""
    fig = Figure(figsize=(5.0, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    filled = [b for b in bins if b["n"]]
    if filled:
        x = [b["mean_predicted"] for b in filled]
        y = [b["observed"] for b in filled]
        ax.plot(x, y, marker="o", color="tab:blue", label="observed (10 bins)")
        for xi, yi, b in zip(x, y, filled, strict=True):
            ax.annotate(str(b["n"]), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    else:
        ax.text(0.5, 0.5, "no cases", ha="center", va="center")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed expansion rate",
           title=title)
    ax.legend(loc="upper left", fontsize=8)
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=dpi, bbox_inches="tight")
    return out_path


def plot_bland_altman(truth_ml: np.ndarray, estimates: Mapping[str, np.ndarray],
                      limits: Mapping[str, Mapping[str, Any] | None], out_path: Path, *, dpi: int = 120) -> Path:
    """One Bland-Altman panel per estimate (``name -> volumes in mL``, aligned with ``truth_ml``): difference
    (estimate - truth) against the mean of the two, with the bias and the 95 % limits of agreement from
    ``limits[name]`` (``bias_ml``, ``loa_ml``)."""
    fig = Figure(figsize=(5.0 * max(1, len(estimates)), 4.5))
    FigureCanvasAgg(fig)
    for i, (name, est) in enumerate(estimates.items(), start=1):
        ax = fig.add_subplot(1, max(1, len(estimates)), i)
        est = np.asarray(est, dtype=np.float64)
        ax.scatter((est + truth_ml) / 2.0, est - truth_ml, s=12, color="tab:blue")
        lim = limits.get(name)
        if lim and lim.get("bias_ml") is not None:
            ax.axhline(lim["bias_ml"], color="tab:red", linewidth=1, label=f"bias {lim['bias_ml']:.2f} mL")
            for v in lim.get("loa_ml") or ():
                if v is not None:
                    ax.axhline(v, color="tab:red", linestyle="--", linewidth=1)
            ax.legend(loc="upper left", fontsize=8)
        ax.axhline(0.0, color="0.6", linewidth=0.8)
        ax.set(xlabel="mean of estimate and truth (mL)", ylabel="estimate - truth (mL)", title=name)
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=dpi, bbox_inches="tight")
    return out_path
