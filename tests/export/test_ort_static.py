"""ORT quantize_static baseline on a two-Conv FP32 graph built with onnx.helper, and feeds from a calibration set."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pqcad_deploy.calibset import CalibSet
from pqcad_deploy.denoiser import COND, OUTPUT_NAME, SAMPLE, TIMESTEP
from pqcad_deploy.export import ExportError, ort_quantize_static
from pqcad_deploy.export.ort_static import calib_feeds
from pqcad_deploy.runtime.backends.ort_backend import OrtRunner


@pytest.fixture
def fp32_onnx(tmp_path):
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((1, 4, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", [SAMPLE, "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], [OUTPUT_NAME], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(SAMPLE, TensorProto.FLOAT, ["B", 1, 8, 8])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["B", 1, 8, 8])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "fp32.onnx"
    onnx.save(model, path)
    return path


def _run(path, x):
    with OrtRunner(path) as runner:
        return runner.infer({SAMPLE: torch.from_numpy(x)})[OUTPUT_NAME].numpy()


def test_quantizes_every_conv_and_stays_close_to_fp32(fp32_onnx, tmp_path):
    rng = np.random.default_rng(1)
    feeds = [{SAMPLE: rng.standard_normal((2, 1, 8, 8)).astype(np.float32)} for _ in range(4)]
    out = ort_quantize_static(fp32_onnx, tmp_path / "int8.onnx", feeds)
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("Conv") == 2 and ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4
    x = feeds[0][SAMPLE]
    ref, got = _run(fp32_onnx, x), _run(out, x)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.05
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp files gone


def test_failure_is_an_export_error_and_leaves_no_file(fp32_onnx, tmp_path):
    bad = [{"not_an_input": np.zeros((1, 1, 8, 8), np.float32)}]
    with pytest.raises(ExportError, match="quantize_static failed"):
        ort_quantize_static(fp32_onnx, tmp_path / "int8.onnx", bad)
    assert not (tmp_path / "int8.onnx").exists()


def test_calib_feeds_use_the_graph_input_names():
    n = 5
    cs = CalibSet(
        x_t=torch.randn(n, 1, 8, 8, dtype=torch.float16),
        t=torch.arange(n),
        eps_fp=torch.zeros(n, 1, 8, 8),
        x_next=torch.zeros(n, 1, 8, 8),
        x_next2=torch.zeros(n, 1, 8, 8),
        alpha_t=torch.ones(n),
        alpha_next2=torch.ones(n),
        cond=torch.randn(n, 3, 4),
    )
    feeds = calib_feeds(cs, batch_size=2)
    assert [f[SAMPLE].shape[0] for f in feeds] == [2, 2, 1]
    assert set(feeds[0]) == {SAMPLE, TIMESTEP, COND}
    assert feeds[0][SAMPLE].dtype == np.float32 and feeds[0][TIMESTEP].dtype == np.int64
    assert len(calib_feeds(cs, batch_size=2, max_batches=1)) == 1
