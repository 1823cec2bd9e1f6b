"""``python -m model_training cv --manifest CSV --preset NAME --out DIR [--folds 5]``: stratified k-fold CV on the
training set (admissions before the cut-off); per-fold and pooled Dice and AUC (DeLong CI)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model_training.commands._common import add_data_options, add_split_options, setup_logging


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cv", help="five-fold stratified cross-validation", description=__doc__)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--preset", default="paper")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    p.add_argument("--loader-workers", type=int, default=0)
    add_data_options(p)
    add_split_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_logging()
    from model_training.training.cv import cross_validate
    from model_training.training.runs import prepare_training
    from model_training.training.trainer import TrainOptions

    preset, _, train, _, info = prepare_training(args.manifest, args.preset, cutoff=args.cutoff,
                                                 inclusive=args.inclusive_label, epochs=args.epochs, val_fraction=0.0)
    options = TrainOptions(seed=args.seed, device=args.device, cache_dir=args.cache_dir,
                           loader_workers=args.loader_workers, preprocess_workers=args.preprocess_workers,
                           progress=not args.no_progress)
    summary = cross_validate(train, preset, args.out, options, folds=args.folds, manifest_info=info)
    print(json.dumps({"out": str(args.out), "pooled": summary["pooled"]}))
    return 0
