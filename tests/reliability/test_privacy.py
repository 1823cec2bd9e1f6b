"""Privacy canary: a recognisable patient name, ID, birth date and accession number in uploaded DICOM must
never appear in the server's log (stdout + stderr), metrics, error bodies, JSON results or the stored NIfTI /
PNG files (only the DICOM SEG may carry the patient module). Budget: about 10 s."""

from __future__ import annotations

from pathlib import Path

import httpx

from .harness import FaultServer, canary_hits, check_answer


def test_canary_only_in_seg(server: FaultServer, canary_series: list[Path]) -> None:
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in canary_series]
    exposed: dict[str, list[str]] = {}
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        ok = client.post("/v1/predictions", files=files)
        assert check_answer(ok) == "200"
        body = ok.json()
        exposed["result json"] = canary_hits(ok.text)
        exposed["result again"] = canary_hits(client.get(body["links"]["self"]).text)
        for name in ("mask_nifti", "overlay_png"):
            exposed[name] = canary_hits(client.get(body["links"][name]).content.decode("latin-1"))
        seg = client.get(body["links"]["seg_dicom"]).content.decode("latin-1")
        assert canary_hits(seg), "the SEG should copy the patient module (DICOM requires it)"
        errors = [
            client.post("/v1/predictions", files=files[:2]),  # too few slices
            client.post("/v1/predictions", files=files, data={"series_instance_uid": "1.2.3"}),
            client.post("/v1/predictions", files=[("files", ("t.dcm", canary_series[0].read_bytes()[:700],
                                                             "application/dicom"))]),
        ]
        for i, r in enumerate(errors):
            assert 400 <= r.status_code < 500
            exposed[f"error body {i}"] = canary_hits(r.text)
        exposed["metrics"] = canary_hits(client.get("/metrics").text)
        exposed["model"] = canary_hits(client.get("/v1/model").text)
    leaks = {k: v for k, v in exposed.items() if v}
    assert not leaks, leaks


def test_canary_never_in_server_log(server: FaultServer, canary_series: list[Path]) -> None:
    """Regression: no element values in logs (pydicom warnings quoted element values into the log). Reads the whole session log, so it sees the fuzz campaign's damaged canary files too when run after it;
    one bit-flipped instance is posted here so the check does not depend on test order."""
    data = bytearray(canary_series[0].read_bytes())
    pos = data.find(b"\x08\x00\x16\x00UI")  # SOPClassUID: break its length so pydicom warns about its value
    data[pos + 6] = 0xF2
    httpx.post(f"{server.base_url}/v1/predictions", timeout=60,
               files=[("files", ("x.dcm", bytes(data), "application/dicom"))])
    hits = canary_hits(server.log_text())
    assert not hits, hits
