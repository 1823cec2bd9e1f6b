"""``python -m model_training train --manifest CSV --preset NAME --out RUN_DIR [--resume]``.

Temporal split of the manifest at ``--cutoff``; optionally a stratified validation split of the training cases
(``--val-fraction``, default from the preset); trains under torchrun/DDP when launched by torchrun.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model_training.commands._common import add_data_options, add_split_options, setup_logging


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train the dual-output 3D U-Net on a manifest", description=__doc__)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--preset", default="paper", help="paper, cpu-default or smoke")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many epochs (resume later)")
    p.add_argument("--val-fraction", type=float, default=None, help="override the preset's validation fraction")
    p.add_argument("--loader-workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--deterministic", action="store_true", help="deterministic cuDNN (slower)")
    p.add_argument("--init-weights", type=Path, default=None,
                   help="start from these weights (a run's or a registered model.safetensors): fine-tuning")
    add_data_options(p)
    add_split_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_logging()
    from model_training.training.cv import stratified_holdout
    from model_training.training.runs import prepare_training
    from model_training.training.trainer import TrainOptions, fit

    preset, manifest, train, test, info = prepare_training(
        args.manifest, args.preset, cutoff=args.cutoff, inclusive=args.inclusive_label, epochs=args.epochs,
        val_fraction=args.val_fraction,
    )
    train, val = stratified_holdout(train, preset.schedule.val_fraction, args.seed)
    options = TrainOptions(
        seed=args.seed, device=args.device, cache_dir=args.cache_dir, loader_workers=args.loader_workers,
        preprocess_workers=args.preprocess_workers, resume=args.resume, stop_after_epoch=args.stop_after,
        progress=not args.no_progress, deterministic=args.deterministic, threads=args.threads,
        init_weights=args.init_weights,
    )
    result = fit(train, preset, args.out, options, val_cases=val, test_cases=test, manifest_info=info)
    print(json.dumps({"run": str(result.run_dir), "completed": result.completed, "epochs": len(result.history),
                      "seconds": round(result.seconds, 1), "parameters": result.parameters}))
    return 0
