"""``python -m app inspect INPUT... [--series UID]``: report the series found, the chosen one, the checks, the
warnings and the refusal as JSON on stdout. Exit status 0 when a series is usable, 2 when it is not."""

from __future__ import annotations

import argparse
import json
import sys

from app.ingestion import inspect_inputs

EXIT_USABLE = 0
EXIT_REFUSED = 2


def run(args: argparse.Namespace) -> int:
    report = inspect_inputs(args.inputs, series_instance_uid=args.series, min_slices=args.min_slices)
    json.dump(report, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return EXIT_USABLE if report["usable"] else EXIT_REFUSED


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect", help="check DICOM input and report the series found (JSON)", description=__doc__
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM files, folders or ZIP archives")
    parser.add_argument("--series", metavar="UID", default=None, help="SeriesInstanceUID to analyse")
    parser.add_argument("--min-slices", type=int, default=3, help="fewest slices accepted (default 3)")
    parser.set_defaults(func=run)
