"""Serve the real app (uvicorn, loopback) with a fault-injecting predictor, for the reliability suite.

The service has no fault-injection hook of its own, so this harness wraps the predictor: before every
forward pass it reads the JSON control file named by ``ICH_TEST_FAULT_FILE`` and may

* ``{"oom": n}``: raise :class:`app.inference.InferenceOutOfMemory` (what ``Predictor.infer`` raises on a CUDA
  out-of-memory error) for the next ``n`` passes;
* ``{"error": n}``: raise ``RuntimeError`` for the next ``n`` passes (a forced inference failure);
* ``{"delay_s": x}``: sleep ``x`` seconds before each pass (a slow device, to hold requests in flight).

Counters are decremented in the file, so the test controls exactly how many requests fail. The warm-up pass
runs before the control file is consulted (faults apply to requests only). With ``--weights-dir D`` the
weights are loaded through the registry exactly as ``python -m app serve`` does (no fault injection).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from app.inference import InferenceOutOfMemory, Predictor, RawPrediction  # noqa: E402

_LOCK = threading.Lock()


def _take_fault(path: Path) -> tuple[str | None, float]:
    """Read the control file; consume one ``oom``/``error`` unit. Returns (fault kind or None, delay s)."""
    with _LOCK:
        try:
            faults: dict[str, Any] = json.loads(path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return None, 0.0
        delay = float(faults.get("delay_s", 0.0))
        for kind in ("oom", "error"):
            if int(faults.get(kind, 0)) > 0:
                faults[kind] = int(faults[kind]) - 1
                tmp = path.with_suffix(".consume")
                tmp.write_text(json.dumps(faults))
                os.replace(tmp, path)
                return kind, delay
        return None, delay


class FaultInjectingPredictor(Predictor):
    """A :class:`Predictor` whose ``infer`` obeys the control file once ``armed`` (after warm-up)."""

    def __init__(self, *args: Any, fault_file: Path, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fault_file = fault_file
        self.armed = False

    def warm_up(self, repeats: int = 1) -> float:
        last = super().warm_up(repeats)
        self.armed = True
        return last

    def infer(self, tensor: Any) -> RawPrediction:
        if self.armed:
            kind, delay = _take_fault(self.fault_file)
            if delay > 0:
                time.sleep(delay)
            if kind == "oom":
                raise InferenceOutOfMemory("the device ran out of memory for this series (injected)")
            if kind == "error":
                raise RuntimeError("injected inference failure")
        return super().infer(tensor)


def main() -> None:
    import uvicorn
    from service_fixtures import random_weights

    from app.api import ServiceSettings, create_app

    parser = argparse.ArgumentParser()
    parser.add_argument("--weights-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.weights_dir is not None:  # as ``python -m app serve``: weights loaded and verified before serving
        settings = ServiceSettings(weights_dir=args.weights_dir)
        predictor = Predictor.from_registry(settings.weights_dir, settings.weights_version, settings.device,
                                            settings.amp)
        app = create_app(settings, predictor=predictor)
    else:
        fault_file = Path(os.environ["ICH_TEST_FAULT_FILE"])
        predictor = FaultInjectingPredictor(random_weights(), "cpu", fault_file=fault_file)
        settings = ServiceSettings()
        if settings.warmup_passes == 0:
            predictor.armed = True
        app = create_app(settings, predictor=predictor)
    settings = app.state.settings
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=int(settings.shutdown_grace_s))


if __name__ == "__main__":
    main()
