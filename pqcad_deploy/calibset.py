"""Full-precision calibration set: FP trajectories sampled with the deployment sampler (docs/pqcad.md, step 1).

Points are taken at evenly spaced steps across the whole trajectory (Q-Diffusion style) and hold everything the
later stages need: the inputs (x_t, t, cond) for calibration, the FP noise prediction for distillation, and the
FP one- and two-step DDIM results (the two-step one is the step-halving target). Points are taken at even step
indices so that a two-step hop of the N-step schedule is exactly one step of the N/2 schedule.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .denoiser import Denoiser, UNetWrapper
from .io import (
    CheckpointError,
    check_pair,
    load_safetensors,
    read_json_sidecar,
    require_file,
    save_safetensors_pair,
)
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
        """``path`` (.safetensors) and its ``.json`` sidecar, replaced as one unit."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"Calibration set path {path} must end in .safetensors (its JSON sidecar is written beside it)."
            )
        tensors = {k: getattr(self, k).contiguous() for k in _TENSORS}
        if self.cond is not None:
            tensors["cond"] = self.cond.contiguous()
        return save_safetensors_pair(path, tensors, {"format": FORMAT, **self.meta}, {"format": FORMAT})

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibSet:
        """Load and validate (tensor names, dtypes, shapes, finite values; sidecar types) before returning."""
        path = Path(path)
        if not path.exists():
            raise CheckpointError(
                f"Calibration set {path} does not exist; create it with `pqcad-train calib`."
            )
        require_file(path, "Calibration set")
        tensors, header = load_safetensors(path, "calibration set")
        missing = [k for k in _TENSORS if k not in tensors]
        if missing:
            raise CheckpointError(f"{path} is not a calibration set: missing tensors {missing}.")
        side = path.with_suffix(".json")
        meta = read_json_sidecar(side, f"Calibration set {path}", "the steps and model it was collected for")
        _check_tensors(tensors, path)
        _check_meta(meta, side)
        check_pair(path, header, side, meta)
        return cls(**{k: tensors[k] for k in _TENSORS}, cond=tensors.get("cond"), meta=meta)


def _check_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Shapes, dtypes and values every stage relies on; a bad set is blamed here, not on a training flag."""
    x = tensors["x_t"]
    n = int(x.shape[0]) if x.dim() else 0
    want = {
        "x_t": (4, True),
        "eps_fp": (4, True),
        "x_next": (4, True),
        "x_next2": (4, True),
        "t": (1, False),
        "alpha_t": (1, True),
        "alpha_next2": (1, True),
        "cond": (3, True),
    }
    for k, (rank, floating) in want.items():
        v = tensors.get(k)
        if v is None:
            continue
        problem = (
            f"has rank {v.dim()}, want {rank}"
            if v.dim() != rank
            else f"holds {v.shape[0]} points, x_t holds {n}"
            if v.shape[0] != n or n == 0
            else f"is {v.dtype}, want a {'floating' if floating else 'integer'} type"
            if v.is_floating_point() != floating or v.dtype.is_complex
            else f"has shape {tuple(v.shape)}, x_t has {tuple(x.shape)}"
            if rank == 4 and v.shape != x.shape
            else "holds NaN or inf"
            if floating and not torch.isfinite(v).all()
            else None
        )
        if problem:
            raise CheckpointError(
                f"Calibration set {path}: tensor {k!r} {problem}; collect it again (pqcad-train calib)."
            )
    t = tensors["t"]
    if (t < 0).any() or (t >= 100_000).any():
        raise CheckpointError(
            f"Calibration set {path}: timesteps outside [0, 100000) in 't'; the file is corrupt."
        )
    for k in ("alpha_t", "alpha_next2"):
        if ((tensors[k] <= 0) | (tensors[k] > 1)).any():
            raise CheckpointError(
                f"Calibration set {path}: {k!r} values outside (0, 1]; the file is corrupt."
            )


_META_INTS = {"steps": 2, "n_trajectories": 1, "n_points": 1, "seed": 0}


def _check_meta(meta: dict[str, Any], side: Path) -> None:
    """The sidecar schema: ``steps`` (required) and the other counts are integers, names strings."""
    if meta.get("format", FORMAT) != FORMAT:
        raise CheckpointError(f"Sidecar {side} has format {meta.get('format')!r}, not {FORMAT!r}.")
    if "steps" not in meta:
        raise CheckpointError(f"Sidecar {side} lacks 'steps' (the DDIM step count the set was sampled at).")
    for key, lo in _META_INTS.items():
        v = meta.get(key, lo)
        if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= 1 << 62):
            raise CheckpointError(f"Sidecar {side}: {key!r} must be an integer >= {lo}, got {v!r:.40}.")
    for key in ("model", "scheduler", "timestep_spacing"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise CheckpointError(f"Sidecar {side}: {key!r} must be a string, got {meta[key]!r:.40}.")
    g = meta.get("guidance_scale", 1.0)
    if not (isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) and g >= 0):
        raise CheckpointError(
            f"Sidecar {side}: 'guidance_scale' must be a finite number >= 0, got {g!r:.40}."
        )
    idx = meta.get("step_indices", [])
    if not (isinstance(idx, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in idx)):
        raise CheckpointError(f"Sidecar {side}: 'step_indices' must be a list of integers.")


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
