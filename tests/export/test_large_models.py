"""Models over protobuf's 2 GB limit: size counting and type inference must not serialize the whole proto.

A real >2 GB graph is too big for CI, so the limit is patched down to a few bytes; the code path is the same.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pqcad_deploy.export import onnx_export


def _fp16_matmul_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((64, 32), np.float16), "w")
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
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_model_bytes_matches_bytesize_below_limit():
    m = _fp16_matmul_model()
    assert onnx_export.model_bytes(m) == m.ByteSize()


def test_types_inferred_on_weightless_copy_above_limit(monkeypatch):
    m = _fp16_matmul_model()
    before = m.SerializeToString()
    monkeypatch.setattr(onnx_export, "TWO_GB_PROTO", 16)
    light = onnx_export._weightless(m, keep_below=64)
    assert [t.name for t in light.graph.initializer] == ["shape"]  # small constants keep their values
    assert "w" in {i.name for i in light.graph.input}
    types = onnx_export.tensor_types(m)
    assert types["y"] == TensorProto.FLOAT16
    assert m.SerializeToString() == before  # the original graph is left intact
