"""The Redis result store against a real ``redis-server`` on loopback (started here, no persistence).

* count and byte limits evict the oldest entries for every replica at once (one Lua script per write), the newest
  is always kept, rendered files count against the bytes, entries expire after the time-to-live;
* a real prediction's compact result travels through Redis without pickle and renders the same NIfTI, PNG and
  DICOM SEG there as here (what a GET on another replica does);
* job states and replica heartbeats expire as configured;
* a store that cannot be reached raises ``StoreUnavailable`` within the command time limit (never hangs).

Budget: about 10 s on 2 CPU cores (one forward pass of the small random model).
"""

from __future__ import annotations

import gzip
import io
import time
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from cluster_components import RedisProcess, start_redis
from service_fixtures import random_weights, write_phantom_series
from system_components import free_port

from app.api.store import JobState, StoreUnavailable
from app.api.store_redis import RedisStore
from app.inference import Predictor
from app.ingestion import load_series
from app.outputs.compact import OutputUnavailable
from app.result import compact_outputs
from app.result_schema import PredictionResponse


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> RedisProcess:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def _store(redis_server: RedisProcess, **limits: float) -> RedisStore:
    settings = {"max_items": 100, "max_bytes": 10**9, "ttl_s": 60.0, **limits}
    return RedisStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}:", **settings)  # type: ignore[arg-type]


def test_limits_evict_oldest_and_keep_newest(redis_server: RedisProcess) -> None:
    store = _store(redis_server, max_items=3, max_bytes=10_000)
    for i in range(5):
        store.put(f"r{i}", {"id": i}, {"mask.nii.gz": b"x" * 1000})
        time.sleep(0.002)  # distinct insertion times
    assert store.get_result("r0") is None and store.get_result("r1") is None  # evicted by count, oldest first
    assert [store.get_result(f"r{i}") for i in (2, 3, 4)] == [{"id": 2}, {"id": 3}, {"id": 4}]
    assert store.get_file("r4", "mask.nii.gz") == b"x" * 1000 and store.get_file("r4", "seg.dcm") is None
    assert store.stats()["items"] == 3
    store.put("big", {"id": "big"}, {"seg.dcm": b"y" * 20_000})  # larger than the byte budget alone
    assert store.get_result("big") == {"id": "big"} and store.stats()["items"] == 1
    assert store.get_result("r4") is None
    other = RedisStore(redis_server.url, prefix=store.prefix, max_items=3, max_bytes=10_000, ttl_s=60.0)
    assert other.get_result("big") == {"id": "big"}  # another replica sees the same entry


def test_entries_expire_after_ttl(redis_server: RedisProcess) -> None:
    store = _store(redis_server, ttl_s=0.3)
    store.put("short", {"id": "short"}, {"overlay.png": b"p" * 100})
    assert store.get_result("short") == {"id": "short"}
    time.sleep(0.5)
    assert store.get_result("short") is None and store.get_file("short", "overlay.png") is None
    assert store.stats() == {"items": 0, "bytes": 0}


def test_prediction_renders_the_same_files_through_redis(redis_server: RedisProcess, tmp_path: Path) -> None:
    from app.result import build_document

    predictor = Predictor(random_weights(), "cpu")
    series = load_series([str(p) for p in write_phantom_series(tmp_path / "s", n_slices=12, size=64, seed=3)])
    result = predictor.predict(series)
    compact = compact_outputs(predictor, series, result)
    document = build_document("p1", predictor, series, result, {"read": 1.0}, 2.0)
    store = _store(redis_server, max_bytes=50 * 1024**2)
    store.put("p1", document, compact=compact)
    replica_b = RedisStore(redis_server.url, prefix=store.prefix, max_items=100, max_bytes=50 * 1024**2,
                           ttl_s=60.0)
    got = replica_b.get_result("p1")
    assert isinstance(got, PredictionResponse) and got == document
    before = replica_b.stats()["bytes"]
    nifti = replica_b.get_file("p1", "mask.nii.gz")
    assert gzip.decompress(nifti)[352:] == gzip.decompress(compact.render("mask.nii.gz"))[352:]
    assert replica_b.get_file("p1", "overlay.png") == compact.render("overlay.png")
    seg = pydicom.dcmread(io.BytesIO(replica_b.get_file("p1", "seg.dcm")))
    local = pydicom.dcmread(io.BytesIO(compact.render("seg.dcm")))
    np.testing.assert_array_equal(seg.pixel_array, local.pixel_array)
    refs = [r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert sorted(refs) == sorted(h.SOPInstanceUID for h in series.source_headers)
    assert seg.PatientID == series.source_headers[0].PatientID
    after = store.stats()["bytes"]
    assert after > before + len(nifti)  # rendered files are cached and charged, visible to the first replica
    assert store.get_file("p1", "mask.nii.gz") == nifti  # cached: the first replica does not render again


def test_nifti_result_has_no_seg(redis_server: RedisProcess, tmp_path: Path) -> None:
    from app.outputs import CompactResult

    compact = CompactResult(shape_zyx=(2, 4, 4), origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 5.0),
                            direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), mask_bits=np.packbits(np.zeros(32, bool)),
                            slice_mask_shape=None, slice_mask_bits=None, source_headers=(), overlay_indices=(0,),
                            overlay_hu=np.zeros((1, 4, 4), np.int16), algorithm_name="a", algorithm_version="1",
                            detected=False)
    store = _store(redis_server)
    store.put("n", {"id": "n"}, compact=compact)
    with pytest.raises(OutputUnavailable) as err:
        store.get_file("n", "seg.dcm")
    assert err.value.code == "seg_needs_dicom_source"
    assert store.get_file("n", "mask.nii.gz")[:2] == b"\x1f\x8b"


def test_jobs_and_heartbeats_expire(redis_server: RedisProcess) -> None:
    store = _store(redis_server, ttl_s=0.4)
    state = JobState(id="j1", status="running", replica="rep-a", created=time.time(), updated=time.time())
    store.put_job(state)
    assert store.get_job("j1") == state
    store.beat("rep-a", 0.3)
    assert store.replica_alive("rep-a") and not store.replica_alive("rep-b")
    time.sleep(0.5)
    assert not store.replica_alive("rep-a") and store.get_job("j1") is None


def test_unreachable_store_raises_quickly() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", max_items=10, max_bytes=10**6, ttl_s=60.0,
                       timeout_s=0.5)
    for call in (store.ping, lambda: store.get_result("x"), lambda: store.put("x", {"id": 1}), store.stats,
                 lambda: store.beat("r", 1.0)):
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="redis store: ConnectionError"):
            call()
        assert time.monotonic() - t0 < 3.0
