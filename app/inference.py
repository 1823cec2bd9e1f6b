"""The inference core shared by ``python -m app predict`` and the HTTP service.

:class:`Predictor` turns an :class:`~app.ingestion.types.IngestedSeries` (HU, LPS, z-y-x) into a
:class:`PredictionResult`: the expansion probability, the haematoma mask on the analysis grid (the ingested
series' regular grid, i.e. the original DICOM grid unless ingestion had to resample a tilted or unevenly spaced
acquisition) and per source instance, and the volumetry. The weights' post-processing settings
(:class:`~app.model.postprocessing.Postprocessing`) decide whether a haematoma was detected at all (when not,
the mask is emptied and no expansion probability is reported), calibrate the expansion probability (the
registered threshold applies to the calibrated value), and flag a probably infratentorial haematoma. The work is split into three stages so that the
service can run the CPU-heavy ones in a thread pool and the model in a single worker per device:

``prepare`` (CPU: skull strip, resample, normalise) -> ``infer`` (device: forward pass) -> ``finish``
(CPU: inverse mapping, threshold, detection, calibration, volumetry). :meth:`Predictor.predict` runs all three in sequence.

Test-time augmentation (``tta_passes``, :mod:`app.model.uncertainty`) adds augmented forward passes to ``infer``
and their measurements to ``finish`` (intervals of the volume and the expansion probability); the primary pass and
everything reported from it are the same with or without it. Abstention reasons are set on every result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
import torch

from app.ingestion.types import IngestedSeries
from app.model.compiler import CompileMode
from app.model.device import PrecisionMode, resolve_device
from app.model.postprocessing import (
    NOT_DETECTED_REASON,
    Postprocessing,
    centroid_lps,
    centroid_offset_lps,
    mean_inside,
)
from app.model.runtime import InferenceRunner

log = logging.getLogger(__name__)

AmpMode = PrecisionMode

EXPANSION_DEFINITION = (
    "Haematoma growth on the 20-24 h follow-up CT of > 6 mL absolute or > 33 % relative to the baseline "
    "volume (Zhong et al., Stroke Vasc Neurol 2021)"
)


class InferenceOutOfMemory(RuntimeError):
    """The device ran out of memory for this request; the predictor stays usable."""


@dataclass
class PreparedCase:
    """Output of :meth:`Predictor.prepare`: the model input and what is needed to map results back."""

    tensor: np.ndarray  # float32 (D, H, W) on the model grid
    grid: sitk.Image  # model grid geometry (LPS)
    # centroid of the brain mask on the model grid, (x, y, z) LPS mm; None when unknown
    brain_centroid_lps: tuple[float, float, float] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class RawPrediction:
    """Output of :meth:`Predictor.infer`: probabilities on the model grid."""

    probability_map: np.ndarray  # float32 (D, H, W), haematoma probability on the model grid
    expansion_probability: float
    inference_ms: float
    # test-time augmentation passes: (probability map mapped back to the model grid, network expansion output)
    tta: list[tuple[np.ndarray, float]] = field(default_factory=list)


@dataclass
class PredictionResult:
    """Everything a client receives about one series. Holds no patient identifiers.

    ``mask`` is uint8 {0, 1} on the analysis grid (same origin/spacing/direction as ``IngestedSeries.image``);
    ``source_slice_masks`` is uint8 (n_instances, rows, columns), one frame per source instance in volume order.
    Volumes are in mL, measured on the analysis grid.

    ``detected``: the weights' detection rule accepted the thresholded mask (volume and mean probability). When
    it did not, the mask and per-slice masks are all zeros (``volume_ml``, ``abc2_volume_ml`` and
    ``voxel_count`` 0, ``touches_fov_edge`` and ``infratentorial`` False), ``probability`` and ``predicted``
    are None and ``reason`` is ``"no_haematoma_detected"``. ``raw_probability`` is the uncalibrated model
    output (always present); ``probability`` the calibrated one, compared with ``threshold``.
    ``mean_probability`` (mean haematoma probability inside the thresholded mask, analysis grid) and
    ``segmented_volume_ml`` (that mask's volume, mL) are measured before the detection rule, so detection
    rules can be fitted from them.
    """

    detected: bool
    raw_probability: float
    probability: float | None
    threshold: float
    predicted: bool | None
    reason: str | None
    mask: sitk.Image
    source_slice_masks: np.ndarray
    volume_ml: float
    abc2_volume_ml: float
    voxel_count: int
    touches_fov_edge: bool
    infratentorial: bool
    mean_probability: float
    segmented_volume_ml: float
    timings_ms: dict[str, float]
    network_probability: float = 0.0  # the network's own expansion output (0-1), before the expansion model
    # app.model.clot_features and app.model.ncct_markers measurements (empty: none)
    clot_features: dict[str, float] = field(default_factory=dict)
    markers: dict[str, bool] = field(default_factory=dict)  # NCCT marker -> present (empty: not assessed)
    # app.model.marker_regions: present marker -> its region (bool, z-y-x, analysis grid), for the overview
    marker_regions: dict[str, np.ndarray] = field(default_factory=dict)
    # app.model.uncertainty: TTA intervals (None without TTA or without a detection), image statistics, abstention
    tta_passes: int = 0
    volume_interval_ml: tuple[float, float] | None = None
    probability_interval: tuple[float, float] | None = None
    image_statistics: dict[str, float] = field(default_factory=dict)
    abstain_reasons: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-able numbers (without the mask)."""
        return {
            "detected": self.detected,
            "raw_probability": self.raw_probability,
            "probability": self.probability,
            "threshold": self.threshold,
            "predicted": self.predicted,
            "reason": self.reason,
            "infratentorial": self.infratentorial,
            "mean_probability": self.mean_probability,
            "segmented_volume_ml": self.segmented_volume_ml,
            "network_probability": self.network_probability,
            "clot_features": dict(self.clot_features),
            "markers": dict(self.markers),
            "volume_ml": self.volume_ml,
            "abc2_volume_ml": self.abc2_volume_ml,
            "voxel_count": self.voxel_count,
            "touches_fov_edge": self.touches_fov_edge,
            "timings_ms": dict(self.timings_ms),
        }


@dataclass
class Measured:
    """Output of :meth:`Predictor.measure`: ``mask`` uint8 on the analysis grid (all zeros when not detected),
    ``segmented_ml`` (mL, before the detection rule), ``mean_probability`` (inside the thresholded mask),
    ``features`` (clot and marker measurements), ``markers`` (decisions), probabilities 0-1."""

    mask: np.ndarray
    segmented_ml: float
    mean_probability: float
    detected: bool
    features: dict[str, float]
    markers: dict[str, bool]
    raw_probability: float
    probability: float | None


def resolve_postprocessing(weights: Any) -> Postprocessing:
    """``weights.postprocessing`` (validated by the registry), else the block of ``weights.manifest`` (defaults
    when it has none), for stand-ins that carry only a manifest."""
    post = getattr(weights, "postprocessing", None)
    if isinstance(post, Postprocessing):
        return post
    return Postprocessing.from_manifest(getattr(weights, "manifest", None))


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


class Predictor:
    """Runs one model on one device. ``infer`` goes through :class:`~app.model.runtime.InferenceRunner`
    (channels-last 3D, autocast on CUDA, one lock per device: one forward pass at a time); ``prepare`` and
    ``finish`` are thread-safe and may run concurrently on other threads. Probabilities agree with the eager
    float32 model within 1e-4 on the float32 (CPU) path (tests/test_inference.py)."""

    def __init__(self, weights: Any, device: str | torch.device = "auto", amp: AmpMode = "auto",
                 *, channels_last: bool | Literal["auto"] = "auto", cuda_graphs: bool = False,
                 compile: CompileMode = False, tta_passes: int | None = None):
        """``weights``: a :class:`~app.weights.registry.LoadedWeights` (or anything with its fields).
        ``amp`` applies on CUDA only (the CPU path is float32: bf16 is emulated and slower without AMX);
        ``channels_last``: NDHWC weights and input; ``"auto"`` = on CUDA only (measured slower on this project's
        CPU reference machine, see :class:`app.model.runtime.InferenceRunner`); ``compile``: inductor with
        freezing (``"auto"`` = on CPU with a C++ compiler; the first forward pass compiles, so call
        :meth:`warm_up` before timing-sensitive work; see :func:`app.model.runtime.resolve_compile`);
        ``tta_passes``: augmented passes per series (None: :func:`app.model.uncertainty.default_passes`, on for
        CUDA, off for CPU)."""
        from app.model import uncertainty
        self.weights = weights
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.plans = weights.plans
        self.threshold = float(weights.threshold)
        self.postprocessing = resolve_postprocessing(weights)
        self.runner = InferenceRunner(
            weights.model, self.device, channels_last=channels_last,
            autocast=amp if self.device.type == "cuda" else "off", cuda_graphs=cuda_graphs, compile=compile,
        )
        self.amp_dtype = self.runner.autocast_dtype
        self.model = self.runner.model
        self.oom_count = 0
        self.uncertainty = uncertainty.UncertaintySettings.from_manifest(getattr(weights, "manifest", None))
        self.tta_passes = uncertainty.default_passes(self.device.type) if tta_passes is None else max(0, tta_passes)
        self.augmentations = uncertainty.augmentations(self.tta_passes)

    @classmethod
    def from_registry(
        cls, weights_dir: Any, version: str | None = None, device: str = "auto", amp: AmpMode = "auto",
        compile: CompileMode = False, tta_passes: int | None = None,
    ) -> Predictor:
        """Load (and checksum-verify) weights through :func:`app.weights.registry.load_weights`."""
        from app.weights.registry import load_weights

        dev = resolve_device(device)
        return cls(load_weights(weights_dir, version, str(dev)), dev, amp, compile=compile, tta_passes=tta_passes)

    # --- stages -------------------------------------------------------------------------------------------
    def prepare(self, series: IngestedSeries) -> PreparedCase:
        """Skull strip, resample to the model grid and normalise (CPU). May raise ``IngestionError``
        (``brain_not_found``)."""
        from app.preprocessing import preprocess

        t0 = time.perf_counter()
        case = preprocess(series.image, self.plans)
        return PreparedCase(tensor=case.tensor, grid=case.grid,
                            brain_centroid_lps=centroid_lps(case.brain_mask, case.grid),
                            timings_ms={"preprocess": _ms(t0)})

    def infer(self, tensor: np.ndarray) -> RawPrediction:
        """One forward pass on the device through :class:`~app.model.runtime.InferenceRunner` (device work
        serialised by its lock; on CUDA the next request's staging overlaps this one's kernels).
        Raises :class:`InferenceOutOfMemory` on a CUDA out-of-memory error; the predictor stays usable."""
        t0 = time.perf_counter()
        try:
            prob_map, expansion = self.runner.run(tensor)
            tta = [self._augmented_pass(tensor, aug) for aug in self.augmentations]
        except torch.cuda.OutOfMemoryError as exc:
            self.oom_count += 1
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise InferenceOutOfMemory("the device ran out of memory for this series") from exc
        return RawPrediction(prob_map, expansion, _ms(t0), tta)

    def _augmented_pass(self, tensor: np.ndarray, aug: Any) -> tuple[np.ndarray, float]:
        prob, expansion = self.runner.run(aug.apply(np.asarray(tensor)))
        return aug.invert(prob), expansion

    def finish(self, series: IngestedSeries, prepared: PreparedCase, raw: RawPrediction) -> PredictionResult:
        """Map probabilities back to the analysis grid, threshold, apply the detection rule, calibrate, and
        measure (CPU); see :class:`PredictionResult` for what a failed detection reports."""
        from app import volumetry
        from app.preprocessing import mask_to_source_slices, probabilities_to_reference

        t0 = time.perf_counter()
        post = self.postprocessing
        prob_ref = probabilities_to_reference(raw.probability_map, prepared.grid, series.image)
        network_probability = float(raw.expansion_probability)
        m = self.measure(series, prob_ref, network_probability, prepared.brain_centroid_lps)
        mask_arr, detected, features = m.mask, m.detected, m.features
        if detected:
            offset = centroid_offset_lps(centroid_lps(mask_arr, series.image), prepared.brain_centroid_lps)
            infratentorial = post.infratentorial.applies(offset)
            model_mask = (raw.probability_map >= self.plans.mask_threshold).astype(np.uint8)
            touches_edge = bool(volumetry.touches_fov_edge(model_mask))
        else:
            infratentorial = touches_edge = False
        segmented_ml, mean_probability = m.segmented_ml, m.mean_probability
        markers, raw_probability, probability = m.markers, m.raw_probability, m.probability
        regions: dict[str, np.ndarray] = {}
        if detected and any(markers.values()):
            from app.model.marker_regions import marker_regions

            regions = marker_regions(sitk.GetArrayViewFromImage(series.image), mask_arr, series.spacing_zyx,
                                     markers, prob_ref, post.markers.geometry)
        mask = sitk.GetImageFromArray(mask_arr)
        mask.CopyInformation(series.image)
        if not series.resampled and mask_arr.shape[0] == len(series.slices):
            per_slice = mask_arr
        else:
            per_slice = np.asarray(mask_to_source_slices(mask, series.slices), dtype=np.uint8)
        timings = dict(prepared.timings_ms)
        timings["inference"] = raw.inference_ms
        result = PredictionResult(
            detected=detected,
            raw_probability=raw_probability,
            probability=probability,
            threshold=self.threshold,
            predicted=None if probability is None else bool(probability >= self.threshold),
            reason=None if detected else NOT_DETECTED_REASON,
            mask=mask,
            source_slice_masks=per_slice,
            volume_ml=segmented_ml if detected else 0.0,
            abc2_volume_ml=float(volumetry.abc2_volume_ml(mask_arr, series.spacing_zyx)),
            voxel_count=int(mask_arr.sum(dtype=np.int64)),
            touches_fov_edge=touches_edge,
            infratentorial=infratentorial,
            mean_probability=mean_probability,
            segmented_volume_ml=segmented_ml,
            network_probability=network_probability,
            clot_features=features,
            markers=markers,
            marker_regions=regions,
            timings_ms=timings,
        )
        from app.model.uncertainty import add_uncertainty

        add_uncertainty(self, series, prepared, raw, result)  # TTA intervals, image statistics, abstention
        result.timings_ms["postprocess"] = _ms(t0)
        return result

    def measure(self, series: IngestedSeries, prob_ref: np.ndarray, network_probability: float,
                brain_centroid_lps: tuple[float, float, float] | None = None) -> Measured:
        """The haematoma and expansion measurements of one haematoma-probability map on the analysis grid
        (``prob_ref``, z-y-x, 0-1): threshold, boundary refinement, detection, clot and marker measurements,
        expansion model and calibration, as every answer reports them (also each test-time augmentation pass).
        ``brain_centroid_lps`` (mm) places the midline for the refinement's hemisphere rule."""
        from app import volumetry
        from app.model.clot_features import clot_features, dense_part_hu
        from app.model.clot_texture import measure_texture
        from app.model.mask_refinement import drop_contralateral, refine_mask
        from app.model.ncct_markers import measure_markers

        post = self.postprocessing
        mask_arr = (prob_ref >= self.plans.mask_threshold).astype(np.uint8)
        hu = sitk.GetArrayViewFromImage(series.image)
        mean_probability = mean_inside(prob_ref, mask_arr)
        if post.refinement.enabled:
            seed = mask_arr if post.refinement.seed_threshold is None else \
                (prob_ref >= post.refinement.seed_threshold).astype(np.uint8)
            mask_arr = refine_mask(hu, seed, series.spacing_zyx, post.refinement, prob_ref)
            mask_arr = drop_contralateral(mask_arr, series.image, brain_centroid_lps, post.refinement).astype(np.uint8)
        segmented_ml = float(volumetry.volume_ml(mask_arr, series.spacing_zyx))
        features: dict[str, float] = clot_features(hu, mask_arr, series.spacing_zyx) if mask_arr.any() else {}
        detected = post.detection.detected(segmented_ml, mean_probability,
                                           dense_part_hu(features) if features else None)
        markers: dict[str, bool] = {}
        if detected:
            if post.markers.enabled:
                measured = measure_markers(hu, mask_arr, series.spacing_zyx, prob_ref, post.markers.geometry)
                features.update(measured)
                features.update(measure_texture(hu, mask_arr, series.spacing_zyx, prob_ref))
                if post.marker_reader is None:
                    markers = post.markers.decide(measured)
                else:
                    features.update(post.marker_reader.probabilities(features))
                    markers = post.marker_reader.decide(features)
        else:
            mask_arr = np.zeros_like(mask_arr)
            features = {}
        raw_probability = post.expansion_model.probability(network_probability, features) if detected \
            else network_probability
        probability = post.calibration.apply(raw_probability) if detected else None
        return Measured(mask_arr, segmented_ml, mean_probability, detected, features, markers, raw_probability,
                        probability)

    def predict(self, series: IngestedSeries) -> PredictionResult:
        """All stages in sequence on the calling thread."""
        prepared = self.prepare(series)
        raw = self.infer(prepared.tensor)
        return self.finish(series, prepared, raw)

    def warm_up(self, repeats: int = 1) -> float:
        """Run the forward pass on a zero tensor of the plans' matrix (allocator, cuDNN autotuning).
        Returns the last pass's duration in ms."""
        zeros = np.zeros(self.plans.matrix_zyx, dtype=np.float32)
        last = 0.0
        for _ in range(max(1, repeats)):
            last = self.infer(zeros).inference_ms
        return last

    def model_summary(self) -> dict[str, Any]:
        """Name, version, weights sha256 and runtime settings (device, precision, layout); no identifiers."""
        w = self.weights
        runtime = self.runner.describe()
        return {"name": w.name, "version": w.version, "sha256": w.weights_sha256, "device": str(self.device),
                "autocast": runtime["autocast"], "channels_last_3d": runtime["channels_last_3d"],
                "compile": runtime["compile"]}

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers (JSON-able, no identifiers): the registered manifest of the weights,
        overlaid with name, version, weights sha256, threshold (on the calibrated probability), plans, model
        config, parameter count, device, runtime settings (:meth:`InferenceRunner.describe
        <app.model.runtime.InferenceRunner.describe>`) and the post-processing in effect (defaults filled in)."""
        from app.model.unet import count_parameters

        w = self.weights
        body = dict(w.manifest) if isinstance(w.manifest, dict) else {}
        body.update({
            "name": w.name, "version": w.version, "sha256": w.weights_sha256, "threshold": w.threshold,
            "plans": w.plans.model_dump(mode="json"), "config": w.config.model_dump(mode="json"),
            "parameter_count": count_parameters(self.model), "device": str(self.device),
            "runtime": self.runner.describe(), "postprocessing": self.postprocessing.model_dump(mode="json"),
            "uncertainty": {**self.uncertainty.model_dump(mode="json"), "tta_passes": self.tta_passes},
        })
        return body
