"""Quantized drop-in layers and the type registry ``quantize_model`` swaps through.

``QuantConv2d``/``QuantLinear`` subclass the float layers and reuse their ``weight``/``bias`` parameters, so
state_dict keys of the float model are unchanged and only ``*_quantizer.*`` keys are added.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import QuantConfig
from .quantizer import TensorQuantizer


class _QuantMixin:
    """Shared forward: input quantizer -> float op on fake-quantized weight -> optional output quantizer.

    ``output_quantizer`` is the ORT output Q (DQ->op->Q unit) or, on a TensorRT ``conv_shortcut``, the Q on
    the skip input of the residual Add.
    """

    weight_quantizer: TensorQuantizer
    input_quantizer: TensorQuantizer | None
    output_quantizer: TensorQuantizer | None

    def _attach(self, cfg: QuantConfig, weight_quantizer: TensorQuantizer, weight_only: bool = False) -> None:
        """``weight_only``: no activation quantizers at all (ORT's MatMulNBits form: float in, float out)."""
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = (
            None if weight_only else TensorQuantizer(cfg.act_bits, uint8_export=cfg.act_uint8, kind="input")
        )
        self.output_quantizer = (
            TensorQuantizer(cfg.act_bits, uint8_export=cfg.act_uint8, kind="output")
            if cfg.output_quantizers and not weight_only
            else None
        )

    def _quant_forward(self, x: torch.Tensor, op, skip_input_quant: bool) -> torch.Tensor:  # noqa: ANN001
        if not skip_input_quant and self.input_quantizer is not None:
            x = self.input_quantizer(x)
        y = op(x, self.weight_quantizer(self.weight), self.bias)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        return y


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """Conv2d with per-output-channel (axis 0) weight and per-tensor input fake quantization."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, cfg: QuantConfig) -> QuantConv2d:
        q = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        q.weight = conv.weight
        q.bias = conv.bias
        q.train(conv.training)
        q._attach(cfg, q.make_weight_quantizer(cfg).to(conv.weight.device))
        q.to(conv.weight.device)
        return q

    def make_weight_quantizer(self, cfg: QuantConfig) -> TensorQuantizer:
        """Per-output-channel at every bit-width: 4-bit conv weights travel in an INT8 container at export
        (TensorRT has no INT4 convolution)."""
        return TensorQuantizer(cfg.effective_weight_bits(), axis=0, channels=self.out_channels, kind="weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._quant_forward(x, self._conv_forward, skip_input_quant=False)

    def forward_prequantized(self, x: torch.Tensor) -> torch.Tensor:
        """Forward for an input already fake-quantized by this layer's (shared) input quantizer."""
        return self._quant_forward(x, self._conv_forward, skip_input_quant=True)


class QuantLinear(_QuantMixin, nn.Linear):
    """Linear with per-output-channel weight (or per-block along in_features at <=4 bits) quantization."""

    @classmethod
    def from_float(cls, lin: nn.Linear, cfg: QuantConfig) -> QuantLinear:
        q = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
        q.weight = lin.weight
        q.bias = lin.bias
        q.train(lin.training)
        q._attach(cfg, q.make_weight_quantizer(cfg), weight_only=cfg.weight_only_linear)
        q.to(lin.weight.device)
        return q

    def make_weight_quantizer(self, cfg: QuantConfig) -> TensorQuantizer:
        """Per-output-channel, or blocks along in_features at <= 4 bits when the config asks for them (a layer
        whose width the block does not divide stays per-channel, which is always valid)."""
        block = cfg.int4_block_size if cfg.weight_bits <= 4 else None
        if block is not None and self.in_features % block:
            block = None
        return TensorQuantizer(
            cfg.effective_weight_bits(),
            axis=0,
            channels=self.out_features,
            block_size=block,
            block_dim=self.in_features if block else None,
            kind="weight",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._quant_forward(x, nn.functional.linear, skip_input_quant=False)

    def forward_prequantized(self, x: torch.Tensor) -> torch.Tensor:
        """Forward for an input already fake-quantized by this layer's (shared) input quantizer; the
        attention processor uses it so q/k/v share one Q/DQ in the exported graph."""
        return self._quant_forward(x, nn.functional.linear, skip_input_quant=True)


# Float type -> quantized wrapper. Subclasses (e.g. diffusers' deprecated LoRACompatibleConv, unused by the
# 0.42 UNets) resolve through their MRO; LoRA branches are not carried over.
QUANT_MODULES: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


def quant_class_for(module: nn.Module) -> type[nn.Module] | None:
    if isinstance(module, tuple(set(QUANT_MODULES.values()))):
        return None
    for base in type(module).__mro__:
        if base in QUANT_MODULES:
            return QUANT_MODULES[base]
    return None
