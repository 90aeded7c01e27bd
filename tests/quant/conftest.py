"""Tiny quantized UNets shared by the quant tests."""

from __future__ import annotations

import warnings

import pytest
import torch

from pqcad_deploy.denoiser import UNetWrapper
from pqcad_deploy.quant import QuantConfig, calibrate, quantize_model
from pqcad_deploy.zoo import build_model, example_inputs, get_spec

warnings.filterwarnings("ignore", category=FutureWarning)


def make_quantized(name: str, cfg: QuantConfig, method: str | None = "maxabs", batches: int = 2):
    """(wrapper, spec, inputs): a tiny UNet quantized with ``cfg`` and, unless method is None, calibrated."""
    spec = get_spec(name)
    model = build_model(spec, seed=0).eval()
    wrapper = UNetWrapper(model)
    quantize_model(wrapper, cfg)
    inputs = example_inputs(spec, 2)
    if method is not None:

        def loop(m):
            g = torch.Generator().manual_seed(1)
            for _ in range(batches):
                feed = dict(inputs)
                feed["sample"] = torch.randn(inputs["sample"].shape, generator=g)
                m(**feed)

        calibrate(wrapper, loop, method)
    return wrapper, spec, inputs


@pytest.fixture(params=["tiny-unet", "tiny-unet-cond"])
def unet_name(request):
    return request.param


@pytest.fixture(params=["tensorrt", "onnxruntime"])
def target(request):
    return request.param


@pytest.fixture
def quantized():
    """Factory fixture: ``quantized(name, cfg, method="maxabs")`` -> (wrapper, spec, inputs)."""
    return make_quantized
