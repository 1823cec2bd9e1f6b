"""Cost of the slice viewer's data: keeping a series' HU volume with the stored result and drawing one slice.

Prints, for a synthetic 512 x 512 head CT phantom (``--slices`` axial slices, noise 3 HU): the seconds
:class:`app.outputs.slices.SliceStack` takes to compress the volume (added to the service's ``outputs`` stage),
the bytes it keeps against the raw int16 volume, and the median milliseconds of one slice PNG
(:meth:`app.outputs.CompactResult.render_slice`: decompress, unpack the mask slice, window, outline, encode) and of
the annotated overview. Best of ``--repeats``; run with ``.venv/bin/python bench/viewer.py [--slices 40]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from service_fixtures import phantom_volume  # noqa: E402

from app.outputs import CompactResult  # noqa: E402
from app.outputs.slices import SliceStack  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    hu, mask, px, dz = phantom_volume(args.slices, 512)
    hu = hu.astype(np.float32)
    compress_s = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        stack = SliceStack.from_hu(hu)
        compress_s.append(time.perf_counter() - t0)
    image = sitk.GetImageFromArray(mask)
    image.SetSpacing((px, px, dz))
    series = SimpleNamespace(source_headers=[], hu_array=hu)
    compact = CompactResult.from_arrays(series, image, np.zeros((0, 512, 512), np.uint8), algorithm_name="bench",
                                        algorithm_version="0", keep_slices=True, volume_ml=20.0, probability=0.3)
    slice_ms = []
    for k in range(args.slices):
        t0 = time.perf_counter()
        compact.render_slice(k, ("brain", "blood", "bone")[k % 3])
        slice_ms.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    compact.render("overlay.png")
    overview_ms = (time.perf_counter() - t0) * 1000
    print(json.dumps({
        "volume_zyx": list(hu.shape),
        "compress_s_best": round(min(compress_s), 3),
        "kept_bytes": stack.nbytes,
        "raw_int16_bytes": int(hu.size * 2),
        "kept_fraction": round(stack.nbytes / (hu.size * 2), 3),
        "slice_png_ms_median": round(statistics.median(slice_ms), 1),
        "slice_png_ms_max": round(max(slice_ms), 1),
        "overview_png_ms": round(overview_ms, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
