"""Reading and validating a cohort manifest (CSV), deriving expansion labels, and the paper's temporal split.

Columns (docs/architecture.md): ``case_id, image, mask, followup_volume_ml, followup_mask, baseline_volume_ml,
admission_date, onset_to_ct_hours, hypodensity, black_hole, swirl, blend, fluid_level, irregular_shape,
heterogeneous_density, ivh, label, scanner``. Only ``case_id``, ``image``, ``mask`` and ``admission_date`` are
required; paths are relative to the manifest's folder. Volumes are in mL, onset-to-CT in hours, markers 0/1,
dates ISO ``YYYY-MM-DD``. When ``label`` is empty it is derived from the baseline and follow-up volumes by the
paper's rule (model_training.labels.expansion_label); a missing baseline volume is measured on the baseline mask
and a missing follow-up volume on the follow-up mask. A row with baseline volume 0 and no follow-up is a head
without haemorrhage: it has no expansion label (``label`` None). No patient identifier is ever logged: messages name the
manifest row and the case id only.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from model_training.ncct_markers import MARKER_FLAGS

MARKER_COLUMNS: tuple[str, ...] = MARKER_FLAGS
REQUIRED_COLUMNS: tuple[str, ...] = ("case_id", "image", "mask", "admission_date")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "followup_volume_ml",
    "followup_mask",
    "baseline_volume_ml",
    "onset_to_ct_hours",
    *MARKER_COLUMNS,
    "label",
    "scanner",
    "image_nifti",  # informational: a NIfTI copy of `image` (the synthetic generator writes it)
    "structure_labels",  # synthetic: label map (7 = intraventricular blood), same geometry as the image
    "risk_true",  # synthetic: the growth model's expansion probability (evaluation ceiling)
    "risk_image",  # synthetic: the same averaged over the onset-time prior (image-only ceiling)
    "mimics",  # synthetic: haemorrhage mimics in the head, ";"-separated (informational)
    "noise_sd_hu",  # synthetic: SD of the CT noise added to the scan, HU (informational)
    "followup_image",  # the follow-up scan (DICOM folder or NIfTI), same geometry rules as `image`
    "label_source",  # where `label` came from (model_training.commands.label_followup writes it)
    "followup_label",  # label-followup: the label the two predicted volumes give
    "predicted_baseline_volume_ml",  # label-followup: predicted volumes (mL) of the baseline and follow-up scans
    "predicted_followup_volume_ml",
)
# The paper: training cohort February 2012 - August 2018, test cohort September 2018 - October 2019.
PAPER_CUTOFF = dt.date(2018, 9, 1)


class ManifestError(ValueError):
    """The manifest cannot be used; the message names the row (1-based, header = row 1) and column."""


@dataclass(frozen=True)
class CaseRecord:
    """One validated manifest row with absolute paths. Volumes in mL, onset-to-CT in hours."""

    case_id: str
    image: Path
    mask: Path
    admission_date: dt.date
    label: int | None  # None: no haematoma at baseline (an ICH-free head), so no expansion label
    label_derived: bool
    baseline_volume_ml: float | None = None
    followup_volume_ml: float | None = None
    followup_mask: Path | None = None
    onset_to_ct_hours: float | None = None
    markers: dict[str, int | None] = field(default_factory=dict)
    scanner: str | None = None
    image_nifti: Path | None = None
    structure_labels: Path | None = None
    risk_true: float | None = None
    risk_image: float | None = None
    followup_image: Path | None = None

    @property
    def has_haematoma(self) -> bool:
        """False for a head without parenchymal haemorrhage (baseline volume 0)."""
        return self.label is not None

    def as_row(self) -> dict[str, object]:
        """A flat dict with the manifest's column names (for the evaluation package's comparators)."""
        row: dict[str, object] = {
            "case_id": self.case_id,
            "label": self.label,
            "admission_date": self.admission_date.isoformat(),
            "baseline_volume_ml": self.baseline_volume_ml,
            "followup_volume_ml": self.followup_volume_ml,
            "onset_to_ct_hours": self.onset_to_ct_hours,
            "scanner": self.scanner,
        }
        row.update(self.markers)
        return row


@dataclass(frozen=True)
class Manifest:
    path: Path
    cases: tuple[CaseRecord, ...]
    sha256: str  # of the manifest file's bytes
    columns: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        """sha256 over the manifest file's sha256 and the sorted case ids (recorded with runs and weights)."""
        h = hashlib.sha256(self.sha256.encode())
        for cid in sorted(c.case_id for c in self.cases):
            h.update(b"\0" + cid.encode())
        return h.hexdigest()

    @property
    def marker_columns(self) -> tuple[str, ...]:
        """The NCCT markers present (non-empty for at least one case) in this manifest."""
        return tuple(m for m in MARKER_COLUMNS if any(c.markers.get(m) is not None for c in self.cases))

    def by_id(self) -> dict[str, CaseRecord]:
        return {c.case_id: c for c in self.cases}


def mask_volume_ml(path: Path) -> float:
    """Volume of the non-zero voxels of a label image in mL (voxel count x voxel volume in mm^3 / 1000)."""
    img = sitk.ReadImage(str(path))
    n = int(np.count_nonzero(sitk.GetArrayViewFromImage(img)))
    return n * float(np.prod(img.GetSpacing())) / 1000.0


def _opt_float(value: str, row: int, col: str) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        out = float(value)
    except ValueError:
        raise ManifestError(f"row {row}: column {col!r} must be a number, got {value!r}") from None
    if not np.isfinite(out) or out < 0:
        raise ManifestError(f"row {row}: column {col!r} must be finite and >= 0, got {value!r}")
    return out


def _opt_binary(value: str, row: int, col: str) -> int | None:
    if value is None or value.strip() == "":
        return None
    v = value.strip().lower()
    if v in ("0", "0.0", "false", "no"):
        return 0
    if v in ("1", "1.0", "true", "yes"):
        return 1
    raise ManifestError(f"row {row}: column {col!r} must be 0 or 1, got {value!r}")


def _resolve(base: Path, value: str, row: int, col: str, must_exist: bool) -> Path:
    p = Path(value.strip())
    p = p if p.is_absolute() else (base / p)
    if must_exist and not p.exists():
        raise ManifestError(f"row {row}: {col} path does not exist: {p}")
    return p.resolve()


def _derive_label(baseline_ml: float, followup_ml: float, inclusive: bool) -> int:
    from model_training.labels import expansion_label

    return int(expansion_label(baseline_ml, followup_ml, inclusive=inclusive))


def read_manifest(path: str | Path, *, inclusive: bool = False, check_paths: bool = True) -> Manifest:
    """Read and validate a manifest CSV.

    ``inclusive`` selects the label rule used when ``label`` is empty: False = strict (> 6 mL or > 33 %, the
    main text), True = inclusive (>= , the supplement). ``check_paths`` verifies that image and mask exist.
    Raises :class:`ManifestError` on any invalid row, duplicate case id or missing column.
    """
    path = Path(path).resolve()
    raw = path.read_bytes()
    base = path.parent
    text = raw.decode("utf-8-sig")
    reader = csv.DictReader(text.splitlines())
    columns = tuple(c.strip() for c in (reader.fieldnames or ()))
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(f"{path.name}: missing required column(s): {', '.join(missing)}")
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise ManifestError(f"{path.name}: unknown column(s): {', '.join(unknown)}")
    cases: list[CaseRecord] = []
    seen: set[str] = set()
    for i, rec in enumerate(reader, start=2):
        rec = {k.strip(): (v or "").strip() for k, v in rec.items() if k is not None}
        cid = rec["case_id"]
        if not cid:
            raise ManifestError(f"row {i}: empty case_id")
        if cid in seen:
            raise ManifestError(f"row {i}: duplicate case_id {cid!r}")
        seen.add(cid)
        image = _resolve(base, rec["image"], i, "image", check_paths)
        mask = _resolve(base, rec["mask"], i, "mask", check_paths)
        try:
            date = dt.date.fromisoformat(rec["admission_date"])
        except ValueError:
            raise ManifestError(f"row {i}: admission_date must be YYYY-MM-DD, got {rec['admission_date']!r}") from None
        fu_mask = (
            _resolve(base, rec["followup_mask"], i, "followup_mask", check_paths) if rec.get("followup_mask") else None
        )
        baseline = _opt_float(rec.get("baseline_volume_ml", ""), i, "baseline_volume_ml")
        followup = _opt_float(rec.get("followup_volume_ml", ""), i, "followup_volume_ml")
        label = _opt_binary(rec.get("label", ""), i, "label")
        derived = False
        no_haematoma = baseline is not None and baseline == 0.0 and followup is None and fu_mask is None
        if label is None and not no_haematoma:
            if followup is None and fu_mask is not None:
                followup = mask_volume_ml(fu_mask)
            if baseline is None and mask.exists():
                baseline = mask_volume_ml(mask)
            if followup is None or baseline is None:
                raise ManifestError(
                    f"row {i} (case {cid!r}): label is empty and cannot be derived: need a follow-up volume "
                    "(followup_volume_ml or followup_mask) and a baseline volume or mask"
                )
            try:
                label = _derive_label(baseline, followup, inclusive)
            except ValueError as exc:
                raise ManifestError(f"row {i} (case {cid!r}): cannot derive the label: {exc}") from None
            derived = True
        markers = {m: _opt_binary(rec.get(m, ""), i, m) for m in MARKER_COLUMNS}
        cases.append(
            CaseRecord(
                case_id=cid,
                image=image,
                mask=mask,
                admission_date=date,
                label=label,
                label_derived=derived,
                baseline_volume_ml=baseline,
                followup_volume_ml=followup,
                followup_mask=fu_mask,
                onset_to_ct_hours=_opt_float(rec.get("onset_to_ct_hours", ""), i, "onset_to_ct_hours"),
                markers=markers,
                scanner=rec.get("scanner") or None,
                image_nifti=_resolve(base, rec["image_nifti"], i, "image_nifti", check_paths)
                if rec.get("image_nifti") else None,
                structure_labels=_resolve(base, rec["structure_labels"], i, "structure_labels", check_paths)
                if rec.get("structure_labels") else None,
                risk_true=_opt_float(rec.get("risk_true", ""), i, "risk_true"),
                risk_image=_opt_float(rec.get("risk_image", ""), i, "risk_image"),
                followup_image=_resolve(base, rec["followup_image"], i, "followup_image", check_paths)
                if rec.get("followup_image") else None,
            )
        )
    if not cases:
        raise ManifestError(f"{path.name}: no cases")
    return Manifest(path=path, cases=tuple(cases), sha256=hashlib.sha256(raw).hexdigest(), columns=columns)


def temporal_split(
    cases: Iterable[CaseRecord], cutoff: dt.date = PAPER_CUTOFF
) -> tuple[list[CaseRecord], list[CaseRecord]]:
    """(train, test): admissions strictly before ``cutoff`` train, on or after it test (the paper's split)."""
    train, test = [], []
    for c in cases:
        (train if c.admission_date < cutoff else test).append(c)
    return train, test


def fill_baseline_volumes(manifest: Manifest) -> Manifest:
    """A copy in which every missing baseline volume is measured on the baseline mask (needed by the comparators)."""
    cases = tuple(
        c
        if c.baseline_volume_ml is not None
        else CaseRecord(**{**c.__dict__, "baseline_volume_ml": mask_volume_ml(c.mask)})
        for c in manifest.cases
    )
    return Manifest(path=manifest.path, cases=cases, sha256=manifest.sha256, columns=manifest.columns)
