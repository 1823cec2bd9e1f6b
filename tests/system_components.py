"""Real system components (Debian packages listed in scripts/system-packages.txt) that some tests start on loopback.

A missing component skips the test with a message naming the package, and fails it under ``CI=true``, where the
set-up (scripts/system_packages.sh) must have installed it."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require_executable(name: str, package: str, *candidates: str) -> Path:
    """Absolute path of executable ``name`` (searched on PATH, then in ``candidates``), provided by Debian
    ``package``; skips (or fails under CI=true) when it is absent."""
    found = shutil.which(name)
    if found is None:
        found = next((c for c in candidates if Path(c).is_file() and os.access(c, os.X_OK)), None)
    if found is None:
        message = f"{name} not found: install the Debian package '{package}' (scripts/system_packages.sh as root)"
        if running_in_ci():
            pytest.fail(message + "; CI=true requires it")
        pytest.skip(message)
    return Path(found)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(process: subprocess.Popen, url: str, timeout: float, log_path: Path, what: str,
                  poll_s: float = 0.1) -> None:
    """Wait until ``GET url`` answers 200 (``what``: the component's name in errors). Raises ``RuntimeError`` with
    the end of ``log_path`` when the process exits first or ``timeout`` (s) passes; the caller stops it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log_path.read_text(errors='replace')[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(poll_s)
    raise RuntimeError(f"{what} not up within {timeout} s:\n{log_path.read_text(errors='replace')[-4000:]}")
