"""Changing a quantized model's state in place: bit-width switches and export mode."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import PQCADError
from .calibrate import calibrate_weight
from .modules import QuantConv2d, QuantLinear
from .placement import get_quant_config, iter_quantizers, set_quant_config
from .quantizer import QuantizerStateError

log = logging.getLogger(__name__)


class UncalibratedError(PQCADError, RuntimeError):
    """A quantizer has no calibrated range; exporting or saving it would ship a meaningless scale."""


def set_weight_bits(model: nn.Module, bits: int, reinit: str = "mse") -> nn.Module:
    """Re-apply the model's QuantConfig at ``bits`` weight bits, in place.

    The config stays the one source of truth: the model's stored QuantConfig is replaced by one with the new
    ``weight_bits``, and every weight quantizer is made to match what ``quantize_model`` would build from it. Where
    the shape is unchanged the same quantizer module (and amax parameter object) is kept, so an optimizer keeps
    tracking it; where the config asks for another shape (``int4_block_size`` blocks appear at <= 4 bits) a new
    quantizer replaces it. ``reinit="mse"`` re-searches amax from the current weights; ``"rescale"`` keeps the
    ranges (amax per channel, copied into or reduced over blocks), so scale = amax / qmax changes with qmax.

    Where the new config makes Linear layers weight-only (``QuantConfig.weight_only_linear``: ONNX Runtime at <= 4
    bits), their activation quantizers are removed, as ``quantize_model`` would build them; the way back (4 -> 8
    bits there) is refused, since those ranges no longer exist."""
    if reinit not in ("mse", "rescale"):
        raise ValueError(f"reinit={reinit!r} is not allowed; choose 'mse' or 'rescale'.")
    layers = [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    if not layers:
        raise ValueError("Model has no weight quantizers; call quantize_model(model, cfg) first.")
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"bits={bits!r} is not allowed; choose 8 or 4 (2-3 for research only).")
    cfg = get_quant_config(model)
    if cfg is None:
        raise ValueError("Model carries no QuantConfig; quantize it with quantize_model(model, cfg).")
    old_cfg, cfg = cfg, cfg.replace(weight_bits=bits)
    if old_cfg.weight_only_linear and not cfg.weight_only_linear:
        raise ValueError(
            f"{cfg.target} Linear layers at {old_cfg.weight_bits} bits are weight-only; their activation "
            f"quantizers cannot come back at {bits} bits. Quantize the FP model at {bits} bits instead."
        )
    reshaped = 0
    for m in layers:
        old = m.weight_quantizer
        new = m.make_weight_quantizer(cfg).to(old.amax.device)
        if new.amax.shape == old.amax.shape:
            old.set_num_bits(new.bits)
            q = old
        else:
            reshaped += 1
            with torch.no_grad():
                new.set_amax(_regroup_amax(old.amax.detach(), new.amax.shape))
            new.train(old.training)
            m.weight_quantizer = q = new
        if reinit == "mse":
            calibrate_weight(q, m.weight, method="mse")
    if cfg.weight_only_linear:
        for m in layers:
            if isinstance(m, QuantLinear):
                m.input_quantizer = m.output_quantizer = None
    set_quant_config(model, cfg)
    log.info(
        "weight quantizers switched to %d bits (%s), %d layers, %d re-shaped",
        bits,
        reinit,
        len(layers),
        reshaped,
    )
    return model


def _regroup_amax(amax: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Per-channel [C] -> blocks [C, K] (each block keeps its channel's range) or blocks -> channels (max)."""
    if amax.dim() == 1 and len(shape) == 2:
        return amax[:, None].expand(shape).clone()
    if amax.dim() == 2 and len(shape) == 1:
        return amax.amax(dim=1)
    raise ValueError(f"cannot regroup amax of shape {tuple(amax.shape)} into {tuple(shape)}")


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
    if any(q.intervals is not None for q in quantizers):
        raise QuantizerStateError(
            "this student holds per-interval activation ranges (timestep-aware), and one ONNX graph carries one set "
            "of constant scales; per-interval export is not built yet: export the single-set student instead."
        )
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
