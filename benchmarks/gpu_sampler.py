"""GPU sampler benchmark: torch FP32 eager vs FP16 eager vs FP16 + CUDA graphs, full DDIM loops.

For each model (fmnist-ddpm, cifar10-ddpm, sd15-unet at 64x64 latents), batch and mode it runs the project's
one sampler (``pqcad_deploy.sampling.sample``, DDIM, 50 steps by default) and records:

* end-to-end time per sample loop (median/p90 of ``--repeats`` untimed loops, CUDA events) and per image;
* per-step UNet latency (median/p90) from one loop with per-step CUDA-event timing;
* the sampler's own overhead = end-to-end minus the sum of UNet calls, in the same per-step-timed loop
  (target: under 5 %), and a second estimate from the untimed loops minus ``steps`` x the mean UNet call
  measured back to back (``unet_call_ms``);
* speed-ups against FP32 eager and FP16 eager at the same model and batch; peak GPU memory.

TensorRT is recorded as "not run": it is not installable on the lent GPU machine (design.md section 7).

Run (after ``pip install -e .``; about 3-5 minutes on an H100):
    python benchmarks/gpu_sampler.py
    python benchmarks/gpu_sampler.py --models fmnist-ddpm --batches 1 --repeats 2   # quick check
Writes benchmarks/results/gpu_sampler_<UTC date>.json (updated after every configuration).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import logging
import sys
import traceback
from pathlib import Path

import torch

from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.runtime.backends.torch_backend import TorchRunner
from pqcad_deploy.sampling import make_scheduler, sample
from pqcad_deploy.timing import environment_info, environment_line, summarize, time_calls
from pqcad_deploy.zoo import TEACHER_PATH, build_model, get_spec, load_model

MODES = {  # name -> (precision, cuda_graph)
    "fp32": ("fp32", False),
    "fp16": ("fp16", False),
    "fp16+graph": ("fp16", True),
    "bf16": ("bf16", False),
    "bf16+graph": ("bf16", True),
    "fp32+graph": ("fp32", True),
}
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["fmnist-ddpm", "cifar10-ddpm", "sd15-unet"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    p.add_argument("--modes", nargs="+", default=["fp32", "fp16", "fp16+graph"], choices=sorted(MODES))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5, help="untimed end-to-end loops per configuration")
    p.add_argument(
        "--warmup", type=int, default=1, help="full loops before measuring (graph capture happens here)"
    )
    p.add_argument("--unet-iters", type=int, default=20, help="back-to-back UNet calls for unet_call_ms")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="leave cudnn.benchmark off")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/gpu_sampler_<date>.json)",
    )
    return p.parse_args(argv)


def load_for_speed(name: str) -> tuple[torch.nn.Module, str]:
    """The shipped teacher for fmnist when present (weights do not change latency); random weights otherwise."""
    if name == "fmnist-ddpm" and TEACHER_PATH.is_file():
        model, _ = load_model(TEACHER_PATH)
        return model, "shipped teacher"
    return build_model(name, seed=0).eval(), "random (seed 0)"


def bench_config(model, spec, batch: int, mode: str, args, device: torch.device) -> dict:
    precision, graph = MODES[mode]
    shape = (batch, *spec.sample_shape)
    g = torch.Generator().manual_seed(args.seed + 7)
    cond = torch.randn(batch, *spec.cond_shape, generator=g).to(device) if spec.cond_shape else None
    sched = lambda: make_scheduler("ddim", **spec.scheduler)  # noqa: E731
    torch.cuda.reset_peak_memory_stats(device)
    runner = TorchRunner(model, precision=precision, device=device, cuda_graph=graph)
    with runner:
        den = runner.denoiser()
        for _ in range(args.warmup):
            sample(den, sched(), shape, steps=args.steps, seed=args.seed, device=device, cond=cond)
        e2e = [
            sample(den, sched(), shape, steps=args.steps, seed=args.seed, device=device, cond=cond).total_ms
            for _ in range(args.repeats)
        ]
        timed = sample(
            den, sched(), shape, steps=args.steps, seed=args.seed, device=device, cond=cond, time_steps=True
        )
        x = torch.randn(shape, generator=g).to(device)
        t = torch.full((batch,), 500, dtype=torch.int64, device=device)
        unet_call = time_calls(lambda: den(x, t, cond), args.unet_iters, device)
        finite = bool(torch.isfinite(timed.images).all())
        describe = runner.describe()
    e2e_s = summarize(e2e)
    step_s = summarize(timed.step_ms)
    overhead_timed = (timed.total_ms - timed.unet_ms) / timed.total_ms
    overhead_pipe = (e2e_s["median"] - args.steps * unet_call) / e2e_s["median"]
    return {
        "model": spec.name,
        "batch": batch,
        "mode": mode,
        "steps": args.steps,
        "runner": describe,
        "e2e_ms": e2e_s,
        "e2e_ms_per_image": e2e_s["median"] / batch,
        "step_ms": step_s,
        "timed_loop_total_ms": timed.total_ms,
        "timed_loop_unet_ms": timed.unet_ms,
        "sampler_overhead": overhead_timed,
        "unet_call_ms": unet_call,
        "sampler_overhead_pipelined": overhead_pipe,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "images_finite": finite,
    }


def add_speedups(rows: list[dict]) -> None:
    base = {(r["model"], r["batch"], r["mode"]): r["e2e_ms"]["median"] for r in rows if "e2e_ms" in r}
    for r in rows:
        if "e2e_ms" not in r:
            continue
        for ref in ("fp32", "fp16"):
            b = base.get((r["model"], r["batch"], ref))
            r[f"speedup_vs_{ref}"] = b / r["e2e_ms"]["median"] if b else None


def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    cols = f"{'model':<15}{'B':>3} {'mode':<11}{'step med':>9}{'p90':>8}{'e2e ms':>10}{'ms/img':>9}"
    cols += f"{'ovh%':>7}{'ovh%pipe':>9}{'x fp32':>8}{'x fp16':>8}{'GiB':>7}"
    print(cols)
    print("-" * len(cols))
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<15}{r['batch']:>3} {r['mode']:<11} ERROR: {r['error']}")
            continue
        print(
            f"{r['model']:<15}{r['batch']:>3} {r['mode']:<11}{r['step_ms']['median']:>9.3f}"
            f"{r['step_ms']['p90']:>8.3f}{r['e2e_ms']['median']:>10.1f}{r['e2e_ms_per_image']:>9.1f}"
            f"{100 * r['sampler_overhead']:>7.2f}{100 * r['sampler_overhead_pipelined']:>9.2f}"
            f"{fmt(r.get('speedup_vs_fp32')):>8}{fmt(r.get('speedup_vs_fp16')):>8}{r['peak_mem_gib']:>7.2f}"
            + ("" if r["images_finite"] else "  (non-finite images)")
        )
    print("TensorRT: not run (TensorRT is not installable on this machine; see design.md section 7).")
    print("ovh% = (end-to-end - sum of UNet calls) / end-to-end in the per-step-timed loop (target < 5%);")
    print("ovh%pipe = (untimed end-to-end median - steps x back-to-back UNet call) / end-to-end.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        print("gpu_sampler.py needs a CUDA GPU (torch.cuda.is_available() is False).", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    device = torch.device("cuda", torch.cuda.current_device())
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"gpu_sampler_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment_info()
    result = {
        "benchmark": "gpu_sampler",
        "environment": env,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sampler": "pqcad_deploy.sampling.sample, DDIM eta=0",
        "tensorrt": {"status": "not run", "reason": "TensorRT is not installable on the lent GPU machine"},
        "rows": [],
    }
    for name in args.models:
        spec = get_spec(name)
        model, weights = load_for_speed(name)
        for batch in args.batches:
            for mode in args.modes:
                print(f"[{name} b{batch} {mode}] ...", flush=True)
                try:
                    row = bench_config(model, spec, batch, mode, args, device)
                    row["weights"] = weights
                except Exception as e:  # keep the other configurations
                    traceback.print_exc()
                    row = {"model": name, "batch": batch, "mode": mode, "error": f"{type(e).__name__}: {e}"}
                result["rows"].append(row)
                add_speedups(result["rows"])
                atomic_json_save(result, out)
                gc.collect()
                torch.cuda.empty_cache()
        del model
        gc.collect()
    print()
    print_table(result["rows"], environment_line(env))
    print(f"\nwrote {out}")
    return 0 if all("error" not in r for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
