"""Timestep-aware PTQ: one set of activation ranges per timestep interval, calibrated per interval, optionally
progressively (PCR, arXiv 2311.06322).

Calibration points come from DDIM rollouts of the deployment sampler. Plain per-interval PTQ records interval k's
inputs on the FP trajectory. **Progressive calibration** calibrates interval by interval in sampling order and
records interval k's inputs on a rollout in which intervals 0..k-1 already run quantized with their calibrated
ranges, so the error those intervals accumulate is part of what interval k is calibrated on. Each interval's ranges
come from the one estimator path (``quant.calibrate`` with the QuantConfig's method); weights are shared.
**Activation relaxing** (``relax=(fraction, end)``) adds one interval of the sampler's first ("xT") or last ("x0")
steps whose activations stay float; it is not calibrated, and progressive rollouts run it relaxed.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from pqcad_deploy.denoiser import TorchDenoiser, UNetWrapper
from pqcad_deploy.quant import QuantConfig, calibrate, quantize_model
from pqcad_deploy.quant.calibrate import calibrate_weights
from pqcad_deploy.quant.intervals import IntervalError, IntervalSchedule, add_intervals, store_interval
from pqcad_deploy.sampling import make_scheduler, sample
from pqcad_deploy.zoo import ModelSpec

log = logging.getLogger(__name__)

Points = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


class _Done(Exception):
    """Stops a rollout once the interval being recorded is over (later steps are not needed)."""


class _RoutingDenoiser:
    """FP UNet, or ``quant`` (when given) for the intervals before ``record``; records the inputs of interval
    ``record`` (of every step when ``schedule`` is None)."""

    def __init__(self, fp, quant, schedule: IntervalSchedule | None, record: int):
        self.fp, self.quant, self.schedule, self.record = fp, quant, schedule, record
        self.points: Points = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        ts = torch.as_tensor(t).reshape(-1)
        j = 0 if self.schedule is None else int(self.schedule.index_of(ts[:1])[0])
        if j > self.record:
            raise _Done
        if j == self.record:
            ts = ts.expand(x.shape[0]) if ts.numel() == 1 else ts
            self.points.append((x.detach().cpu(), ts.detach().cpu(), None if c is None else c.detach().cpu()))
        net = self.quant if (self.quant is not None and j < self.record) else self.fp
        return net(x, t, c)


def rollout_points(
    fp: nn.Module,
    quant: nn.Module | None,
    spec: ModelSpec,
    schedule: IntervalSchedule | None,
    record: int,
    steps: int,
    n_trajectories: int,
    seed: int,
    device: torch.device | str,
    batch_size: int,
    cond_fn: Callable[[int], torch.Tensor] | None = None,
    uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> Points:
    """UNet inputs of interval ``record`` on DDIM rollouts; with ``quant`` the earlier intervals run quantized."""
    router = _RoutingDenoiser(
        TorchDenoiser(fp), TorchDenoiser(quant) if quant is not None else None, schedule, record
    )
    for b in range(0, n_trajectories, batch_size):
        bs = min(batch_size, n_trajectories - b)
        cond = cond_fn(bs) if cond_fn is not None else None
        try:
            sample(router, make_scheduler("ddim", **spec.scheduler), (bs, *spec.sample_shape), steps=steps,
                   seed=seed + b, device=device, cond=cond, uncond=uncond, guidance_scale=guidance_scale)  # fmt: skip
        except _Done:
            pass
    return router.points


def _forward_loop(points: Points, device: torch.device | str) -> Callable[[nn.Module], None]:
    @torch.inference_mode()
    def loop(model: nn.Module) -> None:
        net = UNetWrapper(model)
        for x, t, c in points:
            net(x.to(device), t.to(device), None if c is None else c.to(device, torch.float32))

    return loop


def interval_ptq(
    fp_model: nn.Module,
    spec: ModelSpec,
    qcfg: QuantConfig,
    k: int,
    steps: int = 50,
    n_trajectories: int = 64,
    progressive: bool = True,
    seed: int = 1234,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    cond_fn: Callable[[int], torch.Tensor] | None = None,
    uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    starts: tuple[int, ...] | None = None,
    relax: tuple[float, str] | None = None,
    student: nn.Module | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """PTQ with ``k`` activation-range sets over the ``steps``-step DDIM sampler (equal numbers of steps per interval
    unless ``starts`` are given); ``k == 1`` is single-set PTQ on the same rollouts (the fair baseline). ``relax``
    (fraction of steps, "x0" or "xT") adds a relaxed interval with float activations. With ``student`` (a trained
    single-set student of ``fp_model``, e.g. PQCAD's) its weights and weight scales are kept and only the activation
    ranges are calibrated. Returns (student in eval mode on ``device``, history entry)."""
    t0 = time.perf_counter()
    fp = fp_model.to(device).eval()
    model = quantize_model(copy.deepcopy(fp), qcfg) if student is None else copy.deepcopy(student).to(device)
    sched = make_scheduler("ddim", **spec.scheduler)
    sched.set_timesteps(steps)
    timesteps = [int(t) for t in sched.timesteps]
    n_train = int(spec.scheduler.get("num_train_timesteps", 1000))
    schedule = _schedule(timesteps, k, starts, relax, n_train)
    if schedule is not None:
        add_intervals(model, schedule)
    n_sets = schedule.k if schedule is not None else 1
    if student is None:  # weight ranges are shared by every interval; a trained student keeps its own
        calibrate_weights(model, qcfg.calib_method)  # before any rollout runs the quantized model
    points_per_set = []
    for j in tqdm(range(n_sets), desc="interval calibration", disable=not progress or n_sets == 1):
        if schedule is not None and schedule.is_relaxed(j):
            points_per_set.append(0)  # float activations: nothing to calibrate
            continue
        quant = model if (progressive and j > 0) else None
        pts = rollout_points(fp, quant, spec, schedule, j, steps, n_trajectories, seed, device, batch_size,
                             cond_fn, uncond, guidance_scale)  # fmt: skip
        loop = _forward_loop(pts, device)
        calibrate(model, loop, qcfg.calib_method, qcfg.percentile, weights=False)
        if schedule is not None:
            store_interval(model, j)
        points_per_set.append(sum(len(p[0]) for p in pts))
    if schedule is not None:
        for j in schedule.relaxed:  # unused ranges, kept valid: the calibrated set the model ended with
            store_interval(model, j)
    entry = {
        "event": "interval_ptq" if schedule is not None else "ptq",
        "method": qcfg.calib_method,
        "bits": f"w{qcfg.weight_bits}a{qcfg.act_bits}",
        "target": qcfg.target,
        "progressive": bool(progressive and schedule is not None),
        "student_weights": student is not None,
        "intervals": schedule.to_dict() if schedule is not None else None,
        "relax": {"fraction": relax[0], "end": relax[1]} if relax else None,
        "sampler_steps": steps,
        "rollouts": {"n_trajectories": n_trajectories, "seed": seed, "guidance_scale": guidance_scale},
        "points_per_interval": points_per_set,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info(
        "%s: %s", entry["event"], {k: entry[k] for k in ("progressive", "points_per_interval", "seconds")}
    )
    return model.eval(), entry


def _schedule(
    timesteps: list[int],
    k: int,
    starts: tuple[int, ...] | None,
    relax: tuple[float, str] | None,
    n_train: int,
) -> IntervalSchedule | None:
    """The interval schedule of ``interval_ptq`` (None: one set, no relaxing)."""
    if relax and starts:
        raise IntervalError(
            "relaxing adds its own interval at one end of the sampler's steps; give --interval-starts or "
            "--relax-fraction, not both."
        )
    if relax:
        schedule = IntervalSchedule.with_relaxing(timesteps, k, relax[0], relax[1], n_train)
    elif starts:
        schedule = IntervalSchedule(tuple(starts), n_train)
    elif k > 1:
        schedule = IntervalSchedule.equal_steps(timesteps, k, n_train)
    else:
        return None
    schedule.steps_per_interval(timesteps)  # every interval must hold sampler steps
    return schedule
