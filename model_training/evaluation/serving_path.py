"""Evaluation through the serving path: every case of a manifest is ingested and predicted exactly as the
service does it, and compared with its ground truth on the original grid.

A case's ``image`` (a DICOM folder/ZIP or a NIfTI file) goes through :func:`ingest`
(:func:`app.ingestion.load_series`, as the service) and then :meth:`app.inference.Predictor.predict`, so the numbers are the ones a client of ``python -m app serve`` receives.
The ground-truth mask (NIfTI with the image's geometry) is compared with the returned mask on the analysis grid
(the ingested series' grid, LPS, z-y-x); volumes are in mL. The synthetic cohort's structure-label map
(``structure_labels`` column, label 7 = intraventricular blood) gives the share of intraventricular blood that
the mask includes (the ground-truth mask excludes it).

The manifest is read and validated by :func:`model_training.cohort.manifest.read_manifest`; besides ``image`` and
``mask`` the evaluation uses ``label`` (None for a haematoma-free head), ``image_nifti``, ``structure_labels``,
the ``ivh`` marker and ``risk_true`` / ``risk_image`` (0-1) where present. No identifier other than ``case_id`` is
recorded.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from app import ingestion
from app.errors import IngestionError
from app.ingestion.types import IngestedSeries
from app.model.device import PrecisionMode
from app.volumetry import volume_ml
from model_training.cohort.manifest import CaseRecord, read_manifest
from model_training.synthetic.haematoma import STRUCTURE_LABELS
from model_training.training.losses import hard_dice

IVH_LABEL = STRUCTURE_LABELS["ivh"]
ImageColumn = Literal["image", "image_nifti"]
GRID_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class EvaluationCase:
    """One manifest row as the serving-path evaluation needs it (absolute paths; risks 0-1)."""

    case_id: str
    image: Path
    mask: Path
    label: int | None
    structure_labels: Path | None = None
    ivh_marker: int | None = None
    risk_true: float | None = None
    risk_image: float | None = None
    markers: dict[str, int] | None = None  # NCCT marker truth (0/1) where the manifest has it
    onset_to_ct_hours: float | None = None


def evaluation_case(record: CaseRecord, image_column: ImageColumn = "image") -> EvaluationCase:
    """The serving-path view of a validated manifest row; ``image_column="image_nifti"`` predicts the row's NIfTI
    copy when it has one (else ``image``)."""
    nifti = getattr(record, "image_nifti", None)
    return EvaluationCase(
        case_id=record.case_id,
        image=nifti if image_column == "image_nifti" and nifti is not None else record.image,
        mask=record.mask,
        label=record.label,
        structure_labels=getattr(record, "structure_labels", None),
        ivh_marker=record.markers.get("ivh"),
        risk_true=getattr(record, "risk_true", None),
        risk_image=getattr(record, "risk_image", None),
        markers={k: int(v) for k, v in record.markers.items() if k != "ivh" and v is not None} or None,
        onset_to_ct_hours=record.onset_to_ct_hours,
    )


def read_evaluation_cases(manifest: str | Path, *, inclusive: bool = False,
                          image_column: ImageColumn = "image") -> list[EvaluationCase]:
    """Every case of ``manifest`` (read and validated by :func:`model_training.cohort.manifest.read_manifest`;
    ``inclusive`` selects the >= reading of the expansion rule for derived labels), in manifest order."""
    return [evaluation_case(c, image_column) for c in read_manifest(manifest, inclusive=inclusive).cases]


# --- ingestion, as the service does it ----------------------------------------------------------------------
def ingest(path: Path) -> IngestedSeries:
    """Ingest one case's image as the service does: DICOM folders/ZIPs and NIfTI files alike through
    :func:`app.ingestion.load_series` (the entry point of the upload route and ``python -m app predict``), so an
    input the service refuses is refused here too. Raises :class:`~app.errors.IngestionError` on a refusal."""
    return ingestion.load_series([Path(path)])


def on_grid(label: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """``label`` as an array (z, y, x) on ``reference``'s grid: as is when the geometries agree (within
    1e-3 mm), else resampled with nearest neighbour (0 outside)."""
    same = (label.GetSize() == reference.GetSize()
            and np.allclose(label.GetSpacing(), reference.GetSpacing(), atol=GRID_TOLERANCE_MM)
            and np.allclose(label.GetOrigin(), reference.GetOrigin(), atol=GRID_TOLERANCE_MM)
            and np.allclose(label.GetDirection(), reference.GetDirection(), atol=1e-6))
    if not same:
        label = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(label)


# --- prediction -----------------------------------------------------------------------------------------------
def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def predict_case(predictor: Any, case: EvaluationCase) -> dict[str, Any]:
    """One case through the serving path; a dict of JSON-able values (volumes mL, probabilities 0-1, Dice on the
    analysis grid; ``dice`` None for a haematoma-free head). A refused case has ``refusal`` set (the code) and
    counts as not detected."""
    t0 = time.perf_counter()
    truth_img = sitk.ReadImage(str(case.mask))
    row: dict[str, Any] = {"case_id": case.case_id, "label": case.label, "risk_true": case.risk_true,
                           "risk_image": case.risk_image, "refusal": None}
    try:
        series = ingest(case.image)
        result = predictor.predict(series)
    except IngestionError as exc:
        truth = sitk.GetArrayViewFromImage(truth_img) > 0
        row.update({"refusal": str(getattr(exc.code, "value", exc.code)), "has_ich": bool(truth.any()),
                    "true_volume_ml": volume_ml(truth, truth_img.GetSpacing()[::-1]), "detected": False,
                    "haematoma_reported": False, "ivh": bool(case.ivh_marker) if case.ivh_marker is not None else None})
        return row
    spacing = series.spacing_zyx
    pred = sitk.GetArrayViewFromImage(result.mask) > 0
    truth = on_grid(truth_img, result.mask) > 0
    has_ich = bool(truth.any())
    ivh_voxels: int | None = None
    ivh_fraction: float | None = None
    if case.structure_labels is not None and case.structure_labels.exists():
        ivh = on_grid(sitk.ReadImage(str(case.structure_labels)), result.mask) == IVH_LABEL
        ivh_voxels = int(ivh.sum())
        ivh_fraction = float(np.logical_and(ivh, pred).sum() / ivh_voxels) if ivh_voxels else None
    ivh_present = (ivh_voxels > 0) if ivh_voxels is not None else (
        bool(case.ivh_marker) if case.ivh_marker is not None else None)
    raw = float(getattr(result, "raw_probability", result.probability))
    probability = getattr(result, "probability", None)
    detected = getattr(result, "detected", None)
    predicted = getattr(result, "predicted", None)
    row.update({
        "has_ich": has_ich,
        "true_volume_ml": volume_ml(truth, spacing),
        "volume_ml": float(result.volume_ml),
        # the thresholded mask's volume before the detection rule (what detection rules are fitted on)
        "segmented_volume_ml": float(getattr(result, "segmented_volume_ml", result.volume_ml)),
        "abc2_volume_ml": float(result.abc2_volume_ml),
        "voxel_count": int(result.voxel_count),
        "dice": hard_dice(pred, truth) if has_ich else None,
        "detected": bool(result.voxel_count > 0) if detected is None else bool(detected),
        "haematoma_reported": bool(result.volume_ml > 0),
        "raw_probability": raw,
        "probability": _opt(probability),
        "threshold": float(result.threshold),
        "predicted": None if predicted is None else bool(predicted),
        "reason": getattr(result, "reason", None),
        "mean_probability": _opt(getattr(result, "mean_probability", None)),
        "infratentorial": getattr(result, "infratentorial", None),
        "touches_fov_edge": bool(result.touches_fov_edge),
        "ivh": ivh_present,
        "ivh_voxels": ivh_voxels,
        "ivh_in_mask_fraction": ivh_fraction,
        "network_probability": _opt(getattr(result, "network_probability", None)),
        **{f"clot_{k}": float(v) for k, v in getattr(result, "clot_features", {}).items()},
        **{f"marker_{k}": bool(v) for k, v in getattr(result, "markers", {}).items()},
        **{f"truth_{k}": int(v) for k, v in (case.markers or {}).items()},
        "onset_to_ct_hours": case.onset_to_ct_hours,
        "seconds": round(time.perf_counter() - t0, 3),
    })
    return row


def predict_cases(predictor: Any, cases: Sequence[EvaluationCase], progress: bool = False) -> list[dict[str, Any]]:
    """:func:`predict_case` for every case, in order."""
    from tqdm import tqdm

    return [predict_case(predictor, c) for c in tqdm(cases, desc="serving path", unit="case", disable=not progress)]


def resolve_weights(weights: str | Path, version: str | None = None) -> tuple[Path, str | None]:
    """(registry folder, version) from ``--weights``: a registry folder (with ``version``, None = the registry's
    default) or one model folder holding ``manifest.json`` (its name is the version)."""
    weights = Path(weights)
    if version is None and (weights / "manifest.json").is_file() and not (weights / "registry.json").exists():
        return weights.parent, weights.name
    return weights, version


def evaluate_weights(
    weights_dir: str | Path,
    version: str | None,
    manifest: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
    amp: PrecisionMode = "auto",
    compile: Literal["auto", "on", "off"] | bool = False,
    image_column: ImageColumn = "image",
    inclusive: bool = False,
    ci_method: Literal["wilson_cc", "wilson", "exact"] = "wilson",
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate registered weights on every case of ``manifest`` through the serving path and write the report
    (:func:`model_training.evaluation.serving_report.write_serving_report`) into ``out_dir``.

    ``weights_dir``/``version`` as :func:`resolve_weights`. Returns the report dict; ``report["cases"]`` holds the
    per-case rows (``raw_probability``, ``probability``, ``volume_ml``, ``segmented_volume_ml`` (before the
    detection rule), ``mean_probability``, ``has_ich``, ``label``, ...), e.g. for fitting detection and
    calibration on a validation manifest.
    """
    from app.inference import Predictor
    from model_training.evaluation.serving_report import write_serving_report

    t0 = time.perf_counter()
    registry, version = resolve_weights(weights_dir, version)
    predictor = Predictor.from_registry(registry, version, device, amp, compile=compile)
    cases = read_evaluation_cases(manifest, inclusive=inclusive, image_column=image_column)
    rows = predict_cases(predictor, cases, progress)
    w = predictor.weights
    meta = {
        "model": {"name": w.name, "version": w.version, "sha256": w.weights_sha256, "threshold": float(w.threshold),
                  **{k: v for k, v in predictor.model_summary().items() if k in ("device", "autocast", "compile")}},
        "manifest": {"file": Path(manifest).name, "cohort": Path(manifest).resolve().parent.name,
                     "sha256": hashlib.sha256(Path(manifest).read_bytes()).hexdigest(), "image_column": image_column},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return write_serving_report(rows, out_dir, meta, ci_method=ci_method)
