import logging

import pytest

from pqcad_deploy.quant import QUANT_CONFIG_VERSION, QuantConfig, QuantConfigError


def test_defaults_and_round_trip():
    cfg = QuantConfig(target="onnxruntime", weight_bits=4, int4_block_size=32, exclude=["*attn*"])
    d = cfg.to_dict()
    assert d["version"] == QUANT_CONFIG_VERSION
    assert QuantConfig.from_dict(d) == cfg
    assert cfg.exclude == ("*attn*",)  # lists normalised to tuples: frozen and hashable
    assert hash(cfg) == hash(QuantConfig.from_dict(d))
    assert QuantConfig().target == "tensorrt"


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"target": "tflite"}, "target='tflite'"),
        ({"weight_bits": 16}, "weight_bits=16"),
        ({"weight_bits": True}, "weight_bits=True"),
        ({"act_bits": 4}, "act_bits=4"),
        ({"int4_block_size": 48}, "int4_block_size=48"),
        ({"calib_method": "kl"}, "calib_method='kl'"),
        ({"weight_granularity": "per_tensor"}, "weight_granularity"),
        ({"act_granularity": "per_channel"}, "act_granularity"),
        ({"percentile": 20.0}, "percentile"),
        ({"include": [""]}, "include"),
        ({"quantize_conv_in": "yes"}, "quantize_conv_in"),
        ({"version": 99}, "version 99"),
    ],
)
def test_invalid_values_name_the_problem(kwargs, needle):
    with pytest.raises(QuantConfigError) as e:
        QuantConfig(**kwargs)
    assert needle in str(e.value)


def test_low_bits_warn(caplog):
    with caplog.at_level(logging.WARNING):
        QuantConfig(weight_bits=3)
    assert "no engine" in caplog.text


def test_from_dict_refuses_unknown_version_and_keys():
    d = QuantConfig().to_dict()
    with pytest.raises(QuantConfigError, match="version"):
        QuantConfig.from_dict({**d, "version": 2})
    with pytest.raises(QuantConfigError, match="version"):
        QuantConfig.from_dict({k: v for k, v in d.items() if k != "version"})
    with pytest.raises(QuantConfigError, match="unknown keys.*bogus"):
        QuantConfig.from_dict({**d, "bogus": 1})


def test_selection_wildcards_and_conv_switches():
    cfg = QuantConfig()
    assert not cfg.selects("unet.conv_in")
    assert not cfg.selects("unet.conv_out")
    assert not cfg.selects("unet.time_embedding.linear_1")
    assert not cfg.selects("unet.down_blocks.0.resnets.0.time_emb_proj")
    assert cfg.selects("unet.down_blocks.0.resnets.0.conv1")
    cfg2 = QuantConfig(quantize_conv_in=True, include=["*resnets*", "*conv_in"], exclude=[])
    assert cfg2.selects("conv_in") and cfg2.selects("down_blocks.0.resnets.0.time_emb_proj")
    assert not cfg2.selects("down_blocks.1.attentions.0.to_q")


def test_reduce_range_auto_per_target():
    assert QuantConfig(target="onnxruntime").effective_weight_bits() == 7
    assert QuantConfig(target="tensorrt").effective_weight_bits() == 8
    assert QuantConfig(target="onnxruntime", weight_reduce_range=False).effective_weight_bits() == 8
    assert QuantConfig(target="onnxruntime").effective_weight_bits(4) == 4
    with pytest.raises(QuantConfigError, match="weight_reduce_range"):
        QuantConfig(weight_reduce_range="auto")
