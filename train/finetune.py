"""The one fine-tuning loop behind subject personalization and StyleForge: the denoising loss on sets of captioned
images, each with its own weight, over the FP weights (``fp``) or only the scales of a quantized student whose
integer codes stay frozen (``peqa``, ``s1``, ``s2``, ``mcsu``; arXiv 2401.04339).

A set is any images with one prompt each: the subject with its instance prompt, prior-preservation images with the
class prompt, StyleRef images with their style captions, Aux images with their plain captions. Every step draws a
batch from every set and adds their weighted losses.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pqcad_deploy.conditioning import PromptEncoder
from pqcad_deploy.errors import UsageError
from pqcad_deploy.quant.intervals import (
    IntervalError,
    IntervalSchedule,
    add_intervals,
    add_weight_sets,
    get_intervals,
)
from pqcad_deploy.quant.scale_tuning import codes_changed, freeze_codes, frozen_codes, materialize
from pqcad_deploy.sampling import make_scheduler
from pqcad_deploy.zoo import ModelSpec

from .checkpointing import TrainingDiverged
from .personalize_data import augment

log = logging.getLogger(__name__)

METHODS = ("peqa", "s1", "s2", "mcsu", "fp")
SCALE_METHODS = ("peqa", "s1", "s2", "mcsu")  # codes frozen, scales trained
PATCH_METHODS = ("peqa", "s1", "s2")  # ... and the result is a patch of scales
# scales: a relative change per step (they train in log space); fp: the weights themselves
DEFAULT_LR = {"peqa": 1e-3, "s1": 1e-3, "s2": 1e-3, "mcsu": 1e-3, "fp": 1e-5}
SAMPLE_STEPS = 50


@dataclass
class TuneConfig:
    """What the loop needs; :class:`personalize.PersonalizeConfig` and :class:`style.StyleConfig` add their data."""

    method: str = "peqa"
    steps: int = 400
    lr: float | None = None  # default: DEFAULT_LR[method]
    batch_size: int = 4
    # [lo, hi) drawn in training; None: the whole range (s1 needs one)
    timesteps: tuple[int, int] | None = None
    seed: int = 0
    intervals: int | None = None  # s2: scale sets (default 2, or the student's own intervals)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        if self.intervals is not None and (self.method != "s2" or self.intervals < 2):
            raise UsageError(
                "--intervals K (K >= 2) sets the scale sets of --method s2; the other methods train one."
            )
        if self.method == "s1" and self.timesteps is None:
            raise UsageError("s1 trains on selected timesteps only: give --timesteps LO:HI (e.g. 0:500).")
        self.lr = self.lr or DEFAULT_LR[self.method]


@dataclass
class PromptedImages:
    """Training images [N, C, H, W] in [-1, 1] with one prompt each; ``weight`` scales their loss term and
    ``augmented`` adds a random flip and shift per draw (for a handful of images of one subject or style)."""

    images: torch.Tensor
    prompts: list[str]
    weight: float = 1.0
    augmented: bool = False

    def __post_init__(self) -> None:
        if len(self.images) != len(self.prompts) or len(self.images) == 0:
            raise ValueError(
                f"{len(self.images)} images but {len(self.prompts)} prompts (one each, at least one)"
            )


def install_scale_sets(
    model: torch.nn.Module, spec: ModelSpec, k: int | None, sampler_steps: int
) -> IntervalSchedule:
    """S2: K weight scale sets on ``model``, over the student's own intervals or K equal shares of the sampler's
    ``sampler_steps`` DDIM steps."""
    own = get_intervals(model)
    if own is None:
        ddim = make_scheduler("ddim", **spec.scheduler)
        ddim.set_timesteps(sampler_steps)
        n_train = int(spec.scheduler.get("num_train_timesteps", 1000))
        try:
            own = IntervalSchedule.equal_steps([int(t) for t in ddim.timesteps], k or 2, n_train)
        except IntervalError as e:
            raise UsageError(f"--intervals {k}: {e}") from None
        add_intervals(model, own)
    elif k is not None and k != own.k:
        raise UsageError(
            f"the student already holds {own.k} timestep intervals; drop --intervals or give {own.k}."
        )
    add_weight_sets(model)
    return own


def tune(
    model: torch.nn.Module,
    spec: ModelSpec,
    sets: list[PromptedImages],
    prompts: PromptEncoder,
    cfg: TuneConfig,
    device: torch.device,
    progress: bool = True,
    sampler_steps: int = SAMPLE_STEPS,
    keep_frozen: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place on ``sets`` (scale-only for peqa/s1/s2/mcsu, materialized at the end unless
    ``keep_frozen``: then :func:`quant.scale_tuning.materialize` is the caller's); returns the training record
    (loss curve, trainable parameters, time, peak memory)."""
    model = model.to(device)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    sched = make_scheduler("ddpm", **spec.scheduler)
    n_t = sched.config.num_train_timesteps
    lo, hi = cfg.timesteps or (0, n_t)
    if not 0 <= lo < hi <= n_t:
        raise UsageError(f"--timesteps {lo}:{hi} must satisfy 0 <= LO < HI <= {n_t}.")
    intervals = install_scale_sets(model, spec, cfg.intervals, sampler_steps) if cfg.method == "s2" else None
    # the timesteps each scale set trains on: its interval's, within [lo, hi)
    ranges = [(lo, hi)] if intervals is None else [intervals.timestep_range(k) for k in range(intervals.k)]
    ranges = [(max(a, lo), min(b, hi)) for a, b in ranges]
    if any(a >= b for a, b in ranges):
        raise UsageError(
            f"--timesteps {lo}:{hi} leaves some of the {len(ranges)} intervals without timesteps."
        )
    encoded = []  # per set: images, the states of its distinct prompts, each image's prompt index
    for s in sets:
        distinct = list(dict.fromkeys(s.prompts))
        ids = torch.tensor([distinct.index(p) for p in s.prompts], device=device)
        encoded.append((s, s.images.to(device), prompts.states(distinct).to(device), ids))
    scale_only = cfg.method in SCALE_METHODS
    params = (
        freeze_codes(model, input_scales=cfg.method == "mcsu") if scale_only else list(model.parameters())
    )
    codes = frozen_codes(model) if cfg.method == "mcsu" else None  # kept: materialize() drops the buffers
    for p in params:
        p.requires_grad_(True)
    # Scales train in log space (a step changes a scale by a fraction of itself, whatever its size, and it stays
    # positive), one tensor per scale set so that a step updates only the set its interval selected; the fp
    # baseline trains its weights directly.
    with torch.no_grad():
        rows_of = [list(p.unbind(0)) if intervals is not None else [p] for p in params] if scale_only else []
    logs = [[r.detach().log().clone().requires_grad_(True) for r in rows] for rows in rows_of]
    opt = torch.optim.AdamW(
        [x for xs in logs for x in xs] if scale_only else params, lr=cfg.lr, weight_decay=0.0
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()

    def loss_on(x0: torch.Tensor, cond: torch.Tensor, k: int) -> torch.Tensor:
        t = torch.randint(*ranges[k], (x0.shape[0],), device=device, generator=g)
        noise = torch.randn(x0.shape, device=device, generator=g)
        pred = model(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond, return_dict=False)[0]
        return F.mse_loss(pred.float(), noise)

    curve, t0 = [], time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"fine-tune ({cfg.method})", unit="step", disable=not progress)
    for step in bar:
        k = step % len(ranges)  # s2: the intervals in turn, every step one interval (as the sampler calls it)
        loss = torch.zeros((), device=device)
        for s, images, states, ids in encoded:
            idx = torch.randint(0, len(images), (cfg.batch_size,), device=device, generator=g)
            x0 = augment(images[idx], g) if s.augmented else images[idx]
            loss = loss + s.weight * loss_on(x0, states[ids[idx]], k)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"non-finite loss at step {step}; nothing was written. Lower --lr.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if scale_only:
            with torch.no_grad():
                for p, rows, log_rows in zip(params, rows_of, logs, strict=True):
                    grads = p.grad.unbind(0) if intervals is not None else [p.grad]
                    for j, (r, log_r, gr) in enumerate(zip(rows, log_rows, grads, strict=True)):
                        log_r.grad = gr * r if j == k else None  # d loss / d log s = d loss / d s * s
                    p.grad = None
        opt.step()
        if scale_only:
            with torch.no_grad():
                for rows, log_rows in zip(rows_of, logs, strict=True):
                    rows[k].copy_(log_rows[k].exp())
        if step % 10 == 0 or step == cfg.steps - 1:
            curve.append([step, round(loss.item(), 6)])
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    for p in params:
        p.requires_grad_(False)
    extra = {}
    if scale_only and not keep_frozen:
        materialize(model)
        if codes is not None:  # MCSU: the input-channel scales live on in new codes
            extra["codes_changed"] = round(codes_changed(model, codes), 6)
    return {
        **extra,
        "config": asdict(cfg),
        "intervals": intervals.to_dict() if intervals is not None else None,
        "sampler_steps": sampler_steps,
        "sets": [{"images": len(s.images), "prompts": len(set(s.prompts)), "weight": s.weight} for s in sets],
        "trainable_parameters": sum(p.numel() for p in params),
        "seconds": round(time.perf_counter() - t0, 1),
        "loss_curve": curve,
        "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }  # fmt: skip
