"""``python -m model_training fit-uncertainty``: fit or measure the test-time-augmentation (TTA) intervals and the
image-statistics ranges of abstention (:mod:`app.model.uncertainty`) on a labelled synthetic cohort, through the
serving path (:func:`app.ingestion.load_series`, :class:`app.inference.Predictor` with ``--passes`` TTA passes).

Per scan (the baseline ``image`` and, with ``--followup``, the ``followup_image``) the truth is the mask volume
(mL; ``mask`` / ``followup_mask``) and, for baselines, the image-only expansion probability ``risk_image``. Only
detected true haematomas are scored (a detection on a head without haemorrhage is counted apart).

* ``--fit``: the conformal quantiles ``q`` of the normalised errors (volume and probability) at ``--level`` and,
  for the volume, one quantile per side (``q_below``, ``q_above`` at ``(1 + level) / 2``: the volume errors are
  skewed; ``--symmetric`` fits ``q`` alone); the abstention limits that only ``--abstain-rate`` of the scored
  scans exceed: the probability-interval width (``max_probability_width``: the interval mostly measures the
  model's error against the image-only risk, so a fixed limit would abstain on nearly every answer) and the
  volume-interval width relative to the volume (``max_volume_width_rel``); and the range of every image
  statistic over the cohort widened by 10 % of its span. Written into the weights manifest's ``"uncertainty"``
  block with ``--write`` (printed otherwise).
* without ``--fit``: the coverage and mean width of the intervals under the weights' current settings on this
  cohort (use a held-out seed; recomputed from the cached estimates and scales, so a report after a new fit needs
  no new predictions), and the cost of one TTA pass (request time with and without TTA on ``--timing-scans``
  scans).

``--samples`` caches the per-scan predictions (JSON) so that a fit and a report can share one run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any


def _scans(manifest: Path, followup: bool, n: int | None, offset: int = 0) -> list[dict[str, Any]]:
    from model_training.cohort.manifest import mask_volume_ml, read_manifest

    m = read_manifest(manifest)
    out = []
    for case in m.cases[offset:]:
        if n is not None and len(out) >= n:
            break
        out.append({"case_id": case.case_id, "scan": "baseline", "image": str(case.image),
                    "volume_true_ml": mask_volume_ml(case.mask), "risk_image": case.risk_image,
                    "has_haematoma": case.has_haematoma})
        if followup and case.followup_image is not None and case.followup_mask is not None:
            out.append({"case_id": case.case_id, "scan": "followup", "image": str(case.followup_image),
                        "volume_true_ml": mask_volume_ml(case.followup_mask), "risk_image": None,
                        "has_haematoma": True})
    return out


def _predict_all(args: argparse.Namespace) -> dict[str, Any]:
    from app.inference import Predictor
    from app.ingestion import load_series

    scans = _scans(args.manifest, args.followup, args.n, args.offset)
    tta = Predictor.from_registry(args.weights_dir, args.version, args.device, compile=args.compile,
                                  tta_passes=args.passes)
    plain = Predictor.from_registry(args.weights_dir, args.version, args.device, compile=args.compile, tta_passes=0)
    tta.warm_up()
    plain.warm_up()
    timings = []
    for i, scan in enumerate(scans):
        series = load_series([scan["image"]])
        t0 = time.perf_counter()
        r = tta.predict(series)
        with_tta = time.perf_counter() - t0
        if i < args.timing_scans:
            t0 = time.perf_counter()
            plain.predict(series)
            timings.append({"with_tta_s": with_tta, "without_s": time.perf_counter() - t0})
        scan.update(detected=r.detected, volume_ml=r.volume_ml, probability=r.probability,
                    volume_interval_ml=r.volume_interval_ml, probability_interval=r.probability_interval,
                    statistics=r.image_statistics,
                    volume_scale=_scale(tta, r, "volume"), probability_scale=_scale(tta, r, "probability"))
        print(f"[{i + 1}/{len(scans)}] {scan['case_id']} {scan['scan']}: {r.volume_ml:.2f} mL "
              f"(truth {scan['volume_true_ml']:.2f}) interval {r.volume_interval_ml}", flush=True)
    return {"passes": args.passes, "scans": scans, "timings": timings}


def _scale(predictor: Any, result: Any, kind: str) -> float | None:
    """The normalising scale of the result's interval (half-width / q), recovered from the interval."""
    from app.model.uncertainty import _logit

    settings = predictor.uncertainty
    _, above = settings.sides(settings.volume if kind == "volume" else settings.probability)
    if kind == "volume":
        iv = result.volume_interval_ml
        return None if iv is None or above <= 0 else (iv[1] - result.volume_ml) / above
    iv = result.probability_interval
    return None if iv is None or above <= 0 else (_logit(iv[1]) - _logit(result.probability)) / above


def _scored(scan: dict[str, Any]) -> bool:
    """A scan whose intervals are scored: a true haematoma that was detected (with TTA). A detection on a head
    without haemorrhage is a detection error, not volume uncertainty, and is left out of fits and coverage."""
    return bool(scan.get("detected")) and scan.get("volume_scale") is not None and scan["volume_true_ml"] > 0


def _scores(scans: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Signed normalised volume errors ``(truth - estimate) / s`` and absolute normalised probability errors."""
    from app.model.uncertainty import _logit

    vol, prob = [], []
    for s in scans:
        if not _scored(s):
            continue
        vol.append((s["volume_true_ml"] - s["volume_ml"]) / s["volume_scale"])
        if s.get("risk_image") is not None and s.get("probability_scale"):
            prob.append(abs(_logit(s["risk_image"]) - _logit(s["probability"])) / s["probability_scale"])
    return vol, prob


def _conformal_q(scores: list[float], level: float) -> float | None:
    if not scores:
        return None
    ordered = sorted(scores)
    rank = min(len(ordered), math.ceil((len(ordered) + 1) * level))
    return float(ordered[rank - 1])


def _intervals(scan: dict[str, Any], settings: Any) -> tuple[Any, Any]:
    """The scan's intervals under ``settings`` (its quantiles), from the stored estimates and scales."""
    from app.model.uncertainty import interval_from_scale

    vol = prob = None
    if scan.get("volume_scale") is not None:
        vol = interval_from_scale("volume", scan["volume_ml"], scan["volume_scale"], settings)
    if scan.get("probability_scale") is not None and scan.get("probability") is not None:
        prob = interval_from_scale("probability", scan["probability"], scan["probability_scale"], settings)
    return vol, prob


def _report(data: dict[str, Any], settings: Any) -> dict[str, Any]:
    """Coverage and mean width of the intervals under ``settings`` (the weights' current block), TTA cost."""
    import numpy as np

    scans = [s for s in data["scans"] if _scored(s)]
    from app.model.uncertainty import abstain_reasons

    vol_cov, vol_w, vol_low, prob_cov, prob_w, too_wide = [], [], [], [], [], []
    for s in scans:
        vol, prob = _intervals(s, settings)
        too_wide.append("interval_too_wide" in abstain_reasons(
            touches_fov_edge=False, infratentorial=False, statistics={}, probability_interval=prob,
            volume_interval=vol, volume_ml=s["volume_ml"], settings=settings))
        vol_cov.append(vol[0] <= s["volume_true_ml"] <= vol[1])
        vol_low.append(s["volume_true_ml"] > vol[1])  # the estimate too low: the truth above the interval
        vol_w.append(vol[1] - vol[0])
        if s.get("risk_image") is not None and prob is not None:
            prob_cov.append(prob[0] <= s["risk_image"] <= prob[1])
            prob_w.append(prob[1] - prob[0])
    t = data["timings"]
    per_pass = [(x["with_tta_s"] - x["without_s"]) / data["passes"] for x in t] if data["passes"] else []
    below, above = settings.sides(settings.volume)
    return {
        "level": settings.level, "q_volume": round(settings.quantile(settings.volume), 4),
        "q_volume_below": round(below, 4), "q_volume_above": round(above, 4),
        "q_probability": round(settings.quantile(settings.probability), 4),
        "passes": data["passes"], "scans": len(data["scans"]), "scans_scored": len(scans),
        "detections_without_haematoma": sum(1 for s in data["scans"] if s.get("detected")
                                            and s["volume_true_ml"] == 0),
        "volume_coverage": round(float(np.mean(vol_cov)), 4) if vol_cov else None,
        "volume_mean_width_ml": round(float(np.mean(vol_w)), 3) if vol_w else None,
        "volume_truth_above_interval": round(float(np.mean(vol_low)), 4) if vol_low else None,
        "probability_coverage": round(float(np.mean(prob_cov)), 4) if prob_cov else None,
        "probability_n": len(prob_cov),
        "probability_mean_width": round(float(np.mean(prob_w)), 4) if prob_w else None,
        "interval_too_wide_rate": round(float(np.mean(too_wide)), 4) if too_wide else None,
        "request_s_without_tta_median": round(float(np.median([x["without_s"] for x in t])), 3) if t else None,
        "request_s_with_tta_median": round(float(np.median([x["with_tta_s"] for x in t])), 3) if t else None,
        "tta_pass_s_median": round(float(np.median(per_pass)), 3) if per_pass else None,
    }


def _width_limits(data: dict[str, Any], block: dict[str, Any], abstain_rate: float) -> dict[str, float]:
    """The abstention limits under the quantiles of ``block``: the probability-interval width and the volume
    interval's width relative to the volume above which only ``abstain_rate`` of the cohort's scored scans lie
    (each rounded up to 0.01), so that the widest intervals abstain, not nearly all of them. A volume interval
    still abstains only when it is also wider than ``max_volume_width_ml``, so small clots are not flagged for a
    width of a few millilitres."""
    import numpy as np

    from app.model.uncertainty import UncertaintySettings

    settings = UncertaintySettings.model_validate({k: v for k, v in block.items()
                                                   if k in ("level", "volume", "probability")})
    intervals = [(s, *_intervals(s, settings)) for s in data["scans"] if _scored(s)]
    widths = {"max_volume_width_rel": [(v[1] - v[0]) / s["volume_ml"] for s, v, _ in intervals
                                       if v is not None and s["volume_ml"] > 0]}
    if "probability" in block:  # only with a probability quantile fitted on this cohort
        widths["max_probability_width"] = [p[1] - p[0] for _, _, p in intervals if p is not None]
    return {key: float(math.ceil(float(np.quantile(w, 1.0 - abstain_rate)) * 100.0) / 100.0)
            for key, w in widths.items() if len(w) >= 10}


def _fit(data: dict[str, Any], level: float, manifest: Path, abstain_rate: float = 0.1,
         symmetric: bool = False) -> dict[str, Any]:
    vol, prob = _scores(data["scans"])
    stats: dict[str, list[float]] = {}
    for s in data["scans"]:
        for k, v in (s.get("statistics") or {}).items():
            stats.setdefault(k, []).append(float(v))
    ranges = {k: [round(min(v) - 0.1 * (max(v) - min(v)), 4), round(max(v) + 0.1 * (max(v) - min(v)), 4)]
              for k, v in stats.items()}
    where = f"{manifest.parent.name}: {len(data['scans'])} scans ({len(vol)} scored), {data['passes']} TTA passes"
    block: dict[str, Any] = {
        "level": level,
        "volume": {"q": _conformal_q([abs(v) for v in vol], level), "fitted_on": where, "n": len(vol)},
        "probability": {"q": _conformal_q(prob, level), "fitted_on": where, "n": len(prob)},
        "image_statistics": ranges,
    }
    if not symmetric and vol:  # one conformal quantile per side, each at (1 + level) / 2; never inside the estimate
        side = (1.0 + level) / 2.0
        block["volume"]["q_below"] = max(0.0, _conformal_q([-v for v in vol], side))
        block["volume"]["q_above"] = max(0.0, _conformal_q(vol, side))
    if block["probability"]["q"] is None:
        del block["probability"]
    limits = _width_limits(data, block, abstain_rate)
    if limits:
        block.update(limits)
        block["limits_fitted_on"] = (f"{where}: " + " and ".join(
            k.removeprefix("max_").replace("_", " ") for k in limits) + f" each exceeded by {abstain_rate:.0%} "
            "of the scored scans")
    return block


def _run(args: argparse.Namespace) -> int:
    from app.model.uncertainty import UncertaintySettings
    from app.weights.registry import resolve_model_dir

    if args.samples is not None and args.samples.exists() and not args.rerun:
        data = json.loads(args.samples.read_text())
    elif args.samples is None and args.merge:
        data = {"passes": None, "scans": [], "timings": []}
    else:
        data = _predict_all(args)
        if args.samples is not None:
            args.samples.parent.mkdir(parents=True, exist_ok=True)
            args.samples.write_text(json.dumps(data, indent=1) + "\n")
    for extra in args.merge or ():  # pool the cached predictions of other runs (same passes)
        more = json.loads(Path(extra).read_text())
        if data["passes"] not in (None, more["passes"]):
            raise SystemExit(f"{extra}: {more['passes']} TTA passes, not {data['passes']}")
        data = {"passes": more["passes"], "scans": data["scans"] + more["scans"],
                "timings": data["timings"] + more["timings"]}
    manifest_path = resolve_model_dir(args.weights_dir, args.version) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if not args.fit:
        print(json.dumps(_report(data, UncertaintySettings.from_manifest(manifest))))
        return 0
    block = _fit(data, args.level, args.manifest, args.abstain_rate, args.symmetric)
    current = manifest.get("uncertainty", {})
    block = {**current, **{k: v for k, v in block.items() if v is not None}}
    UncertaintySettings.model_validate(block)
    print(json.dumps(block, indent=2))
    if args.write:
        manifest["uncertainty"] = block
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"written to {manifest_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fit-uncertainty", help="fit or measure the TTA intervals and abstention ranges",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, required=True, help="labelled synthetic cohort (risk_image, masks)")
    p.add_argument("--weights-dir", type=Path, default=Path("weights"))
    p.add_argument("--version", default=None, help="weights version (default: the registry's default)")
    p.add_argument("--passes", type=int, default=8, help="TTA passes")
    p.add_argument("--level", type=float, default=0.9, help="nominal coverage of the fitted intervals")
    p.add_argument("--abstain-rate", type=float, default=0.1,
                   help="with --fit: share of the cohort's scored scans whose probability interval is too wide "
                   "(sets max_probability_width)")
    p.add_argument("--n", type=int, default=None, help="N scans only")
    p.add_argument("--offset", type=int, default=0, help="skip the first OFFSET cases of the manifest")
    p.add_argument("--merge", nargs="+", type=Path, default=None,
                   help="also pool these --samples caches (e.g. runs on other parts of the cohort)")
    p.add_argument("--followup", action="store_true", help="also the follow-up scans (followup_image)")
    p.add_argument("--fit", action="store_true", help="fit the settings (else: report coverage and cost)")
    p.add_argument("--symmetric", action="store_true",
                   help="with --fit: one volume quantile for both sides (default: one per side)")
    p.add_argument("--write", action="store_true", help="with --fit: write the block into the weights manifest")
    p.add_argument("--samples", type=Path, default=None, help="cache of the per-scan predictions (JSON)")
    p.add_argument("--rerun", action="store_true", help="predict again even when --samples exists")
    p.add_argument("--timing-scans", type=int, default=3, help="scans also predicted without TTA for the cost")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    p.set_defaults(func=_run)
