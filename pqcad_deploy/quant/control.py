"""Changing a quantized model's state in place: bit-width switches and export mode."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import PQCADError
from .calibrate import calibrate_weight, weight_quantizers
from .placement import get_quant_config, iter_quantizers

log = logging.getLogger(__name__)


class UncalibratedError(PQCADError, RuntimeError):
    """A quantizer has no calibrated range; exporting or saving it would ship a meaningless scale."""


def set_weight_bits(model: nn.Module, bits: int, reinit: str = "mse") -> nn.Module:
    """Switch every weight quantizer to ``bits`` in place (same modules, same amax parameter objects, so an
    optimizer keeps tracking them). ``reinit="mse"`` re-searches amax from the current weights at the new
    bit-width; ``"rescale"`` keeps amax (scale = amax / qmax changes with qmax). With the config's
    ``reduce_range`` (ORT target) 8 means the 7-bit grid, as at construction."""
    if reinit not in ("mse", "rescale"):
        raise ValueError(f"reinit={reinit!r} is not allowed; choose 'mse' or 'rescale'.")
    wq = weight_quantizers(model)
    if not wq:
        raise ValueError("Model has no weight quantizers; call quantize_model(model, cfg) first.")
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"bits={bits!r} is not allowed; choose 8 or 4 (2-3 for research only).")
    cfg = get_quant_config(model)
    grid_bits = cfg.effective_weight_bits(bits) if cfg is not None else bits
    for q, w in wq:
        q.set_num_bits(grid_bits)
        if reinit == "mse":
            calibrate_weight(q, w, method="mse")
    log.info("weight quantizers switched to %d bits (%s), %d layers", bits, reinit, len(wq))
    return model


def check_calibrated(model: nn.Module) -> None:
    """Raise with the names of quantizers that are uncalibrated or hold non-finite/non-positive ranges."""
    bad = [n for n, q in iter_quantizers(model) if not q.is_calibrated]
    if bad:
        raise UncalibratedError(
            f"{len(bad)} quantizers are uncalibrated (e.g. {bad[:3]}); run pqcad_deploy.quant.calibrate "
            "or load a calibrated student checkpoint first."
        )
    nonfinite = [
        n for n, q in iter_quantizers(model) if not torch.isfinite(q.amax).all() or (q.amax <= 0).any()
    ]
    if nonfinite:
        raise UncalibratedError(f"Quantizers with non-finite or non-positive amax: {nonfinite[:5]}.")


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Forward emits only 8-bit-range ``torch.fake_quantize_per_*_affine`` with constant scales, so the
    TorchScript exporter writes QuantizeLinear/DequantizeLinear. Values equal the eval forward exactly
    (sub-8-bit weights are clamped to their own grid first; ORT activations use uint8 with zero-point 128).
    The model is put in eval mode for the duration; refuses uncalibrated quantizers."""
    check_calibrated(model)
    quantizers = [q for _, q in iter_quantizers(model)]
    was_training = model.training
    model.eval()
    try:
        for q in quantizers:
            q._export_scale = q.scale().detach().clone()
        yield model
    finally:
        for q in quantizers:
            q._export_scale = None
        model.train(was_training)
