"""An inserted cohort: synthetic haematomas in real heads without haemorrhage, written as NIfTI + manifest.

Case ``k`` takes head ``k mod len(heads)`` and draws from ``SeedSequence(seed, spawn_key=(k,))`` (clinical,
haematoma, noise and growth streams), so a cohort is reproducible and case ``k`` is the same whatever ``n``. Each
head is also written once unmodified (``case_id`` ``FREE<i>``, baseline volume 0, no label): the detection's
specificity on the real anatomy itself. Markers, volume, onset time and follow-up volume are drawn as for a phantom
(:mod:`model_training.synthetic.growth`), so the manifest has expansion labels and the ceilings ``risk_true`` and
``risk_image``. Rows name no source file (a real cohort's file names may identify patients); the summary counts the
heads only.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from model_training.synthetic.case import ADMISSION_RANGE
from model_training.synthetic.growth import (
    draw_baseline_volume_ml,
    draw_followup_ml,
    draw_onset_hours,
    expansion_probability,
    image_risk,
)
from model_training.synthetic.insertion import RealHead, head_image, insert_haematoma, load_head
from model_training.synthetic.markers import FLAG_NAMES, draw_markers

COLUMNS = ("case_id", "image", "mask", "structure_labels", "followup_volume_ml", "baseline_volume_ml",
           "admission_date", "onset_to_ct_hours", *FLAG_NAMES, "label", "scanner", "risk_true", "risk_image")


def _admission(rng: np.random.Generator) -> dt.date:
    days = (ADMISSION_RANGE[1] - ADMISSION_RANGE[0]).days
    return ADMISSION_RANGE[0] + dt.timedelta(days=int(rng.integers(0, days + 1)))


def _write(image: sitk.Image, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path.as_posix()


def _free_row(i: int, head: RealHead, out: Path, rng: np.random.Generator) -> dict[str, Any]:
    case_dir = out / "cases" / f"FREE{i + 1:03d}"
    hu = np.clip(np.rint(head.phantom.hu), -1024, 3071).astype(np.int16)
    zeros = np.zeros(hu.shape, dtype=np.uint8)
    row = {"case_id": case_dir.name, "baseline_volume_ml": "0.000", "followup_volume_ml": "", "label": "",
           "admission_date": _admission(rng).isoformat(), "onset_to_ct_hours": "", "scanner": f"real head {i + 1}",
           "risk_true": "", "risk_image": "", **{name: 0 for name in FLAG_NAMES}}
    row["image"] = _write(head_image(head, hu), case_dir / "image.nii.gz")
    row["mask"] = _write(head_image(head, zeros), case_dir / "mask.nii.gz")
    row["structure_labels"] = _write(head_image(head, zeros), case_dir / "labels.nii.gz")
    return row


def _inserted_row(k: int, seed: int, heads: Sequence[RealHead], out: Path) -> dict[str, Any]:
    clinical, haem, noise, growth = (np.random.default_rng(s)
                                     for s in np.random.SeedSequence(seed, spawn_key=(k,)).spawn(4))
    head = heads[k % len(heads)]
    markers = draw_markers(clinical)
    target_ml = draw_baseline_volume_ml(clinical)
    onset = draw_onset_hours(clinical)
    hu, result = insert_haematoma(head, haem, noise, target_ml, markers)
    baseline_ml = round(float(result.mask.sum()) * float(np.prod(head.grid.spacing_zyx)) / 1000.0, 4)
    followup_ml = draw_followup_ml(growth, markers, baseline_ml, onset)
    case_dir = out / "cases" / f"INS{k + 1:04d}"
    row: dict[str, Any] = {
        "case_id": case_dir.name, "baseline_volume_ml": f"{baseline_ml:.3f}", "followup_volume_ml": f"{followup_ml:.3f}",
        "label": "", "admission_date": _admission(clinical).isoformat(), "onset_to_ct_hours": f"{onset:.2f}",
        "scanner": f"real head {k % len(heads) + 1}", **{name: int(markers[name]) for name in FLAG_NAMES},
        "risk_true": f"{expansion_probability(markers, baseline_ml, onset):.6f}",
        "risk_image": f"{image_risk(markers, baseline_ml):.6f}",
    }
    row["image"] = _write(head_image(head, hu), case_dir / "image.nii.gz")
    row["mask"] = _write(head_image(head, result.mask.astype(np.uint8)), case_dir / "mask.nii.gz")
    row["structure_labels"] = _write(head_image(head, result.labels.astype(np.uint8)), case_dir / "labels.nii.gz")
    row["_location"] = result.location
    return row


def write_insertion_cohort(heads: Sequence[str | Path], n: int, out: str | Path, seed: int) -> Path:
    """Insert ``n`` haematomas into the real ``heads`` (round robin) and write each head once unmodified;
    returns the manifest path (``out/manifest.csv``, paths relative to ``out``) and writes
    ``out/cohort_summary.json``."""
    if not heads:
        raise ValueError("at least one real head is needed")
    if n < 1:
        raise ValueError("n must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prepared = [load_head(p, np.random.default_rng([seed, i])) for i, p in enumerate(heads)]
    rows = [_free_row(i, h, out, np.random.default_rng([seed, i, 1])) for i, h in enumerate(prepared)]
    rows += [_inserted_row(k, seed, prepared, out) for k in range(n)]
    for row in rows:
        for key in ("image", "mask", "structure_labels"):
            row[key] = Path(row[key]).relative_to(out).as_posix()
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    inserted = [r for r in rows if r["case_id"].startswith("INS")]
    volumes = [float(r["baseline_volume_ml"]) for r in inserted]
    summary = {
        "seed": seed, "n_heads": len(prepared), "n_inserted": len(inserted), "n_free": len(prepared),
        "noise_sd_hu": [round(h.noise_sd_hu, 2) for h in prepared],
        "baseline_volume_ml": {"median": float(np.median(volumes)), "min": min(volumes), "max": max(volumes)},
        "locations": {loc: sum(r["_location"] == loc for r in inserted) for loc in sorted({r["_location"] for r in inserted})},
        "markers": {name: float(np.mean([r[name] for r in inserted])) for name in FLAG_NAMES},
    }
    (out / "cohort_summary.json").write_text(json.dumps(summary, indent=2))
    return manifest
