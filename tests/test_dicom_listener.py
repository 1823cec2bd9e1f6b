"""The DICOM listener on a loopback port (real pynetdicom associations, no model): DIMSE statuses for CT, non-CT
and broken instances, the calling-AE allow-list, per-association and per-study limits, idempotent re-sends,
stable-series hand-out and recovery of the spool after a restart; the destination parser and retry policy."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pydicom
import pytest
from prometheus_client import CollectorRegistry
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, RLELossless, generate_uid

from app.api.settings import ServiceSettings
from app.dicom_network.destinations import CStoreDestination, StowDestination, parse_destinations
from app.dicom_network.listener import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SOP_CLASS_NOT_SUPPORTED,
    Listener,
    decodable_transfer_syntaxes,
)
from app.dicom_network.metrics import DicomMetrics
from app.dicom_network.outbox import RetryPolicy
from app.dicom_network.spool import Spool
from tests.service_fixtures import write_phantom_series

pynetdicom = pytest.importorskip("pynetdicom")
STABLE_S = 10.0


@pytest.fixture(scope="module")
def series_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_phantom_series(tmp_path_factory.mktemp("ct"), n_slices=4, size=16)


def _listener(tmp_path: Path, clock=time.monotonic, **overrides) -> tuple[Listener, Spool, DicomMetrics]:
    settings = ServiceSettings(dicom_port=0, dicom_host="127.0.0.1", dicom_allowed_calling_aets="TESTSCU,OTHER",
                               **overrides)
    spool = Spool(tmp_path / "work", stable_s=STABLE_S, max_series_per_study=settings.dicom_max_series_per_study,
                  clock=clock)
    metrics = DicomMetrics(CollectorRegistry())
    listener = Listener(settings, spool, metrics)
    listener.start()
    return listener, spool, metrics


def _associate(listener: Listener, aet: str = "TESTSCU"):
    ae = pynetdicom.AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.1.1")
    host, port = listener.address
    return ae.associate(host, port, ae_title="ICHEXPANSION")


def _status(assoc, ds_or_path) -> int:
    return int(assoc.send_c_store(ds_or_path).Status)


def _count(metrics: DicomMetrics, outcome: str) -> float:
    return metrics.instances.labels(outcome)._value.get()


def test_statuses_for_ct_non_ct_and_broken_instances(tmp_path: Path, series_files: list[Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)  # files are sent as they are
    listener, spool, metrics = _listener(tmp_path)
    try:
        assoc = _associate(listener)
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0
        ct = pydicom.dcmread(series_files[0])
        assert _status(assoc, ct) == 0x0000
        assert _status(assoc, ct) == 0x0000  # re-sent: the same spool file, counted as such
        assert _count(metrics, "stored") == 1 and _count(metrics, "resent") == 1
        mr = pydicom.dcmread(series_files[1])
        mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
        mr.Modality = "MR"
        assert _status(assoc, mr) == SOP_CLASS_NOT_SUPPORTED
        labelled_mr = pydicom.dcmread(series_files[1])
        labelled_mr.Modality = "MR"
        assert _status(assoc, labelled_mr) == DATASET_DOES_NOT_MATCH_SOP_CLASS
        no_uid = pydicom.dcmread(series_files[2])
        del no_uid.SeriesInstanceUID
        assert _status(assoc, no_uid) == CANNOT_UNDERSTAND
        broken = tmp_path / "broken.dcm"  # valid file meta, then an element whose length runs past the end
        good = series_files[3].read_bytes()
        meta_end = 132 + 12 + struct.unpack("<I", good[140:144])[0]
        broken.write_bytes(good[:meta_end] + b"\x08\x00\x18\x00UI\x40\x00" + b"1.2.3")
        assert _status(assoc, broken) == CANNOT_UNDERSTAND
        assert int(assoc.send_c_echo().Status) == 0  # the association and the listener carry on
        assoc.release()
        assert spool.pending() == 1 and len(list(spool.spool_dir.glob("*/*.dcm"))) == 1
    finally:
        listener.stop()


def test_allow_list_rejects_foreign_calling_ae(tmp_path: Path) -> None:
    listener, _, metrics = _listener(tmp_path)
    try:
        assoc = _associate(listener, "FOREIGN")
        assert assoc.is_rejected and not assoc.is_established
        assert metrics.associations.labels("rejected")._value.get() == 1
        other = _associate(listener, "OTHER")
        assert other.is_established
        other.release()
    finally:
        listener.stop()


def test_association_and_study_limits(tmp_path: Path, series_files: list[Path]) -> None:
    listener, spool, metrics = _listener(tmp_path, dicom_max_association_instances=2, dicom_max_series_per_study=1)
    try:
        assoc = _associate(listener)
        statuses = [_status(assoc, pydicom.dcmread(p)) for p in series_files[:3]]
        assert statuses == [0, 0, OUT_OF_RESOURCES]
        assoc.release()
        assoc = _associate(listener)  # a new association starts counting again; a 2nd series of the study is refused
        assert _status(assoc, pydicom.dcmread(series_files[2])) == 0
        other_series = pydicom.dcmread(series_files[3])
        other_series.SeriesInstanceUID = generate_uid()
        assert _status(assoc, other_series) == OUT_OF_RESOURCES
        assoc.release()
        assert _count(metrics, "association_instances") == 1 and _count(metrics, "series_per_study") == 1
    finally:
        listener.stop()
    small = _listener(tmp_path / "b", dicom_max_association_bytes=len(series_files[0].read_bytes()) + 100)[0]
    try:
        assoc = _associate(small)
        assert [_status(assoc, pydicom.dcmread(p)) for p in series_files[:2]] == [0, OUT_OF_RESOURCES]
        assoc.release()
    finally:
        small.stop()


def test_stable_series_are_handed_out_once_and_recovered(tmp_path: Path, series_files: list[Path]) -> None:
    now = [1000.0]
    listener, spool, _ = _listener(tmp_path, clock=lambda: now[0])
    try:
        assoc = _associate(listener)
        for p in series_files:
            assert _status(assoc, pydicom.dcmread(p)) == 0
        assoc.release()
    finally:
        listener.stop()
    now[0] += STABLE_S - 0.1
    assert spool.take_stable() == []  # not quiet long enough yet
    now[0] += 0.1
    (batch,) = spool.take_stable()
    assert len(batch.files()) == len(series_files) and spool.pending() == 0
    assert batch.series_uid == pydicom.dcmread(series_files[0]).SeriesInstanceUID
    again = Spool(tmp_path / "work", stable_s=STABLE_S, max_series_per_study=5)  # a restart finds the batch
    (recovered,) = again.recover()
    assert recovered.series_uid == batch.series_uid and len(recovered.files()) == len(series_files)
    again.finish(recovered, "digest-1")
    assert again.already_done(recovered, "digest-1") and not again.already_done(recovered, "digest-2")
    assert not recovered.directory.exists()


def test_compressed_ct_is_accepted_as_sent(tmp_path: Path, series_files: list[Path]) -> None:
    listener, spool, _ = _listener(tmp_path)
    try:
        ae = pynetdicom.AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage, RLELossless)
        assoc = ae.associate(*listener.address, ae_title="ICHEXPANSION")
        assert assoc.is_established and assoc.accepted_contexts[0].transfer_syntax[0] == RLELossless
        ds = pydicom.dcmread(series_files[0])
        ds.compress(RLELossless)
        assert _status(assoc, ds) == 0x0000
        assoc.release()
    finally:
        listener.stop()
    (stored,) = spool.spool_dir.glob("*/*.dcm")
    back = pydicom.dcmread(stored)
    assert back.file_meta.TransferSyntaxUID == RLELossless
    assert (back.pixel_array == pydicom.dcmread(series_files[0]).pixel_array).all()


def test_transfer_syntaxes_cover_the_decoders() -> None:
    syntaxes = decodable_transfer_syntaxes()
    assert ExplicitVRLittleEndian in syntaxes and "1.2.840.10008.1.2" in syntaxes
    assert "1.2.840.10008.1.2.4.90" in syntaxes and "1.2.840.10008.1.2.5" in syntaxes  # JPEG 2000, RLE
    assert "1.2.840.10008.1.2.4.100" not in syntaxes  # MPEG2 video: no decoder


def test_destinations_parse_and_backoff() -> None:
    dests = parse_destinations(" PACS@10.0.0.5:104 , https://user:secret@pacs.example/dicom-web/ ", "ICH")
    assert isinstance(dests[0], CStoreDestination) and dests[0].label == "PACS@10.0.0.5:104"
    assert isinstance(dests[1], StowDestination) and dests[1].label == "https://pacs.example/dicom-web"
    assert "secret" not in dests[1].label
    for bad in ("PACS@host", "pacs.example:104", "TOO-LONG-AE-TITLE-X@h:1", "A@h:70000"):
        with pytest.raises(ValueError):
            parse_destinations(bad, "ICH")
    policy = RetryPolicy(base_s=2, max_s=10, max_attempts=3)
    assert [policy.delay_s(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 10]
