"""``python -m model_training evaluate``: evaluate through the serving path (ingestion + ``app.inference.Predictor``
on the original grid, exactly what a client of the service receives).

* ``--run RUN_DIR --manifest CSV --out REPORT_DIR``: fix the CNN threshold on the run's development predictions
  (Youden), predict the run's test split through the serving path, and write Table 2 (Markdown + JSON), the ROC
  plot, the serving-path report and ``evaluation.json`` (consumed by ``register``).
* ``--weights weights/ [--version 0.1.0] --manifest CSV --out REPORT_DIR`` (or ``--weights`` naming one model
  folder): evaluate registered weights on every case of the manifest and write the serving-path report
  (``serving_report.json`` / ``.md``, ``cases.csv``, ``reliability.png``, ``bland_altman.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.model.device import PRECISION_MODES
from model_training.commands._common import add_data_options, setup_logging


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="serving-path evaluation of a run or of registered weights",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", type=Path, help="a finished training run (evaluates its test split)")
    what.add_argument("--weights", type=Path,
                      help="a weights registry folder (with --version; default: its default) or one model folder")
    p.add_argument("--version", default=None, help="with --weights: <name>-<version> or a unique version")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--image-column", choices=("image", "image_nifti"), default="image",
                   help="predict the manifest's image (default) or its NIfTI copy where the row has one")
    p.add_argument("--amp", choices=PRECISION_MODES, default="auto",
                   help="with --weights: mixed precision on CUDA, as the service's ICH_AMP (default auto)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="off",
                   help="with --weights: torch.compile the model as the service's ICH_COMPILE (default off)")
    p.add_argument("--model-card", action="store_true",
                   help="with --weights: write the report into the weights' MODEL_CARD.md (section per manifest)")
    p.add_argument("--ci-method", choices=("wilson_cc", "wilson", "exact"), default=None,
                   help="95%% CI of proportions: wilson_cc (R prop.test, as the paper; default with --run), "
                   "wilson (default with --weights), exact (Clopper-Pearson)")
    add_data_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_logging()
    if args.run is not None:
        from model_training.training.evaluation_run import evaluate_run

        res = evaluate_run(args.run, args.manifest, args.out, cache_dir=args.cache_dir, device=args.device,
                           preprocess_workers=args.preprocess_workers, inclusive=args.inclusive_label,
                           progress=not args.no_progress, ci_method=args.ci_method or "wilson_cc",
                           image_column=args.image_column)
        print(json.dumps({"report": str(args.out), "threshold": res["threshold"], "test": {
            k: res["test"][k] for k in ("dice_mean", "dice_sd", "auc", "auc_ci95")}}))
        return 0
    from model_training.evaluation.serving_path import evaluate_weights

    report = evaluate_weights(args.weights, args.version, args.manifest, args.out, device=args.device,
                              amp=args.amp, compile=args.compile, image_column=args.image_column,
                              inclusive=args.inclusive_label, ci_method=args.ci_method or "wilson",
                              progress=not args.no_progress)
    if args.model_card:
        from model_training.calibration import write_evaluation_to_card

        write_evaluation_to_card(args.weights, args.version, args.manifest, args.out)
    e, d, s = report["expansion"], report["detection"], report["segmentation"]
    print(json.dumps({"report": str(args.out), "model": report["model"], "n": report["n"],
                      "sensitivity": d["sensitivity"]["estimate"], "specificity": d["specificity"]["estimate"],
                      "dice_median": s["median"], "auc": (e["auc"] or {}).get("estimate")}))
    return 0
