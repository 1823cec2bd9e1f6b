"""End-to-end tests against a REAL uvicorn server (loopback port), with httpx and curl.

The server serves a small deterministic random model (tests/service_fixtures.py) so that these tests run
before trained default weights exist; numbers are compared across upload formats, not to ground truth.
Budget: about 60 s on 2 CPU cores.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

pytest.importorskip("app.volumetry", reason="app.volumetry not present yet")

from dicom_factory import make_ct_dataset, save, write_ct_series, zip_paths  # noqa: E402
from nifti_factory import write_four_d, write_not_hu, write_phantom_nifti, write_truncated  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from service_fixtures import ServerProcess, start_server, stow_body, write_phantom_series, zip_bytes  # noqa: E402

from app.api.problems import REFUSAL_STATUS  # noqa: E402
from app.errors import RefusalCode  # noqa: E402

TIMEOUT = httpx.Timeout(60.0)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    tmp = tmp_path_factory.mktemp("server")
    srv = start_server(tmp, env={"ICH_MAX_IN_FLIGHT": "2", "ICH_MAX_BODY_BYTES": str(8 * 1024**2),
                                 "ICH_MAX_COMPRESSION_RATIO": "50", "ICH_UPLOAD_DIR": str(tmp)})
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM), srv.log_text()[-3000:]  # uvicorn re-raises SIGTERM
    assert "service stopped" in srv.log_text()  # lifespan shutdown ran after draining
    assert not list(tmp.glob("ich-upload-*")), "temporary upload folders left behind"


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_phantom_series(tmp_path_factory.mktemp("phantom") / "series", n_slices=20, size=96)


def _multipart(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "application/dicom")) for p in paths]


def _assert_ready(server: ServerProcess) -> None:
    assert httpx.get(f"{server.base_url}/health/ready", timeout=10).status_code == 200


def _problem(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == code and body["status"] == status and {"type", "title", "detail"} <= body.keys()
    return body


@pytest.fixture(scope="session")
def multipart_result(server: ServerProcess, phantom: list[Path]) -> dict:
    r = httpx.post(f"{server.base_url}/v1/predictions", files=_multipart(phantom),
                   data={"onset_to_ct_hours": "2.5"}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def test_same_result_multipart_zip_stow(server: ServerProcess, phantom: list[Path], multipart_result: dict) -> None:
    body = multipart_result
    assert body["input"]["slice_count"] == len(phantom) and body["input"]["onset_to_ct_hours"] == 2.5
    assert set(body["timings_ms"]) >= {"read", "preprocess", "inference", "postprocess"}
    r_zip = httpx.post(f"{server.base_url}/v1/predictions", content=zip_bytes(phantom),
                       headers={"Content-Type": "application/zip"}, timeout=TIMEOUT)
    stow, ctype = stow_body(phantom)
    r_stow = httpx.post(f"{server.base_url}/v1/predictions", content=stow, headers={"Content-Type": ctype},
                        timeout=TIMEOUT)
    for r in (r_zip, r_stow):
        assert r.status_code == 200, r.text
        other = r.json()
        assert other["id"] != body["id"]
        assert other["expansion"] == body["expansion"] and other["haematoma"] == body["haematoma"]
        assert other["input"]["series_instance_uid"] == body["input"]["series_instance_uid"]
    text = str(body)
    assert "Phantom" not in text and "PHANTOM-0" not in text and "19700101" not in text


def test_files_line_up_with_source(server: ServerProcess, phantom: list[Path], multipart_result: dict) -> None:
    base = server.base_url
    body = multipart_result
    again = httpx.get(base + body["links"]["self"], timeout=TIMEOUT)
    assert again.status_code == 200 and again.json() == body
    nii = httpx.get(base + body["links"]["mask_nifti"], timeout=TIMEOUT)
    assert nii.status_code == 200 and gzip.decompress(nii.content)[:4]
    tmp = phantom[0].parent.parent / "mask.nii.gz"
    tmp.write_bytes(nii.content)
    mask = sitk.ReadImage(str(tmp))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(phantom[0].parent)))
    ref = reader.Execute()
    assert mask.GetSize() == ref.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(mask.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(mask.GetDirection(), ref.GetDirection(), atol=1e-6)
    assert int(sitk.GetArrayViewFromImage(mask).sum()) == body["haematoma"]["voxel_count"]
    seg_r = httpx.get(base + body["links"]["seg_dicom"], timeout=TIMEOUT)
    assert seg_r.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(seg_r.content))
    refs = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in phantom}
    assert seg.FrameOfReferenceUID == pydicom.dcmread(phantom[0], stop_before_pixels=True).FrameOfReferenceUID
    png = httpx.get(base + body["links"]["overlay_png"], timeout=TIMEOUT)
    assert png.content[:4] == b"\x89PNG"
    _problem(httpx.get(f"{base}/v1/predictions/unknown", timeout=TIMEOUT), 404, "not_found")
    _problem(httpx.get(f"{base}/v1/predictions/unknown/seg.dcm", timeout=TIMEOUT), 404, "not_found")


def test_bad_inputs_get_4xx(server: ServerProcess, phantom: list[Path], tmp_path: Path) -> None:
    url = f"{server.base_url}/v1/predictions"
    _problem(httpx.post(url, files=[("files", ("a.txt", b"hello, not dicom", "text/plain"))], timeout=TIMEOUT),
             415, "not_dicom")
    _problem(httpx.post(url, content=b"", headers={"Content-Type": "application/zip"}, timeout=TIMEOUT), 400,
             "empty_input")
    _problem(httpx.post(url, content=b"x", headers={"Content-Type": "text/plain"}, timeout=TIMEOUT), 415,
             "unsupported_media_type")
    truncated = phantom[0].read_bytes()[:-5000]
    r = httpx.post(url, files=[("files", ("t.dcm", truncated, "application/dicom"))] + _multipart(phantom[1:]),
                   timeout=TIMEOUT)
    assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith("application/problem+json")
    mr = write_phantom_series(tmp_path / "mr", n_slices=4, size=32, modality="MR")
    _problem(httpx.post(url, files=_multipart(mr), timeout=TIMEOUT), 422, "not_ct")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * (20 * 1024**2))
    _problem(httpx.post(url, content=bomb.getvalue(), headers={"Content-Type": "application/zip"},
                        timeout=TIMEOUT), 413, "archive_limit_exceeded")
    _problem(httpx.post(url, content=b"\0" * (9 * 1024**2), headers={"Content-Type": "application/zip"},
                        timeout=TIMEOUT), 413, "body_too_large")
    _problem(httpx.post(url, files=_multipart(phantom), data={"series_instance_uid": "1.2.3.4"},
                        timeout=TIMEOUT), 422, "series_not_found")
    _problem(httpx.post(url, files=_multipart(phantom), data={"onset_to_ct_hours": "soon"}, timeout=TIMEOUT),
             422, "validation_error")
    _assert_ready(server)


def _files(paths: list[Path]) -> dict:
    return {"files": [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]}


def _resave(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    ds = pydicom.dcmread(path)
    edit(ds)
    save(ds, path)


def _refusal_request(code: str, d: Path, shared: Path | None) -> dict:
    """httpx.post keyword arguments of a request that ingestion refuses with ``code`` (tests/dicom_factory.py)."""
    if code == "not_dicom":
        return {"files": [("files", ("report.txt", b"Findings: none.\n" * 20, "text/plain"))]}
    if code == "empty_input":
        return {"files": [("files", ("empty.dcm", b"", "application/dicom"))]}
    if code == "no_image_series":
        scout = make_ct_dataset(np.zeros((16, 16)), position=(0, 0, 0),
                                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
        return _files([save(scout, d / "scout")])
    if code == "not_ct":
        return _files(write_ct_series(d, n_slices=4, modality="MR"))
    if code in ("ambiguous_series", "series_not_found"):
        paths = write_ct_series(d / "a", n_slices=5, series_description="A")
        paths += write_ct_series(d / "b", n_slices=5, series_description="B")
        extra = {"data": {"series_instance_uid": "1.2.3.4"}} if code == "series_not_found" else {}
        return {**_files(paths), **extra}
    if code == "too_few_slices":
        return _files(write_ct_series(d, n_slices=2))
    if code == "missing_slices":
        return _files(write_ct_series(d, n_slices=8, gaps=[4, 5]))
    if code == "conflicting_duplicates":
        paths = write_ct_series(d, n_slices=4)
        ds = pydicom.dcmread(paths[1])
        arr = ds.pixel_array.copy()
        arr[0, 0] += 7
        ds.PixelData = arr.tobytes()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        return _files([*paths, save(ds, d / "modified")])
    if code == "unsupported_transfer_syntax":
        assert shared is not None
        src = next((shared / "cornerstone_ct_transfer_syntaxes").glob("*.4.53.dcm"))  # JPEG process 6/8
        paths = []
        for k in range(3):  # three slices of the same compressed image, 5 mm apart
            ds = pydicom.dcmread(src)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ipp = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 5.0 * k]
            ds.save_as(d / f"j{k}.dcm", enforce_file_format=True)
            paths.append(d / f"j{k}.dcm")
        return _files(paths)
    if code == "corrupt_pixel_data":
        paths = write_ct_series(d, n_slices=3)
        _resave(paths[1], lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2]))
        return _files(paths)
    if code == "not_axial":
        return _files(write_ct_series(d, n_slices=5, orientation=(0, 1, 0, 0, 0, -1)))
    if code == "inconsistent_geometry":
        paths = write_ct_series(d, n_slices=4)
        _resave(paths[2], lambda ds: delattr(ds, "ImagePositionPatient"))
        return _files(paths)
    if code == "archive_invalid":
        blob = zip_paths(write_ct_series(d, n_slices=3))
        return {"content": blob[: len(blob) // 2], "headers": {"Content-Type": "application/zip"}}
    if code == "archive_limit_exceeded":
        bomb = io.BytesIO()
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("zeros.dcm", b"\0" * (4 * 1024**2))  # ratio ~1000 > ICH_MAX_COMPRESSION_RATIO=50
        return {"content": bomb.getvalue(), "headers": {"Content-Type": "application/zip"}}
    if code == "brain_not_found":  # valid CT of air: ingestion accepts it, preprocessing finds no brain
        return _files(write_ct_series(d, n_slices=6, hu_at=lambda p: np.full(p.shape[:-1], -1000.0)))
    if code == "invalid_dicom":  # Modality (CS) relabelled FD: its 2-byte value cannot be an 8-byte float
        paths = write_ct_series(d, n_slices=4)
        for path in paths:
            blob = path.read_bytes()
            at = blob.find(b"\x08\x00\x60\x00CS")
            path.write_bytes(blob[: at + 4] + b"FD" + blob[at + 6:])
        return _files(paths)
    if code == "unsupported_sop_class":
        assert shared is not None
        return _files([shared / "cornerstone_ct_transfer_syntaxes" / "CT0012.fragmented_no_bot_jpeg_baseline.51.dcm"])
    if code == "invalid_nifti":  # NIfTI by content (header and magic), but cut in half
        return _files([write_truncated(d / "cut.nii")])
    if code == "unsupported_volume":
        return _files([write_four_d(d / "series.nii")])
    if code == "not_hounsfield_units":
        return _files([write_not_hu(d / "mr.nii.gz", "mr")])
    if code == "multiple_volumes":
        return _files([write_phantom_nifti(d / f"v{k}.nii.gz", n_slices=6, size=32) for k in range(2)])
    raise AssertionError(f"no request builder for {code}")


NEEDS_SHARED_DATA = {"unsupported_transfer_syntax", "unsupported_sop_class"}


@pytest.mark.parametrize("code", sorted(str(c) for c in RefusalCode))
def test_every_refusal_code_through_the_api(code: str, server: ServerProcess, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    shared = request.getfixturevalue("shared_data") if code in NEEDS_SHARED_DATA else None
    kwargs = _refusal_request(code, tmp_path, shared)
    r = httpx.post(f"{server.base_url}/v1/predictions", timeout=TIMEOUT, **kwargs)
    body = _problem(r, REFUSAL_STATUS[RefusalCode(code)], code)
    assert body["instance"] == "/v1/predictions" and body["request_id"] == r.headers["X-Request-ID"]
    assert "Phantom" not in r.text and "SYN0001" not in r.text


def _rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of /proc/PID/status; psutil is not a dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_concurrency_bounded(server: ServerProcess, phantom: list[Path], multipart_result: dict) -> None:
    if not Path(f"/proc/{server.process.pid}/status").exists():
        pytest.skip("/proc is not available to measure the server's memory")
    payload = zip_bytes(phantom)

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{server.base_url}/v1/predictions", content=payload,
                          headers={"Content-Type": "application/zip"}, timeout=TIMEOUT)

    baseline = _rss_kib(server.process.pid)  # after warm-up and at least one prediction (multipart_result)
    peaks, after = [], []
    for _ in range(2):  # two bursts: memory after the second must not keep growing
        peak = [baseline]
        stop = threading.Event()

        def sample(peak: list[int] = peak, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_kib(server.process.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:  # 6 > ICH_MAX_IN_FLIGHT=2
            responses = list(pool.map(post, range(6)))
        stop.set()
        sampler.join()
        codes = sorted(r.status_code for r in responses)
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
        for r in responses:
            if r.status_code == 503:
                assert int(r.headers["Retry-After"]) > 0 and r.json()["code"] == "overloaded"
        _assert_ready(server)
        peaks.append(peak[0])
        after.append(_rss_kib(server.process.pid))
    # bounded: two admitted 20x96x96 series and a 16x64x64 model need far less than 400 MiB on top of the
    # warm process; a leak of the rejected uploads or of results would show as growth between bursts
    assert max(peaks) - baseline < 400 * 1024, (baseline, peaks)
    assert after[1] - after[0] < 64 * 1024, (baseline, after)
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=TIMEOUT).text
    assert 'ich_rejected_total{reason="capacity"}' in metrics and "ich_stage_seconds_bucket" in metrics
    for name in ('status="200"', 'status="503"', "ich_predictions_in_flight 0.0", "ich_inference_queue_depth",
                 'ich_model_info{', 'stage="inference"', "ich_result_store_bytes"):
        assert name in metrics, name
    assert "1.2.826" not in metrics  # no UIDs in labels


def _readme_block(marker: str, language: str) -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split(f"<!-- {marker}", 1)[1]
    return after.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_health_model_and_readme_examples(server: ServerProcess, phantom: list[Path], tmp_path: Path) -> None:
    for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(server.base_url + path, timeout=10).status_code == 200
    model = httpx.get(f"{server.base_url}/v1/model", timeout=10).json()
    assert model["parameter_count"] > 0 and "plans" in model and "threshold" in model
    assert model["name"] == "test-small" and len(model["sha256"]) == 64  # loaded through the registry
    post = model["postprocessing"]  # the block in effect: defaults, as the test manifest has none
    assert post["detection"]["min_volume_ml"] == 0.5 and post["calibration"]["method"] == "identity"
    assert post["infratentorial"] == {"max_dz_mm": -20.0, "min_dy_mm": 15.0}
    work = tmp_path / "readme"
    shutil.copytree(phantom[0].parent, work / "study")
    env = {**os.environ, "ICH_URL": server.base_url}
    # the README's httpx example, as written
    script = _readme_block("httpx-example", "python")
    subprocess.run([sys.executable, "-c", script], cwd=work, env=env, check=True, timeout=120, capture_output=True)
    assert sitk.ReadImage(str(work / "mask.nii.gz")).GetSize()[2] == len(phantom)
    (work / "mask.nii.gz").unlink()
    # the README's curl example, as written (bash, curl, python3)
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("curl or bash not installed")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", _readme_block("curl-example", "bash")], cwd=work,
                          env=env, timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    body = json.loads((work / "result.json").read_text())
    assert body["input"]["onset_to_ct_hours"] == 2.5 and body["input"]["slice_count"] == len(phantom)
    mask = sitk.ReadImage(str(work / "mask.nii.gz"))
    assert mask.GetSize()[2] == len(phantom)
    assert int(sitk.GetArrayViewFromImage(mask).sum()) == body["haematoma"]["voxel_count"]


def test_logs_are_json_with_request_ids_and_no_identifiers(server: ServerProcess, phantom: list[Path],
                                                           multipart_result: dict) -> None:
    records = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    requests = [r for r in records if r.get("msg") == "request"]
    done = [r for r in records if r.get("msg") == "prediction done"]
    assert requests and done and all(r.get("request_id") for r in requests + done)
    assert all(len(r["series"]) == 12 for r in done)  # a pseudonym, not the UID
    ds = pydicom.dcmread(phantom[0], stop_before_pixels=True)
    log = server.log_text()
    for value in (ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.SOPInstanceUID, "Phantom", "PHANTOM-0", "19700101"):
        assert str(value) not in log


def test_api_keys(tmp_path: Path, phantom: list[Path]) -> None:
    srv = start_server(tmp_path, env={"ICH_API_KEYS": "s3cret", "ICH_WARMUP_PASSES": "0"})
    try:
        url = f"{srv.base_url}/v1/model"
        _problem(httpx.get(url, timeout=10), 401, "unauthorized")
        _problem(httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=10), 401, "unauthorized")
        _problem(httpx.post(f"{srv.base_url}/v1/predictions", files=_multipart(phantom[:2]), timeout=10), 401,
                 "unauthorized")
        assert httpx.get(url, headers={"Authorization": "Bearer s3cret"}, timeout=10).status_code == 200
        assert httpx.get(f"{srv.base_url}/health/ready", timeout=10).status_code == 200
    finally:
        assert srv.stop() in (0, -signal.SIGTERM)
