"""Full-precision calibration set: FP trajectories sampled with the deployment sampler (design.md section 4.1).

Points are taken at evenly spaced steps across the whole trajectory (Q-Diffusion style) and hold everything the
later stages need: the inputs (x_t, t, cond) for calibration, the FP noise prediction for distillation, and the
FP one- and two-step DDIM results (the two-step one is the step-halving target). Points are taken at even step
indices so that a two-step hop of the N-step schedule is exactly one step of the N/2 schedule.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .denoiser import Denoiser, UNetWrapper
from .io import CheckpointError, atomic_json_save, atomic_write
from .sampling import make_scheduler, sample
from .zoo import ModelSpec

log = logging.getLogger(__name__)
FORMAT = "pqcad-calibset/1"
_TENSORS = ("x_t", "t", "eps_fp", "x_next", "x_next2", "alpha_t", "alpha_next2")


@dataclass
class CalibSet:
    x_t: torch.Tensor  # [N, C, H, W]
    t: torch.Tensor  # [N] int64
    eps_fp: torch.Tensor  # FP noise prediction at (x_t, t)
    x_next: torch.Tensor  # one FP DDIM step from x_t
    x_next2: torch.Tensor  # two FP DDIM steps from x_t (step-halving target)
    alpha_t: torch.Tensor  # [N] alphas_cumprod at t
    alpha_next2: torch.Tensor  # [N] alphas_cumprod at the two-step destination (final alpha for the last hop)
    cond: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        tensors = {k: getattr(self, k).contiguous() for k in _TENSORS}
        if self.cond is not None:
            tensors["cond"] = self.cond.contiguous()
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
        atomic_json_save({"format": FORMAT, **self.meta}, path.with_suffix(".json"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibSet:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(
                f"Calibration set {path} does not exist; create it with `pqcad-train calib`."
            )
        try:
            tensors = load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"Cannot read calibration set {path}: {e}") from e
        missing = [k for k in _TENSORS if k not in tensors]
        if missing:
            raise CheckpointError(f"{path} is not a calibration set: missing tensors {missing}.")
        side = path.with_suffix(".json")
        meta = json.loads(side.read_text()) if side.is_file() else {}
        return cls(**{k: tensors[k] for k in _TENSORS}, cond=tensors.get("cond"), meta=meta)


@torch.no_grad()
def eps_mse(
    model: torch.nn.Module, calib: Any, idx: torch.Tensor, device: torch.device | str, chunk: int = 512
) -> float:
    """Mean squared error of ``model``'s noise prediction against the FP teacher's (``calib.eps_fp``) on the
    calibration points ``idx``: the cheap score behind PTQ-method, LR and re-initialisation choices. Works on a
    ``CalibSet`` or anything with the same ``x_t``/``t``/``cond``/``eps_fp`` tensors; restores the model's mode."""
    was = model.training
    wrapper = UNetWrapper(model.eval())
    cond = getattr(calib, "cond", None)
    total = 0.0
    for i in range(0, len(idx), chunk):
        j = idx[i : i + chunk]
        c = cond[j].to(device, torch.float32) if cond is not None else None
        pred = wrapper(calib.x_t[j].to(device), calib.t[j].to(device), c)
        total += torch.sum((pred.float() - calib.eps_fp[j].to(device).float()) ** 2).item()
    model.train(was)
    return total / (len(idx) * calib.x_t[0].numel())


def random_conditioning(cond_shape: tuple[int, ...], seed: int) -> Callable[[int], torch.Tensor]:
    """``cond_fn`` of N(0, 1) encoder states, for conditional UNets without a text encoder (random-weight zoo
    architectures measured for latency). Text-to-image models calibrate on real prompt states instead
    (``conditioning.PromptEncoder.calibration_cond_fn``)."""
    gen = torch.Generator().manual_seed(seed)
    return lambda b: torch.randn(b, *cond_shape, generator=gen)


def collect_calibset(
    denoiser: Denoiser,
    spec: ModelSpec,
    n_trajectories: int = 256,
    steps: int = 100,
    n_points: int = 20,
    seed: int = 1234,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    cond_fn: Callable[[int], torch.Tensor] | None = None,
    progress: bool = True,
    uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> CalibSet:
    """Sample ``n_trajectories`` FP DDIM trajectories of ``steps`` steps and keep ``n_points`` evenly spaced
    (even-indexed) steps of each. ``cond_fn(batch)`` supplies conditioning for conditional models.

    With classifier-free guidance (``uncond`` and ``guidance_scale`` != 1) the trajectories are the guided ones the
    deployed sampler follows, and every kept step stores BOTH UNet inputs of its batched call (the prompt's and the
    empty prompt's), each with its own FP output: the deployed UNet sees both, so both are calibrated on and
    distilled. The one- and two-step targets are the guided trajectory's, shared by the pair."""
    if steps < 2:
        raise ValueError("steps must be >= 2 (two-step targets are stored)")
    even = list(range(0, steps - 1, 2))
    n_points = min(n_points, len(even))
    pick = {even[round(i * (len(even) - 1) / max(1, n_points - 1))] for i in range(n_points)}
    sched = make_scheduler("ddim", **spec.scheduler)
    sched.set_timesteps(steps)
    alphas = sched.alphas_cumprod
    final_alpha = sched.final_alpha_cumprod
    timesteps = [int(t) for t in sched.timesteps]
    store: dict[str, list[torch.Tensor]] = {k: [] for k in (*_TENSORS, "cond")}
    guided = uncond is not None and guidance_scale != 1.0
    last_call: dict[str, torch.Tensor] = {}

    def recording(x, t, c):
        out = denoiser(x, t, c)
        last_call.update(x=x, t=t, c=c, out=out)
        return out

    n_batches = (n_trajectories + batch_size - 1) // batch_size
    for b in tqdm(range(n_batches), desc="calibration trajectories", disable=not progress):
        bs = min(batch_size, n_trajectories - b * batch_size)
        cond = cond_fn(bs) if cond_fn is not None else None
        pending: dict[int, dict[str, torch.Tensor]] = {}

        def on_step(i, t, x, eps, x_next, pending=pending, cond=cond):
            if i in pick:
                if guided:  # both halves of the batched call, each with its own FP output
                    call = {"x_t": last_call["x"], "t": last_call["t"], "eps_fp": last_call["out"]}
                    call["cond"] = last_call["c"]
                else:
                    call = {"x_t": x, "t": t, "eps_fp": eps}
                    if cond is not None:
                        call["cond"] = cond
                rec = {k: v.detach().cpu() for k, v in call.items()}
                rec["x_next"] = _repeat_to(x_next.float().cpu(), len(rec["t"]))
                pending[i] = rec
            if i - 1 in pending:
                rec = pending.pop(i - 1)
                rec["x_next2"] = _repeat_to(x_next.float().cpu(), len(rec["t"]))
                t_dest = timesteps[i + 1] if i + 1 < len(timesteps) else None
                a_dest = alphas[t_dest] if t_dest is not None else final_alpha
                rec["alpha_t"] = alphas[rec["t"]].float()
                rec["alpha_next2"] = torch.full_like(rec["alpha_t"], float(a_dest))
                for k, v in rec.items():
                    store[k].append(v.float() if k in ("x_t", "eps_fp") else v)

        sample(
            recording if guided else denoiser,
            sched,
            (bs, *spec.sample_shape),
            steps=steps,
            seed=seed + b,
            device=device,
            cond=cond,
            callback=on_step,
            uncond=uncond,
            guidance_scale=guidance_scale,
        )
    cs = CalibSet(
        **{k: torch.cat(store[k]) for k in _TENSORS},
        cond=torch.cat(store["cond"]).to(torch.float16) if store["cond"] else None,
        meta={
            "model": spec.name,
            "steps": steps,
            "n_trajectories": n_trajectories,
            "n_points": n_points,
            "step_indices": sorted(pick),
            "seed": seed,
            "scheduler": "ddim",
            "timestep_spacing": "trailing",
            "guidance_scale": guidance_scale if guided else 1.0,
        },
    )
    log.info(
        "calibration set: %d points (%d trajectories x %d steps of %d)",
        len(cs),
        n_trajectories,
        n_points,
        steps,
    )
    return cs


def _repeat_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """The guided step's result for both halves of a [uncond; cond] call (n = 2B), or as is (n = B)."""
    return x if len(x) == n else x.repeat(n // len(x), *([1] * (x.dim() - 1)))


def calib_batches(
    cs: CalibSet, batch_size: int, device: str | torch.device = "cpu", shuffle: bool = False, seed: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches as dicts with every field of the set (``cond`` only for conditional sets) on ``device``."""
    order = (
        torch.randperm(len(cs), generator=torch.Generator().manual_seed(seed))
        if shuffle
        else torch.arange(len(cs))
    )
    for i in range(0, len(cs), batch_size):
        idx = order[i : i + batch_size]
        batch = {k: getattr(cs, k)[idx].to(device) for k in _TENSORS}
        if cs.cond is not None:
            batch["cond"] = cs.cond[idx].to(device, torch.float32)
        yield batch


def forward_loop_from(
    cs: CalibSet, batch_size: int = 256, device: str | torch.device = "cpu", max_batches: int | None = None
) -> Callable[[torch.nn.Module], None]:
    """A ``forward_loop(model)`` for ``quant.calibrate``: runs the model on shuffled calibration inputs so every
    batch spans the whole trajectory. ``model`` takes (sample, timestep[, encoder_hidden_states])."""

    @torch.inference_mode()
    def loop(model: torch.nn.Module) -> None:
        from .denoiser import UNetWrapper

        net = model if isinstance(model, UNetWrapper) else UNetWrapper(model)
        for i, batch in enumerate(calib_batches(cs, batch_size, device, shuffle=True)):
            if max_batches is not None and i >= max_batches:
                break
            net(batch["x_t"], batch["t"], batch.get("cond"))

    return loop
