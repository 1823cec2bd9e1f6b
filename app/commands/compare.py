"""``python -m app compare BASELINE FOLLOWUP``: haematoma growth between a baseline and a follow-up CT.

Each study is a DICOM series (a file, folder or ZIP) or a NIfTI volume; both are predicted in-process through the
same ingestion and predictor as the service, and the comparison document of ``POST /v1/comparisons`` is printed on
stdout (optionally also written to ``--out``). Exit codes: 0 success, 2 a study or the comparison refused (the
refusal JSON on stderr: different patients, follow-up not later, no identity or date), 3 weights not loadable.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="haematoma growth and expansion between a baseline and a follow-up CT",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("baseline", type=Path, help="baseline study: DICOM file, folder or ZIP, or a NIfTI volume")
    p.add_argument("followup", type=Path, help="follow-up study (same forms)")
    p.add_argument("--inclusive", action="store_true", help="expansion by >= (supplement) instead of > (main text)")
    p.add_argument("--out", type=Path, default=None, help="also write the document to this JSON file")
    p.add_argument("--weights-dir", type=Path, default=Path("weights"))
    p.add_argument("--weights-version", default=None, help="default: the registry's default version")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--tta-passes", type=int, default=None,
                   help="test-time augmentation passes per study (default: the predictor's device default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.commands.weights_loading import WEIGHTS_EXIT_CODE, load_predictor
    from app.comparison import ExpansionRule, compare, subject_of
    from app.errors import ComparisonError, IngestionError
    from app.ingestion import load_series

    predictor = load_predictor(args.weights_dir, args.weights_version, args.device, tta_passes=args.tta_passes)
    if predictor is None:
        return WEIGHTS_EXIT_CODE
    subjects = []
    try:
        for path in (args.baseline, args.followup):
            series = load_series([str(path)])
            subjects.append(subject_of(uuid.uuid4().hex, series, predictor.predict(series)))
        document = compare(subjects[0], subjects[1], ExpansionRule(inclusive=args.inclusive))
    except (IngestionError, ComparisonError) as exc:
        print(json.dumps(exc.as_dict()), file=sys.stderr)
        return 2
    text = document.model_dump_json(indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0
