"""``python -m app serve [--host H] [--port P]``: run the HTTP service with uvicorn.

Settings come from ``ICH_*`` environment variables (see docs/service.md); ``--host``/``--port`` and the
other flags override them. On SIGTERM/SIGINT uvicorn stops accepting connections, lets in-flight requests
finish (up to ``ICH_SHUTDOWN_GRACE_S``), then the application stops its worker pools.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the HTTP prediction service", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=None, help="bind address (default ICH_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default ICH_PORT or 8000)")
    p.add_argument("--weights-dir", type=Path, default=None)
    p.add_argument("--weights-version", default=None)
    p.add_argument("--device", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from app.api import ServiceSettings, create_app

    overrides = {k: v for k, v in {
        "host": args.host, "port": args.port, "weights_dir": args.weights_dir,
        "weights_version": args.weights_version, "device": args.device,
    }.items() if v is not None}
    settings = ServiceSettings(**overrides)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s), proxy_headers=False,
        server_header=False,
    )
    uvicorn.Server(config).run()
    return 0
