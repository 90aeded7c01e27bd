"""The PQCAD training loop: PTQ init -> stage 1 -> momentum switch -> stage 2 (CAD, optional step halving).

Resume is exact: batch indices come from generators seeded by (seed, step, rank), and the checkpoint holds
model, frozen stage-1 teacher, optimizer, stage, transition-rule state and history. The checkpoint written at
the switch holds the *end of stage 1* (transition decided, not yet applied), so other runs can branch from it
with different stage-2 settings (bits, CAD weights, halving) through ``resume``.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from pqcad_deploy.calibset import eps_mse
from pqcad_deploy.denoiser import UNetWrapper
from pqcad_deploy.errors import UsageError
from pqcad_deploy.io import CheckpointError, atomic_torch_save, safe_torch_load
from pqcad_deploy.quant import iter_quantizers, quantize_model, set_weight_bits
from pqcad_deploy.sampling import make_scheduler
from pqcad_deploy.zoo import ModelSpec

from . import distributed
from .pqcad_config import BRANCHABLE, PQCADConfig
from .pqcad_losses import alphas_at, cad_loss, ddim_step, eps_from_two_step
from .pqcad_momentum import MomentumSwitch
from .ptq import ptq_student

log = logging.getLogger(__name__)
FORMAT = "pqcad-train-state/1"


def param_groups(model: nn.Module, cfg: PQCADConfig) -> list[dict[str, Any]]:
    """Weights and quantizer step sizes in separate groups (different learning rates)."""
    prefixes = tuple(f"{name}." for name, _ in iter_quantizers(model))
    quant, weights = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (quant if name.startswith(prefixes) else weights).append(p)
    groups = [{"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "weights"}]
    if quant:
        groups.append({"params": quant, "lr": cfg.lr_quant, "weight_decay": 0.0, "name": "quant"})
    return groups


class CalibTensors:
    """The calibration set on the training device, plus what step halving needs (alpha at the mid step)."""

    def __init__(self, cs: Any, spec: ModelSpec, device: torch.device):
        self.n = int(cs.x_t.shape[0])
        self.x_t = cs.x_t.to(device, torch.float32)
        self.t = cs.t.to(device, torch.int64)
        self.cond = cs.cond.to(device, torch.float32) if getattr(cs, "cond", None) is not None else None
        self.eps_fp = cs.eps_fp.to(device, torch.float32)
        self.x_next2 = cs.x_next2.to(device, torch.float32)
        self.alpha_t = cs.alpha_t.to(device, torch.float32)
        self.alpha_next2 = cs.alpha_next2.to(device, torch.float32)
        meta = dict(getattr(cs, "meta", {}) or {})
        self.steps = int(meta.get("steps", 0))
        if self.steps <= 0:
            raise CheckpointError(
                "calibration set meta has no 'steps' (the DDIM step count it was sampled at)."
            )
        sched = make_scheduler("ddim", **spec.scheduler)
        stride = sched.config.num_train_timesteps // self.steps
        self.t_mid = self.t - stride
        self.alpha_mid = alphas_at(sched.alphas_cumprod, float(sched.final_alpha_cumprod), self.t_mid).to(
            device, torch.float32
        )
        self.meta = meta

    def batch(self, step: int, seed: int, rank: int, size: int) -> torch.Tensor:
        g = distributed.step_generator(seed, step, rank, self.x_t.device)
        return torch.randint(0, self.n, (size,), device=self.x_t.device, generator=g)


class PQCADTrainer:
    def __init__(
        self,
        cfg: PQCADConfig,
        teacher: nn.Module,
        spec: ModelSpec,
        calib: Any,
        ckpt_path: Path,
        ctx: distributed.DistContext,
    ):
        self.cfg, self.spec, self.ctx, self.ckpt_path = cfg, spec, ctx, Path(ckpt_path)
        self.dev = ctx.device
        self.calib = calib
        if cfg.halve_steps and float((calib.meta or {}).get("guidance_scale", 1.0)) != 1.0:
            raise UsageError(
                "step halving distils two DDIM steps of the FP trajectory, but this calibration set follows "
                "guided (classifier-free) trajectories whose two-step targets mix both UNet calls; train without "
                "--halve-steps, or collect the set with --guidance-scale 1."
            )
        self.data = CalibTensors(calib, spec, self.dev)
        self.fp = teacher.eval().requires_grad_(False)
        self.student: nn.Module | None = None
        self.teacher_q: nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.step = 0  # global optimizer steps
        self.stage = 0
        self.stage_start = 0
        self.switch = self._new_switch()
        self.history: list[dict[str, Any]] = []
        self.curve: list[list[float]] = []  # [global step, stage, mean loss of the window]
        self.elapsed = 0.0
        self._pending: list[torch.Tensor] = []

    # ---- setup -------------------------------------------------------------------------------------------
    def _new_switch(self) -> MomentumSwitch:
        c = self.cfg
        return MomentumSwitch(c.beta, c.eps, c.patience, c.stage1_cap, c.check_every, c.smoothing)

    def _quantized_copy(self, bits: tuple[int, int]) -> nn.Module:
        # The FP teacher is frozen; its copy must not be, or only the quantizer step sizes would train.
        model = copy.deepcopy(self.fp).to(self.dev).requires_grad_(True).train()
        return quantize_model(model, self.cfg.quant_config(bits))

    def init_ptq(self) -> None:
        """Fresh run: the stage-1 student is the PTQ model (the one PTQ path, every calibration point)."""
        bits = self.cfg.stage_bits[0]
        model, entry = ptq_student(self.fp, self.cfg.quant_config(bits), self.calib, self.dev)
        self.student = model.requires_grad_(True).train()
        self.history.append(entry)
        log.info("PTQ init at %s (%s) done in %.1fs", entry["bits"], entry["method"], entry["seconds"])
        self._make_optimizer()

    @staticmethod
    def _bits_name(bits: tuple[int, int]) -> str:
        return f"w{bits[0]}a{bits[1]}"

    def _make_optimizer(self) -> None:
        self.opt = torch.optim.AdamW(param_groups(self.student, self.cfg), betas=(0.9, 0.999))

    # ---- checkpoints -------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "config": self.cfg.to_dict(),
            "step": self.step,
            "stage": self.stage,
            "stage_start": self.stage_start,
            "model": self.student.state_dict(),
            "teacher_q": self.teacher_q.state_dict() if self.teacher_q is not None else None,
            "optimizer": self.opt.state_dict(),
            "switch": self.switch.state_dict(),
            "history": self.history,
            "curve": self.curve,
            "elapsed_s": self.elapsed,
            "rng_cpu": torch.get_rng_state(),
        }

    def save(self, path: Path | None = None) -> None:
        if self.ctx.is_main:
            atomic_torch_save(self.state(), path or self.ckpt_path)

    def load(self, path: Path) -> None:
        """Resume (or branch) from a training checkpoint; loss/budget knobs come from this run's config."""
        ck = safe_torch_load(path)
        if not isinstance(ck, dict) or ck.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a PQCAD training checkpoint (format {FORMAT!r}).")
        old = PQCADConfig.from_dict(ck["config"])
        fixed = {k for k in old.to_dict() if k not in BRANCHABLE and k != "seed"}
        diff = sorted(k for k in fixed if getattr(old, k) != getattr(self.cfg, k))
        if diff:
            raise CheckpointError(f"{path} was trained with different {diff}; these cannot change on resume.")
        stage = int(ck["stage"])
        if old.stage_bits[: stage + 1] != self.cfg.stage_bits[: stage + 1]:
            raise CheckpointError(
                f"{path} reached stage {stage + 1} at bits {old.bits}; this run's bits {self.cfg.bits} differ there."
            )
        self.student = self._quantized_copy(self.cfg.stage_bits[0])
        if stage > 0:
            self._apply_bits(self.student, self.cfg.stage_bits[stage], reinit=False)
        self.student.load_state_dict(ck["model"])
        if ck.get("teacher_q") is not None:
            self.teacher_q = self._quantized_copy(self.cfg.stage_bits[0])
            self.teacher_q.load_state_dict(ck["teacher_q"])
            self.teacher_q.eval().requires_grad_(False)
        self.step, self.stage, self.stage_start = int(ck["step"]), stage, int(ck["stage_start"])
        self.switch = MomentumSwitch.from_state_dict(ck["switch"])
        self.history, self.curve = list(ck["history"]), [list(x) for x in ck["curve"]]
        self.elapsed = float(ck["elapsed_s"])
        torch.set_rng_state(ck["rng_cpu"])
        self._make_optimizer()
        if old.lr == self.cfg.lr and old.lr_quant == self.cfg.lr_quant:
            self.opt.load_state_dict(ck["optimizer"])
        self.history.append(
            {"event": "resume", "step": self.step, "stage": self.stage + 1, "from": str(path)}
        )
        log.info("resumed %s at step %d (stage %d)", path, self.step, self.stage + 1)

    # ---- stages ------------------------------------------------------------------------------------------
    def _apply_bits(self, model: nn.Module, bits: tuple[int, int], reinit: bool) -> dict[str, Any]:
        """Switch weight bits in place. On a real switch the step sizes are re-initialised from the current
        weights by ``stage2_reinit``; "auto" tries "mse" and "rescale" and keeps the lower eps-error on a fixed
        calibration probe (MSE clipping is not always better at 4 bits for the sampled images)."""
        if not reinit:
            set_weight_bits(model, bits[0], reinit="rescale")
            return {}
        choice = self.cfg.stage2_reinit
        if choice != "auto":
            set_weight_bits(model, bits[0], reinit=choice)
            return {"reinit": choice}
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        scores = {}
        for r in ("mse", "rescale"):
            model.load_state_dict(saved)
            set_weight_bits(model, bits[0], reinit=r)
            scores[r] = self._probe_error(model)
        best = min(scores, key=scores.get)
        model.load_state_dict(saved)
        set_weight_bits(model, bits[0], reinit=best)
        return {"reinit": best, "reinit_probe_mse": scores}

    def _probe_error(self, model: nn.Module, n: int = 512) -> float:
        d = self.data
        g = torch.Generator().manual_seed(4321)
        idx = torch.randperm(d.n, generator=g)[:n].to(d.x_t.device)
        return eps_mse(model, d, idx, d.x_t.device, chunk=n)

    def _transition(self) -> None:
        """Apply a decided switch: freeze the stage-1 teacher, re-initialise step sizes at the low bits."""
        d = self.switch.decided
        old_bits, new_bits = self.cfg.stage_bits[0], self.cfg.stage_bits[1]
        if self.cfg.teacher_kind == "quant" and self.teacher_q is None:
            self.teacher_q = copy.deepcopy(self.student).eval().requires_grad_(False)
        reinit = self._apply_bits(self.student, new_bits, reinit=True) if new_bits != old_bits else {}
        self.stage, self.stage_start = 1, self.step
        self._make_optimizer()
        event = {
            "event": "switch",
            "from": self._bits_name(old_bits),
            "to": self._bits_name(new_bits),
            **d,
            **reinit,
        }
        self.history.append(event)
        log.info(
            "stage 1 -> 2 (%s -> %s) at step %d: %s (|m|=%.3g, threshold %.3g, smoothed loss %.4g)",
            event["from"],
            event["to"],
            d["step"],
            d["reason"],
            abs(d["momentum"]),
            d["threshold"],
            d["smoothed_loss"],
        )

    @property
    def final_stage(self) -> bool:
        return self.stage == len(self.cfg.stage_bits) - 1

    @property
    def halving(self) -> bool:
        return self.cfg.halve_steps and self.final_stage

    def _targets(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(FP target, teacher target or None when the teacher is the FP model)."""
        d = self.data
        x, t, c = d.x_t[idx], d.t[idx], d.cond[idx] if d.cond is not None else None
        fp = (
            eps_from_two_step(x, d.x_next2[idx], d.alpha_t[idx], d.alpha_next2[idx])
            if self.halving
            else d.eps_fp[idx]
        )
        use_q = self.teacher_q is not None and self.cfg.teacher_kind == "quant" and self.stage > 0
        if not use_q:
            return fp, None
        tq = UNetWrapper(self.teacher_q)
        with torch.no_grad(), self._autocast():
            e1 = tq(x, t, c).float()
            if not self.halving:
                return fp, e1
            x1 = ddim_step(x, e1, d.alpha_t[idx], d.alpha_mid[idx])
            e2 = tq(x1, d.t_mid[idx].clamp(min=0), c).float()
            x2 = ddim_step(x1, e2, d.alpha_mid[idx], d.alpha_next2[idx])
        return fp, eps_from_two_step(x, x2, d.alpha_t[idx], d.alpha_next2[idx])

    def _autocast(self):
        return torch.autocast(
            self.dev.type, dtype=torch.bfloat16, enabled=self.cfg.bf16 and self.dev.type == "cuda"
        )

    # ---- loop --------------------------------------------------------------------------------------------
    def _flush(self, last_good: int) -> None:
        """Move queued per-step losses to the host (one sync), check them, feed the transition rule."""
        if not self._pending:
            return
        losses = torch.stack(self._pending).float()
        losses = distributed.all_reduce_mean(losses, self.ctx).cpu().tolist()
        first = self.step - len(losses) + 1
        self._pending = []
        for i, lv in enumerate(losses):
            if lv != lv or lv in (float("inf"), float("-inf")):
                raise RuntimeError(
                    f"non-finite loss at step {first + i} (stage {self.stage + 1}); training stopped. The last good "
                    f"checkpoint (step {last_good}) is kept at {self.ckpt_path}; lower --lr/--lr-quant and --resume."
                )
        self.curve.append([self.step, self.stage + 1, sum(losses) / len(losses)])
        if self.stage == 0 and len(self.cfg.stage_bits) > 1:
            for i, lv in enumerate(losses):
                self.switch.update(first + i - self.stage_start, lv)

    def run(self, progress: bool = True) -> None:
        cfg, ctx = self.cfg, self.ctx
        wrapper = UNetWrapper(self.student)
        net = (
            DDP(
                wrapper,
                device_ids=[self.dev.index] if self.dev.type == "cuda" else None,
                find_unused_parameters=True,  # step sizes of quantizers a config leaves idle get no grad
            )
            if ctx.enabled
            else wrapper
        )
        per_rank = max(1, cfg.batch_size // ctx.world_size)
        last_good = self.step
        bar = tqdm(total=cfg.steps, initial=self.step, desc="pqcad", disable=not (progress and ctx.is_main))
        self._sync()
        t0 = time.perf_counter()
        while True:
            if self.stage == 0 and self.switch.decided is not None and len(cfg.stage_bits) > 1:
                self.elapsed += self._lap(t0)
                t0 = time.perf_counter()
                self.save(self.ckpt_path.with_name(self.ckpt_path.stem + "_stage1.pt"))
                self._transition()
            if self.step >= cfg.steps:
                break
            self.student.train()
            idx = self.data.batch(self.step, cfg.seed, ctx.rank, per_rank)
            fp_target, teacher_target = self._targets(idx)
            d = self.data
            with self._autocast():
                pred = net(d.x_t[idx], d.t[idx], d.cond[idx] if d.cond is not None else None)
            loss, _ = cad_loss(pred, teacher_target, fp_target, cfg.lambda_d, cfg.lambda_c)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip)
            self.opt.step()
            self.step += 1
            self._pending.append(loss.detach())
            stage_step = self.step - self.stage_start
            at_check = stage_step % cfg.check_every == 0 or (self.stage == 0 and stage_step >= cfg.stage1_cap)
            at_save = self.step % cfg.save_every == 0 or self.step >= cfg.steps
            if at_check or at_save:
                self._flush(last_good)
                bar.set_postfix(loss=f"{self.curve[-1][2]:.4g}", stage=self.stage + 1)
                bar.update(self.step - bar.n)
            if at_save:
                self.elapsed += self._lap(t0)
                t0 = time.perf_counter()
                self.save()
                last_good = self.step
        self._flush(last_good)
        self.elapsed += self._lap(t0)
        bar.close()

    def _sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def _lap(self, t0: float) -> float:
        self._sync()
        return time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        by_stage: dict[int, list[float]] = {}
        for _, st, lv in self.curve:
            by_stage.setdefault(int(st), []).append(lv)
        return {
            f"stage{s}": {"first": v[0], "last": v[-1], "min": min(v), "points": len(v)}
            for s, v in by_stage.items()
        }
