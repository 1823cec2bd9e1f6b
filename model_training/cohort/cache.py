"""On-disk cache of preprocessed cases: the model-input tensor and the haematoma mask on the model grid.

A case is preprocessed exactly as the service does it: DICOM folders/ZIPs through
:func:`app.ingestion.load_series`, NIfTI files through :func:`SimpleITK.ReadImage`, then
:func:`app.preprocessing.preprocess` and :func:`app.preprocessing.resample_label_to_model_grid` for the mask.
Entries are ``.npz`` files under ``<cache_dir>/<plans fingerprint[:16]>/`` named by a sha256 of the plans
fingerprint and of the identity (resolved path, size, modification time) of every source file, so a change of
plans or of any input file produces a new entry and stale entries are never read. Writes are atomic.

Arrays: ``tensor`` float32 (D, H, W) = plans.matrix_zyx (z-y-x), ``mask`` uint8 (D, H, W) on the same grid; for a
case with a structure label map (synthetic cohorts) also ``dark`` and ``ivh`` uint8 (D, H, W): the clot's darker
parts (hypodense focus, swirl, the darker side of a blend, the serum of a fluid level, heterogeneous foci), each
voxel holding its part's STRUCTURE_LABELS code, and the intraventricular blood (0/1) that the haematoma mask leaves
out, which the structure-weighted Dice loss emphasises.

The default cache directory is in the user's cache directory
(:func:`model_training.cohort.cache_dir.default_cache_dir`), not in the working directory, so that a checkout
never accumulates untracked cache files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from app.preprocessing.plans import Plans
from model_training.cohort.cache_dir import default_cache_dir
from model_training.cohort.manifest import CaseRecord
from model_training.synthetic.haematoma import STRUCTURE_LABELS

__all__ = ["NIFTI_SUFFIXES", "CachedCase", "build_cache", "cache_key", "cache_path", "default_cache_dir",
           "load_cached", "preprocess_case", "preprocess_case_arrays", "read_image_hu"]

log = logging.getLogger(__name__)
NIFTI_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
DARK_PART_NAMES = ("hypodense_focus", "swirl", "blend_hypo", "fluid_hypo", "heterogeneous_focus")
DARK_PARTS = tuple(STRUCTURE_LABELS[k] for k in DARK_PART_NAMES)
ENTRY_FORMAT = "dark-part-codes"  # ``dark`` holds each voxel's STRUCTURE_LABELS code, not a 0/1 union


@dataclass(frozen=True)
class CachedCase:
    case_id: str
    tensor: np.ndarray  # float32 (D, H, W)
    mask: np.ndarray  # uint8 (D, H, W)
    label: int


def _file_identity(path: Path) -> list[tuple[str, int, int]]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        files = [path]
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f.resolve()), st.st_size, st.st_mtime_ns))
    return out


def cache_key(case: CaseRecord, plans: Plans) -> str:
    """sha256 of the plans fingerprint and the identity of the image and mask files."""
    payload = {
        "plans": plans.fingerprint(),
        "image": _file_identity(case.image),
        "mask": _file_identity(case.mask),
    }
    if case.structure_labels is not None:
        payload["structure_labels"] = _file_identity(case.structure_labels)
        payload["entry"] = ENTRY_FORMAT
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: Path, case: CaseRecord, plans: Plans) -> Path:
    return Path(cache_dir) / plans.fingerprint()[:16] / f"{cache_key(case, plans)}.npz"


def _is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(name.endswith(s) for s in NIFTI_SUFFIXES)


def read_image_hu(path: Path) -> sitk.Image:
    """The baseline CT as a float32 HU image in LPS: NIfTI/NRRD/MHA via SimpleITK, otherwise DICOM ingestion."""
    if _is_volume_file(path):
        return sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    from app.ingestion import load_series

    return load_series([path]).image


def preprocess_case(case: CaseRecord, plans: Plans) -> tuple[np.ndarray, np.ndarray]:
    """(tensor float32 (D,H,W), mask uint8 (D,H,W)) of one case on the model grid of ``plans``."""
    arrays = preprocess_case_arrays(case, plans)
    return arrays["tensor"], arrays["mask"]


def preprocess_case_arrays(case: CaseRecord, plans: Plans) -> dict[str, np.ndarray]:
    """The cache entry of one case: ``tensor`` and ``mask``, plus ``dark`` and ``ivh`` when the case has a
    structure label map: ``dark`` the STRUCTURE_LABELS code of the darker part at each voxel (0 elsewhere), ``ivh``
    0/1, each part resampled to the model grid by the mask's rule."""
    from app.preprocessing.pipeline import preprocess, resample_label_to_model_grid

    image = read_image_hu(case.image)
    pre = preprocess(image, plans)
    label = sitk.ReadImage(str(case.mask))
    mask = resample_label_to_model_grid(label, pre.grid)
    out = {"tensor": pre.tensor.astype(np.float32, copy=False), "mask": (mask > 0).astype(np.uint8)}
    if case.structure_labels is not None:
        structures = sitk.ReadImage(str(case.structure_labels), sitk.sitkUInt8)
        codes = sitk.GetArrayViewFromImage(structures)
        def on_model_grid(values: tuple[int, ...]) -> np.ndarray:
            selected = sitk.GetImageFromArray(np.isin(codes, values).astype(np.uint8))
            selected.CopyInformation(structures)
            return resample_label_to_model_grid(selected, pre.grid) > 0

        dark = np.zeros(pre.tensor.shape, np.uint8)
        for code in DARK_PARTS:
            if np.any(codes == code):
                dark[on_model_grid((code,)) & (dark == 0)] = code
        out["dark"] = dark
        out["ivh"] = on_model_grid((STRUCTURE_LABELS["ivh"],)).astype(np.uint8)
    return out


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build_one(case: CaseRecord, plans_json: str, cache_dir: str) -> str:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    plans = Plans.model_validate_json(plans_json)
    out = cache_path(Path(cache_dir), case, plans)
    if not out.exists():
        _atomic_savez(out, **preprocess_case_arrays(case, plans))
    return str(out)


def build_cache(
    cases: Sequence[CaseRecord], plans: Plans, cache_dir: Path, workers: int | None = None, progress: bool = True
) -> list[Path]:
    """Preprocess every case not yet cached (in a process pool when ``workers`` > 1); returns the entry paths."""
    cache_dir = Path(cache_dir)
    todo = [c for c in cases if not cache_path(cache_dir, c, plans).exists()]
    workers = workers if workers is not None else max(1, min(len(todo), (os.cpu_count() or 1)))
    if todo:
        log.info("preprocessing %d of %d cases into the cache (%d workers)", len(todo), len(cases), workers)
        pj = plans.model_dump_json()
        if workers > 1 and len(todo) > 1:
            from tqdm import tqdm

            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_build_one, c, pj, str(cache_dir)) for c in todo]
                for f in tqdm(futures, desc="preprocess", disable=not progress, unit="case"):
                    f.result()
        else:
            for c in todo:
                _build_one(c, pj, str(cache_dir))
    return [cache_path(cache_dir, c, plans) for c in cases]


def load_cached(case: CaseRecord, plans: Plans, cache_dir: Path) -> CachedCase:
    """Load one cached case (build it first with :func:`build_cache`)."""
    with np.load(cache_path(cache_dir, case, plans)) as z:
        tensor = z["tensor"]
        mask = z["mask"]
    if tuple(tensor.shape) != tuple(plans.matrix_zyx):
        raise ValueError(f"cached tensor of {case.case_id!r} has shape {tensor.shape}, plans say {plans.matrix_zyx}")
    return CachedCase(case_id=case.case_id, tensor=tensor, mask=mask, label=case.label)
