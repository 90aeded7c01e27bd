"""``pqcad-train pqcad``: PQCAD students (and the fixed-bit QAT / PTQ baselines) from one command.

Progressive quantization (stage 1 at high bits initialised by PTQ, momentum-rule switch, stage 2 at low
bits re-initialised from the stage-1 weights) trained with calibration-assisted distillation on the FP
calibration set, optionally with step halving in the last stage. docs/pqcad.md is the definition.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pqcad_deploy.cli.common import (
    MAX_COUNT,
    add_calib_args,
    add_device,
    add_subcommand,
    add_text_args,
    batch_int,
    calib_collect_kwargs,
    check_output_path,
    count_int,
    float_range,
    int_range,
    nonneg_float,
    resolve_device,
    seed_int,
)
from pqcad_deploy.errors import UsageError
from pqcad_deploy.io import CheckpointError
from pqcad_deploy.loading import open_model
from pqcad_deploy.quant.config import QuantConfigError
from pqcad_deploy.quant.intervals import get_intervals
from pqcad_deploy.zoo import TEACHER_PATH, ModelSpec

from . import distributed
from .calib import load_or_collect_calib, open_prompts
from .pqcad_config import SWITCH_SIGNALS, PQCADConfig, PQCADConfigError
from .pqcad_trainer import PQCADTrainer
from .ptq import add_quant_args, quant_kwargs

log = logging.getLogger(__name__)


def train_pqcad(
    cfg: PQCADConfig,
    teacher: nn.Module,
    spec: ModelSpec,
    calib: Any,
    out: str | Path,
    resume: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
    on_done: Callable[[PQCADTrainer], None] | None = None,
    init_student: tuple[nn.Module, str] | None = None,
) -> Path:
    """Train (or resume/branch) and write the student with ``student.save_student``; returns its path.

    A fresh run starts from PTQ of ``teacher``, or with ``init_student=(model, source)`` from that student's weights
    retargeted to ``cfg``'s placement (``ptq.retarget``); ``cfg.steps == 0`` then writes the recalibrated student.

    The training checkpoint lives beside it as ``<out stem>_train.pt`` (and ``_train_stage1.pt`` at the switch).
    ``on_done(trainer)`` runs on every rank before the process group is torn down (tests, benchmarks).
    """
    from pqcad_deploy.student import save_student

    ctx = distributed.setup(device)
    out = Path(out)
    ckpt = out.with_name(out.stem + "_train.pt")
    torch.manual_seed(cfg.seed)
    trainer = PQCADTrainer(cfg, teacher.to(ctx.device), spec, calib, ckpt, ctx)
    resume_from = Path(resume) if resume not in (None, "auto") else (ckpt if resume == "auto" else None)
    if resume_from is not None and resume_from.exists():
        trainer.load(resume_from)
    elif resume not in (None, "auto"):
        raise CheckpointError(f"--resume {resume} does not exist.")
    elif init_student is not None:
        trainer.init_from(*init_student)
    else:
        trainer.init_ptq()
    if ctx.is_main:
        log.info(
            "PQCAD %s %s: %d steps (switch cap %d), batch %d x %d ranks, CAD lambda_d=%g lambda_c=%g teacher=%s, halve=%s",
            cfg.schedule,
            ":".join(cfg.bits),
            cfg.steps,
            cfg.stage1_cap,
            cfg.batch_size // ctx.world_size,
            ctx.world_size,
            cfg.lambda_d,
            cfg.lambda_c,
            cfg.teacher_kind,
            cfg.halve_steps,
        )
    trainer.run(progress=progress)
    if len(cfg.stage_bits) > 1 and trainer.stage == 0 and cfg.steps > 0:
        log.warning(
            "the budget (%d steps) ended before the switch; the student stays at %s", cfg.steps, cfg.bits[0]
        )
    final_bits = cfg.stage_bits[trainer.stage]
    n_steps = trainer.data.steps
    trained_for = n_steps // 2 if cfg.halve_steps and trainer.final_stage and cfg.steps > 0 else n_steps
    meta = {
        "history": trainer.history,
        "sampling": {"scheduler": "ddim", "steps": trained_for, "calib_steps": n_steps},
        "pqcad": cfg.to_dict(),
        "final_bits": f"w{final_bits[0]}a{final_bits[1]}",
        "loss_summary": trainer.summary(),
        "loss_curve": trainer.curve,
        "probe_curve": trainer.probe_curve,
        "switch_trace": [list(x) for x in trainer.switch.trace],  # (step, signal, momentum) at every check
        "train_time_s": round(trainer.elapsed, 2),
        "device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu",
        "world_size": ctx.world_size,
        "calib": {k: v for k, v in trainer.data.meta.items() if isinstance(v, (int, float, str, bool))},
        **(extra_meta or {}),
    }
    if ctx.is_main:
        save_student(out, trainer.student, spec, meta=meta)
        if trainer.curve:
            curve_png(trainer, out.with_name(out.stem + "_curve.png"))
        log.info(
            "saved student %s (%s, sampler steps %d, train time %.1fs)",
            out,
            meta["final_bits"],
            trained_for,
            trainer.elapsed,
        )
    if on_done is not None:
        on_done(trainer)
    distributed.teardown(ctx)
    return out


def curve_png(trainer: Any, path: Path) -> Path:
    """The training loss (window means) and, with ``switch_signal="probe"``, the probe's eps-error, with the switch
    marked: ``<student stem>_curve.png`` beside the student."""
    from pqcad_deploy.plots import save_curves

    switch = next((h for h in trainer.history if h.get("event") == "switch"), None)
    marks = []
    if switch is not None:
        marks.append((trainer.stage_start, f"switch ({switch['reason']}) {switch['from']} -> {switch['to']}"))
    panels = {
        "training loss (mean of each check window)": [(x, v) for x, _, v in trainer.curve],
        "probe eps-error to FP (held-out points; the switch signal)": trainer.probe_curve,
    }
    title = f"PQCAD {':'.join(trainer.cfg.bits)}, switch signal '{trainer.cfg.switch_signal}'"
    written = save_curves(path, panels, marks, title)
    log.info("wrote %s", written)
    return written


def config_from_args(args: argparse.Namespace) -> PQCADConfig:
    """Every PQCADConfig field from the flag of the same name (``--bits`` is a ``:``-joined list)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PQCADConfig) if hasattr(args, f.name)}
    values.update(quant_kwargs(args))
    values["ptq_method"] = values.pop("calib_method")
    values["bits"] = tuple(args.bits.split(":"))
    values["bf16"] = args.mixed_precision == "bf16"
    try:
        return PQCADConfig(**values)
    except PQCADConfigError as e:  # name the flags, not the config fields
        flags = "/".join(f"--{k.replace('_', '-')}" for k in e.keys) or "flags"
        raise UsageError(f"{flags}: {e}") from e
    except QuantConfigError as e:
        raise UsageError(f"quantization flags: {e}") from e


def _main(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    check_output_path(args.out, inputs=[args.teacher, args.calib, args.resume, args.init_student])
    dev = resolve_device(args.device)
    t0 = time.perf_counter()
    bundle = open_model(args.teacher)
    if bundle.quantized:
        raise UsageError(f"--teacher {args.teacher} is a quantized student; PQCAD starts from an FP model.")
    init = _open_init_student(args.init_student, bundle.spec) if args.init_student else None
    prompts = open_prompts(bundle.spec, args, dev)
    collect = calib_collect_kwargs(args)
    calib = load_or_collect_calib(
        args.calib, bundle.model, bundle.spec, dev, collect, True, prompts, args.guidance_scale
    )
    out = train_pqcad(
        cfg,
        bundle.model,
        bundle.spec,
        calib,
        args.out,
        resume=args.resume,
        device=str(dev),
        progress=not args.no_progress,
        init_student=init,
    )
    print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")


def _open_init_student(source: str, spec: ModelSpec) -> tuple[nn.Module, str]:
    """The --init-student model, refused unless it is a quantized student of the teacher's architecture."""
    bundle = open_model(source)
    if not bundle.quantized:
        raise UsageError(
            f"--init-student {source} is an FP model; give a quantized student (an FP model is --teacher)."
        )
    if get_intervals(bundle.model) is not None:
        raise UsageError(
            f"--init-student {source} holds per-interval activation ranges (timestep-aware PTQ); PQCAD trains "
            "single-set students: give a single-set student, or the teacher alone."
        )
    if bundle.spec.name != spec.name or not bundle.spec.same_network(spec):
        raise UsageError(
            f"--init-student {source} is a {bundle.spec.name} student but --teacher is {spec.name}; "
            "give the teacher the student was trained from."
        )
    return bundle.model, bundle.source


def register(sub: Any) -> None:
    d = PQCADConfig()
    p = add_subcommand(sub, "pqcad", "train a PQCAD student (or the fixed-bit QAT / PTQ baselines)", __doc__)
    p.add_argument(
        "--teacher", default=str(TEACHER_PATH), help="FP teacher (.safetensors + .json) or zoo name"
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/pqcad/student.pt"), help="student checkpoint to write"
    )
    p.add_argument(
        "--resume",
        default=None,
        help="training checkpoint to resume or branch from, or 'auto' (<out>_train.pt)",
    )
    p.add_argument(
        "--init-student",
        default=None,
        metavar="STUDENT",
        help="start from this student's trained weights instead of PTQ of the teacher: its quantizers are rebuilt "
        "for --target/--bits and recalibrated with --ptq-method, then trained for --steps (0: recalibrate only). "
        "Moves e.g. a TensorRT-trained student to the onnxruntime placement (a retarget)",
    )
    add_quant_args(
        p, "stage bit-widths: w8a8:w4a8 (progressive) or one, e.g. w4a8", ":".join(d.bits), d.ptq_method
    )
    g = p.add_argument_group("schedule and optimisation")
    g.add_argument(
        "--schedule",
        choices=["progressive", "fixed"],
        default=d.schedule,
        help="fixed: fixed-bit QAT straight at the last bits (baseline)",
    )
    g.add_argument(
        "--steps", type=int_range(0, MAX_COUNT), default=d.steps, help="total optimizer steps (0: PTQ only)"
    )
    g.add_argument(
        "--batch-size", type=batch_int, default=d.batch_size, help="GLOBAL batch, split across DDP ranks"
    )
    g.add_argument("--lr", type=nonneg_float, default=d.lr, help="learning rate of the weights")
    g.add_argument(
        "--lr-quant", type=nonneg_float, default=d.lr_quant, help="learning rate of the quantizer step sizes"
    )
    g.add_argument("--weight-decay", type=nonneg_float, default=d.weight_decay)
    g.add_argument("--grad-clip", type=nonneg_float, default=d.grad_clip, help="gradient norm clip (0: off)")
    g.add_argument("--save-every", type=count_int, default=d.save_every, help="atomic checkpoint interval")
    g.add_argument("--seed", type=seed_int, default=d.seed)
    g.add_argument(
        "--mixed-precision",
        choices=["no", "bf16"],
        default="bf16" if d.bf16 else "no",
        help="bf16 autocast on GPU (no: fake-quant rounding stays exact in fp32)",
    )
    g = p.add_argument_group("momentum transition")
    g.add_argument(
        "--stage1-cap",
        type=count_int,
        default=d.stage1_cap,
        help="switch at this stage-1 step at the latest",
    )
    g.add_argument("--beta", type=float_range(0.0, 1.0), default=d.beta, help="momentum of the loss decrease")
    g.add_argument("--eps", type=nonneg_float, default=d.eps, help="plateau when |m| < eps * L_0")
    g.add_argument(
        "--patience",
        type=count_int,
        default=d.patience,
        help="consecutive plateau checks before switching",
    )
    g.add_argument(
        "--check-every", type=count_int, default=d.check_every, help="steps between checks of the rule"
    )
    g.add_argument(
        "--smoothing", type=float_range(0.0, 1.0), default=d.smoothing, help="EMA of the per-step loss"
    )
    g.add_argument(
        "--switch-signal", choices=SWITCH_SIGNALS, default=d.switch_signal, help="what the rule watches: the "
        "smoothed training loss, or the eps-error on --switch-probe calibration points held out of training "
        "(evaluated at every check; low variance)",
    )  # fmt: skip
    g.add_argument(
        "--switch-probe",
        type=count_int,
        default=d.switch_probe,
        help="held-out points of --switch-signal probe",
    )
    g.add_argument(
        "--stage2-reinit",
        choices=["auto", "mse", "rescale"],
        default=d.stage2_reinit,
        help="low-bit weight step sizes at the switch (auto: the lower eps-error on a calibration probe)",
    )
    g = p.add_argument_group("CAD and step halving")
    g.add_argument(
        "--lambda-d", type=nonneg_float, default=d.lambda_d, help="weight of ||student - teacher||^2"
    )
    g.add_argument(
        "--lambda-c", type=nonneg_float, default=d.lambda_c, help="weight of ||student - FP target||^2"
    )
    g.add_argument(
        "--teacher-kind",
        choices=["quant", "fp"],
        default=d.teacher_kind,
        help="stage-2 teacher: frozen stage-1 model (quant) or the FP model",
    )
    g.add_argument(
        "--halve-steps", action="store_true", help="last stage: one student step = two teacher DDIM steps"
    )
    add_calib_args(p)
    add_text_args(p)
    add_device(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)
