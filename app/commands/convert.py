"""``python -m app convert INPUT... --out FILE.nii.gz [--series UID]``: write the chosen CT series as a NIfTI
volume in HU (SimpleITK writes the LPS geometry as the NIfTI qform/sform in RAS, like dcm2niix). Single-slice
series are allowed. ``--dtype int16`` (default) rounds HU to integers, ``float32`` keeps interpolated values.
Exit status 0 on success, 2 when the input is refused (the refusal is printed as JSON on stderr)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from app.errors import IngestionError
from app.ingestion import load_series

EXIT_REFUSED = 2


def hu_image(image: sitk.Image, dtype: str) -> sitk.Image:
    """``image`` (float32 HU) cast to int16 (rounded, clipped to the int16 range) or kept float32."""
    if dtype == "float32":
        return image
    arr = np.clip(np.rint(sitk.GetArrayViewFromImage(image)), -32768, 32767).astype(np.int16)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not out.name.endswith((".nii", ".nii.gz")):
        print("--out must end in .nii or .nii.gz", file=sys.stderr)
        return EXIT_REFUSED
    try:
        series = load_series(args.inputs, series_instance_uid=args.series, min_slices=1)
    except IngestionError as exc:
        json.dump({"refusal": exc.as_dict()}, sys.stderr, indent=2, default=str)
        sys.stderr.write("\n")
        return EXIT_REFUSED
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(hu_image(series.image, args.dtype), str(out), useCompression=out.name.endswith(".gz"))
    summary = {
        "out": str(out),
        "series_instance_uid": series.series_instance_uid,
        "size_xyz": list(series.image.GetSize()),
        "spacing_xyz_mm": list(series.image.GetSpacing()),
        "resampled": series.resampled,
        "warnings": [w.as_dict() for w in series.warnings],
    }
    json.dump(summary, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="write the chosen CT series as an HU NIfTI", description=__doc__)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM files, folders or ZIP archives")
    parser.add_argument("--out", required=True, metavar="FILE.nii.gz", help="output NIfTI path")
    parser.add_argument("--series", metavar="UID", default=None, help="SeriesInstanceUID to convert")
    parser.add_argument("--dtype", choices=("int16", "float32"), default="int16", help="voxel type (default int16)")
    parser.set_defaults(func=run)
