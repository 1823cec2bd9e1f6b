"""NIfTI uploads against a REAL uvicorn server (loopback port, small seeded model, tests/service_fixtures.py).

The same phantom uploaded as a DICOM series and as a NIfTI volume on the same grid gives the same numbers; a
NIfTI result offers no DICOM SEG (``links.seg_dicom`` is null, ``GET .../seg.dcm`` answers 409
``seg_needs_dicom_source``); refusals are problem+json 4xx. Every NIfTI refusal code also goes through
``tests/test_api.py::test_every_refusal_code_through_the_api``. Budget: about 20 s on 2 CPU cores.
"""

from __future__ import annotations

import gzip
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from nifti_factory import write_phantom_nifti, write_volume
from service_fixtures import ServerProcess, start_server, write_phantom_series

TIMEOUT = httpx.Timeout(60.0)
N_SLICES, SIZE = 16, 96


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    tmp = tmp_path_factory.mktemp("nifti-server")
    srv = start_server(tmp, env={"ICH_UPLOAD_DIR": str(tmp)})
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM), srv.log_text()[-3000:]
    assert not list(tmp.glob("ich-upload-*")), "temporary upload folders left behind"


@pytest.fixture(scope="module")
def nifti_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_nifti(tmp_path_factory.mktemp("nifti") / "head.nii.gz", n_slices=N_SLICES, size=SIZE)


def _problem(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == code and body["status"] == status and {"type", "title", "detail"} <= body.keys()
    return body


def _numbers(body: dict) -> list[float]:
    return [body["expansion"]["raw_probability"], body["haematoma"]["voxel_count"], body["haematoma"]["volume_ml"],
            *body["input"]["spacing_mm"], body["input"]["slice_count"]]


def test_nifti_upload_matches_dicom_and_offers_no_seg(server: ServerProcess, nifti_path: Path,
                                                      tmp_path: Path) -> None:
    url = f"{server.base_url}/v1/predictions"
    r = httpx.post(url, files=[("files", ("scan.bin", nifti_path.read_bytes(), "application/octet-stream"))],
                   data={"onset_to_ct_hours": "2"}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["input"]["source_kind"] == "nifti" and body["input"]["slice_count"] == N_SLICES
    assert body["input"]["study_instance_uid"] == body["input"]["series_instance_uid"] == ""
    assert body["links"]["seg_dicom"] is None and body["links"]["mask_nifti"].endswith("/mask.nii.gz")
    assert "no_dicom_source" in [w["code"] for w in body["input"]["warnings"]]

    paths = write_phantom_series(tmp_path / "dcm", n_slices=N_SLICES, size=SIZE)
    dicom = httpx.post(url, files=[("files", (p.name, p.read_bytes(), "application/dicom")) for p in paths],
                       timeout=TIMEOUT).json()
    assert dicom["input"]["source_kind"] == "dicom" and dicom["links"]["seg_dicom"]
    assert _numbers(body) == pytest.approx(_numbers(dicom), abs=1e-6)

    mask_bytes = httpx.get(server.base_url + body["links"]["mask_nifti"], timeout=TIMEOUT)
    assert mask_bytes.status_code == 200
    (tmp_path / "mask.nii.gz").write_bytes(mask_bytes.content)
    mask, source = sitk.ReadImage(str(tmp_path / "mask.nii.gz")), sitk.ReadImage(str(nifti_path))
    assert mask.GetSize() == source.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), source.GetOrigin(), atol=1e-4)
    assert int(sitk.GetArrayViewFromImage(mask).sum()) == body["haematoma"]["voxel_count"]
    png = httpx.get(server.base_url + body["links"]["overlay_png"], timeout=TIMEOUT)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    seg = httpx.get(f"{server.base_url}{body['links']['self']}/seg.dcm", timeout=TIMEOUT)
    problem = _problem(seg, 409, "seg_needs_dicom_source")
    assert "NIfTI" in problem["detail"]
    again = httpx.get(server.base_url + body["links"]["self"], timeout=TIMEOUT).json()
    assert again["links"]["seg_dicom"] is None and again["id"] == body["id"]


@pytest.mark.parametrize("content_type", ["application/gzip", "application/x-nifti", "application/octet-stream"])
def test_raw_body_nifti(server: ServerProcess, nifti_path: Path, content_type: str) -> None:
    data = nifti_path.read_bytes()
    if content_type == "application/x-nifti":
        data = gzip.decompress(data)  # an uncompressed .nii
    r = httpx.post(f"{server.base_url}/v1/predictions", content=data, headers={"Content-Type": content_type},
                   timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["input"]["source_kind"] == "nifti" and r.json()["links"]["seg_dicom"] is None


def test_nifti_refusals(server: ServerProcess, tmp_path: Path) -> None:
    url = f"{server.base_url}/v1/predictions"
    garbage = np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes()
    r = httpx.post(url, files=[("files", ("scan.nii", garbage, "application/octet-stream"))], timeout=TIMEOUT)
    _problem(r, 415, "not_dicom")  # a .nii name is not enough: nothing in it is NIfTI or DICOM
    _, y, x = np.mgrid[:12, :64, :64]  # water cylinder in air: valid HU, no skull or brain
    water = write_volume(tmp_path / "water.nii.gz", np.where((y - 32) ** 2 + (x - 32) ** 2 < 24**2, 0, -1000)
                         .astype(np.int16), (2.5, 2.5, 5.0))
    r = httpx.post(url, content=water.read_bytes(), headers={"Content-Type": "application/gzip"}, timeout=TIMEOUT)
    _problem(r, 422, "brain_not_found")
    assert "water" not in server.log_text()  # the file name never reaches the logs
