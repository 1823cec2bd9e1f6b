"""Load levels against a server this script starts on loopback; prints JSON per level.

``python bench/load_service.py --levels 1,2,4,8 --requests 40 --max-seconds 600`` posts the canary phantom as a
ZIP with a bounded async httpx generator at each concurrency level and reports outcome counts (only 200 and
503 + Retry-After are acceptable), throughput, latency percentiles and the readiness codes seen while loaded.
Bounded in count (requests per level) and time (per level and overall).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reliability.harness import start_fault_server, write_canary_series  # noqa: E402
from reliability.test_load import _load  # noqa: E402
from service_fixtures import zip_bytes  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=40, help="requests per level")
    ap.add_argument("--max-in-flight", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--weights-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    levels = [int(v) for v in args.levels.split(",") if v]
    ok = True
    with tempfile.TemporaryDirectory(prefix="ich-load-") as tmp:
        tmp_path = Path(tmp)
        body = zip_bytes(write_canary_series(tmp_path / "series"))
        server = start_fault_server(tmp_path / "server", {"ICH_MAX_IN_FLIGHT": str(args.max_in_flight)},
                                    weights_dir=args.weights_dir)
        t_end = time.monotonic() + args.max_seconds
        try:
            for level in levels:
                left = t_end - time.monotonic()
                if left <= 0:
                    break
                t0 = time.monotonic()
                try:
                    stats = asyncio.run(_load(server.base_url, body, level, args.requests, left, probe_ready=True))
                except (AssertionError, TimeoutError) as exc:
                    ok = False
                    stats = {"concurrency": level, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                stats["seconds"] = round(time.monotonic() - t0, 1)
                if "outcomes" in stats:
                    stats["throughput_rps"] = round(stats["outcomes"].get("200", 0) / max(stats["seconds"], 1e-9), 2)
                print(json.dumps(stats), flush=True)
        finally:
            server.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
