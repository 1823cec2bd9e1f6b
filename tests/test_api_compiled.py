"""The service with the compiled (inductor, freezing) model, as production runs it on CPU: a REAL uvicorn process
started with ``ICH_COMPILE=on`` must report the compiled runtime and give the same answer as the eager model.

Agreement criteria (the runner's acceptance criteria): expansion probability within 1e-3, mask Dice >= 0.999
(observed: ~1e-7, 1.0).
Budget: ~30 s on 2 CPU cores (the warm-up compiles the small model: ~15-25 s cold, less from inductor's cache).
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from service_fixtures import ServerProcess, make_weights_dir, start_server, write_phantom_series

from app.inference import Predictor
from app.ingestion import load_series
from app.model.runtime import cxx_compiler_available
from app.weights.registry import load_weights

pytestmark = pytest.mark.skipif(not cxx_compiler_available(), reason="inductor needs a C++ compiler")
TIMEOUT = httpx.Timeout(120.0)


@pytest.fixture(scope="module")
def compiled_server(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServerProcess, Path]:
    tmp = tmp_path_factory.mktemp("compiled")
    # the random model segments a few voxels only: accept any mask, so that the Dice below compares masks
    make_weights_dir(tmp / "weights", postprocessing={"detection": {"min_volume_ml": 1e-6}})
    srv = start_server(tmp, env={"ICH_COMPILE": "on", "ICH_WARMUP_PASSES": "1"}, ready_timeout=300.0)
    yield srv, tmp / "weights"
    assert srv.stop() in (0, -signal.SIGTERM), srv.log_text()[-3000:]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def test_compiled_service_matches_the_eager_model(compiled_server: tuple[ServerProcess, Path],
                                                  tmp_path: Path) -> None:
    server, weights_dir = compiled_server
    base = server.base_url
    runtime = httpx.get(f"{base}/v1/model", timeout=TIMEOUT).json()["runtime"]
    assert runtime["compile"] is True and runtime["compile_error"] is None, runtime
    paths = write_phantom_series(tmp_path / "series", n_slices=20, size=96, seed=3)
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
    r = httpx.post(f"{base}/v1/predictions", files=files, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    nii = httpx.get(base + body["links"]["mask_nifti"], timeout=TIMEOUT)
    assert nii.status_code == 200
    (tmp_path / "mask.nii.gz").write_bytes(nii.content)
    served_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz")))

    eager = Predictor(load_weights(weights_dir), "cpu", compile=False)
    expected = eager.predict(load_series(paths))
    eager_mask = sitk.GetArrayFromImage(expected.mask)
    assert eager_mask.sum() > 0  # the Dice below is not vacuous
    assert abs(body["expansion"]["raw_probability"] - expected.raw_probability) < 1e-3
    assert body["haematoma"]["detected"] == expected.detected
    assert _dice(served_mask, eager_mask) >= 0.999
