"""Determinism: the same series posted 10 times gives the identical probability, volume and mask
(NIfTI voxels compared bit for bit). Budget: about 20 s."""

from __future__ import annotations

import gzip
from pathlib import Path

import httpx

from .harness import FaultServer, check_answer


def test_same_series_ten_times(server: FaultServer, canary_series: list[Path]) -> None:
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in canary_series]
    results, masks = [], []
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        for _ in range(10):
            r = client.post("/v1/predictions", files=files)
            assert check_answer(r) == "200"
            body = r.json()
            results.append((body["expansion"], body["haematoma"]))
            nii = client.get(body["links"]["mask_nifti"])
            assert nii.status_code == 200
            raw = gzip.decompress(nii.content)
            masks.append(raw[352:])  # voxels after the NIfTI-1 header (the header may carry no time stamp)
    assert all(res == results[0] for res in results), results
    assert all(m == masks[0] for m in masks)
