"""``pqcad-train pqcad``: PQCAD students (and the fixed-bit QAT / PTQ baselines) from one command.

Progressive quantization (stage 1 at high bits initialised by PTQ, momentum-rule switch, stage 2 at low
bits re-initialised from the stage-1 weights) trained with calibration-assisted distillation on the FP
calibration set, optionally with step halving in the last stage. design.md section 4 is the definition.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pqcad_deploy.io import CheckpointError
from pqcad_deploy.zoo import MODEL_SPECS, TEACHER_PATH, ModelSpec, build_model, load_model

from . import distributed
from .pqcad_config import PQCADConfig
from .pqcad_trainer import PQCADTrainer, quant_config

log = logging.getLogger(__name__)


def load_teacher(source: str | Path) -> tuple[nn.Module, ModelSpec]:
    """A safetensors file (+ JSON sidecar), or a zoo name for random weights (tests, smoke runs)."""
    p = Path(source)
    if p.suffix == ".safetensors" or p.exists():
        return load_model(p)
    if str(source) in MODEL_SPECS:
        log.warning("teacher %s: zoo config with RANDOM weights (smoke test only)", source)
        return build_model(str(source), seed=0).eval(), MODEL_SPECS[str(source)]
    raise CheckpointError(
        f"Teacher {source} is neither a weights file nor a zoo model ({sorted(MODEL_SPECS)})."
    )


def load_or_collect_calib(
    path: str | Path | None,
    teacher: nn.Module,
    spec: ModelSpec,
    device: torch.device,
    collect: dict[str, int],
) -> Any:
    """Load the calibration set; without one, collect it with the FP teacher (and save it for reuse)."""
    from pqcad_deploy.calibset import CalibSet, collect_calibset
    from pqcad_deploy.denoiser import TorchDenoiser

    if path is not None and Path(path).exists():
        cs = CalibSet.load(path)
        made_for = cs.meta.get("model")
        if made_for and made_for != spec.name or tuple(cs.x_t.shape[1:]) != tuple(spec.sample_shape):
            raise CheckpointError(
                f"calibration set {path} was collected for {made_for} {tuple(cs.x_t.shape[1:])}, not for the "
                f"teacher {spec.name} {tuple(spec.sample_shape)}; collect one for this teacher (pqcad-train calib)."
            )
        return cs
    log.info("collecting a calibration set (%s)", collect)
    cs = collect_calibset(TorchDenoiser(teacher.to(device)), spec, device=device, **collect)
    if path is not None:
        cs.save(path)
        log.info("saved calibration set to %s", path)
    return cs


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
) -> Path:
    """Train (or resume/branch) and write the student with ``student.save_student``; returns its path.

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
        "train_time_s": round(trainer.elapsed, 2),
        "device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu",
        "world_size": ctx.world_size,
        "calib": {k: v for k, v in trainer.data.meta.items() if isinstance(v, (int, float, str, bool))},
        **(extra_meta or {}),
    }
    if ctx.is_main:
        save_student(out, trainer.student, spec, quant_config(cfg, final_bits), meta)
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


def config_from_args(args: argparse.Namespace) -> PQCADConfig:
    return PQCADConfig(
        bits=tuple(args.bits.split(":")),
        schedule=args.schedule,
        target=args.target,
        ptq_method=args.ptq_method,
        steps=args.steps,
        stage1_cap=args.stage1_cap,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_quant=args.lr_quant,
        beta=args.beta,
        eps=args.eps,
        patience=args.patience,
        check_every=args.check_every,
        stage2_reinit=args.stage2_reinit,
        lambda_d=args.lambda_d,
        lambda_c=args.lambda_c,
        teacher_kind=args.teacher_kind,
        halve_steps=args.halve_steps,
        seed=args.seed,
        bf16=args.bf16,
        save_every=args.save_every,
    )


def _main(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    t0 = time.perf_counter()
    teacher, spec = load_teacher(args.teacher)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    collect = dict(
        n_trajectories=args.calib_trajectories,
        steps=args.calib_steps,
        n_points=args.calib_points,
        seed=args.seed + 12345,
        batch_size=args.calib_batch,
    )
    calib = load_or_collect_calib(args.calib, teacher, spec, dev, collect)
    out = Path(args.out)
    if not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    train_pqcad(
        cfg, teacher, spec, calib, out, resume=args.resume, device=args.device, progress=not args.no_progress
    )
    log.info("done in %.1fs", time.perf_counter() - t0)


def register(sub: argparse._SubParsersAction) -> None:
    d = PQCADConfig()
    p = sub.add_parser(
        "pqcad",
        help="train a PQCAD student (or the fixed-bit QAT / PTQ baselines)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--teacher", default=str(TEACHER_PATH), help="FP teacher safetensors (or a zoo name: random weights)"
    )
    p.add_argument(
        "--calib",
        default=None,
        help="calibration set (pqcad-train calib); collected and saved here if missing",
    )
    p.add_argument("--out", default="runs/pqcad/student.pt", help="student checkpoint (student.save_student)")
    p.add_argument("--resume", default=None, help="training checkpoint to resume/branch from, or 'auto'")
    g = p.add_argument_group("quantization")
    g.add_argument(
        "--bits", default=":".join(d.bits), help="stage bits, e.g. w8a8:w4a8 (progressive) or w4a8"
    )
    g.add_argument(
        "--schedule",
        choices=["progressive", "fixed"],
        default=d.schedule,
        help="fixed: fixed-bit QAT straight at the last bits (baseline)",
    )
    g.add_argument("--target", choices=["tensorrt", "onnxruntime"], default=d.target)
    g.add_argument("--ptq-method", choices=["maxabs", "percentile", "mse"], default=d.ptq_method)
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=d.steps, help="total optimizer steps (0: PTQ only)")
    g.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="global batch (split across DDP ranks)"
    )
    g.add_argument("--lr", type=float, default=d.lr, help="weights")
    g.add_argument("--lr-quant", type=float, default=d.lr_quant, help="quantizer step sizes")
    g.add_argument("--save-every", type=int, default=d.save_every)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument(
        "--bf16", action="store_true", help="bf16 autocast on GPU (off: fake-quant is exact in fp32)"
    )
    g = p.add_argument_group("momentum transition")
    g.add_argument(
        "--stage1-cap", type=int, default=d.stage1_cap, help="switch at this stage-1 step at the latest"
    )
    g.add_argument("--beta", type=float, default=d.beta)
    g.add_argument("--eps", type=float, default=d.eps, help="plateau when |m| < eps * L_0")
    g.add_argument(
        "--patience", type=int, default=d.patience, help="consecutive plateau checks before switching"
    )
    g.add_argument("--check-every", type=int, default=d.check_every)
    g.add_argument(
        "--stage2-reinit",
        choices=["auto", "mse", "rescale"],
        default=d.stage2_reinit,
        help="low-bit weight step sizes at the switch (auto: the lower eps-error on a calibration probe)",
    )
    g = p.add_argument_group("CAD and step halving")
    g.add_argument("--lambda-d", type=float, default=d.lambda_d, help="weight of ||student - teacher||^2")
    g.add_argument("--lambda-c", type=float, default=d.lambda_c, help="weight of ||student - FP target||^2")
    g.add_argument(
        "--teacher-kind",
        choices=["quant", "fp"],
        default=d.teacher_kind,
        help="stage-2 teacher: frozen stage-1 model (quant) or the FP model",
    )
    g.add_argument(
        "--halve-steps", action="store_true", help="last stage: one student step = two teacher DDIM steps"
    )
    g = p.add_argument_group("calibration set (only when --calib is missing)")
    g.add_argument("--calib-trajectories", type=int, default=256)
    g.add_argument("--calib-steps", type=int, default=100)
    g.add_argument("--calib-points", type=int, default=20)
    g.add_argument("--calib-batch", type=int, default=256)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_main)
