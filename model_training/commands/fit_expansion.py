"""``python -m model_training fit-expansion``: fit the expansion model of registered weights as gradient-boosted
trees over the clot measurements (:mod:`model_training.expansion_trees`), on the serving-path rows of earlier
runs, keeping the marker reader and the marker thresholds as they are.

The rows (``--report``: ``serving_report.json`` files of ``evaluate`` or ``calibrate``) must come from these
weights' network and mask refinement, as for ``fit-reader``. ``--target risk_image`` (the default) needs synthetic
cohorts (their generator risk); ``--target label`` fits real cohorts. Run ``calibrate`` on a separate validation
cohort afterwards: the calibration of the previous expansion model does not hold for the new one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model_training.expansion_trees import TARGETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit-expansion", help="fit the expansion model as boosted trees on saved serving-path rows",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True, help="weights registry folder or one model folder")
    p.add_argument("--version", default=None, help="<name>-<version> or a unique version")
    p.add_argument("--report", type=Path, nargs="+", required=True,
                   help="serving_report.json files of runs with these weights' network (pooled)")
    p.add_argument("--out", type=Path, required=True, help="folder for expansion_model.json")
    p.add_argument("--target", choices=TARGETS, default="risk_image",
                   help="risk_image: the synthetic generator's image-only risk; label: the expansion label")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.weights.registry import load_weights
    from model_training.calibration import _atomic_write
    from model_training.commands.fit_reader import pooled_rows
    from model_training.evaluation.serving_path import resolve_weights
    from model_training.expansion_trees import fit_expansion_trees

    registry, version = resolve_weights(args.weights, args.version)
    try:
        loaded = load_weights(registry, version)
        rows, cohort = pooled_rows(args.report, loaded, Path(registry))
        model, summary = fit_expansion_trees(rows, cohort, target=args.target, seed=args.seed)
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    path = loaded.path / "manifest.json"
    data = json.loads(path.read_text())
    data.setdefault("postprocessing", {})["expansion_model"] = model.model_dump(mode="json")
    _atomic_write(path, json.dumps(data, indent=2) + "\n")
    load_weights(registry, version)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "expansion_model.json").write_text(json.dumps(
        {"fit": summary, "expansion_model": model.model_dump(mode="json")}, indent=2) + "\n")
    print(json.dumps({"fit": summary, "fitted_on": model.fitted_on}))
    return 0
