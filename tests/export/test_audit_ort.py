"""The onnxruntime-target audit against ONNX Runtime's own optimized graph (the ground truth).

Hand-made node units for each fusion rule (including unfusable ones that must stay blocked), our ORT-form
export of tiny-unet, and ``quantize_static`` output of a tiny FP export (U8S8 per-channel and per-tensor)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pqcad_deploy.export import ort_quantize_static
from pqcad_deploy.export.audit import audit_model, ort_cross_check
from pqcad_deploy.export.pipeline import ExportOptions, export
from pqcad_deploy.export.spec import export_spec_for
from pqcad_deploy.loading import open_model
from pqcad_deploy.runtime.audit import ort_fused_layers
from pqcad_deploy.zoo import get_spec

from .test_audit import conv_graph

pytest.importorskip("onnxruntime", reason="the ground truth is ONNX Runtime's optimized graph")

K = 8
U8 = {"act_zp": 128, "act_dtype": np.uint8}


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _qdq(src: str, tag: str, dtype=np.uint8, zp=128):
    nodes = [
        helper.make_node("QuantizeLinear", [src, "a_s", f"zp_{tag}"], [f"{tag}_q"]),
        helper.make_node("DequantizeLinear", [f"{tag}_q", "a_s", f"zp_{tag}"], [f"{tag}_dq"]),
    ]
    return nodes, [_init(f"zp_{tag}", np.asarray(zp, dtype))], f"{tag}_dq"


def unit_graph(op="MatMul", act_q=True, second="weight", out_q=True, bias=None, dtype=np.uint8, zp=128):
    """x -> [Q/DQ] -> op(DQ(W) | DQ(x^T) | x^T | float W [, bias]) -> [Q/DQ] -> y; ``bias``: None, 'int32', 'int8'."""
    nodes, inits = [], [_init("a_s", np.float32(0.05))]
    a = "x"
    if act_q:
        n, i, a = _qdq("x", "a", dtype, zp)
        nodes, inits = nodes + n, inits + i
    b_in = "b_in"
    if second == "weight":
        inits += [_init("w", np.ones((K, K), np.int8)), _init("w_s", np.full(K, 0.1, np.float32))]
        inits.append(_init("w_zp", np.zeros(K, np.int8)))
        nodes.append(helper.make_node("DequantizeLinear", ["w", "w_s", "w_zp"], ["b_in"], axis=1))
    elif second == "float_weight":
        inits.append(_init("b_in", np.ones((K, K), np.float32)))
    else:  # an activation: attention-style MatMul
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]))
        if second == "act_q":
            n, i, b_in = _qdq("xt", "b", dtype, zp)
            nodes, inits = nodes + n, inits + i
        else:
            b_in = "xt"
    ins = [a, b_in]
    if bias:
        bt = np.int32 if bias == "int32" else np.int8
        inits += [_init("b", np.zeros(K, bt)), _init("b_s", np.full(K, 0.005, np.float32))]
        inits.append(_init("b_zp", np.zeros(K, bt)))
        nodes.append(helper.make_node("DequantizeLinear", ["b", "b_s", "b_zp"], ["bias"], axis=0))
        ins.append("bias")
    nodes.append(helper.make_node(op, ins, ["y_pre" if out_q else "y"], name="/unet/layer/" + op))
    if out_q:
        n, i, o = _qdq("y_pre", "o", dtype, zp)
        nodes, inits = nodes + n + [helper.make_node("Identity", [o], ["y"])], inits + i
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [K, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [K, K])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


CASES = {
    # fusable: what the old TensorRT-minded rules called blocked
    "conv int32 bias (quantize_static)": (conv_graph(out_q=True, **U8), "QLinearConv"),
    "conv uint8 zp 3": (conv_graph(out_q=True, act_zp=3, act_dtype=np.uint8), "QLinearConv"),
    "conv zero Pad folded": (conv_graph(out_q=True, pad_between=True, **U8), "QLinearConv"),
    "gemm int32 bias, output Q": (unit_graph("Gemm", bias="int32"), "QGemm"),
    "gemm int32 bias, float output": (unit_graph("Gemm", bias="int32", out_q=False), "QGemm"),
    "matmul weight, output Q": (unit_graph(), "QLinearMatMul"),
    "matmul weight, float output": (unit_graph(out_q=False), "MatMulIntegerToFloat"),
    "attention matmul, both inputs Q/DQ": (unit_graph(second="act_q"), "QLinearMatMul"),
    "attention matmul, int8 activations": (unit_graph(second="act_q", dtype=np.int8, zp=0), "QLinearMatMul"),
    # unfusable: must stay blocked
    "conv without output Q": (conv_graph(out_q=False, **U8), ""),
    "conv without input Q/DQ": (conv_graph(out_q=True, act_q=False, **U8), ""),
    "conv int8 bias DQ": (conv_graph(out_q=True, bias_dq=True, **U8), ""),
    "conv per-channel weight without axis": (conv_graph(out_q=True, w_axis=False, **U8), ""),
    "matmul float weight": (unit_graph(second="float_weight"), ""),
    "matmul no input Q/DQ, output Q": (unit_graph(act_q=False), ""),
    "attention matmul, one input Q/DQ": (unit_graph(second="act"), ""),
}


def _fused_one(model, tmp_path) -> str:
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    (op,) = ort_fused_layers(path).values()
    return op


@pytest.mark.parametrize("case", list(CASES))
def test_rules_agree_with_ort_optimized_graph(case, tmp_path):
    model, kernel = CASES[case]
    rep = audit_model(model, "onnxruntime")
    (la,) = rep["layers"]
    ort_op = _fused_one(model, tmp_path)
    assert la["kernel"] == kernel and ort_op.startswith(kernel or ort_op), (la, ort_op)
    if kernel:
        assert la["status"] == "int8" and ort_op == kernel, la["reasons"]
    else:
        assert la["status"] == "float" and la["blocked"] and la["reasons"], la
        assert ort_op in ("Conv", "MatMul", "FusedMatMul", "Gemm"), ort_op
        assert rep["counts"]["float_blocked"] == 1


def test_tensorrt_rules_still_refuse_what_ort_fuses():
    """The TensorRT target keeps its own rules: an int32 bias DQ and uint8 zero-points are not TensorRT's form."""
    la = audit_model(unit_graph("Gemm", bias="int32"), "tensorrt")["layers"][0]
    assert la["status"] == "float" and any("non-zero zero-point" in r for r in la["reasons"])
    assert any("Q/DQ on a bias" in r for r in la["reasons"])


def _cross(path):
    rep = audit_model(onnx.load(str(path), load_external_data=False), "onnxruntime")
    return rep, ort_cross_check(path, rep)


def test_our_ort_form_export_agrees_with_ort(students, tmp_path):
    out = tmp_path / "ort8.onnx"
    export(open_model(students["ort8"]), out, ExportOptions(parity_samples=2))
    rep, x = _cross(out)
    assert x["disagree"] == [] and rep["counts"]["float_blocked"] == 0
    assert rep["counts"]["int8"] == x["integer"] == 38
    assert all(la["kernel"] == la["ort_kernel"] for la in rep["layers"] if la["kernel"])


@pytest.fixture(scope="module")
def fp_tiny(tmp_path_factory):
    """An FP export of tiny-unet and sampler-like calibration feeds."""
    path = tmp_path_factory.mktemp("fp") / "fp.onnx"
    export(open_model("tiny-unet", random_weights=True), path, ExportOptions(check=False))
    es = export_spec_for(get_spec("tiny-unet"))
    feeds = [{k: v.numpy() for k, v in es.sampler_inputs(2, seed=s).items()} for s in range(3)]
    return path, feeds


@pytest.mark.parametrize("per_channel", [True, False])
def test_quantize_static_output_is_fused_and_not_blocked(fp_tiny, tmp_path, per_channel):
    path, feeds = fp_tiny
    q = ort_quantize_static(path, tmp_path / "ptq.onnx", feeds, per_channel=per_channel)
    rep, x = _cross(q)
    assert x["disagree"] == [], x["disagree"]
    assert rep["counts"]["float_blocked"] == 0 and rep["counts"]["int8"] == x["integer"] > 0
    assert {"QLinearConv", "QGemm", "QLinearMatMul"} <= set(x["kernels"])


def test_ort_fused_layers_matches_unnamed_nodes_by_output(tmp_path):
    m = conv_graph(out_q=True, **U8)
    for n in m.graph.node:
        n.name = ""
    path = tmp_path / "unnamed.onnx"
    onnx.save(m, path)
    assert ort_fused_layers(path) == {"y_pre": "QLinearConv"}
    assert audit_model(m, "onnxruntime")["layers"][0]["name"] == "y_pre"


def test_cli_ort_optimized_flag(tmp_path, capsys):
    from pqcad_deploy.export.cli import main

    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(unit_graph("Gemm", bias="int32"), good)
    onnx.save(conv_graph(out_q=False, **U8), bad)
    assert main(["--check-only", str(good), "--target", "onnxruntime", "--ort-optimized"]) == 0
    assert "1 integer kernels" in capsys.readouterr().out
    assert main(["--check-only", str(bad), "--target", "onnxruntime", "--ort-optimized"]) == 1
    assert main(["--check-only", str(good), "--ort-optimized"]) != 0  # needs --target onnxruntime
