"""Command-line entry point of the training package. Each sub-command lives in
``model_training/commands/<name>.py`` and exposes ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = ("synth", "train", "cv", "evaluate", "calibrate", "compare_auc", "register", "label_followup",
                   "fit_uncertainty", "fit_reader", "fit_expansion", "insert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_training", description="ICH expansion training package: synthetic cohorts, training, cross-validation, evaluation, AUC comparison, weight registration.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"model_training.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"model_training.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
