"""In-process latency of one study with registered weights: ``load_series`` + ``Predictor.predict``, repeated.

Usage::

    PYTHONPATH=. .venv/bin/python bench/predict_latency.py SERIES [SERIES ...] [--weights weights] [--version V]
        [--repeats 5] [--warmup 2] [--compile auto]

Each SERIES is a DICOM folder or a NIfTI file. Prints one JSON object per series: the median, minimum and maximum
wall time (s) of the repeats, the median of each stage (``timings_ms``), whether a haematoma was detected and its
volume (mL), and the post-processing's share by step (cProfile of one ``finish``: boundary refinement, NCCT-marker
measurements, texture measurements, clot measurements; s).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time
from pathlib import Path

PROFILED = {
    "refine_mask": "refinement_s", "measure_markers": "markers_s", "measure_texture": "texture_s",
    "clot_features": "clot_features_s",
}


def _profile_finish(predictor, series) -> dict[str, float]:
    prepared = predictor.prepare(series)
    raw = predictor.infer(prepared.tensor)
    profile = cProfile.Profile()
    profile.enable()
    predictor.finish(series, prepared, raw)
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    out = {v: 0.0 for v in PROFILED.values()}
    for (_, _, name), (_, _, _, cumulative, _) in stats.items():
        if name in PROFILED:
            out[PROFILED[name]] = round(max(out[PROFILED[name]], cumulative), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("series", nargs="+", type=Path)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--version", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    args = parser.parse_args(argv)

    from app.inference import Predictor
    from app.ingestion import load_series

    predictor = Predictor.from_registry(args.weights, args.version, "cpu", compile=args.compile)
    predictor.warm_up(args.warmup)
    for path in args.series:
        walls, stages = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            series = load_series([str(path)])
            result = predictor.predict(series)
            walls.append(time.perf_counter() - t0)
            stages.append(dict(result.timings_ms))
        names = sorted({k for s in stages for k in s})
        print(json.dumps({
            "series": "/".join(path.parts[-2:]), "weights": f"{predictor.weights.name}-{predictor.weights.version}",
            "repeats": args.repeats, "median_s": round(statistics.median(walls), 3),
            "min_s": round(min(walls), 3), "max_s": round(max(walls), 3),
            "stages_ms": {k: round(statistics.median(s.get(k, 0.0) for s in stages), 1) for k in names},
            "detected": bool(result.detected), "volume_ml": round(float(result.volume_ml), 2),
            "postprocess_steps": _profile_finish(predictor, load_series([str(path)])),
        }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
