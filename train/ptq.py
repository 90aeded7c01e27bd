"""``pqcad-train ptq`` and the one PTQ path: quantize a copy of the FP model and calibrate it on a calibration set.

:func:`ptq_student` is what the PTQ baselines, PQCAD's stage-1 initialisation, the demo and every benchmark call,
so every "PTQ" number comes from the same estimator. The calibration data is timestep-aware (Q-Diffusion style):
x_t from FP DDIM trajectories at evenly spaced steps (``calibset``). :func:`select_ptq_method` picks the method
with the lowest noise-prediction error against the FP teacher on held-out calibration points.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pqcad_deploy.calibset import CalibSet, eps_mse, forward_loop_from
from pqcad_deploy.cli.common import (
    add_calib_args,
    add_device,
    add_subcommand,
    add_text_args,
    calib_collect_kwargs,
    check_output_path,
    float_range,
    int_range,
    resolve_device,
)
from pqcad_deploy.errors import UsageError
from pqcad_deploy.loading import open_model
from pqcad_deploy.quant import QuantConfig, calibrate, parse_bits, quantize_model
from pqcad_deploy.quant.config import BLOCK_SIZES, CALIB_METHODS, TARGETS, QuantConfigError
from pqcad_deploy.student import float_copy, save_student
from pqcad_deploy.zoo import TEACHER_PATH, ModelSpec

from .calib import load_or_collect_calib, open_prompts

log = logging.getLogger(__name__)

CALIB_BATCH = 256  # calibration forward batch; every point of the set is used


def ptq_student(
    fp_model: nn.Module,
    qcfg: QuantConfig,
    calib: CalibSet,
    device: str | torch.device = "cpu",
    batch_size: int = CALIB_BATCH,
) -> tuple[nn.Module, dict[str, Any]]:
    """Quantize a copy of ``fp_model`` with ``qcfg`` and calibrate it on every point of ``calib`` with
    ``qcfg.calib_method``; returns (model in eval mode on ``device``, history entry). The FP model is untouched."""
    t0 = time.perf_counter()
    model = quantize_model(copy.deepcopy(fp_model).to(device).eval(), qcfg)
    loop = forward_loop_from(calib, batch_size=batch_size, device=device)
    calibrate(model, loop, method=qcfg.calib_method, percentile=qcfg.percentile)
    entry = {
        "event": "ptq",
        "method": qcfg.calib_method,
        "bits": f"w{qcfg.weight_bits}a{qcfg.act_bits}",
        "target": qcfg.target,
        "calib_points": len(calib),
        "calib": {k: v for k, v in calib.meta.items() if isinstance(v, (int, float, str, bool))},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return model, entry


def retarget(
    student: nn.Module,
    spec: ModelSpec,
    qcfg: QuantConfig,
    calib: CalibSet,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """A trained student's weights with its quantizers rebuilt for ``qcfg`` (another target's Q/DQ placement, another
    weight grid) and calibrated by :func:`ptq_student` on ``calib``.

    Quantizer state (step sizes, zero points) is dropped, not carried over: the new placement has quantizers the old
    one lacks (ONNX Runtime's output quantizers) and a different weight grid, so every range is estimated again with
    ``qcfg.calib_method``. ``pqcad-train pqcad --init-student`` fine-tunes the result; the demo uses it as is.
    """
    model, entry = ptq_student(float_copy(student, spec), qcfg, calib, device)
    entry["event"] = "retarget"
    return model, entry


def probe_indices(calib: CalibSet, n: int = 2048, seed: int = 99) -> torch.Tensor:
    """A fixed random subset of calibration points for scoring (the same for every candidate)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(calib), generator=g)[:n]


def select_ptq_method(
    fp_model: nn.Module,
    qcfg: QuantConfig,
    calib: CalibSet,
    methods: tuple[str, ...] = CALIB_METHODS,
    device: str | torch.device = "cpu",
    probe: CalibSet | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """PTQ with every method in ``methods``; keep the one whose noise prediction is closest to the FP teacher's
    (eps-MSE on ``probe``, default: a fixed subset of ``calib``). Returns (best model, its history entry, which
    records every method's score under ``selection``)."""
    probe = probe or calib
    idx = probe_indices(probe)
    best, scores = None, {}
    for m in methods:
        model, entry = ptq_student(fp_model, qcfg.replace(calib_method=m), calib, device)
        scores[m] = eps_mse(model, probe, idx, device)
        if best is None or scores[m] < scores[best[0]]:
            best = (m, model, entry)
        log.info("PTQ %s: eps-MSE %.4g", m, scores[m])
    method, model, entry = best
    entry["selection"] = {"best": method, "eps_mse": scores}
    return model, entry


# ---------------------------------------------------------------- CLI
def add_quant_args(
    p: argparse.ArgumentParser, bits_help: str, bits_default: str, method_default: str = "mse"
) -> None:
    """The quantization knobs of ``ptq`` and ``pqcad`` (one group, one meaning, mapped onto QuantConfig)."""
    d = QuantConfig()
    g = p.add_argument_group("quantization")
    g.add_argument("--bits", default=bits_default, help=bits_help)
    g.add_argument(
        "--target", choices=TARGETS, default=d.target, help="engine whose Q/DQ placement is trained"
    )
    g.add_argument(
        "--ptq-method", choices=CALIB_METHODS, default="mse", help="activation/weight range estimator"
    )
    g.add_argument(
        "--percentile",
        type=float_range(50.0, 100.0, lo_open=True),
        default=d.percentile,
        help="for --ptq-method percentile",
    )
    g.add_argument(
        "--int4-block-size",
        type=int,
        choices=[b for b in BLOCK_SIZES if b],
        default=None,
        help="4-bit Linear weights in blocks along in_features (default: per output channel)",
    )
    g.add_argument("--quantize-conv-in", action="store_true", help="also quantize the first convolution")
    g.add_argument("--quantize-conv-out", action="store_true", help="also quantize the last convolution")
    g.add_argument(
        "--weight-reduce-range",
        choices=["auto", "on", "off"],
        default="auto",
        help="8-bit weights on the 7-bit grid (auto: on for onnxruntime, whose x86 U8S8 kernels saturate)",
    )


def quant_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """QuantConfig keywords (all but the bit-widths) from :func:`add_quant_args`."""
    return {
        "target": args.target,
        "calib_method": args.ptq_method,
        "percentile": args.percentile,
        "int4_block_size": args.int4_block_size,
        "quantize_conv_in": args.quantize_conv_in,
        "quantize_conv_out": args.quantize_conv_out,
        "weight_reduce_range": {"auto": None, "on": True, "off": False}[args.weight_reduce_range],
    }


def run(args: argparse.Namespace) -> Path:
    check_output_path(args.out, inputs=[args.teacher, args.calib])
    try:
        wbits, abits = parse_bits(args.bits)
    except QuantConfigError as e:
        raise UsageError(f"--bits: {e}") from e
    qcfg = QuantConfig(weight_bits=wbits, act_bits=abits, **quant_kwargs(args))
    device = resolve_device(args.device)
    bundle = open_model(args.teacher)
    prompts = open_prompts(bundle.spec, args, device)
    collect = calib_collect_kwargs(args)
    if args.intervals > 1 or args.progressive or args.relax_fraction:
        return _run_intervals(args, qcfg, bundle, prompts, collect, device)
    cs = load_or_collect_calib(
        args.calib, bundle.model, bundle.spec, device, collect, True, prompts, args.guidance_scale
    )
    model, entry = ptq_student(bundle.model, qcfg, cs, device)
    entry["teacher"] = bundle.source
    meta = {"history": [entry], "sampling": {"scheduler": "ddim", "steps": None}}
    out = save_student(args.out, model.cpu(), bundle.spec, meta=meta)
    print(f"wrote {out}: PTQ {args.bits} {qcfg.calib_method} ({qcfg.target}) on {len(cs)} calibration points")
    return out


def _run_intervals(
    args: argparse.Namespace, qcfg: QuantConfig, bundle: Any, prompts: Any, collect: dict, device: Any
) -> Path:
    """``--intervals K`` / ``--progressive``: timestep-aware PTQ on rollouts (``ptq_intervals.interval_ptq``)."""
    from pqcad_deploy.quant.intervals import IntervalError

    from .ptq_intervals import interval_ptq

    if args.calib is not None:
        raise UsageError(
            "--calib is a fixed point set; per-interval PTQ records its own rollouts of the --calib-steps sampler "
            "(progressively: through the already calibrated intervals). Drop --calib."
        )
    if args.progressive and args.intervals < 2:
        raise UsageError("--progressive calibrates interval by interval: give --intervals K with K >= 2.")
    if args.interval_starts and len(args.interval_starts) + 1 != args.intervals:
        raise UsageError(
            f"--interval-starts gives {len(args.interval_starts)} starts, which make "
            f"{len(args.interval_starts) + 1} intervals, not --intervals {args.intervals}."
        )
    cond_fn = prompts.calibration_cond_fn(collect["seed"] + 7) if prompts is not None else None
    try:
        model, entry = interval_ptq(
            bundle.model, bundle.spec, qcfg, args.intervals, steps=collect["steps"],
            n_trajectories=collect["n_trajectories"], progressive=args.progressive, seed=collect["seed"],
            device=device, batch_size=collect["batch_size"], cond_fn=cond_fn,
            uncond=prompts.uncond() if prompts is not None else None,
            guidance_scale=args.guidance_scale if prompts is not None else 1.0,
            starts=tuple(args.interval_starts) if args.interval_starts else None,
            relax=(args.relax_fraction, args.relax_end) if args.relax_fraction else None,
        )  # fmt: skip
    except IntervalError as e:
        raise UsageError(f"--intervals/--interval-starts/--relax-fraction: {e}") from e
    entry["teacher"] = bundle.source
    meta = {"history": [entry], "sampling": {"scheduler": "ddim", "steps": collect["steps"]}}
    out = save_student(args.out, model.cpu(), bundle.spec, meta=meta)
    how = "progressive" if entry["progressive"] else "per-interval"
    relaxed = ""
    if entry["relax"]:
        relaxed = f", relaxed (float activations): {args.relax_fraction:g} of the steps at {args.relax_end}"
    print(
        f"wrote {out}: {how} PTQ {args.bits} {qcfg.calib_method}, K={args.intervals} over {collect['steps']} steps"
        + relaxed
    )
    return out


def register(sub: Any) -> None:
    p = add_subcommand(sub, "ptq", "post-training quantization baseline -> student checkpoint", __doc__)
    p.add_argument("--teacher", default=str(TEACHER_PATH), help="FP model (.safetensors + .json) or zoo name")
    p.add_argument(
        "--out", type=Path, required=True, help="student checkpoint (.pt, or .safetensors + .json)"
    )
    add_quant_args(p, "bit-widths, wXaY (w8a8, w4a8)", "w8a8", method_default="maxabs")
    add_calib_args(p)
    g = p.add_argument_group("timestep-aware PTQ (activation ranges per timestep interval)")
    g.add_argument(
        "--intervals", type=int_range(1, 1000), default=1, help="K sets of activation ranges, one per interval of "
        "the --calib-steps DDIM sampler (equal numbers of steps; 1: one set)",
    )  # fmt: skip
    g.add_argument(
        "--progressive", action="store_true", help="calibrate interval k on rollouts whose earlier intervals "
        "already run quantized (PCR's progressive calibration)",
    )  # fmt: skip
    g.add_argument(
        "--interval-starts", type=int, nargs="+", default=None, metavar="T", help="first timestep of intervals "
        "1..K-1, decreasing (instead of equal splits)",
    )  # fmt: skip
    g.add_argument(
        "--relax-fraction", type=float_range(0.0, 1.0), default=0.0, metavar="TAU", help="activation relaxing (PCR): this "
        "fraction of the sampler's steps runs with float activations (a weight-only engine), the rest W8A8; 0: off",
    )  # fmt: skip
    g.add_argument(
        "--relax-end", choices=["x0", "xT"], default="x0", help="relax the last steps (x0: image fidelity, PCR's "
        "choice for SD) or the first ones (xT: text alignment, PCR's choice for SDXL)",
    )  # fmt: skip
    add_text_args(p)
    add_device(p)
    p.set_defaults(func=run)
