"""Round trips with a real PACS: Orthanc C-STOREs a phantom study to ``python -m app serve`` (DICOM listener on),
and the SEG, SR and summary appear in Orthanc's study (C-STORE destination) and in a second Orthanc through its
DICOMweb API (STOW-RS destination). The SR reads back with highdicom and dcmtk and reports the JSON volume; the
SEG frames lie on the source slices; a re-sent study is not analysed twice; a refused series gets a refusal SR;
a foreign calling AE is rejected; a destination that is down is retried from the on-disk outbox."""

from __future__ import annotations

import io
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from prometheus_client import CollectorRegistry
from pydicom.sr.codedict import codes

from app.dicom_network.destinations import CStoreDestination
from app.dicom_network.metrics import DicomMetrics
from app.dicom_network.outbox import Outbox, RetryPolicy
from tests.orthanc_server import Orthanc, start_orthanc
from tests.service_fixtures import ServerProcess, start_server, write_phantom_series
from tests.system_components import free_port, require_executable

pynetdicom = pytest.importorskip("pynetdicom")

SERVICE_AET, SOURCE_AET, STOW_AET = "ICHEXPANSION", "ORTHANCSRC", "ORTHANCWEB"
AUTOROUTE_LUA = Path(__file__).resolve().parents[1] / "deploy" / "orthanc" / "ich-autoroute.lua"
RESULT_MODALITIES = {"SEG", "SR", "OT"}  # highdicom's secondary capture carries Modality OT


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, Orthanc, ServerProcess, int]]:
    root = tmp_path_factory.mktemp("pacs")
    dicom_port = free_port()
    # the source PACS routes stable studies to the service with the Lua script of the README
    source = start_orthanc(root / "source", SOURCE_AET, {"ich": (SERVICE_AET, dicom_port)}, dicomweb=False,
                           lua_scripts=(AUTOROUTE_LUA,))
    web = start_orthanc(root / "web", STOW_AET, dicomweb=True)
    try:
        server = start_server(root, env={
            "ICH_DICOM_PORT": str(dicom_port), "ICH_DICOM_HOST": "127.0.0.1", "ICH_SERIES_STABLE_S": "1",
            "ICH_DICOM_ALLOWED_CALLING_AETS": f"{SOURCE_AET},TESTSCU", "ICH_DICOM_WORK_DIR": str(root / "work"),
            "ICH_DICOM_DESTINATIONS": f"{SOURCE_AET}@127.0.0.1:{source.dicom_port},{web.dicomweb}",
            "ICH_DICOM_RETRY_BASE_S": "0.5",
        }, ready_timeout=180)
    except Exception:
        source.stop()
        web.stop()
        raise
    yield source, web, server, dicom_port
    server.stop()
    source.stop()
    web.stop()


@pytest.fixture(scope="module")
def study(pacs, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 12-slice phantom study stored in the source Orthanc, which routes it to the service once stable (Lua
    ``OnStableStudy``); its results in both PACS."""
    source, web, server, _ = pacs
    paths = write_phantom_series(tmp_path_factory.mktemp("study"), n_slices=12, size=64, seed=3)
    study_uid = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    source.upload(paths)
    t0 = time.monotonic()
    in_source = source.wait_for_modalities(study_uid, {"CT", *RESULT_MODALITIES})
    in_web = web.wait_for_modalities(study_uid, RESULT_MODALITIES)
    return {"paths": paths, "uid": study_uid, "source": in_source, "web": in_web, "seconds": time.monotonic() - t0}


def _metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and (m.group(1) or "") == want:
            return float(m.group(2))
    return 0.0


def _one(orthanc: Orthanc, ids: list[str]) -> pydicom.Dataset:
    assert len(ids) == 1, ids
    return pydicom.dcmread(io.BytesIO(orthanc.file(ids[0])))


def test_results_appear_in_the_study_of_both_pacs(pacs, study: dict) -> None:
    source, web, server, _ = pacs
    src = pydicom.dcmread(study["paths"][0])
    for orthanc, found in ((source, study["source"]), (web, study["web"])):
        for modality in RESULT_MODALITIES:
            ds = _one(orthanc, found[modality])
            assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
            assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert len(study["source"]["CT"]) == len(study["paths"])
    assert _metric(server, "ich_dicom_series_total", outcome="analysed") == 1
    assert _metric(server, "ich_dicom_destination_objects_sent_total",
                   destination=f"{SOURCE_AET}@127.0.0.1:{source.dicom_port}") == 3
    assert _metric(server, "ich_dicom_destination_objects_sent_total",
                   destination=web.dicomweb) == 3
    assert "Phantom" not in server.log_text() and src.StudyInstanceUID not in server.log_text()


def test_sr_reads_back_and_reports_the_json_volume(pacs, study: dict, tmp_path: Path) -> None:
    source, _, server, _ = pacs
    data = source.file(study["source"]["SR"][0])
    sr = hd.sr.srread(io.BytesIO(data))
    group = sr.content.get_volumetric_roi_measurement_groups()[0]
    volume = next(m.value for m in group.get_measurements(name=codes.SCT.Volume) if m.method is None)
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in study["paths"]]
    document = httpx.post(f"{server.base_url}/v1/predictions", files=files, timeout=120).json()
    assert volume == pytest.approx(document["haematoma"]["volume_ml"], abs=1e-9)
    answer = httpx.get(server.base_url + document["links"]["sr_dicom"], timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/dicom"
    sr_again = pydicom.dcmread(io.BytesIO(answer.content))
    assert sr_again.SOPInstanceUID == sr.SOPInstanceUID  # stable UIDs: REST and DICOM give the same result object
    dsrdump = require_executable("dsrdump", "dcmtk")
    path = tmp_path / "sr.dcm"
    path.write_bytes(data)
    dump = subprocess.run([str(dsrdump), str(path)], capture_output=True, text=True, timeout=30)
    assert dump.returncode == 0 and "Imaging Measurement Report" in dump.stdout and "(ml,UCUM" in dump.stdout


def test_seg_frames_line_up_with_the_source_slices(pacs, study: dict) -> None:
    source, _, _, _ = pacs
    seg = _one(source, study["source"]["SEG"])
    ct = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in study["paths"])}
    refs = {str(r.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs == set(ct)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == next(iter(ct.values())).SeriesInstanceUID
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source_uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in ct[source_uid].ImagePositionPatient], atol=1e-4)
    summary = _one(source, study["source"]["OT"])
    assert summary.BurnedInAnnotation == "YES" and "Research use only" in summary.ImageComments


def test_resent_study_is_not_analysed_twice(pacs, study: dict) -> None:
    source, _, server, _ = pacs
    # the CT instances again through Orthanc's REST API (not the whole study: it now also holds the results, which
    # the listener answers with 0x0122)
    source.post("/modalities/ich/store", {"Resources": study["source"]["CT"], "Synchronous": True})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _metric(server, "ich_dicom_series_total", outcome="already_analysed") < 1:
        time.sleep(0.2)
    assert _metric(server, "ich_dicom_series_total", outcome="already_analysed") >= 1
    found = source.series_by_modality(study["uid"])
    assert all(len(found[m]) == 1 for m in RESULT_MODALITIES)  # one SEG, SR, summary: nothing duplicated


def _scu(port: int, aet: str):
    ae = pynetdicom.AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(pydicom.uid.CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae.associate("127.0.0.1", port, ae_title=SERVICE_AET)


def test_foreign_ae_is_rejected_and_refused_series_get_a_refusal_sr(pacs, tmp_path: Path) -> None:
    source, _, server, dicom_port = pacs
    foreign = _scu(dicom_port, "FOREIGN")
    assert foreign.is_rejected
    assert _metric(server, "ich_dicom_associations_total", outcome="rejected") >= 1
    paths = write_phantom_series(tmp_path, n_slices=2, size=32, seed=5)  # too few slices for the quality gate
    assoc = _scu(dicom_port, "TESTSCU")
    assert assoc.is_established
    assert [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in paths] == [0, 0]
    assoc.release()
    uid = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    found = source.wait_for_modalities(uid, {"SR"}, timeout=30)
    sr = hd.sr.srread(io.BytesIO(source.file(found["SR"][0])))
    (evaluation,) = sr.content.get_image_measurement_groups()[0].get_qualitative_evaluations()
    assert evaluation.name.meaning == "Analysis refused" and evaluation.value.value == "too_few_slices"
    assert _metric(server, "ich_dicom_series_total", outcome="too_few_slices") == 1
    assert '"code": "too_few_slices"' in server.log_text()


def test_outbox_retries_a_destination_that_is_down(pacs, study: dict, tmp_path: Path) -> None:
    _, web, _, _ = pacs
    seg_bytes = web.file(study["web"]["SEG"][0])
    metrics = DicomMetrics(CollectorRegistry())
    policy = RetryPolicy(base_s=0.2, max_s=1, max_attempts=5)
    port = free_port()
    destination = CStoreDestination("LATER", "127.0.0.1", port, "ICHTEST", timeout_s=3)
    queue = Outbox(tmp_path / "outbox", [destination], policy, metrics).queues[0]
    queue.enqueue({"seg.dcm": seg_bytes}, "test")
    assert queue.process_due() is not None  # nobody listens: failed, rescheduled, still on disk
    assert metrics.destination_failures.labels(destination.label)._value.get() == 1 and len(queue.jobs()) == 1
    received: list[str] = []

    def on_store(event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0

    scp = pynetdicom.AE(ae_title="LATER")
    for context in pynetdicom.StoragePresentationContexts:
        scp.add_supported_context(context.abstract_syntax)
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(pynetdicom.evt.EVT_C_STORE, on_store)])
    try:  # a new process over the same outbox folder delivers the job from disk once it is due
        restarted = Outbox(tmp_path / "outbox", [destination], policy, metrics).queues[0]
        time.sleep(policy.delay_s(1))
        assert restarted.process_due() is None and restarted.jobs() == []
    finally:
        server.shutdown()
    assert received == [str(pydicom.dcmread(io.BytesIO(seg_bytes)).SOPInstanceUID)]
    assert metrics.destination_sent.labels(destination.label)._value.get() == 1
