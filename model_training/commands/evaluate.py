"""``python -m model_training evaluate --run RUN_DIR --manifest CSV --out REPORT_DIR``: predict the run's training
and test cases, fix the CNN threshold on the training predictions (Youden), and write Table 2 (Markdown + JSON),
the ROC plot and ``evaluation.json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model_training.commands._common import add_data_options, setup_logging


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="Table 2 evaluation of a trained run", description=__doc__)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ci-method", choices=("wilson_cc", "wilson", "exact"), default="wilson_cc",
                   help="95%% CI of sensitivity/specificity: wilson_cc (R prop.test, as the paper; default), "
                   "wilson, exact (Clopper-Pearson)")
    add_data_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_logging()
    from model_training.training.evaluation_run import evaluate_run

    res = evaluate_run(args.run, args.manifest, args.out, cache_dir=args.cache_dir, device=args.device,
                       preprocess_workers=args.preprocess_workers, inclusive=args.inclusive_label,
                       progress=not args.no_progress, ci_method=args.ci_method)
    print(json.dumps({"report": str(args.out), "threshold": res["threshold"], "test": {
        k: res["test"][k] for k in ("dice_mean", "dice_sd", "auc", "auc_ci95")}}))
    return 0
