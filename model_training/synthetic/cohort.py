"""Write a synthetic cohort: per case a DICOM series and/or NIfTI image, always the NIfTI ground-truth mask, a
manifest CSV (the columns of docs/architecture.md plus ``image_nifti``) and ``cohort_summary.json``.

Layout (paths in the manifest are relative to its folder)::

    OUT/manifest.csv
    OUT/cohort_summary.json
    OUT/cases/SYN0001/dicom/IM0001.dcm ...
    OUT/cases/SYN0001/image.nii.gz
    OUT/cases/SYN0001/mask.nii.gz
    OUT/cases/SYN0001/labels.nii.gz      (structure labels: intraventricular blood, marker regions)

With ``followup=True`` every case with a haematoma also gets its 20-24 h follow-up scan
(:mod:`model_training.synthetic.followup`) under ``OUT/cases/SYN0001/followup/`` (``dicom/``, ``image.nii.gz``,
``mask.nii.gz``, as the baseline's formats), listed in the manifest columns ``followup_image`` (the DICOM folder,
else the NIfTI image) and ``followup_mask``.

Heads without parenchymal haemorrhage (``ich_free_fraction`` of the cohort) have an empty mask, baseline volume 0
and no expansion label (empty ``label``, ``followup_volume_ml``, ``risk_true`` and ``risk_image``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from model_training.ncct_markers import MARKER_FLAGS
from model_training.synthetic.case import generate_case
from model_training.synthetic.dicom_writer import write_dicom_series
from model_training.synthetic.markers import FLAG_NAMES
from model_training.synthetic.nifti_writer import write_nifti, write_structure_labels

MANIFEST_COLUMNS: tuple[str, ...] = (
    "case_id",
    "image",
    "mask",
    "followup_volume_ml",
    "followup_mask",
    "baseline_volume_ml",
    "admission_date",
    "onset_to_ct_hours",
    *MARKER_FLAGS,
    "label",
    "scanner",
)
SYNTHETIC_EXTRA_COLUMNS: tuple[str, ...] = ("image_nifti", "structure_labels", "risk_true", "risk_image", "mimics",
                                             "noise_sd_hu")
FOLLOWUP_COLUMNS: tuple[str, ...] = ("followup_image",)  # written with followup=True
DEFAULT_ICH_FREE_FRACTION = 0.25
FORMATS = ("dicom", "nifti")


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _write_followup(case: Any, case_dir: Path, formats: tuple[str, ...], transfer_syntax: str | None
                    ) -> tuple[Path, Path]:
    """Write the follow-up scan of ``case``; return (image: DICOM folder or NIfTI image, mask)."""
    from model_training.synthetic.followup import generate_followup

    fu = generate_followup(case.seed, case.index, case)
    fu_dir = case_dir / "followup"
    if "dicom" in formats:
        write_dicom_series(fu, fu_dir / "dicom", transfer_syntax=transfer_syntax)
    image_path, mask_path = write_nifti(fu, fu_dir, image="nifti" in formats)
    return (fu_dir / "dicom" if "dicom" in formats else image_path), mask_path  # type: ignore[return-value]


def _write_one(args: tuple[int, int, str, tuple[str, ...], str | None, float, bool, tuple[float, float] | None]
               ) -> dict[str, Any]:
    seed, index, out_dir, formats, transfer_syntax, ich_free_fraction, followup, noise_range = args
    out = Path(out_dir)
    overrides = {} if noise_range is None else {"noise_sd_range_hu": tuple(noise_range)}
    case = generate_case(seed, index, ich_free_fraction=ich_free_fraction, **overrides)
    case_dir = out / "cases" / case.case_id
    row: dict[str, Any] = {"case_id": case.case_id}
    if "dicom" in formats:
        write_dicom_series(case, case_dir / "dicom", transfer_syntax=transfer_syntax)
    image_path, mask_path = write_nifti(case, case_dir, image="nifti" in formats)

    def rel(path: Path) -> str:
        return path.relative_to(out).as_posix()

    row["image"] = rel(case_dir / "dicom") if "dicom" in formats else rel(image_path)
    row["image_nifti"] = rel(image_path) if image_path is not None else ""
    row["mask"] = rel(mask_path)
    row["structure_labels"] = rel(write_structure_labels(case, case_dir))
    row["followup_volume_ml"] = _fmt(case.followup_volume_ml, 3)
    row["followup_mask"] = ""
    row["followup_image"] = ""
    if followup and case.has_haematoma:
        fu_image, fu_mask = _write_followup(case, case_dir, formats, transfer_syntax)
        row["followup_image"], row["followup_mask"] = rel(fu_image), rel(fu_mask)
    row["baseline_volume_ml"] = f"{case.baseline_volume_ml:.3f}"
    row["admission_date"] = case.admission_date.isoformat()
    row["onset_to_ct_hours"] = f"{case.onset_to_ct_hours:.2f}"
    for name in FLAG_NAMES:
        row[name] = int(case.markers[name])
    row["label"] = "" if case.label is None else case.label
    row["scanner"] = case.scanner.model_name
    row["risk_true"] = _fmt(case.risk_true, 6)
    row["risk_image"] = _fmt(case.risk_image, 6)
    row["mimics"] = ";".join(case.mimics)
    row["noise_sd_hu"] = f"{case.noise_sd_hu:.3f}"
    # not written to the manifest, used for the summary
    row["_location"] = case.location
    return row


def _summary(rows: Sequence[dict[str, Any]], seed: int, formats: Iterable[str]) -> dict[str, Any]:
    n = len(rows)
    base = np.array([float(r["baseline_volume_ml"]) for r in rows if r["label"] != ""])
    onset = np.array([float(r["onset_to_ct_hours"]) for r in rows]) if n else np.zeros(0)

    def count(key: str, value: Any = 1) -> int:
        return sum(1 for r in rows if r[key] == value)

    n_ich = sum(1 for r in rows if r["label"] != "")
    return {
        "n_cases": n,
        "n_ich_free": n - n_ich,
        "seed": seed,
        "formats": list(formats),
        "expansion": {"n": count("label"), "n_labelled": n_ich, "prevalence": count("label") / n_ich if n_ich else None},
        "markers": {
            name: {"n": count(name), "prevalence": count(name) / n if n else None} for name in FLAG_NAMES
        },
        "baseline_volume_ml": {
            "mean": float(base.mean()) if base.size else None,
            "sd": float(base.std(ddof=1)) if base.size > 1 else None,
            "median": float(np.median(base)) if base.size else None,
            "min": float(base.min()) if base.size else None,
            "max": float(base.max()) if base.size else None,
        },
        "onset_to_ct_hours": {"mean": float(onset.mean()) if n else None},
        "scanners": {s: count("scanner", s) for s in sorted({r["scanner"] for r in rows})},
        "locations": {s: count("_location", s) for s in sorted({r["_location"] for r in rows})},
        "admission_date_range": [min(r["admission_date"] for r in rows), max(r["admission_date"] for r in rows)]
        if n
        else None,
    }


def write_cohort(
    n: int,
    out_dir: str | Path,
    seed: int,
    formats: Sequence[str] = FORMATS,
    workers: int = 1,
    transfer_syntax: str | None = None,
    ich_free_fraction: float = DEFAULT_ICH_FREE_FRACTION,
    followup: bool = False,
    noise_sd_range_hu: tuple[float, float] | None = None,
) -> Path:
    """Generate cases 0..n-1 of cohort ``seed`` into ``out_dir``; return the manifest path.

    ``ich_free_fraction``: expected share of heads without parenchymal haemorrhage.
    ``formats``: any of "dicom" (the manifest's ``image`` is the DICOM folder) and "nifti" (``image_nifti``; also
    ``image`` when DICOM is not written). The NIfTI mask is always written. ``workers`` > 1 uses processes;
    the output does not depend on it. ``followup``: also write each haematoma's follow-up scan (module docstring).
    ``noise_sd_range_hu``: (low, high) HU range of the scans' noise SD instead of the generator's default
    (:data:`~model_training.synthetic.case.NOISE_SD_RANGE_HU`); cases differ from the default cohort in their
    noise only.
    """
    formats = tuple(formats)
    if n < 1:
        raise ValueError("n must be >= 1")
    if not formats or set(formats) - set(FORMATS):
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if noise_sd_range_hu is not None and not 0.0 < noise_sd_range_hu[0] <= noise_sd_range_hu[1] <= 40.0:
        raise ValueError("noise_sd_range_hu must be (low, high) with 0 < low <= high <= 40 HU")
    jobs = [(seed, i, str(out), formats, transfer_syntax, ich_free_fraction, followup, noise_sd_range_hu)
            for i in range(n)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(_write_one, jobs))
    else:
        rows = [_write_one(job) for job in jobs]
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        columns = [*MANIFEST_COLUMNS, *SYNTHETIC_EXTRA_COLUMNS, *(FOLLOWUP_COLUMNS if followup else ())]
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = _summary(rows, seed, formats)
    (out / "cohort_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return manifest
