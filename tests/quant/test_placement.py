import collections

import pytest
import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D

from pqcad_deploy.quant import (
    QuantConfig,
    QuantConv2d,
    QuantLinear,
    QuantPlacementError,
    TensorQuantizer,
    get_quant_config,
    iter_quantizers,
    quantize_model,
)
from pqcad_deploy.zoo import build_model

# (quantized layers, attention blocks, self-attention blocks, ResnetBlock2D) per tiny model
EXPECTED = {"tiny-unet": (38, 4, 4, 8), "tiny-unet-cond": (71, 8, 4, 8)}


def _counts(model):
    return collections.Counter(q.kind for _, q in iter_quantizers(model))


def test_placement_counts_per_target(unet_name, target):
    model = build_model(unet_name)
    n_float = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    quantize_model(model, QuantConfig(target=target))
    layers, n_attn, n_self, n_res = EXPECTED[unet_name]
    n_cross = n_attn - n_self
    quant_layers = [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert len(quant_layers) == layers
    assert n_float - layers > 0  # conv_in, conv_out and the time embedding stay float by default
    assert isinstance(model.conv_in, torch.nn.Conv2d) and not isinstance(model.conv_in, QuantConv2d)
    assert not isinstance(model.time_embedding.linear_1, QuantLinear)
    c = _counts(model)
    assert c["weight"] == layers
    # q/k/v share one input quantizer (two saved per self-attention); k/v share one in cross-attention
    assert c["input"] == layers - 2 * n_self - n_cross
    if target == "tensorrt":
        residual_attn = sum(isinstance(m, Attention) and m.residual_connection for m in model.modules())
        assert c["skip"] == n_res + residual_attn and c["output"] == 0
    else:
        assert c["output"] == layers and c["skip"] == 0
        assert all(m.input_quantizer.uint8_export for m in quant_layers)
    assert get_quant_config(model).target == target


def test_shared_qkv_quantizer_is_one_module(unet_name):
    model = build_model(unet_name)
    quantize_model(model, QuantConfig())
    for m in model.modules():
        if isinstance(m, Attention):
            if m.is_cross_attention:
                assert m.to_k.input_quantizer is m.to_v.input_quantizer
                assert m.to_q.input_quantizer is not m.to_k.input_quantizer
            else:
                assert m.to_q.input_quantizer is m.to_k.input_quantizer is m.to_v.input_quantizer


def test_shared_quantizer_applied_once_per_forward(quantized):
    model, spec, inputs = quantized("tiny-unet", QuantConfig())
    attn = next(m for m in model.modules() if isinstance(m, Attention))
    calls = []
    attn.to_q.input_quantizer.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(**inputs)
    assert len(calls) == 1


def test_residual_skip_quantizers_tensorrt():
    model = build_model("tiny-unet")
    quantize_model(model, QuantConfig(target="tensorrt"))
    for m in model.modules():
        if isinstance(m, ResnetBlock2D):
            sc = m.conv_shortcut
            if isinstance(sc, QuantConv2d):
                assert isinstance(sc.output_quantizer, TensorQuantizer) and sc.output_quantizer.kind == "skip"
            else:
                assert isinstance(sc, TensorQuantizer) and sc.kind == "skip"
        if isinstance(m, Attention) and m.residual_connection:
            assert m.residual_quantizer.kind == "skip"


def test_decoder_concat_left_float_and_skip_quantizers_reached(quantized):
    """Up-block concats get no quantizer of their own; the concat output's only Q is the 1x1 shortcut's input
    quantizer (one scale for both halves). Calibration would raise if any quantizer were never reached."""
    model, _, _ = quantized("tiny-unet", QuantConfig())
    for up in model.unet.up_blocks:
        for res in up.resnets:
            assert isinstance(res.conv_shortcut, QuantConv2d)  # concat doubles channels -> 1x1 shortcut
            assert res.conv_shortcut.input_quantizer.is_calibrated
            names = {n for n, _ in res.named_children()}
            assert not any("concat" in n for n in names)


def test_quantized_close_to_float(unet_name, target, quantized):
    model, spec, inputs = quantized(unet_name, QuantConfig(target=target))
    float_model = build_model(unet_name).eval()
    from pqcad_deploy.denoiser import UNetWrapper

    with torch.no_grad():
        ref = UNetWrapper(float_model)(**inputs)
        out = model(**inputs)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.15


def test_state_dict_keeps_float_keys_and_refuses_double_quantize():
    model = build_model("tiny-unet")
    float_keys = set(model.state_dict())
    quantize_model(model, QuantConfig())
    keys = set(model.state_dict())
    assert float_keys <= keys
    assert all(".amax" in k or ".num_bits" in k or ".calibrated" in k for k in keys - float_keys)
    with pytest.raises(QuantPlacementError, match="already quantized"):
        quantize_model(model, QuantConfig())
    with pytest.raises(QuantPlacementError, match="No Conv2d/Linear matched"):
        quantize_model(build_model("tiny-unet"), QuantConfig(include=["nothing*"]))


def test_int4_block_only_on_linear():
    model = build_model("tiny-unet-cond")
    quantize_model(model, QuantConfig(weight_bits=4, int4_block_size=16))
    lins = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert all(m.weight_quantizer.block_size == 16 for m in lins if m.in_features % 16 == 0)
    assert all(m.weight_quantizer.block_size is None for m in model.modules() if isinstance(m, QuantConv2d))
