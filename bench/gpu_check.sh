#!/usr/bin/env bash
# Short GPU check for a session that has one (H100/H200 class). Budget: ~5 min wall, most of it the service run.
# Usage: bash bench/gpu_check.sh   (from the repository root, with the project venv active or at .venv/)
# Prints: runner agreement (bf16 autocast + channels-last + CUDA graphs vs eager fp32 NCDHW), then the full
# benchmark JSON (forward ms and fraction of bf16/fp32 matmul, end-to-end p50, 1..8 client throughput, training).
set -euo pipefail
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'PY'
import time, numpy as np, torch
from app.model.unet import DualOutputUNet3D
from app.model.runtime import InferenceRunner
torch.manual_seed(0)
ref = DualOutputUNet3D().eval().cuda()
x = np.random.default_rng(0).normal(size=(32, 256, 256)).clip(0, None).astype(np.float32)
with torch.no_grad():
    s, c = ref.predict(torch.from_numpy(x)[None, None].cuda())
ref_p, ref_c = s[0, 0].cpu().numpy(), float(c[0])
for kw in ({"autocast": "off"}, {"autocast": "bf16"}, {"autocast": "bf16", "cuda_graphs": True},
           {"autocast": "bf16", "compile": True}):
    m = DualOutputUNet3D().eval(); m.load_state_dict(ref.state_dict())
    r = InferenceRunner(m, "cuda", **kw); r.warm_up((32, 256, 256), 3)
    torch.cuda.synchronize(); t = time.perf_counter(); n = 20
    for _ in range(n): p, cp = r.run(x)
    ms = (time.perf_counter() - t) / n * 1000
    a, b = p >= 0.5, ref_p >= 0.5
    dice = 2 * (a & b).sum() / max(1, a.sum() + b.sum())
    print(kw, f"{ms:.2f} ms/pass (incl. H2D/D2H)", "max|dp|", float(np.abs(p - ref_p).max()),
          "|dcls|", abs(cp - ref_c), "dice", float(dice))
PY
"$PY" bench/run.py --json | tee "$OUT/bench_gpu.json"
