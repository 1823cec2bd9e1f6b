"""``python -m model_training register RUN_DIR --version X.Y.Z [--name N] [--weights-dir weights] [--default]``:
write ``<weights-dir>/<name>-<version>/`` (safetensors, manifest.json, MODEL_CARD.md) from an evaluated run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("register", help="register a trained + evaluated run as versioned weights",
                              description=__doc__)
    p.add_argument("run", type=Path, help="run directory (with model.safetensors and evaluation.json)")
    p.add_argument("--version", required=True, help="semantic version X.Y.Z")
    p.add_argument("--name", default=None, help="model name (default: ich-<preset>)")
    p.add_argument("--weights-dir", type=Path, default=Path("weights"))
    p.add_argument("--evaluation", type=Path, default=None, help="evaluation.json (default: RUN/evaluation.json)")
    p.add_argument("--default", action="store_true", help="make this the default in registry.json")
    p.add_argument("--synthetic", action="store_true", help="the run was trained on synthetic phantoms (model card)")
    p.add_argument("--card-notes", type=Path, default=None,
                   help="Markdown file appended to the model card (e.g. the commands that made the cohort and run)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.weights.registry import WeightsError
    from model_training.registry import register_run

    try:
        out = register_run(args.run, args.version, name=args.name, weights_dir=args.weights_dir,
                           make_default=args.default, evaluation_path=args.evaluation,
                           synthetic=args.synthetic,
                           card_notes=args.card_notes.read_text() if args.card_notes else None)
    except (WeightsError, FileNotFoundError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps({"registered": str(out)}))
    return 0
