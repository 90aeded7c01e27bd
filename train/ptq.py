"""``pqcad-train ptq``: post-training quantization baselines (no training) -> a student checkpoint.

Calibration data is timestep-aware (Q-Diffusion style): x_t taken from FP DDIM trajectories at evenly spaced
steps (``calibset``), either loaded with ``--calib`` or collected from the teacher on the fly.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from torch import nn

from pqcad_deploy.calibset import CalibSet, collect_calibset, forward_loop_from, random_conditioning
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.quant import QuantConfig, calibrate, quantize_model
from pqcad_deploy.student import save_student
from pqcad_deploy.zoo import MODEL_SPECS, TEACHER_PATH, ModelSpec, build_model, load_model

log = logging.getLogger(__name__)

BITS = {"w8a8": (8, 8), "w4a8": (4, 8)}


def parse_bits(text: str) -> tuple[int, int]:
    if text not in BITS:
        raise ValueError(f"--bits {text!r} is not supported; choose one of {sorted(BITS)}.")
    return BITS[text]


def load_teacher(path_or_name: str) -> tuple[nn.Module, ModelSpec]:
    """An FP model from safetensors + sidecar, or a zoo name (random weights: for smoke tests only)."""
    if Path(path_or_name).is_file():
        return load_model(path_or_name)
    if path_or_name in MODEL_SPECS:
        log.warning("--teacher %s is a zoo name: using RANDOM weights (smoke test only)", path_or_name)
        spec = MODEL_SPECS[path_or_name]
        return build_model(spec, seed=0).eval(), spec
    raise FileNotFoundError(
        f"Teacher {path_or_name} is neither a file nor a zoo model ({sorted(MODEL_SPECS)}); "
        f"the shipped teacher is {TEACHER_PATH}."
    )


def get_calibset(
    teacher: nn.Module, spec: ModelSpec, args: argparse.Namespace, device: torch.device
) -> CalibSet:
    if args.calib:
        return CalibSet.load(args.calib)
    cond_fn = random_conditioning(spec.cond_shape, args.seed + 7) if spec.cond_shape else None
    cs = collect_calibset(
        TorchDenoiser(teacher.to(device)),
        spec,
        n_trajectories=args.n_trajectories,
        steps=args.calib_steps,
        n_points=args.n_points,
        seed=args.seed,
        device=device,
        batch_size=args.batch_size,
        cond_fn=cond_fn,
    )
    if args.save_calib:
        cs.save(args.save_calib)
    return cs


def ptq_student(
    teacher: nn.Module,
    cfg: QuantConfig,
    cs: CalibSet,
    method: str,
    batch_size: int = 256,
    max_batches: int | None = None,
    device: str | torch.device = "cpu",
    percentile: float | None = None,
) -> tuple[nn.Module, dict]:
    """Quantize ``teacher`` in place and calibrate it on ``cs``; returns (model, history entry)."""
    t0 = time.perf_counter()
    model = quantize_model(teacher.to(device).eval(), cfg)
    loop = forward_loop_from(cs, batch_size=batch_size, device=device, max_batches=max_batches)
    calibrate(model, loop, method=method, percentile=percentile or cfg.percentile)
    entry = {
        "stage": "ptq",
        "method": method,
        "weight_bits": cfg.weight_bits,
        "act_bits": cfg.act_bits,
        "target": cfg.target,
        "calib_points": len(cs),
        "calib_meta": cs.meta,
        "max_batches": max_batches,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return model, entry


def run(args: argparse.Namespace) -> Path:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    wbits, abits = parse_bits(args.bits)
    cfg = QuantConfig(
        target=args.target,
        weight_bits=wbits,
        act_bits=abits,
        int4_block_size=args.int4_block_size,
        calib_method=args.method,
        percentile=args.percentile,
        quantize_conv_in=args.quantize_conv_in,
        quantize_conv_out=args.quantize_conv_out,
        weight_reduce_range={"auto": None, "on": True, "off": False}[args.weight_reduce_range],
    )
    teacher, spec = load_teacher(args.teacher)
    cs = get_calibset(teacher, spec, args, device)
    model, entry = ptq_student(
        teacher, cfg, cs, args.method, args.batch_size, args.max_batches, device, args.percentile
    )
    entry["teacher"] = str(args.teacher)
    meta = {"history": [entry], "sampling": {"scheduler": "ddim", "steps": None}}
    out = save_student(args.out, model.cpu(), spec, cfg, meta)
    log.info("PTQ %s %s (%s) -> %s", args.bits, args.method, args.target, out)
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ptq", help="post-training quantization baseline -> student checkpoint")
    p.add_argument("--teacher", default=str(TEACHER_PATH), help="FP model .safetensors (+ .json) or zoo name")
    p.add_argument("--method", choices=["maxabs", "percentile", "mse"], default="maxabs")
    p.add_argument("--bits", choices=sorted(BITS), default="w8a8")
    p.add_argument("--target", choices=["tensorrt", "onnxruntime"], default="tensorrt")
    p.add_argument("--int4-block-size", type=int, default=None, help="block size for 4-bit Linear weights")
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile")
    p.add_argument("--quantize-conv-in", action="store_true")
    p.add_argument("--quantize-conv-out", action="store_true")
    p.add_argument(
        "--weight-reduce-range",
        choices=["auto", "on", "off"],
        default="auto",
        help="8-bit weights on the 7-bit grid (auto: on for onnxruntime, whose x86 U8S8 kernels saturate)",
    )
    g = p.add_argument_group("calibration data")
    g.add_argument("--calib", default=None, help="saved calibration set (calibset); else collected now")
    g.add_argument("--save-calib", default=None, help="where to save a collected calibration set")
    g.add_argument("--n-trajectories", type=int, default=64)
    g.add_argument("--calib-steps", type=int, default=100, help="DDIM steps of the FP trajectories")
    g.add_argument("--n-points", type=int, default=20, help="evenly spaced steps kept per trajectory")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, help="student checkpoint (.pt, or .safetensors + .json)")
    p.set_defaults(func=run)
