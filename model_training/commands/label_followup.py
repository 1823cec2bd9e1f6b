"""``python -m model_training label-followup MANIFEST --out OUT``: fill a cohort's expansion labels from its
follow-up scans, the way researchers do by hand: each row's baseline ``image`` and ``followup_image`` are
predicted through the serving path (:func:`app.ingestion.load_series` and :class:`app.inference.Predictor`) and
compared by the service's rule (:func:`app.comparison.compare`: > 6 mL or > 33 %, ``--inclusive`` for >=).

The output manifest has every input column (paths rewritten relative to OUT's folder) plus:

* ``label``: kept where the input has one, filled from the scans where it is empty (``--overwrite``: always
  from the scans where they give one);
* ``label_source``: where ``label`` came from: ``manifest`` (the input's label), ``followup_scan`` (the two
  predicted volumes), or, when the scans gave no label, ``none`` with the reason: ``no_followup_image``,
  ``no_baseline_haematoma`` (nothing detected on the baseline) or the refusal code of the study or comparison
  (``different_patients``, ``followup_not_later``, an ingestion code, ...);
* ``followup_label``, ``predicted_baseline_volume_ml``, ``predicted_followup_volume_ml``: what the scans gave.

Each row is one patient by construction, so studies without identity or dates (NIfTI) are accepted; DICOM
studies whose identities or order contradict each other are refused. When the input has labels, the agreement
of the scan-derived labels with them, and the median |growth error| against the manifest volumes
(``followup_volume_ml - baseline_volume_ml``), are printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import uuid
from pathlib import Path
from typing import Any

PATH_COLUMNS = ("image", "mask", "followup_mask", "followup_image", "image_nifti", "structure_labels")
ADDED_COLUMNS = ("label_source", "followup_label", "predicted_baseline_volume_ml", "predicted_followup_volume_ml")


def _rebase(value: str, src: Path, dst: Path) -> str:
    if not value:
        return value
    path = Path(value) if Path(value).is_absolute() else (src / value)
    return Path(os.path.relpath(path.resolve(), dst.resolve())).as_posix()


def label_row(row: dict[str, str], base: Path, predictor: Any, rule: Any) -> dict[str, Any]:
    """The scan-derived fields of one manifest row (``label_source`` reason, label, predicted volumes)."""
    from app.comparison import compare, subject_of
    from app.errors import ComparisonError, IngestionError
    from app.ingestion import load_series

    if not row.get("followup_image"):
        return {"reason": "no_followup_image"}
    subjects = []
    try:
        for column in ("image", "followup_image"):
            path = Path(row[column]) if Path(row[column]).is_absolute() else base / row[column]
            series = load_series([str(path)])
            subjects.append(subject_of(uuid.uuid4().hex, series, predictor.predict(series)))
        doc = compare(subjects[0], subjects[1], rule, paired_by_caller=True)
    except (IngestionError, ComparisonError) as exc:
        return {"reason": str(exc.code)}
    out: dict[str, Any] = {"baseline_ml": doc.baseline.volume_ml, "followup_ml": doc.followup.volume_ml}
    if doc.expansion.value is None:
        out["reason"] = doc.expansion.reason
    else:
        out["label"] = int(doc.expansion.value)
    return out


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    paired = [r for r in rows if r.get("_truth") not in (None, "") and r.get("_followup_row")]
    agree = [int(r["_truth"]) == int(r["followup_label"]) for r in paired if r["followup_label"] != ""]
    errors = []
    for r in paired:
        if r["predicted_followup_volume_ml"] == "" or not r.get("followup_volume_ml") \
                or not r.get("baseline_volume_ml"):
            continue
        true_growth = float(r["followup_volume_ml"]) - float(r["baseline_volume_ml"])
        got = float(r["predicted_followup_volume_ml"]) - float(r["predicted_baseline_volume_ml"])
        errors.append(abs(got - true_growth))
    return {
        "rows_with_followup": len(paired),
        "labelled_from_scans": len(agree),
        "agreement_of_labelled": round(float(np.mean(agree)), 4) if agree else None,
        "agreement_of_all": round(sum(agree) / len(paired), 4) if paired else None,
        "median_abs_growth_error_ml": round(float(np.median(errors)), 3) if errors else None,
        "n_growth_errors": len(errors),
    }


def _run(args: argparse.Namespace) -> int:
    from app.comparison import ExpansionRule
    from app.inference import Predictor

    src = args.manifest.resolve().parent
    with args.manifest.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        rows: list[dict[str, Any]] = [dict(r) for r in reader]
    for col in ("label", "followup_image", *ADDED_COLUMNS):
        if col not in columns:
            columns.append(col)
    predictor = Predictor.from_registry(args.weights_dir, args.version, args.device, compile=args.compile,
                                        tta_passes=0)
    rule = ExpansionRule(inclusive=args.inclusive)
    out_dir = args.out.resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows, start=1):
        row["_truth"] = row.get("label", "")
        row["_followup_row"] = bool(row.get("followup_image"))
        got = label_row(row, src, predictor, rule)
        row["followup_label"] = got.get("label", "")
        row["predicted_baseline_volume_ml"] = "" if "baseline_ml" not in got else f"{got['baseline_ml']:.3f}"
        row["predicted_followup_volume_ml"] = "" if "followup_ml" not in got else f"{got['followup_ml']:.3f}"
        has_label = row.get("label", "") != ""
        if "label" in got and (args.overwrite or not has_label):
            row["label"], row["label_source"] = got["label"], "followup_scan"
        elif has_label:
            row["label_source"] = "manifest"
        else:
            row["label_source"] = f"none:{got.get('reason', 'unknown')}"
        for col in PATH_COLUMNS:
            if row.get(col):
                row[col] = _rebase(row[col], src, out_dir)
        print(f"[{i}/{len(rows)}] {row.get('case_id', '')}: {row['label_source']}", flush=True)
    with args.out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = _summary(rows)
    print(json.dumps({"out": str(args.out), **summary}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("label-followup", help="fill expansion labels from the follow-up scans",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", type=Path, help="cohort manifest with followup_image")
    p.add_argument("--out", type=Path, required=True, help="output manifest (CSV)")
    p.add_argument("--overwrite", action="store_true", help="replace existing labels by the scan-derived ones")
    p.add_argument("--inclusive", action="store_true", help="expansion by >= (supplement) instead of > (main text)")
    p.add_argument("--weights-dir", type=Path, default=Path("weights"))
    p.add_argument("--version", default=None, help="weights version (default: the registry's default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="off",
                   help="torch.compile the model (worth it for large cohorts on CPU)")
    p.set_defaults(func=_run)
