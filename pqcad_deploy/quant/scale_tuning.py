"""Scale-only fine-tuning of a quantized student (PEQA): integer weight codes frozen, weight scales trained.

A model personalized this way is its base engine with other scale initializers (a patch: ``pqcad_deploy.patch``),
so the INT8 codes a user has already deployed stay byte-identical. :func:`freeze_codes` stores every weight
quantizer's codes exactly as the fake-quant forward and the exporter round them (``rint(w * (1/s))``, clamped) and
turns that quantizer's forward into ``codes x scale``: the per-output-channel step sizes (``amax``, or with weight
scale sets, S2, the K sets ``interval_amax``) are the only trainable tensors. :func:`materialize` writes ``codes x scale`` back into the float weights, after which the model
is an ordinary student whose export rounds back to the same codes.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import UsageError
from .modules import QuantConv2d, QuantLinear
from .quantizer import TensorQuantizer

log = logging.getLogger(__name__)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Quantized Conv/Linear layers by module name (their weight is ``<name>.weight``)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


@torch.no_grad()
def weight_codes(layer: nn.Module) -> torch.Tensor:
    """The integer codes (as float) the layer's weight quantizer gives its weight now: what export writes."""
    return layer.weight_quantizer.codes_of(layer.weight)


def freeze_codes(model: nn.Module) -> list[torch.Tensor]:
    """Freeze every parameter but the weight step sizes; returns those (one ``amax`` per quantized layer, or its
    ``interval_amax`` [K, C] where the model holds weight scale sets)."""
    layers = weight_layers(model)
    if not layers:
        raise UsageError(
            "the model has no quantized layers; scale-only fine-tuning needs a quantized student."
        )
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = []
    for name, layer in layers.items():
        q: TensorQuantizer = layer.weight_quantizer
        if q.block_size is not None:
            raise UsageError(
                f"{name}: block-quantized weights (--int4-block-size) have no per-output-channel scale to train; "
                "quantize the student per channel for scale-only fine-tuning."
            )
        if not q.is_calibrated:
            raise UsageError(f"{name}: the weight quantizer is not calibrated; run PTQ first.")
        q.register_buffer("codes", weight_codes(layer).detach().clone(), persistent=False)
        scales = q._buffers.get("interval_amax", q.amax)
        scales.requires_grad_(True)
        trainable.append(scales)
    log.info("froze the integer codes of %d layers; %d scale parameters trainable", len(layers),
             sum(p.numel() for p in trainable))  # fmt: skip
    return trainable


@torch.no_grad()
def materialize(model: nn.Module) -> int:
    """Write ``codes x scale`` into every frozen layer's float weight and drop the codes; returns the layer count."""
    n = 0
    for layer in weight_layers(model).values():
        q: TensorQuantizer = layer.weight_quantizer
        codes = q._buffers.get("codes")
        if codes is None:
            continue
        layer.weight.copy_((codes * q.channel_scale(codes.dim())).to(layer.weight.dtype))
        del q._buffers["codes"]
        q.amax.requires_grad_(False)
        q._buffers.get("interval_amax", q.amax).requires_grad_(False)
        n += 1
    return n
