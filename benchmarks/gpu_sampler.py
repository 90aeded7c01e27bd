"""GPU sampler benchmark: torch FP32 eager vs FP16 eager vs FP16 + CUDA graphs, full DDIM loops.

For each model (fmnist-ddpm, cifar10-ddpm, sd15-unet at 64x64 latents), batch and mode it runs the project's
one sampler (``pqcad_deploy.sampling.sample``, DDIM, 50 steps by default) and records:

* end-to-end time per sample loop (median/p90 of ``--repeats`` untimed loops, CUDA events) and per image;
* per-step UNet latency (median/p90) from one loop with per-step CUDA-event timing;
* the sampler's own overhead = end-to-end minus the sum of UNet calls, in the same per-step-timed loop
  (target: under 5 %), and a second estimate from the untimed loops minus ``steps`` x the mean UNet call
  measured back to back (``unet_call_ms``);
* speed-ups against FP32 eager and FP16 eager at the same model and batch; peak GPU memory.

The loop timing is ``runtime.bench.bench_engine`` (the same measurement as ``pqcad-bench``); this script adds
only peak memory and the back-to-back UNet call time. TensorRT is recorded as "not run": it is not installable on
the GPU machine these numbers come from.

Run (after ``pip install -e .``; about 3-5 minutes on an H100):
    python benchmarks/gpu_sampler.py
    python benchmarks/gpu_sampler.py --models fmnist-ddpm --batches 1 --repeats 2   # short GPU check
    python benchmarks/gpu_sampler.py --quick       # CPU smoke run: tiny-unet-cond, fp32 and bf16, 2 steps
Writes benchmarks/results/gpu_sampler_<UTC time>.json (updated after every configuration).
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

from pqcad_deploy.cli.common import refuse_bad_outputs
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import open_model
from pqcad_deploy.runtime.backends.torch_backend import TorchRunner
from pqcad_deploy.runtime.bench import BenchConfig, bench_engine
from pqcad_deploy.timing import environment_info, environment_line, time_calls
from pqcad_deploy.zoo import ModelSpec

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
    p.add_argument(
        "--quick", action="store_true", help="CPU smoke run: tiny-unet-cond, fp32 and bf16, 2 steps"
    )
    args = p.parse_args(argv)
    refuse_bad_outputs(p, {"--out": args.out})
    if args.quick:
        args.models, args.batches, args.modes = ["tiny-unet-cond"], [2], ["fp32", "bf16"]
        args.steps, args.repeats, args.warmup, args.unet_iters = 2, 1, 0, 2
        args.out = args.out or RESULTS / "gpu_sampler_quick.json"
    return args


def bench_config(
    model: torch.nn.Module,
    spec: ModelSpec,
    batch: int,
    mode: str,
    args: argparse.Namespace,
    device: torch.device,
) -> dict:
    """``bench_engine`` for one (model, batch, mode), plus peak memory and the back-to-back UNet call time, which
    gives a second overhead estimate free of the per-step timing's own synchronisation."""
    precision, graph = MODES[mode]
    cfg = BenchConfig(steps=args.steps, batch=batch, seed=args.seed, repeats=args.repeats, warmup=args.warmup)
    g = torch.Generator().manual_seed(args.seed + 7)
    cond = torch.randn(batch, *spec.cond_shape, generator=g) if spec.cond_shape else None
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with TorchRunner(model, precision=precision, device=device, cuda_graph=graph) as runner:
        r = bench_engine(runner, spec, cfg, cond)
        den = runner.denoiser()
        x = torch.randn(batch, *spec.sample_shape, generator=g).to(device)
        t = torch.full((batch,), 500, dtype=torch.int64, device=device)
        c = cond.to(device) if cond is not None else None
        unet_call = time_calls(lambda: den(x, t, c), args.unet_iters, device)
        describe = runner.describe()
    e2e = r["e2e_ms"]["median"]
    return {
        "model": spec.name,
        "batch": batch,
        "mode": mode,
        "steps": args.steps,
        "runner": describe,
        "e2e_ms": r["e2e_ms"],
        "e2e_ms_per_image": e2e / batch,
        "step_ms": r["step_ms"],
        "sampler_overhead": r["sampler_overhead"],
        "unet_call_ms": unet_call,
        "sampler_overhead_pipelined": (e2e - args.steps * unet_call) / e2e,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "images_finite": bool(torch.isfinite(r["images"]).all()),
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
            f"{fmt(r.get('speedup_vs_fp32')):>8}{fmt(r.get('speedup_vs_fp16')):>8}{fmt(r['peak_mem_gib']):>7}"
            + ("" if r["images_finite"] else "  (non-finite images)")
        )
    print("TensorRT: not run (not installable on this machine).")
    print("ovh% = (end-to-end - sum of UNet calls) / end-to-end in the per-step-timed loop (target < 5%);")
    print("ovh%pipe = (untimed end-to-end median - steps x back-to-back UNet call) / end-to-end.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not torch.cuda.is_available() and not args.quick:
        print("gpu_sampler.py needs a CUDA GPU (torch.cuda.is_available() is False).", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"gpu_sampler_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment_info()
    result = {
        "benchmark": "gpu_sampler",
        "environment": env,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sampler": "pqcad_deploy.sampling.sample, DDIM eta=0",
        "tensorrt": {"status": "not run", "reason": "TensorRT is not installable on this GPU machine"},
        "rows": [],
    }
    for name in args.models:
        bundle = open_model(
            name
        )  # shipped weights where they exist (weights do not change latency), else random
        model, spec = bundle.model, bundle.spec
        for batch in args.batches:
            for mode in args.modes:
                print(f"[{name} b{batch} {mode}] ...", flush=True)
                try:
                    row = bench_config(model, spec, batch, mode, args, device)
                    row["weights"] = bundle.source
                except Exception as e:  # keep the other configurations
                    traceback.print_exc()
                    row = {"model": name, "batch": batch, "mode": mode, "error": f"{type(e).__name__}: {e}"}
                result["rows"].append(row)
                add_speedups(result["rows"])
                atomic_json_save(result, out)
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        del model, bundle
        gc.collect()
    print()
    print_table(result["rows"], environment_line(env))
    print(f"\nwrote {out}")
    return 0 if all("error" not in r for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
