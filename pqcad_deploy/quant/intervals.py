"""Timestep-aware activation ranges: K sets of activation step sizes, one per timestep interval.

Diffusion activations change range strongly across the denoising trajectory (PCR, TDQ); one set of constant scales
per engine is a compromise over all of it. ``add_intervals(model, schedule)`` gives every activation quantizer a
``interval_amax`` buffer of K ranges; a forward pre-hook on the UNet reads each sample's timestep and the fake-quant
forward uses that sample's interval's range (per-sample scales, so a batch may mix intervals: calibration and
scoring batches do, the sampler's never). Weight ranges stay shared unless :func:`add_weight_sets` gives every
weight quantizer K per-output-channel scale sets over the same integer codes (the quantized-personalization
paper's S2: one scale set per interval; a call then must hold one interval, as the sampler's do). K = 1 is never
installed: a model without intervals is today's student, bit for bit.

**Activation relaxing** (PCR): intervals listed in ``IntervalSchedule.relaxed`` run with float activations (weights
stay quantized). PCR relaxes 8 -> 10 bits; engines have no 10-bit activations, so a relaxed interval deploys as a
weight-only (W8, float activations) engine beside the W8A8 ones.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .quantizer import TensorQuantizer

log = logging.getLogger(__name__)

INTERVALS_ATTR = "_pqcad_intervals"


class IntervalError(ValueError):
    """Interval boundaries that overlap, leave the timestep range, or do not match the sampler's steps."""


@dataclass(frozen=True)
class IntervalSchedule:
    """Intervals in sampling order (interval 0 holds the noisiest timesteps). ``starts[j]`` is the first (largest)
    timestep of interval j + 1: a timestep t belongs to interval ``#{s in starts : t <= s}``."""

    starts: tuple[int, ...]
    num_train_timesteps: int = 1000
    relaxed: tuple[int, ...] = ()  # intervals whose activations stay float (activation relaxing)

    def __post_init__(self) -> None:
        s = [int(v) for v in self.starts]
        r = sorted({int(j) for j in self.relaxed})
        if any(not 0 <= j <= len(s) for j in r):
            raise IntervalError(
                f"relaxed intervals {r} must be among the {len(s) + 1} intervals (0..{len(s)})."
            )
        if len(r) == len(s) + 1:
            raise IntervalError(
                "relaxing every interval leaves no activation quantized; export a weight-only student instead."
            )
        object.__setattr__(self, "relaxed", tuple(r))
        if any(not 0 <= v < self.num_train_timesteps for v in s):
            raise IntervalError(
                f"interval starts {s} must lie in [0, {self.num_train_timesteps - 1}] (the training timesteps)."
            )
        if any(a <= b for a, b in zip(s, s[1:], strict=False)):
            raise IntervalError(
                f"interval starts {s} must be strictly decreasing (sampling order, noisiest first): two equal or "
                "rising starts would make an empty or overlapping interval."
            )
        object.__setattr__(self, "starts", tuple(s))

    @property
    def k(self) -> int:
        return len(self.starts) + 1

    def index_of(self, t: torch.Tensor) -> torch.Tensor:
        """Interval index of every timestep in ``t`` (long tensor of the same shape)."""
        starts = torch.tensor(self.starts, dtype=torch.long, device=t.device)
        return (t.long().reshape(-1, 1) <= starts.reshape(1, -1)).sum(1).reshape(t.shape)

    def timestep_range(self, k: int) -> tuple[int, int]:
        """The training timesteps ``[lo, hi)`` of interval ``k``."""
        if not 0 <= k < self.k:
            raise IntervalError(f"interval {k} does not exist (K = {self.k}).")
        lo = self.starts[k] + 1 if k < self.k - 1 else 0
        hi = self.starts[k - 1] + 1 if k > 0 else self.num_train_timesteps
        return lo, hi

    def is_relaxed(self, k: int) -> bool:
        return k in self.relaxed

    def to_dict(self) -> dict[str, Any]:
        d = {"k": self.k, "starts": list(self.starts), "num_train_timesteps": self.num_train_timesteps}
        return {**d, "relaxed": list(self.relaxed)} if self.relaxed else d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IntervalSchedule:
        try:
            sched = cls(
                tuple(int(v) for v in d["starts"]),
                int(d.get("num_train_timesteps", 1000)),
                tuple(int(j) for j in d.get("relaxed", ())),
            )
        except IntervalError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise IntervalError(
                f"interval record {d!r:.80} needs a list 'starts' of timesteps and optionally a list 'relaxed' of "
                f"interval indices ({e})."
            ) from e
        if "k" in d and int(d["k"]) != sched.k:
            raise IntervalError(f"interval record says k={d['k']} but has {len(sched.starts)} starts.")
        return sched

    @classmethod
    def equal_steps(
        cls, timesteps: Sequence[int], k: int, num_train_timesteps: int = 1000
    ) -> IntervalSchedule:
        """K intervals of (nearly) equal numbers of the sampler's steps; ``timesteps`` in sampling order."""
        n = len(timesteps)
        if not 1 <= k <= n:
            raise IntervalError(f"{k} intervals do not fit a sampler of {n} steps (need 1 <= K <= steps).")
        ts = [int(t) for t in timesteps]
        if any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
            raise IntervalError("sampler timesteps must be strictly decreasing (sampling order).")
        return cls(tuple(ts[(j * n) // k] for j in range(1, k)), num_train_timesteps)

    @classmethod
    def with_relaxing(
        cls, timesteps: Sequence[int], k: int, fraction: float, end: str, num_train_timesteps: int = 1000
    ) -> IntervalSchedule:
        """``k`` quantized intervals of equal numbers of steps plus one relaxed interval holding
        ``round(fraction * steps)`` steps at ``end`` ("x0": the last steps, "xT": the first ones)."""
        ts = [int(t) for t in timesteps]
        n = len(ts)
        r = round(fraction * n)
        if end not in ("x0", "xT"):
            raise IntervalError(f"relaxing end must be 'x0' or 'xT', not {end!r}.")
        if not 1 <= r <= n - k:
            raise IntervalError(
                f"relaxing a fraction {fraction:g} of {n} steps relaxes {r}; it must relax at least one step and leave "
                f"at least {k} quantized step(s) for {k} interval(s)."
            )
        if end == "x0":
            quantized = cls.equal_steps(ts[: n - r], k, num_train_timesteps)
            return cls((*quantized.starts, ts[n - r]), num_train_timesteps, (k,))
        quantized = cls.equal_steps(ts[r:], k, num_train_timesteps)
        return cls((ts[r], *quantized.starts), num_train_timesteps, (0,))

    def steps_per_interval(self, timesteps: Sequence[int]) -> list[int]:
        """How many of the sampler's steps fall in each interval; every interval must get at least one."""
        idx = self.index_of(torch.tensor([int(t) for t in timesteps]))
        counts = torch.bincount(idx, minlength=self.k).tolist()
        if min(counts) == 0:
            raise IntervalError(
                f"interval starts {list(self.starts)} leave interval(s) "
                f"{[j for j, c in enumerate(counts) if c == 0]} without any of the sampler's {len(timesteps)} "
                "steps; choose starts among the sampler's timesteps or fewer intervals."
            )
        return counts


class IntervalState:
    """Shared by a model's hook and its quantizers: the per-sample interval of the call in flight."""

    def __init__(self, schedule: IntervalSchedule):
        self.schedule = schedule
        self.index: torch.Tensor | None = None
        self.weight_sets = False  # add_weight_sets(): weight quantizers read the call's one interval
        self.weight_interval: int | None = None  # that interval; None while a call mixes intervals
        self.relaxed_mask = torch.zeros(schedule.k, dtype=torch.bool)  # per interval: activations stay float
        self.relaxed_mask[list(schedule.relaxed)] = True


class _SelectByTimestep:
    """Forward pre-/post-hook pair body (a class, not a closure, so ``copy.deepcopy`` of the model keeps the hook
    and its quantizers on the same copied state)."""

    def __init__(self, state: IntervalState):
        self.state = state

    def pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        t = torch.as_tensor(t, device=sample.device).reshape(-1)
        t = t.expand(sample.shape[0]) if t.numel() == 1 else t
        self.state.index = self.state.schedule.index_of(t)
        if self.state.weight_sets:  # one host sync per UNet call, only for students with weight sets
            ks = self.state.index.unique()
            self.state.weight_interval = int(ks[0]) if ks.numel() == 1 else None
        # moved once per call, not once per quantizer
        self.state.relaxed_mask = self.state.relaxed_mask.to(sample.device)

    def post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        self.state.index = None
        self.state.weight_interval = None


def act_quantizers(model: nn.Module) -> list[TensorQuantizer]:
    """Per-tensor activation quantizers (the ones that get interval sets), each once."""
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, TensorQuantizer) and m.kind != "weight" and m.axis is None and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def add_intervals(model: nn.Module, schedule: IntervalSchedule) -> nn.Module:
    """Install K activation-range sets (initialised to the current ranges) and the timestep hook; in place."""
    if get_intervals(model) is not None:
        raise IntervalError("the model already holds interval sets; start from a single-set student.")
    if schedule.k < 2:
        raise IntervalError("K = 1 is the plain student: nothing to install.")
    state = IntervalState(schedule)
    for q in act_quantizers(model):
        q.register_buffer("interval_amax", q.amax.detach().reshape(1).repeat(schedule.k).clone())
        q.intervals = state
    hook = _SelectByTimestep(state)
    model.register_forward_pre_hook(hook.pre, with_kwargs=True)
    model.register_forward_hook(hook.post, with_kwargs=True)
    setattr(model, INTERVALS_ATTR, state)
    log.info(
        "activation ranges per timestep interval: K=%d, starts %s, relaxed %s",
        schedule.k,
        list(schedule.starts),
        list(schedule.relaxed),
    )
    return model


def weight_quantizers(model: nn.Module) -> list[TensorQuantizer]:
    """Per-output-channel weight quantizers (the ones that can get weight scale sets)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, TensorQuantizer) and m.kind == "weight" and m.axis == 0 and m.block_size is None
    ]


def add_weight_sets(model: nn.Module) -> int:
    """Give every per-channel weight quantizer K scale sets (``interval_amax`` [K, C], initialised to its range)
    over its shared integer codes, selected by the call's interval; in place, on a model that holds intervals.
    Returns the number of quantizers. The codes stay those of the quantizer's own ``amax``."""
    state: IntervalState | None = getattr(model, INTERVALS_ATTR, None)
    if state is None:
        raise IntervalError("weight scale sets need interval sets first (quant.intervals.add_intervals).")
    if state.weight_sets:
        raise IntervalError("the model already holds weight scale sets.")
    qs = weight_quantizers(model)
    blocked = [m for m in model.modules() if isinstance(m, TensorQuantizer) and m.block_size is not None]
    if blocked:
        raise IntervalError(
            "block-quantized weights have no per-output-channel scale; weight scale sets need per-channel weights."
        )
    for q in qs:
        q.register_buffer("interval_amax", q.amax.detach().unsqueeze(0).repeat(state.schedule.k, 1).clone())
        q.intervals = state
    state.weight_sets = True
    log.info("weight scale sets per timestep interval: K=%d on %d layers", state.schedule.k, len(qs))
    return len(qs)


def has_weight_sets(model: nn.Module) -> bool:
    state = getattr(model, INTERVALS_ATTR, None)
    return bool(state is not None and state.weight_sets)


def get_intervals(model: nn.Module) -> IntervalSchedule | None:
    state = getattr(model, INTERVALS_ATTR, None)
    return state.schedule if state is not None else None


@torch.no_grad()
def store_interval(model: nn.Module, k: int) -> None:
    """Copy every activation quantizer's current (just calibrated) range into interval ``k``'s set."""
    sched = get_intervals(model)
    if sched is None or not 0 <= k < sched.k:
        raise IntervalError(f"interval {k} does not exist (model intervals: {sched}).")
    for q in act_quantizers(model):
        q.interval_amax[k] = q.amax.detach().reshape(())


def interval_ranges(model: nn.Module) -> dict[str, list[float]]:
    """Every activation quantizer's K ranges, by quantizer name (reports and tests)."""
    return {
        name: m.interval_amax.tolist()
        for name, m in model.named_modules()
        if isinstance(m, TensorQuantizer) and hasattr(m, "interval_amax")
    }


def single_set_copy(model: nn.Module, k: int) -> nn.Module:
    """A plain (single-set) copy of a K-set student holding interval ``k``'s ranges: what one engine of the
    per-interval deployment computes (same weights, interval k's activation scales; a relaxed interval's copy has
    its activation quantizers off: weights quantized, activations float). With weight scale sets the copy's weight
    is ``codes x`` interval k's scale, so every copy exports the same integer codes."""
    sched = get_intervals(model)
    if sched is None or not 0 <= k < sched.k:
        raise IntervalError(f"interval {k} does not exist (model intervals: {sched}).")
    out = copy.deepcopy(model)
    for hooks in (out._forward_pre_hooks, out._forward_hooks):
        for key in [
            key for key, h in hooks.items() if isinstance(getattr(h, "__self__", None), _SelectByTimestep)
        ]:
            del hooks[key]
    with torch.no_grad():
        for q in act_quantizers(out):
            q.amax.copy_(q.interval_amax[k].reshape(q.amax.shape))
            del q._buffers["interval_amax"]
            q.intervals = None
            q.enabled = q.enabled and not sched.is_relaxed(k)
        for layer in [
            m for m in out.modules() if isinstance(getattr(m, "weight_quantizer", None), TensorQuantizer)
        ]:
            q = layer.weight_quantizer
            sets = q._buffers.pop("interval_amax", None)
            if sets is None:
                continue
            codes = q.codes_of(layer.weight)
            q.amax.copy_(sets[k].reshape(q.amax.shape))
            layer.weight.copy_((codes * q.channel_scale(codes.dim())).to(layer.weight.dtype))
            q.intervals = None
    delattr(out, INTERVALS_ATTR)
    return out
