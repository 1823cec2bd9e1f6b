"""``python -m model_training synth``: write a synthetic head-CT cohort (DICOM and/or NIfTI + manifest)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from model_training.synthetic.cohort import write_cohort

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    started = time.perf_counter()
    manifest = write_cohort(
        args.n, args.out, args.seed, formats=formats, workers=args.workers, transfer_syntax=args.transfer_syntax,
        ich_free_fraction=args.ich_free_fraction, followup=args.followup,
        noise_sd_range_hu=None if args.noise_sd_hu is None else tuple(args.noise_sd_hu),
    )
    elapsed = time.perf_counter() - started
    summary = json.loads((Path(args.out) / "cohort_summary.json").read_text())
    markers = ", ".join(f"{k} {v['prevalence']:.0%}" for k, v in summary["markers"].items())
    vol = summary["baseline_volume_ml"]
    print(f"wrote {summary['n_cases']} cases to {manifest} in {elapsed:.1f} s ({elapsed / args.n:.2f} s/case)")
    exp = summary["expansion"]
    prevalence = "n/a" if exp["prevalence"] is None else f"{exp['prevalence']:.0%}"
    print(f"heads without haemorrhage: {summary['n_ich_free']}/{summary['n_cases']}")
    print(f"expansion: {exp['n']}/{exp['n_labelled']} haematomas ({prevalence})")
    print(f"baseline volume: median {vol['median']:.1f} mL (range {vol['min']:.1f}-{vol['max']:.1f})")
    print(f"markers: {markers}")
    if args.followup:
        print(f"follow-up scans (20-24 h, same heads moved): {exp['n_labelled']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth", help="write a synthetic head-CT cohort", description=__doc__)
    p.add_argument("--n", type=int, required=True, help="number of cases")
    p.add_argument("--out", type=Path, required=True, help="output folder (manifest.csv, cases/)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (case k is the same whatever --n)")
    p.add_argument("--formats", default="dicom,nifti", help="comma-separated: dicom, nifti (default: both)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--ich-free-fraction", type=float, default=0.25,
                   help="expected share of heads without parenchymal haemorrhage (default 0.25)")
    p.add_argument("--followup", action="store_true",
                   help="also write each haematoma's 20-24 h follow-up scan (same head, new position, the haematoma "
                   "at followup_volume_ml): manifest columns followup_image and followup_mask")
    p.add_argument("--noise-sd-hu", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="draw each scan's CT noise SD uniformly from LOW-HIGH HU instead of the default 4-5 HU "
                   "(real scans span about 2-9 HU)")
    p.add_argument(
        "--transfer-syntax",
        default=None,
        help="DICOM transfer syntax UID, e.g. 1.2.840.10008.1.2.4.90 (JPEG 2000 lossless) or 1.2.840.10008.1.2.5 (RLE)",
    )
    p.set_defaults(func=_run)
