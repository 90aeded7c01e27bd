"""Explicit-quantization audit: will each Conv/Gemm/MatMul run in INT8/INT4, and if not, why not.

Rules of TensorRT 10's explicit quantization (developer guide, "Working with Quantized Types"): Q/DQ on both the activation and the weight input,
zero-points all zero, an explicit ``axis`` on per-channel scales (the TRT parser assumes 0, ONNX 1), no Q/DQ on a
bias, no node between DQ and the op, equal scales on every input of a Concat feeding a Q, INT4 only as weights of
MatMul/Gemm (no INT4 convolution) and only at opset >= 21. For the ``onnxruntime`` target the uint8 zero-point
128 activations are the intended form, and a Q on the op's output is needed for ORT's QLinear fusion
(measured: without it ORT leaves the Q/DQ pairs unfused). This reads the graph only; the engine's layer info is the final word (``pqcad-build``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

QUANTIZABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_WEIGHT_PATH = ("Transpose", "Reshape", "Flatten", "Unsqueeze", "Squeeze", "Cast")
_INT4 = (ir.DataType.INT4, ir.DataType.UINT4)
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class LayerAudit:
    name: str
    op: str
    scope: str
    status: str  # "int8" | "int4" | "float"
    reasons: list[str] = field(default_factory=list)
    weight_dtype: str = ""
    blocked: bool = False  # meant to be quantized (or half-quantized) but would run in float


def node_scope(node: ir.Node) -> str:
    """'/unet/down_blocks.0/resnets.0/conv1/Conv' -> 'unet.down_blocks.0.resnets.0.conv1'."""
    name = node.name or ""
    parts = [p for p in name.split("/") if p]
    return ".".join(parts[:-1]) if len(parts) > 1 else name


def _const(value: ir.Value | None) -> np.ndarray | None:
    """Value of an initializer or a Constant node's output, else None."""
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return tensor.numpy() if tensor is not None else None


def _stored_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The stored tensor behind a DQ input (for its element type; external data is not read)."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value
    p = value.producer()
    return ir.convenience.get_const_tensor(value) if p is not None and p.op_type == "Constant" else None


def _is_const(value: ir.Value | None) -> bool:
    if value is None:
        return False
    if value.const_value is not None:
        return True
    p = value.producer()
    if p is None:
        return False
    return p.op_type == "Constant" or (p.op_type in _WEIGHT_PATH + _QDQ and _is_const(p.inputs[0]))


def _producer(value: ir.Value | None) -> ir.Node | None:
    return value.producer() if value is not None else None


def _find_dq(value: ir.Value | None, weight: bool) -> tuple[ir.Node | None, ir.Node | None]:
    """(DQ feeding ``value``, node sitting between them). Weight paths may pass Transpose/Reshape (folded)."""
    p = _producer(value)
    while p is not None and weight and p.op_type in _WEIGHT_PATH:
        p = _producer(p.inputs[0])
    if p is None:
        return None, None
    if p.op_type == "DequantizeLinear":
        return p, None
    # A non-computing node (Pad, Cast, Identity, ...) whose data input is a DQ output sits "between".
    q = _producer(p.inputs[0]) if p.inputs and p.op_type not in QUANTIZABLE else None
    if q is not None and q.op_type == "DequantizeLinear":
        return q, p
    return None, None


def _check_dq(dq: ir.Node, role: str, target: str, reasons: list[str]) -> None:
    scale = _const(dq.inputs[1])
    if scale is None:
        reasons.append(f"{role} scale is not a constant")
        return
    zp = _const(dq.inputs[2]) if len(dq.inputs) > 2 else None
    if zp is not None and np.any(zp.astype(np.int32) != 0):
        ort_u8 = target == "onnxruntime" and role == "activation" and zp.dtype == np.uint8
        if not ort_u8:
            reasons.append(f"non-zero zero-point on {role} ({int(np.max(np.abs(zp.astype(np.int32))))})")
    if scale.size > 1 and dq.attributes.get("axis") is None:
        reasons.append(f"missing axis on per-channel {role} DQ")
    block = dq.attributes.get_int("block_size", 0)
    if scale.size > 1 and role == "activation" and block == 0:
        reasons.append("per-channel scale on an activation (TensorRT: activations per-tensor only)")
    src = _stored_tensor(dq.inputs[0])
    if src is not None and src.dtype in (ir.DataType.INT8, ir.DataType.UINT8) and block:
        reasons.append("block quantization on INT8 weights (TensorRT: INT4/FP8 only)")


def _concat_reason(act_dq: ir.Node) -> str | None:
    q = _producer(act_dq.inputs[0])
    if q is None or q.op_type != "QuantizeLinear":
        return None
    cat = _producer(q.inputs[0])
    if cat is None or cat.op_type != "Concat":
        return None
    qscale = _const(q.inputs[1])
    dqs = [_producer(i) for i in cat.inputs]
    if not any(d is not None and d.op_type == "DequantizeLinear" for d in dqs):
        return None  # float concat, quantized once after: fine
    where = cat.name or cat.outputs[0].name
    for d in dqs:
        if d is None or d.op_type != "DequantizeLinear":
            return f"unequal concat scales at {where} (an input is not quantized)"
        s = _const(d.inputs[1])
        if (
            s is None
            or qscale is None
            or s.shape != qscale.shape
            or not np.allclose(s, qscale, rtol=0, atol=0)
        ):
            return f"unequal concat scales at {where}"
    return None


def audit_node(node: ir.Node, target: str, opset: int) -> LayerAudit:
    la = LayerAudit(node.name or node.outputs[0].name, node.op_type, node_scope(node), "float")
    act_dq, act_between = _find_dq(node.inputs[0], weight=False)
    w_value = node.inputs[1]
    w_is_const = _is_const(w_value)
    w_dq, w_between = _find_dq(w_value, weight=w_is_const)
    if node.op_type == "MatMul" and not w_is_const and w_dq is None and act_dq is None:
        la.reasons.append("activation x activation MatMul (attention BMM), float by design")
        return la
    if act_dq is None and w_dq is None and act_between is None and w_between is None:
        la.reasons.append("not quantized (no Q/DQ on its inputs)")
        return la
    w_src = _stored_tensor(w_dq.inputs[0]) if w_dq is not None else None
    int4 = w_src is not None and w_src.dtype in _INT4
    la.weight_dtype = w_src.dtype.name if w_src is not None else ""
    r = la.reasons
    for between, role in ((act_between, "activation"), (w_between, "weight")):
        if between is not None:
            r.append(f"a {between.op_type} node between DQ and the op on the {role} input")
    if w_dq is None and w_between is None:
        r.append("missing Q/DQ on the weight")
    if act_dq is None and act_between is None and not (int4 and node.op_type in ("MatMul", "Gemm")):
        r.append("missing Q/DQ on the activation input")
    for dq, role in ((act_dq, "activation"), (w_dq, "weight")):
        if dq is not None:
            _check_dq(dq, role, target, r)
    if target == "tensorrt" and act_dq is not None and (reason := _concat_reason(act_dq)):
        r.append(reason)
    if (
        len(node.inputs) > 2
        and (b := _producer(node.inputs[2])) is not None
        and b.op_type == "DequantizeLinear"
    ):
        r.append("Q/DQ on a bias")
    if int4 and node.op_type in ("Conv", "ConvTranspose"):
        r.append("INT4 on a Conv (TensorRT has no INT4 convolution; carry 4-bit codes in INT8)")
    if int4 and opset < 21:
        r.append(f"opset {opset} too low for INT4 (needs 21)")
    if target == "onnxruntime" and act_dq is not None and not int4:
        outs = node.outputs[0].consumers()
        if not any(c.op_type == "QuantizeLinear" for c in outs) and not (
            len(outs) == 1 and outs[0].op_type == "Add" and _feeds_q(outs[0])
        ):
            r.append("no Q on the output (ORT cannot form a DQ->op->Q unit and runs it in float)")
    if not r:
        la.status = "int4" if int4 else "int8"
    return la


def _feeds_q(node: ir.Node) -> bool:
    return any(c.op_type == "QuantizeLinear" for c in node.outputs[0].consumers())


def audit_model(
    model: ir.Model | onnx.ModelProto, target: str = "tensorrt", expected: set[str] | None = None
) -> dict:
    """Per-layer audit plus counts. ``expected``: module scopes the checkpoint quantizes; any of them that
    ends up float is counted as blocked."""
    if isinstance(model, onnx.ModelProto):
        model = ir.from_proto(model)
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    layers = [audit_node(n, target, opset) for n in model.graph if n.op_type in QUANTIZABLE]
    for la in layers:
        if la.status == "float" and expected and _matches(la.scope, expected):
            if la.reasons and la.reasons[0].startswith("not quantized"):
                la.reasons[0] = "checkpoint quantizes this layer but the graph has no Q/DQ"
    counts = {"int8": 0, "int4": 0, "float_by_design": 0, "float_blocked": 0}
    for la in layers:
        if la.status != "float":
            counts[la.status] += 1
        elif la.reasons and (la.reasons[0].startswith("not quantized") or "by design" in la.reasons[0]):
            counts["float_by_design"] += 1
        else:
            la.blocked = True
            counts["float_blocked"] += 1
    counts["total"] = len(layers)
    return {"target": target, "opset": opset, "counts": counts, "layers": [asdict(la) for la in layers]}


def _matches(scope: str, expected: set[str]) -> bool:
    return any(scope == e or scope.startswith(e + ".") for e in expected)
