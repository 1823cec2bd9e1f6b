"""DICOM gateway benchmark: C-STORE in, results C-STOREd out, against ``python -m app serve`` on loopback.

1. Latency: after one untimed study (a running service has paid its one-off costs: first pass per input shape,
   imports of the encoders), one 30-slice 512x512 synthetic head CT (``model_training.synthetic``, with a
   haematoma) is sent over one association; the figure is the time from the C-STORE response of its last instance to the arrival of the last
   of its three result objects (SEG, SR, summary) at a C-STORE destination (a pynetdicom SCP in this process, so
   both clocks are the same). The target is ``ICH_SERIES_STABLE_S`` + 5 s. The server's own stage timings of
   that prediction (its ``prediction done`` log line) are reported next to it.
2. Memory: four different 30-slice studies sent at once over four associations; the server's resident set
   (``/proc/<pid>/status`` VmRSS, sampled every 50 ms) before, at its peak while receiving and analysing, and
   VmHWM at the end, next to the bytes sent.

    PYTHONPATH=. .venv/bin/python bench/dicom_gateway.py [--weights-dir weights] [--stable-s 10] [--slices 30]

Prints one JSON object. Uses the served default weights of ``--weights-dir`` (the registry default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.service import free_port  # noqa: E402

SERVICE_AET = "ICHEXPANSION"


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def write_study(out: Path, index: int, n_slices: int) -> list[Path]:
    from model_training.synthetic.case import generate_case
    from model_training.synthetic.dicom_writer import write_dicom_series

    case = generate_case(7, index, n_slices=n_slices, haematoma_volume_ml=30.0)
    return write_dicom_series(case, out)


class Destination:
    """A C-STORE SCP recording when each result object of each study arrived (``time.monotonic``)."""

    def __init__(self, port: int):
        from pynetdicom import AE, StoragePresentationContexts, evt

        self.arrivals: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        ae = AE(ae_title="BENCHDEST")
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: Any) -> int:
        study = str(event.dataset.StudyInstanceUID)
        with self.lock:
            self.arrivals.setdefault(study, []).append(time.monotonic())
        return 0

    def wait(self, study: str, count: int, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                got = list(self.arrivals.get(study, []))
            if len(got) >= count:
                return max(got)
            time.sleep(0.01)
        raise TimeoutError(f"{len(got)} of {count} result objects after {timeout_s} s")


def send(paths: list[Path], port: int) -> float:
    """C-STORE ``paths`` over one association; ``time.monotonic`` of the last response."""
    from pynetdicom import AE

    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(pydicom.uid.CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=SERVICE_AET)
    if not assoc.is_established:
        raise RuntimeError("association not established")
    last = 0.0
    for p in paths:
        status = assoc.send_c_store(p)
        if int(status.Status) != 0:
            raise RuntimeError(f"C-STORE status 0x{int(status.Status):04X}")
        last = time.monotonic()
    assoc.release()
    return last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--stable-s", type=float, default=10.0)
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ich-bench-dicom-") as tmp:
        tmpdir = Path(tmp)
        studies = [write_study(tmpdir / f"study{k}", k, args.slices) for k in range(2 + args.parallel)]
        http_port, dicom_port, dest_port = free_port(), free_port(), free_port()
        destination = Destination(dest_port)
        env = dict(os.environ, ICH_HOST="127.0.0.1", ICH_PORT=str(http_port), ICH_DICOM_PORT=str(dicom_port),
                   ICH_SERIES_STABLE_S=str(args.stable_s), ICH_DICOM_WORK_DIR=str(tmpdir / "work"),
                   ICH_DICOM_DESTINATIONS=f"BENCHDEST@127.0.0.1:{dest_port}", ICH_LOG_LEVEL="INFO",
                   PYTHONPATH=str(ROOT))
        log = open(tmpdir / "server.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--weights-dir", str(args.weights_dir)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{http_port}/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            else:
                raise RuntimeError("server not ready")
            uid = lambda paths: str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)  # noqa: E731
            # 1. latency of one study, after an untimed one
            send(studies[0], dicom_port)
            destination.wait(uid(studies[0]), 3, args.stable_s + 300)
            last_sent = send(studies[1], dicom_port)
            stored = destination.wait(uid(studies[1]), 3, args.stable_s + 120)
            latency = stored - last_sent
            log.flush()
            done_lines = [json.loads(line) for line in (tmpdir / "server.log").read_text().splitlines()
                          if '"prediction done"' in line]
            server_timings = done_lines[1]["timings_ms"] if len(done_lines) > 1 else {}
            # 2. four associations at once
            idle_kib = rss_kib(proc.pid)
            peak = [idle_kib]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak.append(rss_kib(proc.pid))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            parallel = studies[2:]
            t0 = time.monotonic()
            threads = [threading.Thread(target=send, args=(paths, dicom_port)) for paths in parallel]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            received_s = time.monotonic() - t0
            done = [destination.wait(uid(paths), 3, args.stable_s + 300) for paths in parallel]
            stop.set()
            sampler.join()
            sent_bytes = sum(p.stat().st_size for paths in parallel for p in paths)
            report = {
                "slices": args.slices, "stable_s": args.stable_s,
                "latency_last_instance_to_last_result_s": round(latency, 3),
                "latency_minus_stable_s": round(latency - args.stable_s, 3),
                "target_s": args.stable_s + 5,
                "server_timings_ms": server_timings,
                "parallel": {
                    "associations": len(parallel), "bytes_sent": sent_bytes,
                    "receive_s": round(received_s, 3),
                    "all_results_stored_s": round(max(done) - t0, 3),
                    "rss_idle_mib": round(idle_kib / 1024, 1), "rss_peak_mib": round(max(peak) / 1024, 1),
                    "vmhwm_mib": round(rss_kib(proc.pid, "VmHWM") / 1024, 1),
                },
            }
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
            destination.server.shutdown()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
