"""``python -m model_training insert``: synthetic haematomas inserted into real head CTs without haemorrhage
(NIfTI + manifest), to evaluate on real anatomy with known truth (model_training/synthetic/insertion.py)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from model_training.synthetic.insertion_cohort import write_insertion_cohort

    started = time.perf_counter()
    manifest = write_insertion_cohort(args.head, args.n, args.out, args.seed)
    elapsed = time.perf_counter() - started
    summary = json.loads((Path(args.out) / "cohort_summary.json").read_text())
    vol = summary["baseline_volume_ml"]
    print(f"wrote {summary['n_inserted']} inserted haematomas in {summary['n_heads']} real head(s) "
          f"(+ {summary['n_free']} unmodified) to {manifest} in {elapsed:.1f} s")
    print(f"noise SD of the heads (HU): {', '.join(str(s) for s in summary['noise_sd_hu'])}")
    print(f"baseline volume: median {vol['median']:.1f} mL (range {vol['min']:.1f}-{vol['max']:.1f})")
    print("locations: " + ", ".join(f"{k} {v}" for k, v in summary["locations"].items()))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("insert", help="insert synthetic haematomas into real head CTs", description=__doc__)
    p.add_argument("--head", type=Path, action="append", required=True,
                   help="a real head CT without haemorrhage (DICOM folder/ZIP or HU NIfTI); repeat for several")
    p.add_argument("--n", type=int, required=True, help="number of inserted haematomas (round robin over the heads)")
    p.add_argument("--out", type=Path, required=True, help="output folder (manifest.csv, cases/)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (case k is the same whatever --n)")
    p.set_defaults(func=_run)
