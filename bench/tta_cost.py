"""Cost of test-time augmentation: one synthetic DICOM phantom predicted by the default weights with 0 and with N
TTA passes (``Predictor(..., tta_passes=N)``), interleaved, ``--repeats`` times; prints JSON with the median
request time of each (``load_series`` excluded: the series is ingested once), the ratio and the cost per pass
(seconds), and the stage timings of the last runs.

    python -m bench.tta_cost --passes 4 --repeats 3 [--device cpu] [--compile auto]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    args = parser.parse_args()

    from app.inference import Predictor
    from app.ingestion import load_series
    from model_training.synthetic import generate_case, write_dicom_series

    case = generate_case(20240607, 1, haematoma_volume_ml=20.0, location="basal_ganglia", markers={})
    with tempfile.TemporaryDirectory() as tmp:
        series = load_series([str(p) for p in write_dicom_series(case, Path(tmp))])
    plain = Predictor.from_registry(args.weights_dir, None, args.device, compile=args.compile, tta_passes=0)
    tta = Predictor.from_registry(args.weights_dir, None, args.device, compile=args.compile,
                                  tta_passes=args.passes)
    for predictor in (plain, tta):  # compile and warm up outside the timed runs
        predictor.predict(series)
    times: dict[str, list[float]] = {"without": [], "with": []}
    last: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for name, predictor in (("without", plain), ("with", tta)):
            t0 = time.perf_counter()
            result = predictor.predict(series)
            times[name].append(time.perf_counter() - t0)
            last[name] = result.timings_ms
    without, with_tta = statistics.median(times["without"]), statistics.median(times["with"])
    print(json.dumps({
        "device": str(plain.device), "compile": plain.runner.compiled, "passes": args.passes,
        "repeats": args.repeats, "request_s_without_tta": round(without, 3), "request_s_with_tta": round(with_tta, 3),
        "ratio": round(with_tta / without, 2), "per_pass_s": round((with_tta - without) / max(args.passes, 1), 3),
        "stages_ms_without": last["without"], "stages_ms_with": last["with"],
        "volume_ml": result.volume_ml, "volume_interval_ml": result.volume_interval_ml,
        "probability": result.probability, "probability_interval": result.probability_interval,
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
