"""Units of the API package: store, API keys, streaming upload parser, settings."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from app.api.problems import Problem
from app.api.security import ApiKeyAuth
from app.api.settings import ServiceSettings
from app.api.store import ResultStore
from app.api.uploads import receive_upload


def test_store_ttl_count_and_bytes() -> None:
    now = [0.0]
    store = ResultStore(max_items=2, max_bytes=10_000, ttl_s=10.0, clock=lambda: now[0])
    store.put("a", {"id": "a"}, {"f": b"x" * 10})
    store.put("b", {"id": "b"}, {})
    store.put("c", {"id": "c"}, {})
    assert store.get("a") is None and store.get("b") is not None  # count limit evicts the oldest
    store.put("d", {"id": "d"}, {"f": b"x" * 7000})  # bytes limit evicts c
    assert store.get("c") is None and store.get("d") is not None
    now[0] = 11.0
    assert store.get("d") is None and store.stats()["items"] == 0


def test_api_keys_plain_and_hashed() -> None:
    auth = ApiKeyAuth(["plain-key", "sha256:" + hashlib.sha256(b"hashed-key").hexdigest()])
    assert auth.enabled
    assert auth.check("plain-key") and auth.check("hashed-key")
    assert not auth.check("wrong") and not auth.check(None) and not auth.check("")
    assert ApiKeyAuth([]).check(None)
    with pytest.raises(ValueError):
        ApiKeyAuth(["sha256:abc"])


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICH_MAX_IN_FLIGHT", "7")
    monkeypatch.setenv("ICH_API_KEYS", "a, b")
    s = ServiceSettings()
    assert s.max_in_flight == 7 and s.api_key_entries() == ["a", "b"]


async def _chunks(data: bytes, size: int = 7):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _receive(body: bytes, ctype: str, **kw):
    kw.setdefault("max_body_bytes", 10_000)
    kw.setdefault("max_files", 10)
    return asyncio.run(receive_upload(ctype, None, _chunks(body), **kw))


def test_multipart_form_parts_and_fields(tmp_path) -> None:
    b = "BND"
    body = (
        f"--{b}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"../../etc/x.dcm\"\r\n\r\nAAAA\r\n"
        f"--{b}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"y\"\r\n\r\nBB\r\n"
        f"--{b}\r\nContent-Disposition: form-data; name=\"series_instance_uid\"\r\n\r\n1.2.3\r\n--{b}--\r\n"
    ).encode()
    up = _receive(body, f"multipart/form-data; boundary={b}", upload_dir=tmp_path)
    try:
        assert [p.read_bytes() for p in up.files] == [b"AAAA", b"BB"]
        assert all(p.parent == up.directory for p in up.files)  # client file names never used on disk
        assert up.fields == {"series_instance_uid": "1.2.3"}
    finally:
        up.cleanup()
    assert not up.directory.exists()


def test_upload_limits_clean_up(tmp_path) -> None:
    with pytest.raises(Problem) as exc:
        _receive(b"x" * 20_001, "application/zip", max_body_bytes=20_000, upload_dir=tmp_path)
    assert exc.value.status == 413
    with pytest.raises(Problem) as exc:
        _receive(b"--B\r\nContent-Disposition: form-data; name=\"files\"\r\n\r\nAA", "multipart/form-data; boundary=B",
                 upload_dir=tmp_path)
    assert exc.value.status == 400
    with pytest.raises(Problem) as exc:
        _receive(b"hello", "text/plain", upload_dir=tmp_path)
    assert exc.value.status == 415
    parts = b"".join(b"--B\r\nContent-Type: application/dicom\r\n\r\nX\r\n" for _ in range(3)) + b"--B--\r\n"
    with pytest.raises(Problem) as exc:
        _receive(parts, 'multipart/related; type="application/dicom"; boundary=B', max_files=2, upload_dir=tmp_path)
    assert exc.value.code == "too_many_files"
    assert list(tmp_path.iterdir()) == []  # every failed upload removed its folder


class _CountingCompact:
    """A stand-in compact result that counts renders (the real one is exercised in tests/test_outputs.py)."""

    nbytes = 1000

    def __init__(self) -> None:
        self.calls: list[str] = []

    def render(self, name: str) -> bytes:
        if name != "a.bin":
            raise KeyError(name)
        self.calls.append(name)
        return b"y" * 3000


def test_store_renders_lazily_once_and_counts_bytes() -> None:
    import concurrent.futures

    store = ResultStore(max_items=10, max_bytes=20_000, ttl_s=10.0)
    compact = _CountingCompact()
    store.put("k", {"id": "k"}, compact=compact)
    before = store.stats()["bytes"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: store.get_file("k", "a.bin"), range(8)))
    assert results == [b"y" * 3000] * 8 and compact.calls == ["a.bin"]  # rendered once, then cached
    assert store.stats()["bytes"] == before + 3000
    assert store.get_file("k", "other.bin") is None and store.get_file("missing", "a.bin") is None
    # rendered bytes count against the budget: a new entry now pushes the old one out
    store.put("big", {"id": "big"}, {"f": b"z" * 12_000})
    assert store.get("k") is None and store.stats()["bytes"] <= 20_000


def test_log_lines_redact_uids_and_keep_standard_ones() -> None:
    import json
    import logging

    from app.api.logging_config import JsonFormatter, request_id_var

    record = logging.LogRecord("highdicom.base", logging.INFO, __file__, 1,
                               'copy attributes from dataset "%s" (syntax %s)',
                               ("1.2.826.0.1.3680043.8.498.123456789", "1.2.840.10008.1.2.4.53"), None)
    record.series = "2.25.329800735698586629295641978511506172918"
    token = request_id_var.set("abc123")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert "1.2.826.0.1.3680043" not in line["msg"] and "uid:" in line["msg"]
    assert "1.2.840.10008.1.2.4.53" in line["msg"]  # transfer syntaxes identify no one
    assert line["series"].startswith("uid:") and line["request_id"] == "abc123"


def test_openapi_docs_can_be_switched_off() -> None:
    import httpx

    from app.api import create_app

    async def get(docs: bool, path: str) -> httpx.Response:  # no lifespan: the model is not loaded
        app = create_app(ServiceSettings(docs_enabled=docs, weights_dir="/nonexistent"))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.get(path)

    for path in ("/docs", "/redoc", "/openapi.json"):
        assert asyncio.run(get(False, path)).status_code == 404
    assert asyncio.run(get(True, "/openapi.json")).json()["paths"]["/v1/predictions"]["post"]


def test_value_quoting_libraries_are_logged_without_values(capsys: pytest.CaptureFixture[str]) -> None:
    """Regression, no element values in logs: pydicom log records and warnings quote element values; the
    service logs neither."""
    import logging
    import warnings

    from app.api.logging_config import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, warnings.showwarning)
    try:
        configure_logging("INFO")
        logging.getLogger("pydicom").error("Invalid value for VR PN: 'Canarywick^Zebedee'")
        logging.getLogger("pydicom.valuerep").error("bad DA %s", "19230417")
        warnings.warn_explicit("Invalid value for VR LO: 'CANARY-7731-XQ'", UserWarning, "dcmlib/valuerep.py", 12,
                               module="dcmlib")  # not pydicom: app.ingestion silences those at the source
        logging.getLogger("pydicom").warning("below ERROR: dropped 'ACCCANARY99'")
    finally:
        root.handlers[:], warnings.showwarning = saved[0], saved[2]
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    for canary in ("Canarywick", "19230417", "CANARY-7731-XQ", "ACCCANARY99"):
        assert canary not in err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [ln["logger"] for ln in lines] == ["pydicom", "pydicom.valuerep", "app.warnings"]
    assert lines[2]["category"] == "UserWarning" and lines[2]["where"] == "valuerep.py:12"


def test_unexpected_exception_is_a_clean_500_counted_and_value_free(capsys: pytest.CaptureFixture[str]) -> None:
    """Regression, keep-alive survives an unexpected error: an exception no handler claims is answered by the
    request_context middleware itself (never re-raised to Starlette, which would drop the keep-alive
    connection), counted, and logged without its message."""
    import httpx
    from fastapi import APIRouter

    from app.api import create_app

    app = create_app(ServiceSettings(weights_dir="/nonexistent"))
    boom = APIRouter()

    @boom.get("/boom")
    async def _boom() -> None:
        raise RuntimeError("value 'Canarywick^Zebedee'")

    app.include_router(boom)

    async def go() -> tuple[httpx.Response, str]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/boom")
            return r, (await client.get("/metrics")).text

    r, metrics = asyncio.run(go())
    assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "internal_error" and "Canarywick" not in r.text
    assert 'ich_unhandled_errors_total{error_type="RuntimeError",route="/boom"} 1.0' in metrics
    assert "Canarywick" not in capsys.readouterr().err


def test_readiness_is_503_while_saturated() -> None:
    """Regression, readiness reports saturation: /health/ready answers 503 + Retry-After while every admission
    slot is taken."""
    import httpx

    from app.api import create_app

    app = create_app(ServiceSettings(weights_dir="/nonexistent", max_in_flight=2, retry_after_s=3))
    service = app.state.service
    service.ready = True

    async def ready() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.get("/health/ready")

    assert asyncio.run(ready()).status_code == 200
    assert service.try_admit() and service.try_admit() and not service.try_admit()
    r = asyncio.run(ready())
    assert r.status_code == 503 and r.headers["Retry-After"] == "3" and r.json()["status"] == "saturated"
    reads = asyncio.run(_get(app, "/health/reads"))
    assert reads.status_code == 200 and reads.json()["status"] == "ready"  # reads go on while saturated
    service.release()
    assert asyncio.run(ready()).status_code == 200
    service.release()


async def _get(app, path: str):
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get(path)


def test_read_readiness_ignores_model_loading_and_follows_the_store() -> None:
    """/health/reads answers 200 while the model is still loading (results in the store can be read) and 503
    ``store_unavailable`` + Retry-After when the store fails."""
    from app.api import create_app

    app = create_app(ServiceSettings(weights_dir="/nonexistent", retry_after_s=2))
    service = app.state.service
    assert not service.ready
    assert asyncio.run(_get(app, "/health/ready")).status_code == 503
    assert asyncio.run(_get(app, "/health/reads")).status_code == 200

    async def failing() -> str:
        return "connection refused"

    service.store_failure = failing
    r = asyncio.run(_get(app, "/health/reads"))
    assert r.status_code == 503 and r.headers["Retry-After"] == "2" and r.json()["status"] == "store_unavailable"
