"""Tiny models and a tiny FP32 ONNX export shared by the runtime tests."""

from __future__ import annotations

import warnings

import pytest
import torch

from pqcad_deploy.denoiser import UNetWrapper
from pqcad_deploy.zoo import build_model, example_inputs, get_spec


def export_fp32(name: str, path) -> None:
    """TorchScript export of a zoo model with a dynamic batch (stand-in for pqcad-export in these tests)."""
    spec = get_spec(name)
    model = UNetWrapper(build_model(name, seed=0).eval())
    feed = example_inputs(spec, batch=1)
    names = list(feed)
    dyn = {n: {0: "B"} for n in names} | {"out_sample": {0: "B"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(feed.values()),
            str(path),
            input_names=names,
            output_names=["out_sample"],
            dynamic_axes=dyn,
            opset_version=17,
            dynamo=False,
        )


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_fp32("tiny-unet", path)
    return path


@pytest.fixture(scope="session")
def tiny_cond_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny_cond.onnx"
    export_fp32("tiny-unet-cond", path)
    return path
