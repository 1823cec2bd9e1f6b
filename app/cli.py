"""Command-line entry point of the service package. Each sub-command lives in ``app/commands/<name>.py`` and
exposes ``register(subparsers)``, which adds its parser and sets ``func`` (returning the exit code)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = ("inspect", "convert", "model_info", "predict", "serve", "compare", "predict_batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="ICH expansion service: inspect/convert DICOM, model-info, predict without a server, serve the HTTP API.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"app.commands.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not present in this build
            if exc.name == f"app.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
