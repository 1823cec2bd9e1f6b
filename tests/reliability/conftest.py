"""Fixtures of the reliability suite: one session-wide fault server (real uvicorn on loopback) and a canary
phantom series. Budget of the whole suite: < 4 min on 2 CPU cores (see each module's docstring)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

pytest.importorskip("app.volumetry", reason="app.volumetry not present yet")

from .harness import CANARY_STRINGS, FaultServer, start_fault_server, write_canary_series  # noqa: E402

MAX_BODY_BYTES = 32 * 1024**2
MAX_FILES = 200
SESSION_ENV = {
    "ICH_MAX_IN_FLIGHT": "2",
    "ICH_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    "ICH_MAX_FILES": str(MAX_FILES),
    "ICH_MAX_ARCHIVE_MEMBERS": "300",
    "ICH_MAX_UNCOMPRESSED_BYTES": str(64 * 1024**2),
    "ICH_MAX_COMPRESSION_RATIO": "50",
    "ICH_REQUEST_TIMEOUT_S": "20",
    "ICH_RESULT_MAX_ITEMS": "50",
    "ICH_SHUTDOWN_GRACE_S": "10",
    "ICH_RETRY_AFTER_S": "2",
}


@pytest.fixture(scope="session")
def upload_area(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's ICH_UPLOAD_DIR: the only place it may write request data."""
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, upload_area: Path) -> FaultServer:
    tmp = tmp_path_factory.mktemp("server")
    srv = start_fault_server(tmp, {**SESSION_ENV, "ICH_UPLOAD_DIR": str(upload_area)})
    yield srv
    code = srv.stop()
    log = srv.log_text()
    assert code in (0, -signal.SIGTERM), log[-3000:]
    assert not list(upload_area.iterdir()), "temporary upload files left behind"


@pytest.fixture(autouse=True)
def _reset_faults(request: pytest.FixtureRequest) -> None:
    """Every test starts with no injected faults on the session server (when it uses it)."""
    if "server" in request.fixturenames:
        request.getfixturevalue("server").set_faults()


@pytest.fixture(scope="session")
def canary_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """12 axial 64x64 CT slices (5 mm) carrying the canary patient module."""
    return write_canary_series(tmp_path_factory.mktemp("canary") / "series")


__all__ = ["CANARY_STRINGS"]
