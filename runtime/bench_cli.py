"""``pqcad-bench``: one sampler, several engines, one table (latency, speed-ups against FP baselines, quality).

    pqcad-bench --checkpoint fmnist-ddpm --engine torch:fp32 --engine ort:unet_fp32.onnx \\
        --engine ort:unet_int8.ort.json@50 --steps 100 --batch-size 8 --threads 2 --json bench.json
    pqcad-bench --checkpoint sd15-unet --random-weights --device cuda --engine torch:fp16 \\
        --engine torch:fp16+graph --engine trt16=trt:unet_fp16.plan --engine trt:unet_int8.plan --baseline trt16

Engines: [label=]kind:target[@steps] with kind torch (fp32|fp16|bf16, +graph for CUDA graphs), ort (an .onnx file
or an ORT engine .json from pqcad-build) or trt (a .plan, +graph). Torch FP32/FP16 eager and unquantized ONNX
models are baselines automatically; --baseline LABEL adds others (e.g. a TensorRT FP16 engine). Every engine
samples from the same noise; quality columns compare the final images with the first baseline's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pqcad_deploy import metrics
from pqcad_deploy.cli.common import (
    add_device,
    add_json,
    add_text_args,
    add_verbose,
    check_output_path,
    int_range,
    make_parser,
    resolve_device,
    run_cli,
    seed_int,
    setup_logging,
    steps_int,
    threads_int,
)
from pqcad_deploy.errors import OutputPathError, UsageError
from pqcad_deploy.images import save_grid
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import open_model
from pqcad_deploy.sampling import check_steps

from .bench import BenchConfig, check_engines, format_table, parse_engine, run_bench
from .text_engine import prompt_conditioning


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    p = make_parser("pqcad-bench", doc[0].strip("`"), "\n\n".join(doc[1:]))
    p.add_argument(
        "--checkpoint",
        required=True,
        help="model whose spec (shapes, scheduler) every engine shares and that torch engines run: an FP "
        ".safetensors, a student .pt, or a zoo name (shipped weights, else random)",
    )
    p.add_argument("--random-weights", action="store_true", help="with a zoo name: seeded random weights")
    p.add_argument("--engine", action="append", required=True, help="[label=]kind:target[@steps], repeatable")
    p.add_argument("--baseline", action="append", default=[], help="extra baseline engine label")
    p.add_argument(
        "--steps", type=steps_int, default=None, help="sampler steps (default 50, or the student's)"
    )
    p.add_argument("--batch-size", type=int_range(1, 4096), default=1, help="images per sampler run")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed (the same for every engine)")
    p.add_argument("--repeats", type=int_range(1, 10**6), default=5, help="timed end-to-end runs per engine")
    p.add_argument("--warmup", type=int_range(0, 10**6), default=1, help="untimed runs per engine first")
    p.add_argument("--scheduler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument(
        "--prompt", action="append", default=None, help="text prompt (repeatable; text-to-image models)"
    )
    p.add_argument(
        "--text-engine",
        type=Path,
        default=None,
        help="exported text encoder (pqcad-export --text-encoder) whose states feed the UNet; its time is reported",
    )
    add_text_args(p)
    add_device(p)
    p.add_argument("--threads", type=threads_int, default=None, help="torch and ORT intra-op threads")
    p.add_argument(
        "--num-samples",
        type=int_range(0, 10**6),
        default=0,
        help="images per engine for FD-fmnist (0: skip; slow on CPU)",
    )
    add_json(p)
    p.add_argument("--grid", type=Path, help="folder for one PNG grid per engine")
    add_verbose(p)
    return p


def run(args: argparse.Namespace) -> int:
    engines = [parse_engine(e) for e in args.engine]
    labels = [e.label for e in engines]
    if len(set(labels)) != len(labels):
        raise UsageError(f"Engine labels must be unique, got {labels}; name them with label=kind:target.")
    files = [e.target for e in engines if e.kind != "torch"]
    if args.json:
        check_output_path(args.json, inputs=[args.checkpoint, args.text_engine, *files], what="--json")
    if args.grid is not None:
        if args.grid.exists() and not args.grid.is_dir():
            raise OutputPathError(f"--grid {args.grid} is a file; give a folder for the PNG grids.")
        check_output_path(args.grid / "grid.png", what="--grid")
    device = resolve_device(args.device)
    bundle = open_model(args.checkpoint, random_weights=True if args.random_weights else None)
    steps = check_steps(args.steps or bundle.trained_steps or 50, bundle.spec.scheduler)
    for e in engines:
        if e.steps:
            check_steps(e.steps, bundle.spec.scheduler, f"--engine {e.label}:")
    check_engines(engines, bundle.spec, args.baseline)  # before the text encoder or any engine runs
    if args.threads:
        torch.set_num_threads(args.threads)
    conditioning = prompt_conditioning(
        bundle.spec,
        args.prompt,
        args.batch_size,
        text_engine=args.text_engine,
        text_encoder=args.text_encoder,
        embeddings=args.embeddings,
        threads=args.threads,
        repeats=args.repeats,
    )
    cfg = BenchConfig(
        guidance_scale=args.guidance_scale if conditioning else 1.0,
        steps=steps,
        batch=args.batch_size,
        seed=args.seed,
        repeats=args.repeats,
        warmup=args.warmup,
        quality_samples=args.num_samples,
        scheduler=args.scheduler,
    )
    result = run_bench(
        engines,
        bundle.model,
        bundle.spec,
        cfg,
        device=str(device),
        threads=args.threads,
        baselines=args.baseline,
        metrics=metrics,
        conditioning=conditioning,
    )
    images = result.pop("_images")
    result["source"] = bundle.source
    print(format_table(result))
    if args.grid is not None:
        args.grid.mkdir(parents=True, exist_ok=True)
        for label, imgs in images.items():
            save_grid(imgs, args.grid / f"{label.replace(':', '_').replace('/', '_')}.png")
    if args.json is not None:
        atomic_json_save(result, args.json)
        print(f"wrote {args.json}")
    return 1 if any(r["error"] for r in result["rows"]) else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, quiet_default=True)
    return run_cli("pqcad-bench", run, args)


if __name__ == "__main__":
    sys.exit(main())
