"""Post-training calibration of quantizer ranges: weights from the weights, activations from a forward loop.

Activations are observed with quantization switched off (every quantizer passes its input through), which is
the usual PTQ convention; the loop should feed timestep-aware data (``calibset.forward_loop_from``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from .modules import QuantConv2d, QuantLinear
from .placement import iter_quantizers
from .quantizer import TensorQuantizer, qrange

log = logging.getLogger(__name__)

METHODS = ("maxabs", "percentile", "mse")
MAX_SAMPLES = 1 << 20  # per activation quantizer, kept for percentile / MSE search
PER_BATCH_SAMPLES = 1 << 16
MSE_GRID = torch.linspace(0.3, 1.0, 36)


class _Collector:
    """Running max-abs plus a bounded random subsample of |x| for the percentile and MSE estimators.

    The subsample stays on the device that produced it (at most 4 MB per quantizer), so the MSE grid search
    runs on the GPU when calibration does: on the CPU it took minutes whenever other jobs shared the cores."""

    def __init__(self, keep_samples: bool, seed: int):
        self.maxabs = torch.tensor(0.0)
        self.keep_samples = keep_samples
        self.samples: list[torch.Tensor] = []
        self.n_kept = 0
        self.n_obs = 0
        self.gen = torch.Generator().manual_seed(seed)

    def observe(self, x: torch.Tensor) -> None:
        a = x.float().abs().flatten()
        self.n_obs += 1
        if not torch.isfinite(a).all():
            raise ValueError("Calibration batch holds inf/nan activations; check the calibration data.")
        self.maxabs = torch.maximum(self.maxabs, a.max().cpu())
        if self.keep_samples and self.n_kept < MAX_SAMPLES:
            if a.numel() > PER_BATCH_SAMPLES:
                idx = torch.randint(a.numel(), (PER_BATCH_SAMPLES,), generator=self.gen)
                a = a[idx.to(a.device)]
            self.samples.append(a)
            self.n_kept += a.numel()


def _mse_amax(x: torch.Tensor, maxabs: torch.Tensor, bits: int, dim: int | None) -> torch.Tensor:
    """Grid-search amax = alpha * maxabs minimising the fake-quant MSE (per row when ``dim`` is 1)."""
    qmin, qmax = qrange(bits)
    best_err, best = None, None
    for alpha in MSE_GRID:
        amax = (maxabs * alpha).clamp_min(1e-8)
        s = amax / qmax
        if dim is None:
            err = ((torch.clamp(torch.round(x / s), qmin, qmax) * s - x) ** 2).mean()
        else:
            s2 = s.unsqueeze(1)
            err = ((torch.clamp(torch.round(x / s2), qmin, qmax) * s2 - x) ** 2).mean(1)
        if best is None:
            best_err, best = err, amax
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, amax, best)
    return best


@torch.no_grad()
def calibrate_weight(quantizer: TensorQuantizer, weight: torch.Tensor, method: str = "maxabs") -> None:
    """Per-channel (or per-block) amax from the weight itself; ``mse`` searches a clipping ratio per row."""
    w = weight.detach().float()
    if quantizer.block_size is not None:
        rows = w.reshape(-1, quantizer.block_size)
    elif quantizer.axis == 0:
        rows = w.reshape(w.shape[0], -1)
    else:
        rows = w.reshape(1, -1)
    maxabs = rows.abs().amax(1)
    amax = _mse_amax(rows, maxabs, quantizer.bits, dim=1) if method == "mse" else maxabs
    quantizer.set_amax(amax.reshape(quantizer.amax.shape))


def _act_amax(c: _Collector, method: str, bits: int, percentile: float) -> torch.Tensor:
    if method == "maxabs" or not c.samples:
        return c.maxabs
    x = torch.cat(c.samples)
    maxabs = c.maxabs.to(x.device)
    if method == "percentile":
        k = max(1, min(x.numel(), int(round(x.numel() * percentile / 100.0))))
        return torch.kthvalue(x, k).values.clamp_max(maxabs)
    return _mse_amax(x, maxabs, bits, dim=None)


def weight_quantizers(model: nn.Module) -> list[tuple[TensorQuantizer, torch.Tensor]]:
    return [
        (m.weight_quantizer, m.weight) for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))
    ]


@torch.no_grad()
def calibrate_weights(model: nn.Module, method: str = "maxabs") -> None:
    """Every weight quantizer's amax from its weight (the activation-independent half of :func:`calibrate`)."""
    for q, w in weight_quantizers(model):
        calibrate_weight(q, w, method="mse" if method == "mse" else "maxabs")


@torch.no_grad()
def calibrate(
    model: nn.Module,
    forward_loop: Callable[[nn.Module], None] | None,
    method: str = "maxabs",
    percentile: float = 99.99,
    seed: int = 0,
    weights: bool = True,
) -> nn.Module:
    """Set every quantizer's amax: weights from weights, activations from ``forward_loop(model)``.

    ``forward_loop`` may be None only for weight-only recalibration of a model whose activation quantizers
    are already calibrated. ``weights=False`` leaves the weight ranges as they are (activations only: a trained
    student's weight scales, or weights already calibrated by an earlier call).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not a calibration method; choose one of {list(METHODS)}.")
    quantizers = list(iter_quantizers(model))
    if not quantizers:
        raise ValueError("Model has no quantizers; call quantize_model(model, cfg) first.")
    wq = weight_quantizers(model)
    w_ids = {id(q) for q, _ in wq}
    if weights:
        calibrate_weights(model, method)
    acts = [(n, q) for n, q in quantizers if id(q) not in w_ids]
    if forward_loop is None:
        missing = [n for n, q in acts if not q.is_calibrated]
        if missing:
            raise ValueError(f"forward_loop=None but {len(missing)} activation quantizers are uncalibrated.")
        return model
    was_training = model.training
    model.eval()
    for i, (_, q) in enumerate(acts):
        q._collector = _Collector(keep_samples=method != "maxabs", seed=seed + i)
    try:
        forward_loop(model)
        for name, q in acts:
            c = q._collector
            if c.n_obs == 0:
                raise ValueError(
                    f"Quantizer {name} saw no data: forward_loop did not run the model through it."
                )
            q.set_amax(_act_amax(c, method, q.bits, percentile))
    finally:
        for _, q in acts:
            q._collector = None
        model.train(was_training)
    log.info("calibrated %d weight and %d activation quantizers (%s)", len(wq), len(acts), method)
    return model
