"""``pqcad-bench``: one sampler, several engines, one table (latency, speed-ups against FP baselines, quality).

    pqcad-bench --model fmnist-ddpm --engine torch:fp32 --engine ort:unet_fp32.onnx \\
        --engine ort:unet_int8.onnx --steps 50 --batch 1 --threads 2 --json bench.json
    pqcad-bench --model fmnist-ddpm --device cuda --engine torch:fp32 --engine torch:fp16 \\
        --engine torch:fp16+graph --engine trt16=trt:unet_fp16.plan --engine trt:unet_int8.plan --baseline trt16

Engines: [label=]kind:target with kind torch (fp32|fp16|bf16, +graph for CUDA graphs), ort (an .onnx file or
an ORT engine .json from pqcad-build) or trt (a .plan, +graph). Torch FP32/FP16 eager and unquantized ONNX
models are baselines automatically; --baseline LABEL adds others (e.g. a TensorRT FP16 engine).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import open_checkpoint
from pqcad_deploy.zoo import TEACHER_PATH, ModelSpec, build_model, get_spec, load_model

from .backends.base import MissingBackendError
from .bench import BenchConfig, format_table, parse_engine, run_bench

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pqcad-bench",
        description="End-to-end sampler latency and quality over several engines in one process.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="zoo name (fmnist-ddpm uses the shipped teacher when present)")
    src.add_argument(
        "--checkpoint", type=Path, help="FP model (.safetensors + .json) or student checkpoint (.pt)"
    )
    p.add_argument("--engine", action="append", required=True, help="[label=]kind:target, repeatable")
    p.add_argument("--baseline", action="append", default=[], help="extra baseline engine label")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default 50, or the student's)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--scheduler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--device", default="cpu", help="cpu or cuda (ORT engines follow their providers)")
    p.add_argument("--threads", type=int, default=None, help="torch and ORT intra-op threads")
    p.add_argument("--quality-samples", type=int, default=0, help="images per engine for FD-fmnist (0: skip)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--grid", type=Path, help="folder for one PNG grid per engine")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def load_source(args: argparse.Namespace) -> tuple[torch.nn.Module, ModelSpec, dict]:
    """The torch model for torch engines plus the spec (shapes, scheduler) every engine shares."""
    if args.checkpoint is not None:
        model, spec, qcfg, meta = open_checkpoint(args.checkpoint)
        if qcfg is None:
            return model, spec, {"weights": str(args.checkpoint)}
        return model, spec, {"weights": str(args.checkpoint), "sampling": meta.get("sampling")}
    spec = get_spec(args.model)
    if args.model == "fmnist-ddpm" and TEACHER_PATH.is_file():
        model, spec = load_model(TEACHER_PATH)
        return model, spec, {"weights": str(TEACHER_PATH)}
    log.warning("%s: random weights (latency only; quality columns are meaningless)", args.model)
    return build_model(spec, seed=0).eval(), spec, {"weights": "random (seed 0)"}


def _metrics():
    try:
        from pqcad_deploy import metrics
    except ImportError as e:
        log.warning("quality columns skipped: pqcad_deploy.metrics is not importable (%s)", e)
        return None
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        engines = [parse_engine(e) for e in args.engine]
        labels = [e.label for e in engines]
        if len(set(labels)) != len(labels):
            raise ValueError(f"Engine labels must be unique, got {labels}; name them with label=kind:target.")
        model, spec, source = load_source(args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"pqcad-bench: error: {e}", file=sys.stderr)
        return 2
    steps = args.steps or (source.get("sampling") or {}).get("steps") or 50
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = BenchConfig(
        steps=steps,
        batch=args.batch,
        seed=args.seed,
        repeats=args.repeats,
        warmup=args.warmup,
        quality_samples=args.quality_samples,
        scheduler=args.scheduler,
    )
    try:
        result = run_bench(
            engines,
            model,
            spec,
            cfg,
            device=args.device,
            threads=args.threads,
            baselines=args.baseline,
            metrics=_metrics(),
        )
    except (ValueError, MissingBackendError) as e:
        print(f"pqcad-bench: error: {e}", file=sys.stderr)
        return 2
    images = result.pop("_images")
    result["source"] = source
    print(format_table(result))
    if args.grid is not None:
        from pqcad_deploy.images import save_grid

        args.grid.mkdir(parents=True, exist_ok=True)
        for label, imgs in images.items():
            save_grid(imgs, args.grid / f"{label.replace(':', '_').replace('/', '_')}.png")
    if args.json is not None:
        atomic_json_save(result, args.json)
        print(f"wrote {args.json}")
    return 1 if any(r["error"] for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
