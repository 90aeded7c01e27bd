"""The PQCAD training loop: PTQ init -> stage 1 -> momentum switch -> stage 2 (CAD, optional step halving).

Resume is exact: batch indices come from generators seeded by (seed, step, rank), and the checkpoint holds
model, frozen stage-1 teacher, optimizer, stage, transition-rule state and history. The checkpoint written at
the switch holds the *end of stage 1* (transition decided, not yet applied), so other runs can branch from it
with different stage-2 settings (bits, CAD weights, halving) through ``resume``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from pqcad_deploy.calibset import eps_mse
from pqcad_deploy.denoiser import UNetWrapper
from pqcad_deploy.errors import PQCADError, UsageError
from pqcad_deploy.io import CheckpointError
from pqcad_deploy.quant import iter_quantizers, quantize_model, set_weight_bits
from pqcad_deploy.sampling import make_scheduler
from pqcad_deploy.zoo import ModelSpec

from . import distributed
from .checkpointing import TrainingDiverged, kept, load_weights, read_checkpoint, restore, save_if_sound
from .pqcad_config import BRANCHABLE, PQCADConfig
from .pqcad_losses import alphas_at, cad_loss, ddim_step, eps_from_two_step
from .pqcad_momentum import MomentumSwitch
from .ptq import ptq_student, retarget

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

        self.pool: torch.Tensor | None = None  # training points when some are held out

    def hold_out(self, idx: torch.Tensor) -> None:
        """Keep the points ``idx`` out of every training batch (the switch probe evaluates on them)."""
        keep = torch.ones(self.n, dtype=torch.bool)
        keep[idx.cpu()] = False
        self.pool = keep.nonzero().reshape(-1).to(self.x_t.device)

    def batch(self, step: int, seed: int, rank: int, size: int) -> torch.Tensor:
        g = distributed.step_generator(seed, step, rank, self.x_t.device)
        n = self.n if self.pool is None else len(self.pool)
        idx = torch.randint(0, n, (size,), device=self.x_t.device, generator=g)
        return idx if self.pool is None else self.pool[idx]


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
        # [global step, eps-error on the held-out probe points] (switch_signal "probe")
        self.probe_curve: list[list[float]] = []
        if self._watches_probe():
            if cfg.switch_probe >= self.data.n:
                raise UsageError(
                    f"--switch-probe {cfg.switch_probe} holds out every one of the calibration set's {self.data.n} "
                    "points; give fewer probe points or a larger set."
                )
            self.data.hold_out(self._probe_points(cfg.switch_probe))
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

    def init_from(self, student: nn.Module, source: str) -> None:
        """Fine-tune run: stage 1 starts from another student's trained weights, its quantizers rebuilt in this
        config's placement and recalibrated (:func:`ptq.retarget`), e.g. a TensorRT-trained student moved to the
        ONNX Runtime placement."""
        bits = self.cfg.stage_bits[0]
        model, entry = retarget(student, self.spec, self.cfg.quant_config(bits), self.calib, self.dev)
        entry["from"] = source
        self.student = model.requires_grad_(True).train()
        self.history.append(entry)
        log.info(
            "retargeted %s to %s %s (%s) in %.1fs",
            source,
            entry["target"],
            entry["bits"],
            entry["method"],
            entry["seconds"],
        )
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
            "probe_curve": self.probe_curve,
            "elapsed_s": self.elapsed,
            "rng_cpu": torch.get_rng_state(),
        }

    def save(self, path: Path | None = None, last_good: int | None = None) -> None:
        """Replace the checkpoint only with a sound state: finite weights and a finite eps-error on a fixed probe of
        calibration points (a diverged student never becomes "the last good checkpoint")."""
        if self.ctx.is_main:
            modules = {"model": self.student, "teacher_q": self.teacher_q}
            probe = lambda: self._probe_error(self.student, n=64)  # noqa: E731
            hint = "Lower --lr/--lr-quant and --resume."
            save_if_sound(path or self.ckpt_path, self.state, self.step, modules, probe, hint, last_good)

    _SCHEMA = {
        "config": dict,
        "step": int,
        "stage": int,
        "stage_start": int,
        "model": dict,
        "teacher_q": (dict, type(None)),
        "optimizer": dict,
        "switch": dict,
        "history": list,
        "curve": list,
        "elapsed_s": (int, float),
        "rng_cpu": torch.Tensor,
    }

    def load(self, path: Path) -> None:
        """Resume (or branch) from a training checkpoint; loss/budget knobs come from this run's config."""
        ck = read_checkpoint(path, FORMAT, self._SCHEMA)
        if ck["stage"] not in (0, 1) or not 0 <= ck["stage_start"] <= ck["step"]:
            raise CheckpointError(f"{path}: stage/step fields are inconsistent; the checkpoint is damaged.")
        try:
            old = PQCADConfig.from_dict(ck["config"])
        except (PQCADError, TypeError) as e:
            raise CheckpointError(f"{path}: its PQCAD config is invalid ({e}).") from e
        fixed = {k for k in old.to_dict() if k not in BRANCHABLE and k != "seed"}
        diff = sorted(k for k in fixed if getattr(old, k) != getattr(self.cfg, k))
        if diff:
            raise CheckpointError(f"{path} was trained with different {diff}; these cannot change on resume.")
        stage = ck["stage"]
        if old.stage_bits[: stage + 1] != self.cfg.stage_bits[: stage + 1]:
            raise CheckpointError(
                f"{path} reached stage {stage + 1} at bits {old.bits}; this run's bits {self.cfg.bits} differ there."
            )
        self.student = self._quantized_copy(self.cfg.stage_bits[0])
        if stage > 0:
            self._apply_bits(self.student, self.cfg.stage_bits[stage], reinit=False)
        load_weights(self.student, ck["model"], path, "model")
        if ck.get("teacher_q") is not None:
            self.teacher_q = self._quantized_copy(self.cfg.stage_bits[0])
            load_weights(self.teacher_q, ck["teacher_q"], path, "teacher_q")
            self.teacher_q.eval().requires_grad_(False)
        self.step, self.stage, self.stage_start = ck["step"], stage, ck["stage_start"]
        self.switch = restore(
            "transition rule state", path, lambda: MomentumSwitch.from_state_dict(ck["switch"])
        )
        self.history = list(ck["history"])
        self.curve = restore("loss curve", path, lambda: [[float(v) for v in x] for x in ck["curve"]])
        self.probe_curve = restore(
            "probe curve", path, lambda: [[float(v) for v in x] for x in ck.get("probe_curve") or []]
        )
        self.elapsed = float(ck["elapsed_s"])
        restore("random number generator state", path, lambda: torch.set_rng_state(ck["rng_cpu"]))
        self._make_optimizer()
        if old.lr == self.cfg.lr and old.lr_quant == self.cfg.lr_quant:
            restore("optimizer state", path, lambda: self.opt.load_state_dict(ck["optimizer"]))
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
            _restore(model, saved)
            set_weight_bits(model, bits[0], reinit=r)
            scores[r] = self._probe_error(model)
        best = min(scores, key=scores.get)
        _restore(model, saved)
        set_weight_bits(model, bits[0], reinit=best)
        return {"reinit": best, "reinit_probe_mse": scores}

    def _probe_points(self, n: int) -> torch.Tensor:
        """A fixed set of calibration points (the same first points for every n)."""
        g = torch.Generator().manual_seed(4321)
        return torch.randperm(self.data.n, generator=g)[:n].to(self.data.x_t.device)

    def _probe_error(self, model: nn.Module, n: int = 512) -> float:
        return eps_mse(model, self.data, self._probe_points(n), self.data.x_t.device, chunk=n)

    def _watches_probe(self) -> bool:
        return self.cfg.switch_signal == "probe" and len(self.cfg.stage_bits) > 1

    def _observe_probe(self, stage_step: int) -> None:
        """The probe signal: the eps-error on the held-out points, fed to the transition rule at a check."""
        value = self._probe_error(self.student, n=self.cfg.switch_probe)
        self.probe_curve.append([self.step, value])
        self.switch.observe(stage_step, value)

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
            if not math.isfinite(lv):
                raise TrainingDiverged(
                    f"non-finite loss at step {first + i} (stage {self.stage + 1}); training stopped: "
                    f"{self._divergence_cause()}; {kept(self.ckpt_path, last_good)}."
                )
        self.curve.append([self.step, self.stage + 1, sum(losses) / len(losses)])
        if self.stage == 0 and len(self.cfg.stage_bits) > 1 and self.cfg.switch_signal == "train":
            for i, lv in enumerate(losses):
                self.switch.update(first + i - self.stage_start, lv)

    def _divergence_cause(self) -> str:
        """Blame the calibration set when its targets are not finite (not a learning rate)."""
        d = self.data
        bad = [k for k in ("x_t", "eps_fp", "x_next2", "cond") if getattr(d, k) is not None]
        bad = [k for k in bad if not torch.isfinite(getattr(d, k)).all()]
        if bad:
            return f"the calibration set holds non-finite {bad}; collect it again (pqcad-train calib)"
        return "lower --lr/--lr-quant and --resume"

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
                if at_check and self.stage == 0 and self._watches_probe():
                    self._observe_probe(stage_step)
                bar.set_postfix(loss=f"{self.curve[-1][2]:.4g}", stage=self.stage + 1)
                bar.update(self.step - bar.n)
            if at_save:
                self.elapsed += self._lap(t0)
                t0 = time.perf_counter()
                self.save(last_good=last_good)
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


def _restore(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Load the pre-switch state; activation quantizers a weight-only switch removed stay removed."""
    missing, unexpected = model.load_state_dict(saved, strict=False)
    if missing or any("_quantizer." not in k for k in unexpected):
        raise RuntimeError(
            f"cannot restore the pre-switch student: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
