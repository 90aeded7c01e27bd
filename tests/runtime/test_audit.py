"""Fusion audit on hand-written layer info in the format IEngineInspector / trtexec --exportLayerInfo write."""

from __future__ import annotations

import json

from pqcad_deploy.runtime.audit import audit_layer_info, audit_onnx_ops, format_onnx_audit, tensor_precision

INT8 = "Thirty-two wide channel vectorized row major Int8 format"
FP16 = "Channel major FP16 format where channel % 8 == 0"
FP32 = "Row major linear FP32"


def t(name, fmt, dims=(1, 64, 32, 32)):
    return {"Name": name, "Location": "Device", "Dimensions": list(dims), "Format/Datatype": fmt}


LAYER_INFO = {
    "Layers": [
        {
            "Name": "Reformatting CopyNode for Input Tensor 0 to /conv_in/Conv",
            "LayerType": "Reformat",
            "Inputs": [t("sample", FP32)],
            "Outputs": [t("r0", FP16)],
        },
        {
            "Name": "/conv_in/Conv",
            "LayerType": "CaskConvolution",
            "Inputs": [t("r0", FP16)],
            "Outputs": [t("a", FP16)],
            "ParameterType": "Convolution",
            "Weights": {"Type": "Half", "Count": 576},
        },
        {
            "Name": "/down/conv1/input_quantizer/QuantizeLinear",
            "LayerType": "Scale",
            "Inputs": [t("a", FP16)],
            "Outputs": [t("q", INT8)],
        },
        {
            "Name": "/down/conv1/input_quantizer/DequantizeLinear + /down/conv1/Conv + /down/Add",
            "LayerType": "CaskConvolution",
            "Inputs": [t("q", INT8)],
            "Outputs": [t("b", INT8)],
            "ParameterType": "Convolution",
            "Weights": {"Type": "Int8", "Count": 36864},
        },
        {
            "Name": "/attn/to_q/MatMul",
            "LayerType": "CaskGemmMatrixMultiply",
            "Inputs": [t("c", "Half")],
            "Outputs": [t("d", "Half")],
        },
        {
            "Name": "/down/norm/GroupNormalization",
            "LayerType": "Normalization",
            "Inputs": [t("b", FP16)],
            "Outputs": [t("e", FP16)],
        },
        {
            "Name": "/up/DequantizeLinear",
            "LayerType": "Dequantize",
            "Inputs": [t("e", INT8)],
            "Outputs": [t("f", FP16)],
        },
    ],
    "Bindings": ["sample", "timestep", "out_sample"],
}


def test_tensor_precision_strings():
    assert tensor_precision(INT8) == "INT8"
    assert tensor_precision(FP16) == tensor_precision("Half") == "FP16"
    assert tensor_precision(FP32) == tensor_precision("Float") == "FP32"
    assert tensor_precision("N/A due to dynamic shapes") == "unknown"


def test_layer_info_audit_lists_float_qdq_and_reformat(tmp_path):
    path = tmp_path / "layers.json"
    path.write_text(json.dumps(LAYER_INFO))
    for src in (LAYER_INFO, path, json.dumps(LAYER_INFO)):
        rep = audit_layer_info(src)
        assert rep.total_layers == 7
        assert rep.compute_layers == 3
        assert rep.quantized_compute == [
            "/down/conv1/input_quantizer/DequantizeLinear + /down/conv1/Conv + /down/Add"
        ]
        assert rep.float_compute == [("/conv_in/Conv", "FP16"), ("/attn/to_q/MatMul", "FP16")]
        assert rep.standalone_qdq == ["/down/conv1/input_quantizer/QuantizeLinear", "/up/DequantizeLinear"]
        assert len(rep.reformat) == 1
    text = rep.summary()
    assert "2 left in float" in text and "standalone Q/DQ 2" in text and "/conv_in/Conv  [FP16]" in text


def test_metadata_names_and_dynamic_shapes():
    layer = {
        "Name": "myelin_0",
        "LayerType": "Myelin",
        "Metadata": "[ONNX Layer: /mid/conv/Conv]\x1e[ONNX Layer: /mid/Add]",
        "Inputs": [t("x", "N/A due to dynamic shapes")],
    }
    rep = audit_layer_info({"Layers": [layer]})
    assert rep.compute_layers == 1 and rep.unknown_precision == 1
    assert any("dynamic shapes" in n for n in rep.notes)


def test_names_only_layer_info_is_flagged():
    rep = audit_layer_info({"Layers": ["/conv/Conv + /Relu", "/x/QuantizeLinear"]})
    assert rep.standalone_qdq == ["/x/QuantizeLinear"]
    assert any("profilingVerbosity=detailed" in n for n in rep.notes)


def test_onnx_op_audit_counts_integer_and_float_ops():
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("DequantizeLinear", ["xq", "s"], ["x"]),
        helper.make_node("Conv", ["x", "w"], ["y"]),
        helper.make_node("QLinearConv", ["a", "s", "z", "b", "s", "z", "s", "z"], ["c"]),
        helper.make_node("QGemm", ["a"], ["g"], domain="com.microsoft"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("xq", TensorProto.INT8, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    a = audit_onnx_ops(helper.make_model(g))
    assert a["integer_ops"] == {"QLinearConv": 1, "QGemm": 1}
    assert a["float_compute"] == {"Conv": 1} and a["dequantize_linear"] == 1 and a["quantize_linear"] == 0
    assert "QLinearConv 1" in format_onnx_audit(a)
    assert isinstance(onnx.ModelProto(), onnx.ModelProto)


def test_layer_type_beats_a_quantizer_like_name():
    conv = {"Name": "conv_q", "LayerType": "CaskConvolution", "Inputs": [t("x", INT8)]}
    scale = {"Name": "/in/input_quantizer/QuantizeLinear", "LayerType": "Scale", "Inputs": [t("x", FP16)]}
    rep = audit_layer_info({"Layers": [conv, scale]})
    assert rep.quantized_compute == ["conv_q"]
    assert rep.standalone_qdq == ["/in/input_quantizer/QuantizeLinear"]
