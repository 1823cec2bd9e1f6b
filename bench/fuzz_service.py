"""Long-run mutation fuzzing of ``POST /v1/predictions`` against a server this script starts on loopback.

``python bench/fuzz_service.py --cases 10000 --max-seconds 3600 --seed 1`` prints one JSON object: cases run,
outcome counts (``200``, ``<status>:<code>``, ``error:<type>``), oracle violations (first 50, with the
reproducing ``mutator[seed:index]``), request latency percentiles, the server's backstop counters (library
exceptions that escaped ingestion, unhandled errors), its resident memory at the end and the canary strings
found in its log (must be none). Bounded in count and time. The server
serves the small deterministic test model (tests/reliability/fault_server.py) unless ``--weights-dir`` is given.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reliability.harness import canary_hits, check_answer, start_fault_server, write_canary_series  # noqa: E402
from reliability.mutators import make_case  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--max-seconds", type=float, default=3600.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--weights-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ich-fuzz-") as tmp:
        tmp_path = Path(tmp)
        files = [p.read_bytes() for p in write_canary_series(tmp_path / "series")]
        server = start_fault_server(tmp_path / "server", {"ICH_MAX_BODY_BYTES": str(32 * 1024**2),
                                                          "ICH_REQUEST_TIMEOUT_S": "60"},
                                    weights_dir=args.weights_dir)
        outcomes: collections.Counter[str] = collections.Counter()
        violations: list[str] = []
        latencies: list[float] = []
        t0 = time.monotonic()
        n = 0
        try:
            with httpx.Client(base_url=server.base_url, timeout=120) as client:
                while n < args.cases and time.monotonic() - t0 < args.max_seconds:
                    case = make_case(args.seed, n, files)
                    n += 1
                    s = time.perf_counter()
                    try:
                        r = client.post("/v1/predictions", **case.request_kwargs())
                        outcomes[check_answer(r)] += 1
                    except (AssertionError, httpx.HTTPError) as exc:
                        outcomes[f"error:{type(exc).__name__}"] += 1
                        if len(violations) < 50:
                            violations.append(f"{case.name}: {str(exc)[:300]}")
                    latencies.append((time.perf_counter() - s) * 1000)
                ready = client.get("/health/ready").status_code
                counters = metric_sums(client.get("/metrics").text, ("ich_ingestion_backstop_total",
                                                                     "ich_unhandled_errors_total"))
                rss_mib = rss_kib(server.process.pid) / 1024
        finally:
            code = server.stop()
        leaked = canary_hits(server.log_text())
        lat = np.array(latencies or [0.0])
        print(json.dumps({
            "cases": n, "seconds": round(time.monotonic() - t0, 1), "seed": args.seed,
            "outcomes": dict(outcomes.most_common()), "violations": violations,
            "latency_ms": {q: round(float(np.percentile(lat, int(q[1:]))), 1) for q in ("p50", "p95", "p99")},
            "ready_after": ready, "server_exit": code, "server_counters": counters,
            "server_rss_mib_at_end": round(rss_mib, 1), "canary_hits_in_server_log": leaked,
        }, indent=2))
    return 1 if violations or leaked else 0


def metric_sums(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sum of every sample of each Prometheus counter in ``names`` (all label sets)."""
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return sums


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of /proc/PID/status); 0 where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
