"""Benchmark harness entry point: ``python bench/run.py [--quick] [--json] [--skip-service] [--skip-training]``.

Prints one JSON object (``--json``) or a short table. Every figure comes from this run on this machine: the
forward pass is reported as a fraction of the measured dense fp32 matmul rate (``forward_fraction_of_matmul``),
the optimised path as a ratio to the straightforward baseline (``speedup_vs_baseline``, end to end). The model
has random weights (seeded): cost does not depend on the values, and agreement is checked between the two paths.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from app.api.settings import ServiceSettings  # noqa: E402
from app.model.config import ModelConfig  # noqa: E402
from app.model.runtime import InferenceRunner, set_cpu_memory_retention  # noqa: E402
from app.model.unet import DualOutputUNet3D  # noqa: E402
from app.preprocessing.plans import Plans  # noqa: E402
from bench import forward as fwd  # noqa: E402
from bench import pipeline  # noqa: E402

PAPER_EPOCHS, PAPER_COPIES, PAPER_COHORT = 40, 10, 266  # Zhong et al. 2021: 266 patients, tenfold augmentation
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


def hardware() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def make_model(seed: int = 0, config: ModelConfig | None = None) -> DualOutputUNet3D:
    torch.manual_seed(seed)
    return DualOutputUNet3D(config or ModelConfig()).eval()


def write_series(out: Path, n_slices: int, transfer_syntax: str | None) -> Path:
    """A synthetic head CT with a haematoma (512x512 slices) written as one DICOM file per slice."""
    from model_training.synthetic.case import generate_case
    from model_training.synthetic.dicom_writer import write_dicom_series

    case = generate_case(0, 0, n_slices=n_slices, haematoma_volume_ml=30.0)
    write_dicom_series(case, out, transfer_syntax=transfer_syntax)
    return out


def write_weights(model: DualOutputUNet3D, plans: Plans, weights_dir: Path) -> Path:
    """Register ``model`` as the default version of a throwaway weights registry (for the service)."""
    from app.weights.registry import model_id, register_in_registry, save_weights, write_registry

    name, version = "bench-random", "0.0.1"
    weights_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model, plans, model.config, weights_dir / model_id(name, version),
                 {"name": name, "version": version, "threshold": 0.5,
                  "intended_use": "benchmarking only: random weights"}, "Random weights for benchmarking.\n")
    write_registry(weights_dir, register_in_registry(weights_dir, name, version, "2024-01-01T00:00:00Z", True))
    return weights_dir


def allocator_policies() -> dict[str, Any]:
    """Per path, the process's CPU allocator policy to switch to before it runs: the baseline gets glibc's
    defaults (a straightforward program does not tune malloc), the optimised path what the service applies on CPU
    (``ICH_RETAIN_CPU_MEMORY``, :func:`app.model.runtime.set_cpu_memory_retention`)."""
    retain = ServiceSettings().retain_cpu_memory and not torch.cuda.is_available()
    return {"eager_ncdhw_fp32": lambda: set_cpu_memory_retention(False), "baseline": lambda: set_cpu_memory_retention(False),
            "optimised": lambda: set_cpu_memory_retention(retain)}


def make_runner(model: DualOutputUNet3D, shape: tuple[int, int, int]) -> tuple[InferenceRunner, float]:
    """The service's runner with its production defaults (``ICH_COMPILE=auto``: inductor with freezing on CPU,
    channels-last + bf16 autocast on CUDA), warmed up. Returns (runner, seconds of the first pass, which compiles
    when compiling is on)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runner = InferenceRunner(model, device, compile=ServiceSettings().compile)
    t0 = time.perf_counter()
    runner.warm_up(shape, repeats=1)
    return runner, time.perf_counter() - t0


def bench_forward(model: DualOutputUNet3D, runner: InferenceRunner, shape: tuple[int, int, int],
                  repeats: int) -> dict[str, Any]:
    """FLOPs, eager NCDHW vs optimised runner, each against the matmul rate measured right beside it."""
    device = runner.device
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    flops = fwd.forward_flops(model.to(device), shape)
    eager_model = make_model().to(device)
    eager_model.load_state_dict(model.state_dict())

    def eager(x):  # noqa: ANN001 - the plain path: fp32, NCDHW
        with torch.no_grad():
            return eager_model.predict(torch.from_numpy(x)[None, None].to(device))

    out: dict[str, Any] = {"shape_zyx": list(shape), "flops": flops, "runner": runner.describe()}
    out.update(fwd.interleaved_forward_report({"eager_ncdhw_fp32": eager, "optimised": runner.run}, flops, shape,
                                              repeats, device, sync, setup=allocator_policies()))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        runner.run(torch.zeros(shape).numpy())
        out["torch_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return out


def bench_training(shape: tuple[int, int, int], full_shape: tuple[int, int, int], steps: int) -> dict[str, Any]:
    """Seconds per optimiser step (batch 1, Adam, Dice+BCE; channels-last and bf16 AMP on GPU) and the projected
    paper-preset time. A reduced ``shape`` is scaled to ``full_shape`` by the voxel ratio (stated in the output)."""
    from model_training.training.losses import dual_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # channels-last on CUDA only, as the trainer's presets do (measured slower in eager mode on the AVX2 CPU)
    fmt = torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format
    model = make_model().train().to(device).to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # the paper preset's optimiser
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((1, 1, *shape), generator=gen).to(device).contiguous(memory_format=fmt)
    mask = (torch.rand((1, 1, *shape), generator=gen) > 0.98).float().to(device)
    label = torch.ones(1, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if amp is not None:
            with amp:
                seg, cls = model(x)
        else:
            seg, cls = model(x)
        dual_loss(seg.float(), cls.float(), mask, label).total.backward()
        opt.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    step_s = fwd.best_seconds(step, steps, warmup=1, sync=sync)
    scale = (full_shape[0] * full_shape[1] * full_shape[2]) / (shape[0] * shape[1] * shape[2])
    steps_total = PAPER_EPOCHS * PAPER_COPIES * PAPER_COHORT
    return {"shape_zyx": list(shape), "seconds_per_step": step_s, "scaled_to_shape_zyx": list(full_shape),
            "voxel_scale": scale, "seconds_per_step_full": step_s * scale,
            "paper_preset_steps": steps_total,
            "paper_preset_projected_hours": step_s * scale * steps_total / 3600.0,
            "note": "batch 1; 40 epochs x 10 augmented copies x 266 cases; data loading excluded"}


def bench_pipeline(folder: Path, model: DualOutputUNet3D, runner: InferenceRunner, plans: Plans,
                   repeats: int) -> dict[str, Any]:
    base_model = make_model()
    base_model.load_state_dict(model.state_dict())
    best_opt = best_base = None
    extra: dict[str, Any] = {}
    policy = allocator_policies()
    for _ in range(max(1, repeats)):  # alternate, keep the fastest of each (shared machines are noisy)
        policy["baseline"]()
        base = pipeline.run_baseline(folder, base_model, plans)
        policy["optimised"]()
        opt, extra_i = pipeline.run_optimised(folder, runner, plans)
        if best_base is None or base.total_s < best_base.total_s:
            best_base = base
        if best_opt is None or opt.total_s < best_opt.total_s:
            best_opt, extra = opt, extra_i
    assert best_opt is not None and best_base is not None
    encode_total = sum(extra.get("encode_s", {}).values())
    forward_s = best_opt.stages_s["forward"]
    with_encoders = best_opt.total_s + encode_total
    return {
        "optimised_stages_s": best_opt.stages_s, "baseline_stages_s": best_base.stages_s,
        "optimised_total_s": best_opt.total_s, "baseline_total_s": best_base.total_s,
        "speedup_vs_baseline": best_base.total_s / best_opt.total_s,
        "encode_s": extra.get("encode_s"), "encode_errors": extra.get("encode_errors"),
        "skull_strip_s": extra.get("skull_strip_s"), "resample_normalise_s": extra.get("resample_normalise_s"),
        # the request path (read -> JSON numbers; the service renders NIfTI/SEG/PNG lazily, after answering)
        "non_forward_fraction": (best_opt.total_s - forward_s) / best_opt.total_s,
        "non_forward_fraction_with_encoders": (with_encoders - forward_s) / with_encoders,
        "agreement": pipeline.agreement(best_opt, best_base),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="CPU-sized subset (one repeat, fewer requests)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--slices", type=int, default=30)
    p.add_argument("--skip-service", action="store_true")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--skip-jpeg2000", action="store_true")
    p.add_argument("--requests", type=int, default=None,
                   help="requests per service concurrency level (default: 2 with --quick, else 16)")
    args = p.parse_args(argv)
    repeats = 1 if args.quick else 3
    forward_repeats = 2 if args.quick else 5
    plans = Plans()
    shape = plans.matrix_zyx
    model = make_model()
    t_start = time.perf_counter()
    report: dict[str, Any] = {"hardware": hardware(), "quick": args.quick}
    runner, first_pass_s = make_runner(model, shape)
    report["forward"] = bench_forward(model, runner, shape, forward_repeats)
    report["forward"]["optimised_first_pass_s"] = first_pass_s
    report["forward_fraction_of_matmul"] = report["forward"]["optimised"]["fraction_of_matmul"]
    with tempfile.TemporaryDirectory(prefix="ich-bench-") as tmp:
        tmpdir = Path(tmp)
        series = {"uncompressed": write_series(tmpdir / "raw", args.slices, None)}
        if not args.skip_jpeg2000:
            series["jpeg2000"] = write_series(tmpdir / "j2k", args.slices, JPEG2000_LOSSLESS)
        report["pipeline"] = {k: bench_pipeline(v, model, runner, plans, repeats) for k, v in series.items()}
        report["speedup_vs_baseline"] = report["pipeline"]["uncompressed"]["speedup_vs_baseline"]
        if not args.skip_service:
            from bench.service import bench_service

            levels = (1, 2) if args.quick else (1, 2, 4, 8)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            try:
                report["service"] = bench_service(write_weights(model, plans, tmpdir / "weights"),
                                                  series["uncompressed"], device, levels,
                                                  requests_per_level=args.requests or (2 if args.quick else 16))
            except Exception as exc:  # noqa: BLE001 - the rest of the report is still worth printing
                report["service"] = {"error": f"{type(exc).__name__}: {exc}"}
    if not args.skip_training:
        train_shape = (16, 128, 128) if args.quick and not torch.cuda.is_available() else shape
        report["training"] = bench_training(train_shape, shape, steps=1 if args.quick else 3)
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report["wall_s"] = time.perf_counter() - t_start
    print(json.dumps(report, indent=2, default=float) if args.json else table(report))
    return 0


def table(r: dict[str, Any]) -> str:
    f = r["forward"]
    lines = [f"hardware: {r['hardware']}",
             f"forward {f['shape_zyx']}: {f['flops'] / 1e12:.3f} TFLOP; "
             f"eager NCDHW {f['eager_ncdhw_fp32']['seconds']:.3f} s ({f['eager_ncdhw_fp32']['fraction_of_matmul']:.0%}"
             f" of matmul), optimised {f['optimised']['seconds']:.3f} s ({f['optimised']['fraction_of_matmul']:.0%})"]
    for name, pl in r["pipeline"].items():
        lines.append(f"{name}: baseline {pl['baseline_total_s']:.2f} s, optimised {pl['optimised_total_s']:.2f} s, "
                     f"speedup {pl['speedup_vs_baseline']:.2f}x, non-forward {pl['non_forward_fraction']:.1%}, "
                     f"agreement {pl['agreement']}")
        lines.append("  stages: " + ", ".join(f"{k} {v:.3f}" for k, v in pl["optimised_stages_s"].items()))
    for lvl in r.get("service", {}).get("levels", []):
        lines.append(f"service {lvl['clients']} clients: {lvl['throughput_rps']:.3f} req/s, {lvl.get('latency_s')}")
    if r.get("service", {}).get("single_client_non_forward_fraction") is not None:
        lines.append(f"service, 1 client: upload-to-JSON non-forward share "
                     f"{r['service']['single_client_non_forward_fraction']:.1%}")
    if "training" in r:
        t = r["training"]
        lines.append(f"training: {t['seconds_per_step_full']:.2f} s/step, paper preset "
                     f"{t['paper_preset_projected_hours']:.1f} h")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
