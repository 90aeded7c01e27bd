"""Scale-only fine-tuning of a quantized student (PEQA): integer weight codes frozen, weight scales trained.

A model personalized this way is its base engine with other scale initializers (a patch: ``pqcad_deploy.patch``),
so the INT8 codes a user has already deployed stay byte-identical. :func:`freeze_codes` stores every weight
quantizer's codes exactly as the fake-quant forward and the exporter round them (``rint(w * (1/s))``, clamped) and
turns that quantizer's forward into ``codes x scale``: the per-output-channel step sizes (``amax``, or with weight
scale sets, S2, the K sets ``interval_amax``) are the only trainable tensors. :func:`materialize` writes
``codes x scale`` back into the float weights, after which the model is an ordinary student whose export rounds
back to the same codes (MCSU's per-input-channel scales are the exception: they fold into new codes).
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


def freeze_codes(model: nn.Module, input_scales: bool = False) -> list[torch.Tensor]:
    """Freeze every parameter but the weight step sizes; returns those (one ``amax`` per quantized layer, or its
    ``interval_amax`` [K, C] where the model holds weight scale sets). ``input_scales`` (MCSU) adds a trainable
    scale per input channel (``in_scale``, initialised to 1): ``codes x scale[out] x in_scale[in]``."""
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
        if input_scales:
            if "interval_amax" in q._buffers:
                raise UsageError(
                    "per-input-channel scales (MCSU) with one scale set per interval are not supported."
                )
            q.register_buffer(
                "in_scale", torch.ones(layer.weight.shape[1], device=q.amax.device), persistent=False
            )
            q.in_scale.requires_grad_(True)
            trainable.append(q.in_scale)
    log.info("froze the integer codes of %d layers; %d scale parameters trainable", len(layers),
             sum(p.numel() for p in trainable))  # fmt: skip
    return trainable


@torch.no_grad()
def materialize(model: nn.Module) -> int:
    """Write ``codes x scale`` (x ``in_scale``, MCSU) into every frozen layer's float weight and drop the codes;
    returns the layer count. With per-input-channel scales the weight no longer rounds back to the frozen codes:
    the export folds those scales into new codes (:func:`codes_changed` measures how many)."""
    n = 0
    for layer in weight_layers(model).values():
        q: TensorQuantizer = layer.weight_quantizer
        codes = q._buffers.get("codes")
        if codes is None:
            continue
        layer.weight.copy_(q(layer.weight).detach().to(layer.weight.dtype))  # codes x scale (x in_scale)
        q._buffers.pop("in_scale", None)
        del q._buffers["codes"]
        q.amax.requires_grad_(False)
        q._buffers.get("interval_amax", q.amax).requires_grad_(False)
        n += 1
    return n


def frozen_codes(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each frozen layer's codes by layer name (empty before :func:`freeze_codes` and after :func:`materialize`)."""
    return {
        n: m.weight_quantizer.codes
        for n, m in weight_layers(model).items()
        if m.weight_quantizer._buffers.get("codes") is not None
    }


@torch.no_grad()
def codes_changed(model: nn.Module, before: dict[str, torch.Tensor]) -> float:
    """Fraction of weights whose integer codes differ from ``before`` (layer name -> codes): what folding MCSU's
    input-channel scales into the codes costs the deployed INT8 weights."""
    layers = weight_layers(model)
    diff = sum(int((weight_codes(layers[n]) != c).sum()) for n, c in before.items())
    return diff / max(1, sum(c.numel() for c in before.values()))
