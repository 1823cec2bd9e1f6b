"""The result document in the core (app/result.py) and the service around it.

* ``python -m app predict`` builds its result.json through app.result without importing the web layer
  (``app.api``, FastAPI, Starlette, uvicorn), checked in a subprocess after a real prediction;
* one source of stage timings: the predictor's ``preprocess``/``inference``/``postprocess`` reach the document
  unchanged (CLI and service), the caller adds only its own stages, same keys and order as the JSON always had;
* the service answers a prediction with the pydantic document (``Location`` header, stored for GET);
* admission as an async context manager: 503 when not ready or saturated, and the slot (and the upload's files)
  always given back, also when the work outlives the request.

Budget: about 20 s on 2 CPU cores (one CLI subprocess, a few forward passes of the small model).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from service_fixtures import make_weights_dir, random_weights, write_phantom_series, zip_bytes

from app.api.metrics import ServiceMetrics
from app.api.problems import Problem
from app.api.service import PredictionService
from app.api.settings import ServiceSettings
from app.inference import PredictionResult, Predictor
from app.ingestion import load_series
from app.result import PredictionResponse, StageTimings, build_document, local_document

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = ["read", "preprocess", "inference", "postprocess", "outputs", "total"]
WEB_PACKAGES = ("app.api", "fastapi", "starlette", "uvicorn")

# runs the CLI exactly as ``python -m app predict`` does, then reports what it imported
CLI_PROBE = """
import json, sys
from app.cli import main
rc = main(sys.argv[1:])
web = sorted(m for m in sys.modules if m.split(".")[0] in {"fastapi", "starlette", "uvicorn"}
             or m == "app.api" or m.startswith("app.api."))
print(json.dumps({"rc": rc, "web_modules": web, "result_loaded": "app.result" in sys.modules}))
"""


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_phantom_series(tmp_path_factory.mktemp("result") / "series", n_slices=12, size=64, seed=5)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(random_weights(), "cpu")


def test_predict_cli_never_imports_the_web_layer(phantom: list[Path], tmp_path: Path) -> None:
    weights_dir = make_weights_dir(tmp_path / "weights")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CLI_PROBE, "predict", str(phantom[0].parent), "--out", str(out),
                           "--weights-dir", str(weights_dir), "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe == {"rc": 0, "web_modules": [], "result_loaded": True}
    body = json.loads((out / "result.json").read_text())
    assert list(body["timings_ms"]) == TIMING_KEYS and "links" not in body
    PredictionResponse.model_validate({**body, "links": {"self": "", "mask_nifti": "", "overlay_png": ""}})


def _fake_timings_result(result: PredictionResult) -> PredictionResult:
    result.timings_ms = {"preprocess": 11.5, "inference": 22.25, "postprocess": 3.125}
    return result


def test_document_takes_the_predictor_timings_and_adds_the_callers(predictor: Predictor,
                                                                   phantom: list[Path]) -> None:
    series = load_series([str(p) for p in phantom])
    result = _fake_timings_result(predictor.predict(series))
    seen: list[tuple[str, float]] = []
    timings = StageTimings(lambda name, ms: seen.append((name, ms)))
    timings.add("read", 1.0)
    timings.add_result(result)
    with timings.stage("outputs"):
        pass
    with pytest.raises(ZeroDivisionError), timings.stage("broken"):
        _ = 1 / 0  # a stage that raises is not recorded
    doc = build_document("abc", predictor, series, result, timings.ms, 2.5, base_url="http://h")
    assert isinstance(doc, PredictionResponse)
    assert list(doc.timings_ms) == TIMING_KEYS and [n for n, _ in seen] == TIMING_KEYS[:-1]
    assert {k: doc.timings_ms[k] for k in ("preprocess", "inference", "postprocess")} == result.timings_ms
    assert doc.timings_ms["total"] == pytest.approx(sum(v for k, v in doc.timings_ms.items() if k != "total"))
    assert doc.links.self == "http://h/v1/predictions/abc" and doc.links.seg_dicom.endswith("/seg.dcm")
    assert doc.input.onset_to_ct_hours == 2.5 and doc.input.spacing_mm == tuple(series.spacing_zyx)
    local = local_document(doc, ["mask.nii.gz"], {})
    assert "links" not in local and local["files"] == ["mask.nii.gz", "result.json"]
    assert "files_not_written" not in local and json.loads(json.dumps(local)) == local


def _service(predictor: Predictor, **settings: object) -> PredictionService:
    service = PredictionService(ServiceSettings(weights_dir="/nonexistent", warmup_passes=0, **settings),
                                ServiceMetrics())
    service.load(predictor)
    return service


def test_service_answers_with_the_document_and_the_predictor_timings(predictor: Predictor,
                                                                     phantom: list[Path]) -> None:
    from app.api import create_app

    finished: list[dict[str, float]] = []
    finish = predictor.finish

    def recording_finish(*args: object) -> PredictionResult:
        result = finish(*args)
        finished.append(dict(result.timings_ms))
        return result

    app = create_app(ServiceSettings(weights_dir="/nonexistent", warmup_passes=0))
    service = app.state.service
    service.load(predictor)
    predictor_in_service = service.predictor
    predictor_in_service.finish = recording_finish  # type: ignore[method-assign]

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            r = await client.post("/v1/predictions", content=zip_bytes(phantom),
                                  headers={"Content-Type": "application/zip"})
            return r, await client.get(r.headers["location"])

    try:
        r, again = asyncio.run(go())
    finally:
        del predictor_in_service.finish
        service.close()
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["location"] == body["links"]["self"] and again.json() == body
    assert isinstance(service.store.get(body["id"]).result, PredictionResponse)
    assert list(body["timings_ms"]) == TIMING_KEYS and len(finished) == 1
    assert {k: body["timings_ms"][k] for k in ("preprocess", "inference", "postprocess")} == finished[0]
    assert service.in_flight == 0


class _Upload:
    def __init__(self) -> None:
        self.cleaned = 0

    def cleanup(self) -> None:
        self.cleaned += 1


def test_admission_refuses_and_always_releases(predictor: Predictor) -> None:
    service = _service(predictor, max_in_flight=1, retry_after_s=4)

    async def scenario() -> None:
        upload = _Upload()
        with pytest.raises(RuntimeError):
            async with service.admit() as admission:
                admission.upload = upload  # type: ignore[assignment]
                assert service.in_flight == 1 and service.saturated
                with pytest.raises(Problem) as refused:
                    async with service.admit():
                        pass
                assert refused.value.code == "overloaded" and refused.value.headers == {"Retry-After": "4"}
                raise RuntimeError("a failing request")
        assert service.in_flight == 0 and upload.cleaned == 1

        # work that outlives its request keeps the slot and the files until it stops
        work: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        upload = _Upload()
        async with service.admit() as admission:
            admission.upload = upload  # type: ignore[assignment]
            admission.work = work
        assert service.in_flight == 1 and upload.cleaned == 0
        work.set_result(None)
        await asyncio.sleep(0)
        assert service.in_flight == 0 and upload.cleaned == 1

        service.ready = False
        with pytest.raises(Problem) as not_ready:
            async with service.admit():
                pass
        assert not_ready.value.code == "not_ready" and service.in_flight == 0

    try:
        asyncio.run(scenario())
    finally:
        service.close()
    assert service.metrics.registry.get_sample_value("ich_rejected_total", {"reason": "capacity"}) == 1.0


def test_model_description_comes_from_the_predictor(predictor: Predictor) -> None:
    service = _service(predictor)
    try:
        described = service.describe()
    finally:
        service.close()
    assert described == predictor.describe()
    assert described["intended_use"] == "tests only" and described["device"] == "cpu"
    assert {"plans", "config", "parameter_count", "runtime", "postprocessing", "sha256"} <= described.keys()
    empty = PredictionService(ServiceSettings(weights_dir="/nonexistent"), ServiceMetrics())
    try:
        with pytest.raises(Problem) as exc:
            empty.describe()
    finally:
        empty.close()
    assert exc.value.code == "not_ready"
