"""Five-fold stratified cross-validation on the training set (for choosing hyperparameters).

Each fold trains the preset on four fifths of the training cases and predicts the held-out fifth (every
training case is predicted exactly once, by the model that did not see it). Per fold: Dice mean ± SD and AUC
with DeLong 95 % CI; pooled over the out-of-fold predictions: the same. Written to ``cv_summary.json`` and
``cv_summary.md`` in the output folder, with the fold runs in ``fold_1`` ... ``fold_k``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from app.model.device import device_name
from model_training.cohort.cache import cache_path
from model_training.cohort.manifest import CaseRecord
from model_training.training.evaluation_run import load_run_model
from model_training.training.prediction import predict_cached
from model_training.training.presets import Preset
from model_training.training.trainer import TrainOptions, fit


def stratified_holdout(
    cases: Sequence[CaseRecord], fraction: float, seed: int
) -> tuple[list[CaseRecord], list[CaseRecord]]:
    """(train, validation) with ``fraction`` of the cases held out, stratified by label (heads without a
    haematoma, which have no label, form their own stratum); no split when 0."""
    cases = list(cases)
    labels = [-1 if c.label is None else c.label for c in cases]
    n_val = int(round(fraction * len(cases)))
    if fraction <= 0 or n_val < 2 or min(labels.count(0), labels.count(1)) < 2:
        return cases, []
    tr, va = train_test_split(cases, test_size=n_val, stratify=labels, random_state=seed)
    return list(tr), list(va)


def _summary(preds: list[dict[str, Any]]) -> dict[str, Any]:
    from model_training.evaluation.delong import auc_ci

    y = np.array([p["label"] for p in preds])
    s = np.array([p["probability"] for p in preds])
    d = np.array([p["dice"] for p in preds])
    out: dict[str, Any] = {"n": len(preds), "n_positive": int(y.sum()), "dice_mean": float(d.mean()),
                           "dice_sd": float(d.std(ddof=1)) if d.size > 1 else 0.0,
                           "auc": None, "auc_ci95": None}
    if len(set(y.tolist())) == 2:
        ci = auc_ci(y, s)
        out.update(auc=ci.auc, auc_ci95=[ci.lower, ci.upper])
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def render_cv_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Cross-validation ({summary['folds']} folds, preset `{summary['preset']}`)", "",
             "| Fold | n | Positive | Dice (mean ± SD) | AUC (95% CI, DeLong) |", "|---|---|---|---|---|"]
    for name, m in [(f"{i + 1}", f) for i, f in enumerate(summary["per_fold"])] + [("pooled", summary["pooled"])]:
        ci = m["auc_ci95"]
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"
        lines.append(f"| {name} | {m['n']} | {m['n_positive']} | {m['dice_mean']:.3f} ± {m['dice_sd']:.3f} | {auc} |")
    return "\n".join(lines) + "\n"


def cross_validate(
    cases: Sequence[CaseRecord],
    preset: Preset,
    out_dir: Path,
    options: TrainOptions,
    *,
    folds: int = 5,
    manifest_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``folds``-fold stratified CV (shuffled with ``options.seed``); returns the summary written to disk."""
    cases = list(cases)
    labels = np.array([c.label for c in cases])
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=options.seed)
    out_dir = Path(out_dir)
    per_fold: list[dict[str, Any]] = []
    pooled: list[dict[str, Any]] = []
    plans = preset.plans()
    for k, (tr_idx, va_idx) in enumerate(skf.split(np.zeros(len(cases)), labels)):
        tr = [cases[i] for i in tr_idx]
        va = [cases[i] for i in va_idx]
        res = fit(tr, preset, out_dir / f"fold_{k + 1}", options, val_cases=va, manifest_info=manifest_info)
        if not res.completed:
            raise RuntimeError(f"fold {k + 1} stopped before the last epoch")
        device = device_name(options.device)
        model, _, _ = load_run_model(res.run_dir, device)
        preds = predict_cached(model, [cache_path(options.cache_dir, c, plans) for c in va], [c.case_id for c in va],
                               [c.label for c in va], plans.mask_threshold, device)
        for p in preds:
            p["fold"] = k + 1
        per_fold.append({"fold": k + 1, **_summary(preds)})
        pooled.extend(preds)
    summary = {"preset": preset.name, "folds": folds, "seed": options.seed, "per_fold": per_fold,
               "pooled": _summary(pooled), "manifest": manifest_info or {},
               "out_of_fold": [{k: p[k] for k in ("case_id", "fold", "label", "probability", "dice")}
                               for p in pooled]}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cv_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "cv_summary.md").write_text(render_cv_markdown(summary))
    return summary
