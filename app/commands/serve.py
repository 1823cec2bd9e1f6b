"""``python -m app serve [--host H] [--port P]``: run the HTTP service with uvicorn.

Settings come from ``ICH_*`` environment variables (see README.md); ``--host``/``--port`` and the
other flags override them. On SIGTERM/SIGINT uvicorn stops accepting connections, lets in-flight requests
finish (up to ``ICH_SHUTDOWN_GRACE_S``), then the application stops its worker pools.

The weights are loaded and checksum-verified *before* uvicorn starts: missing, corrupted or tampered weights stop
start-up with the registry's message on stderr and exit status 2, instead of a process that is never ready.
The warm-up pass then runs in the background while ``/health/live`` already answers.

With ``ICH_DICOM_PORT`` set the same process also runs the DICOM listener and its outbox
(:mod:`app.dicom_network`): studies C-STOREd by a PACS are analysed like uploads and their SEG, SR and summary
are sent to ``ICH_DICOM_DESTINATIONS``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the HTTP prediction service (and the DICOM listener)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=None, help="bind address (default ICH_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default ICH_PORT or 8000)")
    p.add_argument("--weights-dir", type=Path, default=None)
    p.add_argument("--weights-version", default=None)
    p.add_argument("--device", default=None)
    p.set_defaults(func=run)


EXIT_WEIGHTS = 2


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from app.api import ServiceSettings, create_app
    from app.inference import Predictor
    from app.weights.registry import WeightsError

    overrides = {k: v for k, v in {
        "host": args.host, "port": args.port, "weights_dir": args.weights_dir,
        "weights_version": args.weights_version, "device": args.device,
    }.items() if v is not None}
    settings = ServiceSettings(**overrides)
    if settings.retain_cpu_memory:
        # before any thread exists: threads created later then share glibc's main arena, where the policy holds
        from app.model.device import resolve_device
        from app.model.memory import set_cpu_memory_retention

        with contextlib.suppress(ValueError, RuntimeError):  # an unusable device is reported just below
            if resolve_device(settings.device).type == "cpu":
                set_cpu_memory_retention(True)
    try:
        predictor = Predictor.from_registry(settings.weights_dir, settings.weights_version, settings.device,
                                            settings.amp, compile=settings.compile)
    except WeightsError as exc:
        print(f"error: cannot serve: weights in {settings.weights_dir} are unusable: {exc}", file=sys.stderr)
        return EXIT_WEIGHTS
    except (ValueError, RuntimeError, OSError) as exc:  # e.g. an unavailable device, an unreadable file
        print(f"error: cannot serve: loading the model failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_WEIGHTS
    app = create_app(settings, predictor=predictor)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s), proxy_headers=False,
        server_header=False,
    )
    uvicorn.Server(config).run()
    return 0
