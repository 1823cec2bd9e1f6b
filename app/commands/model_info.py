"""``python -m app model-info [--matrix D H W] [--weights-dir DIR [--version X.Y.Z]]``: print the model's
parameter count (total and per part, next to the paper's stated number) and the tensor shape at every stage,
as JSON. Without ``--weights-dir`` the default architecture (``ModelConfig()``) and the paper's matrix
(``Plans().matrix_zyx`` = 32 x 256 x 256) are described; with it, the config and plans of the registered
weights (the registry's default version, or ``--version``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.model.config import ModelConfig
from app.model.info import model_info
from app.preprocessing.plans import Plans

EXIT_OK = 0
EXIT_ERROR = 2


def _from_weights(weights_dir: Path, version: str | None) -> tuple[ModelConfig, Plans, dict[str, str]]:
    from app.weights.registry import load_weights  # optional component; imported only when asked for

    loaded = load_weights(weights_dir, version=version, device="cpu")
    source = {"weights_dir": str(weights_dir), "name": loaded.name, "version": loaded.version}
    return loaded.config, loaded.plans, source


def run(args: argparse.Namespace) -> int:
    config, plans, source = ModelConfig(), Plans(), {"defaults": "ModelConfig() and Plans()"}
    if args.weights_dir is not None:
        try:
            config, plans, source = _from_weights(Path(args.weights_dir), args.version)
        except ImportError as exc:
            print(f"model-info: weights support is not available in this build ({exc})", file=sys.stderr)
            return EXIT_ERROR
        except Exception as exc:  # WeightsError and I/O errors carry a readable message
            code = getattr(exc, "code", type(exc).__name__)
            print(f"model-info: cannot read weights from {args.weights_dir}: [{code}] {exc}", file=sys.stderr)
            return EXIT_ERROR
    matrix = tuple(args.matrix) if args.matrix else plans.matrix_zyx
    try:
        report = model_info(config, matrix)
    except ValueError as exc:
        print(f"model-info: {exc}", file=sys.stderr)
        return EXIT_ERROR
    report["source"] = source
    report["plans"] = {"name": plans.name, "version": plans.version, "matrix_zyx": list(plans.matrix_zyx)}
    print(json.dumps(report, indent=2))
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model-info",
        help="print the model's parameter count and the tensor shape at every stage (JSON)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--matrix",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        help="input matrix (slices, rows, columns); default: the plans' matrix_zyx",
    )
    parser.add_argument(
        "--weights-dir",
        metavar="DIR",
        help="read the model config and plans of the registered weights in DIR (weights/)",
    )
    parser.add_argument("--version", help="weights version to describe (default: the registry's default)")
    parser.set_defaults(func=run)
