"""TensorRT runner/builder: everything that does not need TensorRT is tested here; the rest is gated."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pqcad_deploy.runtime.backends.base import MissingBackendError
from pqcad_deploy.runtime.backends.trt_backend import TrtRunner, shape_key, torch_dtype

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT = "TensorRT is not installable in this environment (design.md section 7)"


class _FakeDT:
    def __init__(self, name):
        self.name = name


def test_dtype_map():
    assert torch_dtype(_FakeDT("HALF")) is torch.float16
    assert torch_dtype("DataType.INT64") is torch.int64
    with pytest.raises(TypeError, match="no torch equivalent"):
        torch_dtype(_FakeDT("FP4"))


def test_shape_keys():
    feed = {"sample": torch.zeros(2, 1, 8, 8), "timestep": torch.zeros(2, dtype=torch.int64)}
    assert shape_key(feed, ["sample", "timestep"]) == (("sample", (2, 1, 8, 8)), ("timestep", (2,)))


def test_missing_engine_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="pqcad-build"):
        TrtRunner(tmp_path / "none.plan")


@pytest.mark.skipif(HAS_TRT, reason="covers machines without TensorRT")
def test_activate_without_tensorrt_names_the_install(tmp_path):
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(MissingBackendError, match="pip install tensorrt"):
        TrtRunner(plan).__enter__()


@pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()), reason=NO_TRT + " or no GPU")
def test_trt_build_and_run_matches_torch(tiny_onnx, tmp_path):
    from pqcad_deploy.runtime.build_cli import build_parser
    from pqcad_deploy.runtime.build_config import plan_from_args
    from pqcad_deploy.runtime.trt_builder import build_engine
    from pqcad_deploy.zoo import build_model, example_inputs, get_spec

    args = build_parser().parse_args(
        [
            "--onnx",
            str(tiny_onnx),
            "--saveEngine",
            str(tmp_path / "t.plan"),
            "--optShapes",
            "sample:2x1x16x16,timestep:2",
            "--exportLayerInfo",
            str(tmp_path / "l.json"),
            "--skipInference",
        ]
    )
    report = build_engine(plan_from_args(args))
    assert report["audit"]["compute_layers"] > 0
    spec = get_spec("tiny-unet")
    feed = example_inputs(spec, batch=2, device="cuda")
    ref = build_model(spec).eval().cuda()(feed["sample"], feed["timestep"]).sample
    for graph in (False, True):
        with TrtRunner(tmp_path / "t.plan", cuda_graph=graph) as r:
            out = r.infer(feed)["out_sample"]
            out2 = r.infer(feed)["out_sample"]
        torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(out2, out)
