"""Adversarial uploads against the real server: zip bombs (by ratio and nested), absolute and ``..`` member
paths (nothing may be written outside the upload area), thousands of tiny parts, a body one byte over the
limit, a lying Content-Length, and slow / stalled clients. Budget: about 35 s (the stalled client waits for
the 20 s request time limit of the session server)."""

from __future__ import annotations

import io
import socket
import time
import zipfile
from pathlib import Path

import httpx

from .conftest import MAX_BODY_BYTES, MAX_FILES
from .harness import FaultServer, check_answer

URL = "/v1/predictions"


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _post_zip(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post(URL, content=body, headers={"Content-Type": "application/zip"})


def _code(r: httpx.Response) -> str:
    return check_answer(r)


def test_zip_bombs_refused(server: FaultServer) -> None:
    by_ratio = _zip([("zeros.dcm", b"\0" * (16 * 1024**2))])  # ratio ~1000 > 50
    nested = _zip([("l1.zip", _zip([("l2.zip", _zip([("l3.zip", _zip([("x.dcm", b"\0" * 1024**2)]))]))]))])
    many_small_bombs = _zip([(f"z{i}.dcm", b"\0" * (2 * 1024**2)) for i in range(40)])  # 80 MiB > 64 MiB
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        t0 = time.monotonic()
        assert _code(_post_zip(client, by_ratio)) == "413:archive_limit_exceeded"
        assert _code(_post_zip(client, nested)) in {"413:archive_limit_exceeded", "400:archive_invalid"}
        assert _code(_post_zip(client, many_small_bombs)) == "413:archive_limit_exceeded"
        assert time.monotonic() - t0 < 20, "bombs must be refused while decompressing, not after"
        assert client.get("/health/ready").status_code == 200


def test_member_paths_never_used_on_disk(server: FaultServer, canary_series: list[Path], upload_area: Path,
                                         tmp_path: Path) -> None:
    """Members named with absolute paths, ``..`` and drive letters are read as data only."""
    marker = f"ich-escape-{time.time_ns()}"
    targets = [Path("/tmp") / f"{marker}.dcm", upload_area.parent / f"{marker}.dcm", tmp_path / f"{marker}.dcm"]
    data = [p.read_bytes() for p in canary_series]
    members = [(str(targets[0]), data[0]), (f"../../../../{targets[1]}", data[1]),
               (f"../{marker}.dcm", data[2]), (f"C:\\{marker}.dcm", data[3])]
    members += [(f"s/{i}.dcm", d) for i, d in enumerate(data[4:])]
    before = set(upload_area.iterdir())
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        r = _post_zip(client, _zip(members))
    assert _code(r) == "200"  # the series is complete: the odd names are labels, nothing more
    assert r.json()["input"]["slice_count"] == len(data)
    for t in targets:
        assert not t.exists(), f"archive member written to {t}"
    assert not [p for p in Path("/tmp").glob(f"*{marker}*")]
    assert set(upload_area.iterdir()) == before  # request files removed


def test_thousands_of_tiny_parts(server: FaultServer) -> None:
    parts = [("files", (f"p{i}.dcm", b"x", "application/dicom")) for i in range(3000)]
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        assert _code(client.post(URL, files=parts)) == "413:too_many_files"
        parts = [("files", (f"p{i}.dcm", b"x", "application/dicom")) for i in range(MAX_FILES)]
        assert _code(client.post(URL, files=parts)) == "415:not_dicom"
        tiny_zip = _zip([(f"m{i}", b"y") for i in range(2000)])
        assert _code(_post_zip(client, tiny_zip)) == "413:archive_limit_exceeded"
        assert client.get("/health/ready").status_code == 200


def test_body_limit_exact(server: FaultServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        over = _post_zip(client, b"PK\x03\x04" + b"\0" * (MAX_BODY_BYTES - 3))
        assert _code(over) == "413:body_too_large"
        at_limit = _post_zip(client, b"PK\x03\x04" + b"\0" * (MAX_BODY_BYTES - 4))
        assert _code(at_limit) in {"400:archive_invalid"}  # read in full, then refused as a broken archive


def _raw_request(server: FaultServer, head: bytes, body_chunks: list[bytes], delay_s: float = 0.0,
                 timeout: float = 40.0) -> bytes:
    """Send a hand-written HTTP/1.1 request over a socket (to lie about Content-Length or go slowly)."""
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            if delay_s:
                time.sleep(delay_s)
            try:
                sock.sendall(chunk)
            except OSError:
                break
        data = b""
        while True:
            try:
                got = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not got:
                break
            data += got
            if b"\r\n\r\n" in data and len(data) > data.index(b"\r\n\r\n") + 4 + 20:
                break
    return data


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1") else -1


def test_lying_content_length(server: FaultServer) -> None:
    port_head = f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/zip\r\n"
    # declares a small body but keeps sending: the server must count what arrives
    head = (port_head + "Content-Length: 10\r\n\r\n").encode()
    raw = _raw_request(server, head, [b"PK\x03\x04" + b"\0" * 6, b"\0" * (MAX_BODY_BYTES + 10)])
    assert _status(raw) in {400, 413, 415}, raw[:300]
    # declares more than the limit: refused before reading
    head = (port_head + f"Content-Length: {MAX_BODY_BYTES * 100}\r\n\r\n").encode()
    raw = _raw_request(server, head, [b"PK\x03\x04"])
    assert _status(raw) == 413, raw[:300]
    # declares a big body (under the limit) but sends a short one and closes: answered or closed, no hang
    head = (port_head + f"Content-Length: {MAX_BODY_BYTES // 2}\r\n\r\n").encode()
    t0 = time.monotonic()
    raw = _raw_request(server, head, [b"PK\x03\x04" + b"\0" * 100])
    assert time.monotonic() - t0 < 30
    assert raw == b"" or 400 <= _status(raw) < 500, raw[:300]
    assert httpx.get(f"{server.base_url}/health/ready", timeout=10).status_code == 200


def test_slow_and_stalled_clients(server: FaultServer, canary_series: list[Path]) -> None:
    """A slow upload still succeeds; a stalled one is cut at the request time limit (408) and its slot freed,
    and health stays responsive throughout."""
    body = _zip([(f"{i}.dcm", p.read_bytes()) for i, p in enumerate(canary_series)])
    head = (f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/zip\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    chunks = [body[i:i + len(body) // 8 + 1] for i in range(0, len(body), len(body) // 8 + 1)]
    raw = _raw_request(server, head, chunks, delay_s=0.25)
    assert _status(raw) == 200, raw[:300]
    # stalled: half the body, then nothing; meanwhile health must answer quickly
    host, port = server.base_url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=40) as sock:
        sock.sendall(head + body[: len(body) // 2])
        for _ in range(3):
            h0 = time.monotonic()
            assert httpx.get(f"{server.base_url}/health/live", timeout=5).status_code == 200
            assert time.monotonic() - h0 < 2.0
        data = sock.recv(65536)
    assert _status(data) == 408, data[:300]
    assert time.monotonic() - t0 < 35
    assert httpx.get(f"{server.base_url}/health/ready", timeout=10).status_code == 200
