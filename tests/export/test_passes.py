"""Each Q/DQ pass on a graph of one to a few nodes: build it with onnx.helper, run the pass, assert the exact
result (the Polygraphy style). End-to-end exports are in test_export.py."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pqcad_deploy.export.int4 import rewrite_int4
from pqcad_deploy.export.onnx_export import (
    ExportError,
    eliminate_identities,
    fix_qdq_dtypes,
    fold_constants,
    fold_weight_quantizers,
    forget_inferred_types,
    infer_types,
    qdq_counts,
    remove_qdq_casts,
    set_opset,
)


def _model(nodes, inputs, outputs, inits=(), opset=17) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 10 if opset >= 21 else 8
    return ir.from_proto(proto)


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def _only(model: ir.Model, op_type: str) -> ir.Node:
    (node,) = [n for n in model.graph if n.op_type == op_type]
    return node


def _check(model: ir.Model) -> onnx.ModelProto:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _run(proto: onnx.ModelProto, feed: dict) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def test_fold_weight_quantizers_rounds_as_torch_does():
    # -12.15 / 0.1 rounds to -121 (ONNX QuantizeLinear divides); torch multiplies by 1/0.1 and gets -122.
    w = np.array([[-12.15, 0.04, 3.0], [1.25, -0.5, 12.7]], np.float32)
    s = np.array([0.1, 0.1], np.float32)
    m = _model(
        [
            helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["wq"], axis=0),
            helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["y"], axis=0),
        ],
        [],
        [_vi("y", TensorProto.FLOAT, [2, 3])],
        [_init("w", w), _init("s", s), _init("zp", np.zeros(2, np.int8))],
    )
    assert fold_weight_quantizers(m) == 1
    assert _ops(m) == ["DequantizeLinear"]
    codes = _only(m, "DequantizeLinear").inputs[0]
    assert codes.name == "w_quantized" and codes.const_value.dtype == ir.DataType.INT8
    ref = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(w), torch.from_numpy(s), torch.zeros(2, dtype=torch.int32), 0, -128, 127
    )
    np.testing.assert_array_equal(codes.const_value.numpy(), np.rint(ref.numpy() / s[:, None]))
    assert codes.const_value.numpy()[0, 0] == -122
    assert set(m.graph.initializers) == {"w_quantized", "s", "zp"}  # the float weight is gone


def test_eliminate_identities_feeds_zero_points_from_the_constant():
    m = _model(
        [
            helper.make_node("Identity", ["zp"], ["zp_copy"]),
            helper.make_node("QuantizeLinear", ["x", "s", "zp_copy"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "zp_copy"], ["y"]),
        ],
        [_vi("x", TensorProto.FLOAT, [4])],
        [_vi("y", TensorProto.FLOAT, [4])],
        [_init("s", np.float32(0.1)), _init("zp", np.int8(0))],
    )
    assert eliminate_identities(m) == 1
    assert _ops(m) == ["QuantizeLinear", "DequantizeLinear"]
    assert all(n.inputs[2].name == "zp" and n.inputs[2].is_initializer() for n in m.graph)


def test_fold_constants_reaches_whole_weights_and_keeps_qdq():
    # The 4-bit grid clamp on a 128x128 weight (16,384 values: above onnxscript's default folding limits).
    w = np.linspace(-2, 2, 128 * 128, dtype=np.float32).reshape(128, 128)
    m = _model(
        [
            helper.make_node("Constant", [], ["hi"], value=_init("hi_t", np.float32(0.7))),
            helper.make_node("Min", ["w", "hi"], ["w_lo"]),
            helper.make_node("Max", ["w_lo", "lo"], ["w_clamped"]),
            helper.make_node("QuantizeLinear", ["w_clamped", "s", "zp"], ["wq"]),
            helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["y"]),
        ],
        [],
        [_vi("y", TensorProto.FLOAT, [128, 128])],
        [_init("w", w), _init("lo", np.float32(-0.8)), _init("s", np.float32(0.1)), _init("zp", np.int8(0))],
    )
    assert fold_constants(m) == 3  # Constant lifted, Min and Max evaluated
    assert _ops(m) == ["QuantizeLinear", "DequantizeLinear"]
    folded = _only(m, "QuantizeLinear").inputs[0]
    assert folded.is_initializer()
    np.testing.assert_array_equal(folded.const_value.numpy(), np.clip(w, np.float32(-0.8), np.float32(0.7)))


def _fp16_qdq_chain(n_pairs: int) -> ir.Model:
    """x(fp16) -> [Cast(fp32) -> Q -> DQ -> Cast(fp16)] * n_pairs -> y: how torch traces FP16 fake-quant.
    Two pairs back to back are the ORT target's output Q/DQ feeding the next layer's input Q/DQ."""
    nodes, x = [], "x"
    for k in range(n_pairs):
        nodes += [
            helper.make_node("Cast", [x], [f"x32_{k}"], to=TensorProto.FLOAT),
            helper.make_node("QuantizeLinear", [f"x32_{k}", "s", "zp"], [f"xq_{k}"]),
            helper.make_node("DequantizeLinear", [f"xq_{k}", "s", "zp"], [f"xdq_{k}"]),
            helper.make_node("Cast", [f"xdq_{k}"], [f"x16_{k}"], to=TensorProto.FLOAT16),
        ]
        x = f"x16_{k}"
    nodes.append(helper.make_node("Relu", [x], ["y"]))
    return _model(
        nodes,
        [_vi("x", TensorProto.FLOAT16, [4])],
        [_vi("y", TensorProto.FLOAT16, [4])],
        [_init("s", np.float32(0.1)), _init("zp", np.int8(0))],
        opset=19,
    )


def test_remove_qdq_casts_then_fp16_scales():
    m = _fp16_qdq_chain(1)
    infer_types(m)
    assert remove_qdq_casts(m) == 2
    assert _ops(m) == ["QuantizeLinear", "DequantizeLinear", "Relu"]
    q, dq = _only(m, "QuantizeLinear"), _only(m, "DequantizeLinear")
    assert q.inputs[0].name == "x" and _only(m, "Relu").inputs[0] is dq.outputs[0]
    assert fix_qdq_dtypes(m, "fp16") == 2
    assert q.inputs[1].name == dq.inputs[1].name == "s_float16"
    assert q.inputs[1].const_value.dtype == ir.DataType.FLOAT16
    assert "s" not in m.graph.initializers
    forget_inferred_types(m)
    _check(m)


def test_fp16_scales_follow_a_dq_feeding_the_next_q():
    """The DQ's output type changes with its scale, so the next Q must read it as FP16 too (a graph-as-exported
    type map would say FP32 and break strong typing)."""
    m = _fp16_qdq_chain(2)
    infer_types(m)
    remove_qdq_casts(m)
    assert _ops(m) == ["QuantizeLinear", "DequantizeLinear"] * 2 + ["Relu"]
    assert fix_qdq_dtypes(m, "fp16") == 4
    assert {n.inputs[1].const_value.dtype for n in m.graph if n.op_type != "Relu"} == {ir.DataType.FLOAT16}
    forget_inferred_types(m)
    proto = _check(m)
    x = np.array([-1.0, 0.04, 0.26, 3.0], np.float16)
    y = _run(proto, {"x": x})
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, [0.0, 0.0, 0.3, 3.0], atol=1e-3)  # FP16 scale 0.1 is 0.09998


def test_fp32_scales_stay():
    m = _model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["y"]),
        ],
        [_vi("x", TensorProto.FLOAT, [4])],
        [_vi("y", TensorProto.FLOAT, [4])],
        [_init("s", np.float32(0.1)), _init("zp", np.int8(0))],
    )
    assert remove_qdq_casts(m) == 0 and fix_qdq_dtypes(m, "fp32") == 0


def _linear_w4(codes: np.ndarray, scale: np.ndarray, opset: int = 21) -> ir.Model:
    """x @ Transpose(DQ(W int8 [N, K] per output channel)): a 4-bit Linear after weight folding."""
    n, k = codes.shape
    return _model(
        [
            helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["wdq"], axis=0),
            helper.make_node("Transpose", ["wdq"], ["wt"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "wt"], ["y"]),
        ],
        [_vi("x", TensorProto.FLOAT, [3, k])],
        [_vi("y", TensorProto.FLOAT, [3, n])],
        [_init("w", codes), _init("s", scale), _init("zp", np.zeros(n, np.int8))],
        opset=opset,
    )


def test_rewrite_int4_matmul_weight_is_transposed_int4():
    codes = np.array([[-8, 7, 1, 0], [3, -2, -1, 5], [0, 0, 7, -8], [6, -6, 2, 4]], np.int8)
    scale = np.array([0.5, 0.25, 2.0, 0.125], np.float32)
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 6
    m = _linear_w4(codes, scale)
    before = _run(ir.to_proto(m), {"x": x})
    assert rewrite_int4(m) == {"int4_matmul": 1, "int4_gemm": 0, "int8_container_conv": 0}
    assert _ops(m) == ["DequantizeLinear", "MatMul"]
    dq = _only(m, "DequantizeLinear")
    w, s, zp = dq.inputs
    assert w.name == "w_int4_T" and w.const_value.dtype == ir.DataType.INT4
    np.testing.assert_array_equal(w.const_value.numpy().astype(np.int8), codes.T)
    np.testing.assert_array_equal(s.const_value.numpy(), scale)
    assert zp.const_value.dtype == ir.DataType.INT4 and not zp.const_value.numpy().astype(np.int8).any()
    assert dq.attributes.get_int("axis") == 1 and "block_size" not in dq.attributes
    assert _only(m, "MatMul").inputs[1] is dq.outputs[0]
    proto = _check(m)
    np.testing.assert_array_equal(_run(proto, {"x": x}), before)


def test_rewrite_int4_refuses_a_4bit_weight_with_8bit_codes():
    codes = np.array([[-9, 7], [3, 2]], np.int8)
    with pytest.raises(ExportError, match=r"marked 4-bit.*\[-9, 7\]"):
        rewrite_int4(_linear_w4(codes, np.ones(2, np.float32)), eligible={"w"})
    m = _linear_w4(codes, np.ones(2, np.float32))
    assert rewrite_int4(m) == {"int4_matmul": 0, "int4_gemm": 0, "int8_container_conv": 0}  # left as INT8


def test_rewrite_int4_keeps_conv_weights_in_int8():
    codes = np.ones((2, 2, 1, 1), np.int8)
    m = _model(
        [
            helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["wdq"], axis=0),
            helper.make_node("Conv", ["x", "wdq"], ["y"]),
        ],
        [_vi("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [_vi("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [_init("w", codes), _init("s", np.ones(2, np.float32)), _init("zp", np.zeros(2, np.int8))],
        opset=21,
    )
    assert rewrite_int4(m)["int8_container_conv"] == 1
    assert _only(m, "DequantizeLinear").inputs[0].const_value.dtype == ir.DataType.INT8


def test_set_opset_raises_in_place_and_refuses_group_norm():
    m = _linear_w4(np.ones((2, 2), np.int8), np.ones(2, np.float32), opset=17)
    set_opset(m, 21)
    assert m.opset_imports[""] == 21 and m.ir_version >= 10
    set_opset(m, 19)  # never lowered
    assert m.opset_imports[""] == 21
    gn = _model(
        [helper.make_node("GroupNormalization", ["x", "g", "b"], ["y"], num_groups=1)],
        [_vi("x", TensorProto.FLOAT, [1, 2, 4])],
        [_vi("y", TensorProto.FLOAT, [1, 2, 4])],
        [_init("g", np.ones(1, np.float32)), _init("b", np.zeros(1, np.float32))],
        opset=18,
    )
    with pytest.raises(ExportError, match="GroupNormalization"):
        set_opset(gn, 21)


def test_qdq_counts():
    m = _linear_w4(np.array([[1, -1], [2, 0]], np.int8), np.ones(2, np.float32))
    assert qdq_counts(m) == {
        "nodes": 3,
        "QuantizeLinear": 0,
        "DequantizeLinear": 1,
        "int8_weight_initializers": 1,
        "int4_weight_initializers": 0,
    }
    rewrite_int4(m)
    assert qdq_counts(m)["int4_weight_initializers"] == 1 and qdq_counts(m)["nodes"] == 2
