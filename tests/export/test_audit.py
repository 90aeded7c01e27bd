"""The TensorRT/ORT audit on small hand-made graphs: one graph per failure case, plus the clean forms."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pqcad_deploy.export.audit import audit_model
from pqcad_deploy.export.report import audit_table

C = 4


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _int4(name, arr):
    arr = np.asarray(arr, np.int8)
    return helper.make_tensor(name, TensorProto.INT4, list(arr.shape), arr.flatten().tolist())


def conv_graph(
    act_q=True,
    act_zp=0,
    w_axis=True,
    bias_dq=False,
    pad_between=False,
    w_int4=False,
    concat_scales=None,
    out_q=False,
    act_dtype=np.int8,
    opset=17,
):
    """x -> [Q -> DQ] -> Conv(DQ(W int8), b) -> y, with the requested defect."""
    nodes, inits = (
        [],
        [
            _init("w", np.ones((C, C, 3, 3), np.int8)),
            _init("w_s", np.full(C, 0.1, np.float32)),
            _init("w_zp", np.zeros(C, np.int8)),
            _init("a_s", np.float32(0.05)),
            _init("a_zp", np.asarray(act_zp, act_dtype)),
            _init("b", np.zeros(C, np.float32)),
        ],
    )
    if w_int4:
        inits[0] = _int4("w", np.ones((C, C, 3, 3)))
        inits[2] = _int4("w_zp", np.zeros(C))
    x = "x"
    if concat_scales:
        inits += [_init("c_s0", np.float32(concat_scales[0])), _init("c_s1", np.float32(concat_scales[1]))]
        for k in range(2):
            nodes += [
                helper.make_node("QuantizeLinear", ["x", f"c_s{k}", "a_zp"], [f"cq{k}"]),
                helper.make_node("DequantizeLinear", [f"cq{k}", f"c_s{k}", "a_zp"], [f"cdq{k}"]),
            ]
        nodes.append(helper.make_node("Concat", ["cdq0", "cdq1"], ["cat"], axis=1))
        x = "cat"
    cin = C * 2 if concat_scales else C
    if concat_scales:
        inits[0] = _init("w", np.ones((C, cin, 3, 3), np.int8))
    if act_q:
        nodes += [
            helper.make_node("QuantizeLinear", [x, "a_s", "a_zp"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "a_s", "a_zp"], ["xdq"]),
        ]
        x = "xdq"
    if pad_between:
        inits.append(_init("pads", np.zeros(8, np.int64)))
        nodes.append(helper.make_node("Pad", [x, "pads"], ["xp"]))
        x = "xp"
    wattrs = {"axis": 0} if w_axis else {}
    nodes.append(helper.make_node("DequantizeLinear", ["w", "w_s", "w_zp"], ["wdq"], **wattrs))
    b = "b"
    if bias_dq:
        inits += [_init("b8", np.zeros(C, np.int8)), _init("b_s", np.float32(0.1))]
        nodes.append(helper.make_node("DequantizeLinear", ["b8", "b_s"], ["bdq"]))
        b = "bdq"
    y = "y_pre" if out_q else "y"
    nodes.append(helper.make_node("Conv", [x, "wdq", b], [y], pads=[1, 1, 1, 1], name="/unet/conv1/Conv"))
    if out_q:
        nodes += [
            helper.make_node("QuantizeLinear", ["y_pre", "a_s", "a_zp"], ["yq"]),
            helper.make_node("DequantizeLinear", ["yq", "a_s", "a_zp"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 8, 8])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _only(model, target="tensorrt"):
    rep = audit_model(model, target)
    (la,) = rep["layers"]
    return la, rep


def test_clean_int8_conv_runs_int8():
    la, rep = _only(conv_graph())
    assert la["status"] == "int8" and not la["reasons"]
    assert rep["counts"]["int8"] == 1 and rep["counts"]["float_blocked"] == 0
    onnx.checker.check_model(conv_graph(), full_check=True)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"act_q": False}, "missing Q/DQ on the activation"),
        ({"act_zp": 3}, "non-zero zero-point"),
        ({"w_axis": False}, "missing axis"),
        ({"bias_dq": True}, "Q/DQ on a bias"),
        ({"pad_between": True}, "a Pad node between DQ and the op"),
        ({"concat_scales": (0.05, 0.07)}, "unequal concat scales"),
        ({"w_int4": True, "opset": 21}, "INT4 on a Conv"),
    ],
)
def test_each_failure_is_named(kwargs, reason):
    la, rep = _only(conv_graph(**kwargs))
    assert la["status"] == "float"
    assert any(reason in r for r in la["reasons"]), la["reasons"]
    assert rep["counts"]["float_blocked"] == 1
    assert reason.split()[0] in audit_table(rep)


def test_equal_concat_scales_are_fine():
    la, _ = _only(conv_graph(concat_scales=(0.05, 0.05)))
    assert la["status"] == "int8", la["reasons"]


def test_ort_target_accepts_uint8_zp128_and_wants_output_q():
    la, _ = _only(conv_graph(act_zp=128, act_dtype=np.uint8, out_q=True), "onnxruntime")
    assert la["status"] == "int8", la["reasons"]
    la, _ = _only(conv_graph(act_zp=128, act_dtype=np.uint8, out_q=False), "onnxruntime")
    assert any("no Q on the output" in r for r in la["reasons"])
    # the same uint8 zp=128 graph is not TensorRT-compatible
    la, _ = _only(conv_graph(act_zp=128, act_dtype=np.uint8, out_q=True), "tensorrt")
    assert any("non-zero zero-point" in r for r in la["reasons"])


def matmul_int4_graph(opset=21, block=True):
    k, n = 8, 4
    w = np.ones((k, n), np.int8)
    s = np.full((k // 4, n) if block else (n,), 0.1, np.float32)
    attrs = {"axis": 0, "block_size": 4} if block else {"axis": 1}
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["wdq"], **attrs),
        helper.make_node("MatMul", ["x", "wdq"], ["y"], name="/unet/to_q/MatMul"),
        helper.make_node("Transpose", ["y"], ["yT"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["y", "yT"], ["z"], name="/unet/attn/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, k])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 3])],
        [_int4("w", w), _init("s", s), _int4("zp", np.zeros(s.shape))],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def test_int4_weight_only_matmul_and_attention_bmm():
    rep = audit_model(matmul_int4_graph())
    by = {la["name"]: la for la in rep["layers"]}
    assert by["/unet/to_q/MatMul"]["status"] == "int4"
    assert "by design" in by["/unet/attn/MatMul"]["reasons"][0]
    assert rep["counts"] == {"int8": 0, "int4": 1, "float_by_design": 1, "float_blocked": 0, "total": 2}
    onnx.checker.check_model(matmul_int4_graph(), full_check=True)


def test_int4_needs_opset_21():
    rep = audit_model(matmul_int4_graph(opset=20, block=False))
    la = next(la for la in rep["layers"] if la["name"] == "/unet/to_q/MatMul")
    assert any("too low for INT4" in r for r in la["reasons"])


def test_expected_layer_without_qdq_is_blocked():
    rep = audit_model(conv_graph(act_q=False), expected={"unet.conv1"})
    assert rep["counts"]["float_blocked"] == 1
    m = conv_graph()
    # strip all Q/DQ: a float conv the checkpoint says is quantized
    rep = audit_model(_float_conv(), expected={"unet.conv1"})
    assert "checkpoint quantizes" in rep["layers"][0]["reasons"][0]
    assert rep["counts"]["float_blocked"] == 1
    assert audit_model(_float_conv())["counts"]["float_by_design"] == 1
    del m


def _float_conv():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="/unet/conv1/Conv")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 6, 6])],
        [_init("w", np.ones((C, C, 3, 3), np.float32))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
