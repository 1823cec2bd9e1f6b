"""The result of one prediction, built in one place for ``python -m app predict`` and the HTTP service.

An ingested series (:class:`~app.ingestion.types.IngestedSeries`: HU, LPS, z-y-x) and its
:class:`~app.inference.PredictionResult` become

* the result document, :class:`~app.result_schema.PredictionResponse` (:func:`build_document`): the JSON of
  ``POST /v1/predictions``; :func:`local_document` turns it into the ``result.json`` the CLI writes;
* the result files (:func:`compact_outputs`, :func:`render_files`): the NIfTI mask and DICOM SEG on the analysis
  grid and the PNG overview, rendered from a :class:`~app.outputs.CompactResult`; with the document attached
  (:meth:`CompactResult.with_document <app.outputs.CompactResult.with_document>`) also the DICOM SR and the
  secondary-capture summary.

Stage timings (ms) come from one place, :class:`StageTimings`: the predictor's stages (``preprocess``,
``inference``, ``postprocess``) as :class:`~app.inference.Predictor` measured them, plus the caller's own stages
(``read``: ingestion, ``outputs``: packing the mask for the files); the document adds ``total``, their sum.

This module is part of the core: it never imports :mod:`app.api`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from app.inference import EXPANSION_DEFINITION, PredictionResult
from app.model.bat_score import bat_score
from app.model.marker_reader import PROBABILITY_FEATURES
from app.model.ncct_markers import DEFAULT_THRESHOLDS, MEASUREMENT_OF, MEASUREMENT_UNITS, NCCT_MARKERS
from app.model.postprocessing import result_warnings
from app.outputs import FILE_NAMES, CompactResult
from app.result_schema import (
    Abstain,
    Bat,
    BatPoints,
    Expansion,
    Haematoma,
    InputSummary,
    Links,
    MarkerFinding,
    ModelRef,
    PredictionResponse,
    ProbabilityInterval,
    WarningItem,
)

if TYPE_CHECKING:
    from app.inference import Predictor
    from app.ingestion.types import IngestedSeries
    from app.outputs.compact import OutputUnavailable

__all__ = [
    "PredictionResponse",
    "StageTimings",
    "build_document",
    "compact_outputs",
    "local_document",
    "render_files",
    "unavailable_files",
]


class StageTimings:
    """Stage durations of one prediction in ms, in the order they ran (the document's ``timings_ms``).

    The caller measures only its own stages with :meth:`stage` (or :meth:`add`); the predictor's stages are
    copied from :attr:`PredictionResult.timings_ms <app.inference.PredictionResult>` by :meth:`add_result`, never
    measured again. ``observe(name, ms)``, when given, is called for every stage recorded (the service's latency
    histogram). A stage that raises is not recorded.
    """

    def __init__(self, observe: Callable[[str, float], None] | None = None) -> None:
        self.ms: dict[str, float] = {}
        self._observe = observe

    def add(self, name: str, ms: float) -> None:
        self.ms[name] = ms
        if self._observe is not None:
            self._observe(name, ms)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` body (wall clock, ms rounded to 1 µs) as stage ``name``."""
        t0 = time.perf_counter()
        yield
        self.add(name, round((time.perf_counter() - t0) * 1000.0, 3))

    def add_result(self, result: PredictionResult) -> None:
        """The predictor's own stages (``preprocess``, ``inference``, ``postprocess``), as it measured them."""
        for name, ms in result.timings_ms.items():
            self.add(name, ms)


# --- files --------------------------------------------------------------------------------------------------
def compact_outputs(predictor: Predictor, series: IngestedSeries, result: PredictionResult, *,
                    keep_slices: bool = True) -> CompactResult:
    """The compact form the result files are rendered from (CPU; packs the mask bits, no rendering yet).
    ``keep_slices``: also keep the HU volume, compressed, for the slice viewer (what the service stores)."""
    w = predictor.weights
    return CompactResult.from_prediction(series, result, algorithm_name=w.name, algorithm_version=w.version,
                                         keep_slices=keep_slices)


def render_files(predictor: Predictor, series: IngestedSeries, result: PredictionResult) -> dict[str, bytes]:
    """NIfTI mask, DICOM SEG and PNG overview as bytes (CPU), as ``python -m app predict`` writes them; without
    source instances (a NIfTI input) there is no SEG (:meth:`CompactResult.unavailable` says why)."""
    return compact_outputs(predictor, series, result, keep_slices=False).render_all()


def unavailable_files(compact: CompactResult) -> dict[str, OutputUnavailable]:
    """The files of :data:`~app.outputs.FILE_NAMES` this result cannot produce, each with why."""
    return {name: missing for name in FILE_NAMES if (missing := compact.unavailable(name)) is not None}


# --- the document -------------------------------------------------------------------------------------------
def expansion_definition(weights: Any) -> str:
    """The expansion definition the weights were trained for (their manifest), else the paper's."""
    manifest = getattr(weights, "manifest", None)
    if isinstance(manifest, dict):
        return str(manifest.get("expansion_definition", EXPANSION_DEFINITION))
    return EXPANSION_DEFINITION


def build_document(
    prediction_id: str,
    predictor: Predictor,
    series: IngestedSeries,
    result: PredictionResult,
    timings_ms: Mapping[str, float],
    onset_to_ct_hours: float | None,
    base_url: str = "",
) -> PredictionResponse:
    """The result document of one prediction. ``timings_ms``: stage durations in ms (:attr:`StageTimings.ms`);
    ``total`` (their sum) is added. Links are ``{base_url}/v1/predictions/{prediction_id}[/file]``; ``seg_dicom``
    is null without DICOM source instances (a NIfTI input). Spacing is the analysis grid's, mm (z, y, x)."""
    w = predictor.weights
    prefix = f"{base_url}/v1/predictions/{prediction_id}"
    timings = dict(timings_ms)
    timings["total"] = round(sum(timings.values()), 3)
    warnings = [*series.warnings, *result_warnings(result, predictor.postprocessing)]
    return PredictionResponse(
        id=prediction_id,
        model=ModelRef(name=w.name, version=w.version, sha256=w.weights_sha256),
        input=InputSummary(
            study_instance_uid=series.study_instance_uid,
            series_instance_uid=series.series_instance_uid,
            slice_count=series.slice_count,
            source_kind=series.source_kind,
            spacing_mm=tuple(float(v) for v in series.spacing_zyx),
            onset_to_ct_hours=onset_to_ct_hours,
            warnings=[WarningItem(**wr.as_dict()) for wr in warnings],
        ),
        expansion=Expansion(
            probability=result.probability,
            raw_probability=result.raw_probability,
            network_probability=result.network_probability,
            threshold=result.threshold,
            predicted=result.predicted,
            reason=result.reason,
            definition=expansion_definition(w),
            interval=None if result.probability_interval is None else ProbabilityInterval(
                level=predictor.uncertainty.level, low=result.probability_interval[0],
                high=result.probability_interval[1], passes=result.tta_passes),
        ),
        haematoma=Haematoma(
            detected=result.detected,
            volume_ml=result.volume_ml,
            abc2_volume_ml=result.abc2_volume_ml,
            voxel_count=result.voxel_count,
            touches_fov_edge=result.touches_fov_edge,
            infratentorial=result.infratentorial,
            measurements={k: round(float(v), 6) for k, v in result.clot_features.items()},
            volume_interval_ml=result.volume_interval_ml,
        ),
        ncct_markers=_markers(predictor, result),
        bat=_bat(result, onset_to_ct_hours),
        links=Links(
            self=prefix,
            mask_nifti=f"{prefix}/mask.nii.gz",
            seg_dicom=f"{prefix}/seg.dcm" if series.source_headers else None,
            overlay_png=f"{prefix}/overlay.png",
            sr_dicom=f"{prefix}/sr.dcm" if series.source_headers else None,
            summary_dicom=f"{prefix}/summary.dcm" if series.source_headers else None,
        ),
        timings_ms=timings,
        abstain=Abstain(value=bool(result.abstain_reasons), reasons=list(result.abstain_reasons)),
    )


def _markers(predictor: Predictor, result: PredictionResult) -> dict[str, MarkerFinding] | None:
    if not result.markers:
        return None
    rules = predictor.postprocessing.markers
    reader = predictor.postprocessing.marker_reader
    findings = {}
    for name in NCCT_MARKERS:
        if reader is None:
            measurement, unit = MEASUREMENT_OF[name], MEASUREMENT_UNITS[MEASUREMENT_OF[name]]
            threshold = float(rules.thresholds.get(name, DEFAULT_THRESHOLDS[name]))
        else:
            measurement, unit, threshold = PROBABILITY_FEATURES[name], "1", reader.models[name].threshold
        findings[name] = MarkerFinding(
            present=bool(result.markers[name]), measurement=measurement,
            value=round(float(result.clot_features.get(measurement, 0.0)), 4), unit=unit, threshold=threshold)
    return findings


def _bat(result: PredictionResult, onset_to_ct_hours: float | None) -> Bat | None:
    if not result.markers:
        return None
    score = bat_score(result.markers, onset_to_ct_hours)
    return Bat(score=score.score, points=BatPoints(**score.points), complete=score.complete)


def local_document(document: PredictionResponse, files: Iterable[str],
                   not_written: Mapping[str, OutputUnavailable]) -> dict[str, Any]:
    """The ``result.json`` of ``python -m app predict`` (JSON-able): the document without ``links``, the files
    written (``result.json`` included, sorted) and, when some could not be made, ``files_not_written``
    (name -> ``{code, reason}``)."""
    body = document.model_dump(mode="json", exclude={"links"})
    body["files"] = sorted(["result.json", *files])
    if not_written:
        body["files_not_written"] = {name: {"code": m.code, "reason": m.reason} for name, m in not_written.items()}
    return body
