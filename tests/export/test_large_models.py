"""Models over protobuf's 2 GB limit: size counting and type inference must not serialize the weights, and the
file must be written with external data.

A real >2 GB graph is too big for CI, so the limit is patched down to a few bytes; the code path is the same.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from pqcad_deploy.export import pipeline
from pqcad_deploy.export.onnx_export import infer_types, initializer_bytes
from pqcad_deploy.export.pipeline import ExportOptions, export
from pqcad_deploy.loading import open_model


def _fp16_matmul_model() -> ir.Model:
    w = numpy_helper.from_array(np.ones((64, 32), np.float16), "w")  # 4 KB: handed to ONNX as a typed input
    small = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Reshape", ["y", "shape"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT16, None)],
        [w, small],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))


def test_types_inferred_without_the_weights_and_model_left_intact():
    m = _fp16_matmul_model()
    infer_types(m)
    assert m.graph.node(0).outputs[0].dtype == ir.DataType.FLOAT16
    assert [v.name for v in m.graph.inputs] == ["x"]
    np.testing.assert_array_equal(
        m.graph.initializers["w"].const_value.numpy(), np.ones((64, 32), np.float16)
    )
    assert initializer_bytes(m) == 64 * 32 * 2 + 2 * 8


def test_external_data_chosen_above_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "TWO_GB_PROTO", 1024)
    out = tmp_path / "u.onnx"
    rep = export(
        open_model("tiny-unet", random_weights=True), out, ExportOptions(precision="fp16", parity_samples=2)
    )
    data = tmp_path / "u.onnx.data"
    assert rep["files"]["external_data"] == data.name and data.is_file()
    assert rep["parity"]["passed"] and rep["checker"].startswith("passed")
    reloaded = ir.load(out)
    weights = [v.const_value for v in reloaded.graph.initializers.values() if v.const_value.nbytes > 1024]
    assert weights and all(isinstance(t, ir.ExternalTensor) for t in weights)
    assert out.stat().st_size < data.stat().st_size
