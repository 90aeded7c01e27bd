"""Where quantizers go, per target (the README's quantization-forms table): ``quantize_model`` and the attention processor.

TensorRT form: Q/DQ on the activation and weight inputs of every selected Conv/Linear; a quantizer on the
skip input of each residual Add (ResnetBlock2D: after ``conv_shortcut``, or in its empty slot; Attention with
``residual_connection``); one input quantizer shared by to_q/to_k/to_v (to_k/to_v for cross-attention).

ORT form: the same plus an output quantizer on every quantized layer, so ORT sees DQ->op->Q units and fuses
QLinearConv/QGemm (measured on this project's UNets: input-only QDQ runs 1.5-1.7x slower than ORT FP32, DQ->op->Q units 1.6x faster). No skip quantizers: ORT keeps the Add in float either way.
8-bit weights use the 7-bit grid by default there (``QuantConfig.reduce_range``: ORT's x86 U8S8 kernels
saturate otherwise). At <= 4-bit weights its Linear layers are weight-only (``QuantConfig.weight_only_linear``: no
activation Q/DQ), the form ORT runs as MatMulNBits; with a Q/DQ'd activation ORT 1.32 keeps an INT4 MatMul in float.

Decoder skip concats (``torch.cat([h, res_skip])`` in up blocks) are left in float, on purpose. Their output
feeds GroupNorm (float) and the 1x1 ``conv_shortcut``, whose single per-tensor input quantizer already gives
both concat inputs the same scale where an INT8 kernel consumes them; TensorRT propagates that Q backward
through the concat. Quantizing the concat inputs themselves would force one scale on two tensors whose
ranges differ a lot (Q-Diffusion's "shortcut splitting" observation) and would buy no INT8 kernel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PQCADError
from .config import QuantConfig
from .modules import QuantConv2d, QuantLinear, quant_class_for
from .quantizer import TensorQuantizer

log = logging.getLogger(__name__)

CONFIG_ATTR = "_pqcad_quant_config"


class QuantPlacementError(PQCADError, RuntimeError):
    """The model cannot be quantized as asked (already quantized, nothing selected, ...)."""


def quantize_model(model: nn.Module, cfg: QuantConfig | None = None) -> nn.Module:
    """Swap selected Conv2d/Linear for quantized wrappers in place and add target-specific quantizers.

    Works on a diffusers UNet or on ``UNetWrapper``. Quantizers start uncalibrated: run ``calibrate`` (or load
    a student checkpoint) before using the model for anything but calibration.
    """
    cfg = cfg or QuantConfig()
    if any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules()):
        raise QuantPlacementError("Model is already quantized; quantize a fresh float model.")
    targets = [(n, m) for n, m in model.named_modules() if n and quant_class_for(m) is not None]
    swapped = 0
    for name, module in targets:
        if not cfg.selects(name):
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, quant_class_for(module).from_float(module, cfg))
        swapped += 1
    if swapped == 0:
        raise QuantPlacementError(
            f"No Conv2d/Linear matched include={list(cfg.include)} exclude={list(cfg.exclude)}; "
            "check the wildcards against model.named_modules()."
        )
    n_skip = _place_residual_quantizers(model, cfg) if cfg.target == "tensorrt" else 0
    n_attn = _place_attention(model, cfg)
    setattr(model, CONFIG_ATTR, cfg)
    # Quantizers are built on the CPU; put them where the model's weights live (a GPU teacher stays on the GPU).
    ref = next(model.parameters(), None)
    if ref is not None:
        for _, q in iter_quantizers(model):
            q.to(ref.device)
    log.info(
        "quantized %d layers for %s (W%dA%d), %d residual skip quantizers, %d attention blocks",
        swapped,
        cfg.target,
        cfg.weight_bits,
        cfg.act_bits,
        n_skip,
        n_attn,
    )
    return model


def get_quant_config(model: nn.Module) -> QuantConfig | None:
    """The QuantConfig ``quantize_model`` applied (None for a float model); found on the model or, when the
    model was wrapped after quantization (``UNetWrapper``), on a submodule."""
    for m in model.modules():
        cfg = getattr(m, CONFIG_ATTR, None)
        if cfg is not None:
            return cfg
    return None


def set_quant_config(model: nn.Module, cfg: QuantConfig) -> None:
    """Record ``cfg`` as the config the model's quantizers follow (where ``quantize_model`` stored the first)."""
    for m in model.modules():
        if getattr(m, CONFIG_ATTR, None) is not None:
            setattr(m, CONFIG_ATTR, cfg)
            return
    setattr(model, CONFIG_ATTR, cfg)


def iter_quantizers(model: nn.Module) -> Iterator[tuple[str, TensorQuantizer]]:
    """Every distinct quantizer once (shared q/k/v quantizers appear under their first name)."""
    for name, m in model.named_modules():
        if isinstance(m, TensorQuantizer):
            yield name, m


def _residual_quantizer() -> TensorQuantizer:
    return TensorQuantizer(8, kind="skip")


def _place_residual_quantizers(model: nn.Module, cfg: QuantConfig) -> int:
    """Q on the skip input of ResnetBlock2D's ``input_tensor + hidden_states`` (TensorRT fuses Conv+Add)."""
    from diffusers.models.resnet import ResnetBlock2D

    n = 0
    for name, block in model.named_modules():
        if not isinstance(block, ResnetBlock2D):
            continue
        sc = block.conv_shortcut
        if sc is None:
            # The forward calls conv_shortcut only when it is not None: a quantizer in the slot is the skip Q.
            block.conv_shortcut = _residual_quantizer()
        elif isinstance(sc, QuantConv2d):
            sc.output_quantizer = _residual_quantizer()
        else:
            log.info("%s.conv_shortcut is kept in float: its residual Add input stays in float too", name)
            continue
        n += 1
    return n


def _place_attention(model: nn.Module, cfg: QuantConfig) -> int:
    from diffusers.models.attention_processor import Attention

    n = 0
    for _, attn in model.named_modules():
        if not isinstance(attn, Attention):
            continue
        q, k, v = attn.to_q, attn.to_k, attn.to_v
        if attn.is_cross_attention:
            groups = [(k, v)]
        else:
            groups = [(q, k, v)]
        for group in groups:
            if all(isinstance(m, QuantLinear) for m in group):
                shared = group[0].input_quantizer
                for m in group[1:]:
                    m.input_quantizer = shared
        if cfg.target == "tensorrt" and attn.residual_connection:
            attn.residual_quantizer = _residual_quantizer()
        attn.set_processor(QuantAttnProcessor())
        n += 1
    return n


def _project(x: torch.Tensor, *layers: nn.Module) -> list[torch.Tensor]:
    """Apply layers sharing one input quantizer with a single fake quant (one Q/DQ in the exported graph)."""
    iq = getattr(layers[0], "input_quantizer", None)
    if iq is not None and all(getattr(m, "input_quantizer", None) is iq for m in layers):
        xq = iq(x)
        return [m.forward_prequantized(xq) for m in layers]
    return [m(x) for m in layers]


class QuantAttnProcessor:
    """diffusers' scaled-dot-product attention with quantization points: shared q/k/v input quantizer and the
    residual skip quantizer. Softmax and the two attention BMMs stay in float (TensorRT fuses INT8 MHA only
    for short sequences; TensorRT fuses INT8 multi-head attention only for short sequences)."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, seq_len, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        if encoder_hidden_states is None:
            query, key, value = _project(hidden_states, attn.to_q, attn.to_k, attn.to_v)
        else:
            if attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            (query,) = _project(hidden_states, attn.to_q)
            key, value = _project(encoder_hidden_states, attn.to_k, attn.to_v)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            rq = getattr(attn, "residual_quantizer", None)
            if rq is not None:
                residual = rq(residual)
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
