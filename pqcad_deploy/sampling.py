"""One backend-agnostic sampler loop: a diffusers scheduler plus ``denoiser(x, t, cond)``.

Latents stay on ``device`` for the whole loop; initial noise is drawn on the CPU from ``seed`` so the same
seed gives the same noise on every device and backend (needed for fidelity-to-FP comparisons).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from tqdm.auto import tqdm

from .denoiser import Denoiser
from .timing import DeviceTimer

log = logging.getLogger(__name__)

SCHEDULERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}


def check_steps(steps: int, scheduler: dict, flag: str = "--steps") -> int:
    """A sampler step count must lie in [1, the model's training timesteps] (``scheduler``: the spec's dict);
    checked once a command knows its model, before any sampling."""
    from .errors import UsageError

    n = int(scheduler.get("num_train_timesteps", 1000))
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n:
        raise UsageError(
            f"{flag} {steps}: sampler steps must be in [1, {n}] (the model's training timesteps)."
        )
    return steps


def make_scheduler(kind: str = "ddim", **config) -> DDIMScheduler | DDPMScheduler:
    """DDIM (eta=0, deterministic) by default. ``config`` is the model spec's scheduler dict."""
    if kind not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {kind!r}; choose one of {sorted(SCHEDULERS)}.")
    cfg = {"num_train_timesteps": 1000, "beta_schedule": "linear", "clip_sample": False, **config}
    if kind == "ddim":
        cfg.setdefault("set_alpha_to_one", False)
        cfg.setdefault("timestep_spacing", "trailing")
    else:
        cfg.pop("set_alpha_to_one", None)
        cfg.pop("timestep_spacing", None)
    return SCHEDULERS[kind](**cfg)


StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass
class SampleResult:
    images: torch.Tensor  # [B, C, H, W], model range (about [-1, 1]), on the sampler device
    step_ms: list[float] = field(
        default_factory=list
    )  # denoiser call per step (sync'd per step only if timed)
    total_ms: float = 0.0  # end to end: noise upload, every step, scheduler math

    @property
    def unet_ms(self) -> float:
        return float(sum(self.step_ms))


def initial_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def sample(
    denoiser: Denoiser,
    scheduler: DDIMScheduler | DDPMScheduler,
    shape: tuple[int, ...],
    steps: int = 50,
    seed: int = 0,
    device: str | torch.device = "cpu",
    cond: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    time_steps: bool = False,
    progress: bool = False,
    callback: StepCallback | None = None,
    uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> SampleResult:
    """Run ``steps`` denoising steps from seeded Gaussian noise of ``shape`` (B, C, H, W).

    Classifier-free guidance: with ``uncond`` (the empty prompt's states, [1 or B, ...]) and ``guidance_scale``
    != 1, every step is ONE denoiser call on the batched ``[uncond; cond]`` inputs, as diffusers pipelines do, and
    eps = eps_u + scale * (eps_c - eps_u). ``time_steps=True`` synchronises after each denoiser call to record
    per-step latency; leave it off for throughput runs (the end-to-end time is measured either way).
    """
    device = torch.device(device)
    # Timesteps stay on the CPU as Python ints: indexing the scheduler's tables with a CUDA scalar would force a
    # device->host sync every step (measurable sampler overhead on small UNets).
    scheduler.set_timesteps(steps)
    timer = DeviceTimer(device)
    x0 = noise if noise is not None else initial_noise(shape, seed)
    gen = (
        torch.Generator(device=device).manual_seed(seed + 1) if isinstance(scheduler, DDPMScheduler) else None
    )
    batch = shape[0]
    guided = uncond is not None and guidance_scale != 1.0
    if guided:
        if cond is None:
            raise ValueError("classifier-free guidance needs cond (the prompt states) beside uncond.")
        cond = torch.cat([uncond.expand(batch, *uncond.shape[1:]), cond]).to(device)
    elif cond is not None:
        cond = cond.to(device)
    eps_fn = _guided(denoiser, guidance_scale) if guided else denoiser
    t_all = timer.start()
    x = x0.to(device) * scheduler.init_noise_sigma
    step_ms: list[float] = []
    bar = tqdm(scheduler.timesteps.tolist(), desc="sampling", disable=not progress, leave=False)
    for i, t in enumerate(bar):
        t_batch = torch.full((batch,), t, device=device, dtype=torch.int64)
        if time_steps:
            mark = timer.start()
            eps = eps_fn(x, t_batch, cond)
            step_ms.append(timer.stop(mark))
        else:
            eps = eps_fn(x, t_batch, cond)
        kwargs = {"generator": gen} if gen is not None else {"eta": 0.0}
        x_next = scheduler.step(eps, t, x, **kwargs).prev_sample
        if callback is not None:
            callback(i, t_batch, x, eps, x_next)
        x = x_next
    total = timer.stop(t_all)
    return SampleResult(images=x, step_ms=step_ms, total_ms=total)


def _guided(denoiser: Denoiser, scale: float) -> Denoiser:
    """One batched call on [x; x] with [uncond; cond] states, combined with the guidance scale."""

    def eps(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = denoiser(torch.cat([x, x]), torch.cat([t, t]), cond)
        eps_u, eps_c = out.chunk(2)
        return eps_u + scale * (eps_c - eps_u)

    return eps


def sample_many(
    denoiser: Denoiser,
    scheduler_factory,
    n: int,
    shape: tuple[int, ...],
    steps: int,
    batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    cond: torch.Tensor | None = None,
    uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Generate ``n`` images in batches (batch i uses seed ``seed + i``); returns them on the CPU. ``cond``
    holds one row of states per image (``n`` rows) for conditional models."""
    if cond is not None and len(cond) != n:
        raise ValueError(f"cond has {len(cond)} rows for {n} images; give one row of states per image.")
    out = []
    n_batches = (n + batch_size - 1) // batch_size
    for i in tqdm(range(n_batches), desc=f"sampling {n} images, {steps} steps", disable=not progress):
        lo, hi = i * batch_size, min(n, (i + 1) * batch_size)
        res = sample(
            denoiser,
            scheduler_factory(),
            (hi - lo, *shape),
            steps=steps,
            seed=seed + i,
            device=device,
            cond=cond[lo:hi] if cond is not None else None,
            uncond=uncond,
            guidance_scale=guidance_scale,
        )
        out.append(res.images.float().cpu())
    return torch.cat(out)
