"""``pqcad-train teacher``: train the full-precision DDPM (eps-prediction) on Fashion-MNIST, or the
text-to-image testbed on captioned, colour-tinted Fashion-MNIST (``--model fmnist-t2i --embeddings CACHE``).

AdamW + EMA, bf16 autocast on GPU, cosine or constant LR with warm-up, atomic resumable checkpoints.
Resume is exact: data order and noise come from generators seeded by (seed, step, rank), and the
checkpoint holds model, EMA, optimizer and step.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from pqcad_deploy.captions import evaluation_prompts
from pqcad_deploy.cli.common import (
    MAX_COUNT,
    add_device,
    add_subcommand,
    batch_int,
    check_output_path,
    count_int,
    float_range,
    int_range,
    nonneg_float,
    positive_float,
    resolve_device,
    seed_int,
)
from pqcad_deploy.conditioning import DEFAULT_GUIDANCE
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.errors import UsageError
from pqcad_deploy.images import save_grid
from pqcad_deploy.io import CheckpointError
from pqcad_deploy.loading import open_model
from pqcad_deploy.sampling import make_scheduler, sample
from pqcad_deploy.zoo import build_model, count_parameters, get_spec, save_weights

from . import distributed
from .checkpointing import TrainingDiverged, kept, load_weights, read_checkpoint, restore, save_if_sound
from .teacher_data import teacher_data

log = logging.getLogger(__name__)
FORMAT = "pqcad-teacher-train/1"


def lr_at(step: int, base: float, warmup: int, total: int, schedule: str) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_decay_at(step: int, decay: float, warmup: int) -> float:
    """EMA decay with a warm-up ramp (1 + n) / (10 + n) over the steps after the LR warm-up: a short run's average
    must not keep a large share of early, poor weights (0.9995 from step 500 would still weigh the step-500 model
    at 23 % after 3,400 steps); long runs reach ``decay`` after a few thousand steps."""
    if step < warmup:
        return 0.0
    n = step - warmup
    return min(decay, (1 + n) / (10 + n))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm.detach(), 1 - decay)


def _state(step, model, ema, opt, args) -> dict:
    return {
        "format": FORMAT,
        "step": step,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))},
    }


_SCHEMA = {"step": int, "model": dict, "ema": dict, "optimizer": dict, "rng_cpu": torch.Tensor}


def _load_resume(path: Path, model, ema, opt) -> int:
    ck = read_checkpoint(path, FORMAT, _SCHEMA)
    if ck["step"] < 0:
        raise CheckpointError(f"{path}: step {ck['step']} is negative; the checkpoint is damaged.")
    load_weights(model, ck["model"], path, "model")
    load_weights(ema, ck["ema"], path, "ema")
    restore("optimizer state", path, lambda: opt.load_state_dict(ck["optimizer"]))
    restore("random number generator state", path, lambda: torch.set_rng_state(ck["rng_cpu"]))
    return ck["step"]


def _init_from(model: torch.nn.Module, spec, source: str) -> None:
    """Fine-tune: start from the weights of an FP model of the same architecture (not a resume: step 0, fresh
    optimizer and EMA)."""
    init = open_model(source)
    if init.quantized or not init.spec.same_network(spec):
        raise UsageError(
            f"--init {source} is not an FP {spec.name} model (architecture or quantization differs)."
        )
    model.load_state_dict(init.model.state_dict())
    log.info("initialised from %s", init.source)


def _save_checkpoint(path: Path, step: int, model, ema, opt, args, probe=None) -> None:
    """Replace the training checkpoint only with a sound state (finite weights, finite probe loss): a diverged run
    never overwrites the last good state, and the error names the file that is kept."""
    save_if_sound(
        path, lambda: _state(step, model, ema, opt, args), step, {"model": model, "ema": ema}, probe=probe
    )


def _probe_loss(model, data, noise_sched, n_train_t: int, n: int, dev) -> float:
    """The training loss of ``model`` on one fixed batch (the same every time)."""
    g = distributed.step_generator(10**6, 0, 0, dev)
    x0, cond = data.batch(g, n)
    t = torch.randint(0, n_train_t, (n,), device=dev, generator=g)
    noise = torch.randn(x0.shape, device=dev, generator=g)
    was = model.training
    model.eval()
    with torch.no_grad():
        kwargs = {"encoder_hidden_states": cond} if cond is not None else {}
        pred = model(noise_sched.add_noise(x0, noise, t), t, return_dict=False, **kwargs)[0]
    model.train(was)
    return F.mse_loss(pred.float(), noise).item()


def train(args: argparse.Namespace) -> Path:
    ctx = distributed.setup(str(resolve_device(args.device)))
    dev = ctx.device
    spec = get_spec(args.model)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; the teacher writes a folder (checkpoint, weights, grid).")
    for name in ("teacher_train.pt", f"{spec.name}.safetensors", "teacher_grid.png"):  # before any work
        check_output_path(out / name, inputs=[args.init, args.embeddings], what="--out")
    data, prompts = teacher_data(spec, args.data_dir, dev, args.hflip, args.embeddings)
    model = build_model(spec, seed=args.seed).to(dev)
    if args.init:
        _init_from(model, spec, args.init)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "teacher_train.pt"
    step = 0
    if args.resume:
        resume_from = Path(args.resume) if args.resume != "auto" else ckpt_path
        if resume_from.exists():
            step = _load_resume(resume_from, model, ema, opt)
            log.info("resumed from %s at step %d", resume_from, step)
        elif args.resume != "auto":
            raise CheckpointError(f"--resume {resume_from} does not exist.")
    net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None) if ctx.enabled else model
    noise_sched = make_scheduler("ddpm", **spec.scheduler)
    n_train_t = noise_sched.config.num_train_timesteps
    per_rank = args.batch_size // ctx.world_size
    use_bf16 = dev.type == "cuda" and args.mixed_precision == "bf16"
    if ctx.is_main:
        log.info(
            "teacher %s: %.2fM params, %d images, batch %d x %d ranks, %d steps, bf16=%s",
            spec.name,
            count_parameters(model) / 1e6,
            len(data),
            per_rank,
            ctx.world_size,
            args.steps,
            use_bf16,
        )
    bar = tqdm(total=args.steps, initial=step, desc="teacher", disable=not ctx.is_main or args.no_progress)
    t0, seen, loss_ema, stopped_early = time.perf_counter(), 0, None, False
    curve: list[list[float]] = []
    while step < args.steps:
        out_of_time = bool(args.time_limit) and time.perf_counter() - t0 > args.time_limit
        if out_of_time:
            stopped_early = True
            log.info(
                "time limit %.0fs reached at step %d; continue with --resume auto", args.time_limit, step
            )
            break
        g = distributed.step_generator(args.seed, step, ctx.rank, dev)
        x0, cond = data.batch(g, per_rank)
        t = torch.randint(0, n_train_t, (per_rank,), device=dev, generator=g)
        noise = torch.randn(x0.shape, device=dev, generator=g)
        xt = noise_sched.add_noise(x0, noise, t)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup, args.steps, args.lr_schedule)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            kwargs = {"encoder_hidden_states": cond} if cond is not None else {}
            pred = net(xt, t, return_dict=False, **kwargs)[0]
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, ema_decay_at(step, args.ema_decay, args.warmup))
        step += 1
        seen += per_rank * ctx.world_size
        if step % 50 == 0 or step == args.steps:
            lv = distributed.all_reduce_mean(loss.detach(), ctx).item()
            if not math.isfinite(lv):
                raise TrainingDiverged(
                    f"non-finite loss at step {step}; {kept(ckpt_path)}. Lower --lr and --resume."
                )
            loss_ema = lv if loss_ema is None else 0.9 * loss_ema + 0.1 * lv
            curve.append([step, lv])
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(
                loss=f"{loss_ema:.4f}", img_s=f"{rate:.0f}", lr=f"{opt.param_groups[0]['lr']:.2e}"
            )
            bar.update(step - bar.n)
        near_limit = bool(args.time_limit) and time.perf_counter() - t0 > args.time_limit
        if ctx.is_main and (step % args.save_every == 0 or step == args.steps or near_limit):
            probe = lambda: _probe_loss(model, data, noise_sched, n_train_t, min(per_rank, 16), dev)  # noqa: E731
            _save_checkpoint(ckpt_path, step, model, ema, opt, args, probe)
    bar.close()
    elapsed = time.perf_counter() - t0
    weights = out / f"{spec.name}.safetensors"
    if ctx.is_main:
        stats = {
            "steps": step,
            "target_steps": args.steps,
            "stopped_early": stopped_early,
            "batch_size": args.batch_size,
            "world_size": ctx.world_size,
            "wall_s_this_run": round(elapsed, 1),
            "img_per_s": round(seen / elapsed, 1) if elapsed else None,
            "final_loss_ema": loss_ema,
            "loss_curve_this_run": curve,
            "lr": args.lr,
            "ema_decay": args.ema_decay,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        }
        if prompts is not None:
            spec = dataclasses.replace(spec, text={**(spec.text or {}), "fingerprint": prompts.fingerprint})
        save_weights(ema, spec, weights, extra={"training": stats}, half=args.save_fp16)
        log.info(
            "saved EMA weights to %s (%s)",
            weights,
            {k: v for k, v in stats.items() if k != "loss_curve_this_run"},
        )
        save_grid(teacher_samples(ema, spec, prompts, dev), out / "teacher_grid.png", nrow=8)
    distributed.teardown(ctx)
    return weights


def teacher_samples(model, spec, prompts, device, steps: int = 50) -> torch.Tensor:
    """64 samples for the grid; for a text-to-image model one row per evaluation prompt (8 prompts x 8 seeds)."""
    sched = make_scheduler("ddim", **spec.scheduler)
    if prompts is None:
        return sample(
            TorchDenoiser(model), sched, (64, *spec.sample_shape), steps=steps, seed=0, device=device
        ).images
    ev = evaluation_prompts("seen", 8, seed=0)
    cond = prompts.states(list(ev.prompts)).repeat_interleave(8, dim=0)
    res = sample(
        TorchDenoiser(model),
        sched,
        (64, *spec.sample_shape),
        steps=steps,
        seed=0,
        device=device,
        cond=cond,
        uncond=prompts.uncond(),
        guidance_scale=DEFAULT_GUIDANCE,
    )
    return res.images


def register(sub: Any) -> None:
    p = add_subcommand(
        sub, "teacher", "train the full-precision teacher (DDPM eps-prediction) on Fashion-MNIST", __doc__
    )
    p.add_argument("--model", default="fmnist-ddpm", help="model zoo config (fmnist-ddpm, fmnist-t2i, ...)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument(
        "--embeddings",
        default=None,
        help="caption embedding cache for text-to-image models (python -m pqcad_deploy.text OUT.safetensors)",
    )
    p.add_argument(
        "--save-fp16", action="store_true", help="store the EMA weights in float16 (half the file)"
    )
    p.add_argument("--init", default=None, help="fine-tune: start from these FP weights (same architecture)")
    p.add_argument("--out", default="runs/teacher", help="output folder (checkpoint, weights, grid)")
    p.add_argument("--steps", type=count_int, default=20000)
    p.add_argument("--batch-size", type=batch_int, default=256, help="GLOBAL batch, split across DDP ranks")
    p.add_argument("--lr", type=positive_float, default=4e-4)
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--warmup", type=int_range(0, MAX_COUNT), default=500)
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0)
    p.add_argument("--ema-decay", type=float_range(0.0, 1.0), default=0.9995)
    p.add_argument("--hflip", action="store_true", help="random horizontal flips")
    p.add_argument("--save-every", type=count_int, default=1000, help="atomic checkpoint interval (steps)")
    p.add_argument(
        "--resume", default=None, help="checkpoint to resume from, or 'auto' for <out>/teacher_train.pt"
    )
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument(
        "--time-limit",
        type=nonneg_float,
        default=0,
        help="stop after this many seconds (checkpoint kept; --resume continues)",
    )
    add_device(p)
    p.add_argument("--mixed-precision", choices=["no", "bf16"], default="bf16", help="bf16 autocast on GPU")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (logs every 1000 steps instead)"
    )
    p.set_defaults(func=train)
