"""``python -m model_training calibrate --weights weights/ --version X.Y.Z --manifest VAL.csv --out DIR``: fit
the detection rule, the Platt calibration and the decision threshold of registered weights on a validation cohort
through the serving path, and write them into the weights' manifest and model card."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model_training.commands._common import setup_logging
from model_training.marker_reader_fit import READER_KINDS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calibrate", help="fit detection, calibration and threshold on validation data",
                              description=__doc__)
    p.add_argument("--weights", type=Path, required=True, help="weights registry folder or one model folder")
    p.add_argument("--version", default=None, help="<name>-<version> or a unique version")
    p.add_argument("--manifest", type=Path, required=True, help="validation cohort (with haematoma-free heads)")
    p.add_argument("--out", type=Path, required=True, help="folder for the validation report and the fit")
    p.add_argument("--max-false-positive-rate", type=float, default=0.05,
                   help="largest share of haematoma-free validation heads the detection rule may detect")
    p.add_argument("--fit-expansion-model", action="store_true",
                   help="instead: fit the expansion model (network output + clot measurements) on this cohort, "
                   "which must be a training cohort; run calibrate on a validation cohort afterwards. Weights that "
                   "measure the NCCT markers also get their marker thresholds fitted here")
    p.add_argument("--l2-c", type=float, default=1.0,
                   help="inverse L2 strength of the expansion model's logistic regression (--fit-expansion-model)")
    p.add_argument("--marker-reader", action="store_true",
                   help="with --fit-expansion-model: fit the learned marker reader (each marker's probability from "
                   "all clot measurements) and the expansion model on its probabilities (volume and marker "
                   "coefficients >= 0)")
    p.add_argument("--reader-l2-c", type=float, default=0.3,
                   help="inverse L2 strength of the marker reader's logistic regressions (--marker-reader)")
    p.add_argument("--reader-kind", choices=READER_KINDS, default="logistic",
                   help="the marker reader's model per marker (--marker-reader)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_logging()
    from model_training.calibration import calibrate_weights

    if args.fit_expansion_model:
        from model_training.expansion_model import fit_weights_expansion_model

        model = fit_weights_expansion_model(args.weights, args.version, args.manifest, args.out,
                                            device=args.device, c=args.l2_c, marker_reader=args.marker_reader,
                                            reader_c=args.reader_l2_c, reader_kind=args.reader_kind,
                                            progress=not args.no_progress)
        print(json.dumps({"expansion_model": model.model_dump(mode="json")}))
        return 0
    try:
        fit = calibrate_weights(args.weights, args.version, args.manifest, args.out, device=args.device,
                                max_false_positive_rate=args.max_false_positive_rate,
                                progress=not args.no_progress)
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps({"postprocessing": fit["postprocessing"], "threshold": fit["threshold"],
                      "validation_auc": fit["calibration_fit"]["validation_auc"]}))
    return 0
