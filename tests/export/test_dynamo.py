"""The dynamo exporter (torch.export) gives the same Q/DQ graph as the TorchScript one after the same post-passes,
with a dynamic batch, and passes the same parity checks: both targets, INT4 weights and FP16."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
import onnxruntime as ort
import pytest

from pqcad_deploy.export.cli import build_parser
from pqcad_deploy.export.onnx_export import DTYPES, ExportError
from pqcad_deploy.export.pipeline import ExportOptions, export
from pqcad_deploy.export.spec import export_spec_for
from pqcad_deploy.loading import open_model


def _weight_codes(model: ir.Model) -> list[tuple[tuple[int, ...], str, bytes]]:
    """Integer weight initializers read by a DequantizeLinear (the exporters name them differently)."""
    return sorted(
        (tuple(w.shape), w.dtype.name, w.tobytes())
        for n in model.graph
        if n.op_type == "DequantizeLinear"
        and n.inputs[0].is_initializer()
        and (w := n.inputs[0].const_value).dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16)
    )


def _activation_qparams(model: ir.Model) -> list[tuple[float, int, str]]:
    qs = [n for n in model.graph if n.op_type == "QuantizeLinear"]
    return sorted(
        (float(q.inputs[1].const_value.numpy()), int(q.inputs[2].const_value.numpy()), q.inputs[2].dtype.name)
        for q in qs
    )


def _per_channel_layout(model: ir.Model) -> list[tuple[int, int, tuple[int, ...]]]:
    """(axis, block_size, scale shape) of every per-channel DQ. Per-tensor Q/DQ differ only in an explicit
    default ``axis=1`` that the dynamo exporter writes and that has no meaning for a scalar scale."""
    return sorted(
        (n.attributes.get_int("axis", 1), n.attributes.get_int("block_size", 0), tuple(n.inputs[1].shape))
        for n in model.graph
        if n.op_type == "DequantizeLinear" and n.inputs[1].const_value.size > 1
    )


@pytest.mark.parametrize(
    "key, target, precision",
    [
        ("trt8", "tensorrt", "fp32"),
        ("ort8", "onnxruntime", "fp32"),
        ("trt4c", "tensorrt", "fp32"),  # INT4 weights, blocked
        ("trt8", "tensorrt", "fp16"),
    ],
)
def test_dynamo_gives_the_torchscript_qdq_graph(students, tmp_path, key, target, precision):
    loaded = open_model(students[key])
    opts = ExportOptions(parity_samples=4, precision=precision)
    ts = export(loaded, tmp_path / "ts.onnx", opts)
    dyn = export(loaded, tmp_path / "dyn.onnx", dataclasses.replace(opts, exporter="dynamo"))
    assert dyn["target"] == target and dyn["parity"]["passed"] and dyn["options"]["exporter"] == "dynamo"
    for k in ("QuantizeLinear", "DequantizeLinear", "int8_weight_initializers", "int4_weight_initializers"):
        assert dyn["counts"][k] == ts["counts"][k], k
    assert dyn["audit"]["counts"] == ts["audit"]["counts"]
    assert dyn["passes"].get("int4") == ts["passes"].get("int4")
    m_ts, m_dyn = ir.load(tmp_path / "ts.onnx"), ir.load(tmp_path / "dyn.onnx")
    assert _activation_qparams(m_dyn) == _activation_qparams(m_ts)
    assert _per_channel_layout(m_dyn) == _per_channel_layout(m_ts)
    codes = _weight_codes(m_ts)
    assert len(codes) == ts["counts"]["int8_weight_initializers"] + ts["counts"]["int4_weight_initializers"]
    assert _weight_codes(m_dyn) == codes  # bit-identical INT8/INT4 weight codes
    # the batch stays dynamic
    sess = ort.InferenceSession(str(tmp_path / "dyn.onnx"), providers=["CPUExecutionProvider"])
    feed = export_spec_for(loaded.spec).sampler_inputs(3, dtype=DTYPES[precision])
    (out,) = sess.run(None, {k: v.numpy() for k, v in feed.items()})
    assert out.shape[0] == 3


def test_exporter_option():
    with pytest.raises(ExportError, match="exporter must be one of"):
        ExportOptions(exporter="jit")
    args = build_parser().parse_args(["--checkpoint", "tiny-unet", "--exporter", "dynamo"])
    assert args.exporter == "dynamo"
