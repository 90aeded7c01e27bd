"""Explicit-quantization audit: will each Conv/Gemm/MatMul run in INT8/INT4, and if not, why not.

``tensorrt`` target, rules of TensorRT 10's explicit quantization (developer guide, "Working with Quantized
Types"): Q/DQ on both the activation and the weight input, zero-points all zero, an explicit ``axis`` on
per-channel scales (the TRT parser assumes 0, ONNX 1), no Q/DQ on a bias, no node between DQ and the op, equal
scales on every input of a Concat feeding a Q, INT4 only as weights of MatMul/Gemm (no INT4 convolution) and only
at opset >= 21.

``onnxruntime`` target, the CPU QDQ fusions of ONNX Runtime (``_ort_rules``), which differ: asymmetric zero-points
and an int32 bias DQ are fine, a Conv needs a Q on its output, a MatMul with both inputs quantized (attention too)
becomes QLinearMatMul or MatMulIntegerToFloat, a Gemm becomes QGemm with or without an output Q. Each layer gets
the ``kernel`` the rules predict. The rules read the graph only; ``ort_cross_check`` asks ORT's optimized graph
(the ground truth, checked in the tests), and for TensorRT the engine's layer info is the final word
(``pqcad-build``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

QUANTIZABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_WEIGHT_PATH = ("Transpose", "Reshape", "Flatten", "Unsqueeze", "Squeeze", "Cast")
_INT4 = (ir.DataType.INT4, ir.DataType.UINT4)
_QDQ = ("QuantizeLinear", "DequantizeLinear")
log = logging.getLogger(__name__)


@dataclass
class LayerAudit:
    name: str
    op: str
    scope: str
    status: str  # "int8" | "int4" | "float"
    reasons: list[str] = field(default_factory=list)
    weight_dtype: str = ""
    blocked: bool = False  # meant to be quantized (or half-quantized) but would run in float
    kernel: str = ""  # onnxruntime target: the ORT kernel the rules predict (QLinearConv, QGemm, ...)


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
    trt = target != "onnxruntime"  # ORT fuses asymmetric (non-zero zero-point) Q/DQ too
    if trt and zp is not None and np.any(zp.astype(np.int32) != 0):
        reasons.append(f"non-zero zero-point on {role} ({int(np.max(np.abs(zp.astype(np.int32))))})")
    if scale.size > 1 and dq.attributes.get("axis") is None:
        reasons.append(f"missing axis on per-channel {role} DQ")
    block = dq.attributes.get_int("block_size", 0)
    if scale.size > 1 and role == "activation" and block == 0:
        reasons.append("per-channel scale on an activation (TensorRT: activations per-tensor only)")
    src = _stored_tensor(dq.inputs[0])
    if trt and src is not None and src.dtype in (ir.DataType.INT8, ir.DataType.UINT8) and block:
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
    if target == "onnxruntime" and act_between is not None and _ort_absorbs_pad(node, act_between):
        act_between = None  # ORT's PadFusion folds a zero constant Pad into the Conv before the QDQ fusions
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
    w_role = "weight" if w_is_const else "second input"
    for between, role in ((act_between, "activation"), (w_between, w_role)):
        if between is not None:
            r.append(f"a {between.op_type} node between DQ and the op on the {role} input")
    if w_dq is None and w_between is None:
        r.append(f"missing Q/DQ on the {w_role}")
    if act_dq is None and act_between is None and not (int4 and node.op_type in ("MatMul", "Gemm")):
        r.append("missing Q/DQ on the activation input")
    for dq, role in ((act_dq, "activation"), (w_dq, "weight" if w_is_const else "activation")):
        if dq is not None:
            _check_dq(dq, role, target, r)
    if int4 and node.op_type in ("Conv", "ConvTranspose"):
        r.append("INT4 on a Conv (TensorRT has no INT4 convolution; carry 4-bit codes in INT8)")
    if int4 and opset < 21:
        r.append(f"opset {opset} too low for INT4 (needs 21)")
    if target == "onnxruntime":
        _ort_rules(node, act_dq, w_dq, int4, la)
    else:
        if act_dq is not None and (reason := _concat_reason(act_dq)):
            r.append(reason)
        if _bias_dq(node) is not None:
            r.append("Q/DQ on a bias")
    if not r:
        la.status = "int4" if int4 else "int8"
    return la


def _bias_dq(node: ir.Node) -> ir.Node | None:
    b = _producer(node.inputs[2]) if len(node.inputs) > 2 else None
    return b if b is not None and b.op_type == "DequantizeLinear" else None


def _q_dtype(qdq: ir.Node) -> ir.DataType:
    """Element type of a Q's output / DQ's input: the zero-point's type, else ``output_dtype``, else uint8."""
    zp = qdq.inputs[2] if len(qdq.inputs) > 2 else None
    src = qdq.inputs[0] if qdq.op_type == "DequantizeLinear" else None
    for v in (zp, src):
        t = _stored_tensor(v)
        if t is not None:
            return t.dtype
    if zp is not None and zp.type is not None:
        return zp.type.dtype
    out = qdq.attributes.get_int("output_dtype", 0)
    return ir.DataType(out) if out else ir.DataType.UINT8


def _ort_absorbs_pad(node: ir.Node, pad: ir.Node) -> bool:
    """ORT's PadFusion (level 1) folds Pad(constant mode, zero value, constant pads) into a Conv it alone feeds."""
    if pad.op_type != "Pad" or node.op_type != "Conv" or len(pad.outputs[0].consumers()) != 1:
        return False
    if pad.attributes.get_string("mode", "constant") != "constant":
        return False
    pads = _const(pad.inputs[1]) if len(pad.inputs) > 1 else None
    value = _const(pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2] is not None else None
    return pads is not None and bool(np.all(pads >= 0)) and (value is None or not np.any(value))


def _ort_rules(
    node: ir.Node, act_dq: ir.Node | None, w_dq: ir.Node | None, int4: bool, la: LayerAudit
) -> None:
    """ONNX Runtime's CPU QDQ fusions (1.32; checked against its optimized graph in the tests):

    * Conv: DQ -> Conv -> Q with every consumer of the output a Q (and not a graph output) -> QLinearConv;
      a float or int32-DQ bias is fine, any other bias DQ is not; activation and output Q of one type;
      int8 activations need int8 weights. Without the output Q the Conv stays float.
    * MatMul: DQ on both inputs (weight or activation, e.g. attention) -> QLinearMatMul when only Qs read the
      output, else MatMulIntegerToFloat (integer dot products, float output). A constant DQ weight with a float
      activation and no output Q -> MatMulNBits (weight-only, 4 or 8 bits); INT4 weights have no other kernel.
    * Gemm: DQ on input and weight, int32 or float bias -> QGemm, with or without an output Q.
    Zero-points may be non-zero (asymmetric uint8 is ORT's default)."""
    r = la.reasons
    out = node.outputs[0]
    consumers = out.consumers()
    only_q = (
        bool(consumers)
        and all(c.op_type == "QuantizeLinear" for c in consumers)
        and not out.is_graph_output()
    )
    if node.op_type == "MatMul" and w_dq is not None and _is_const(node.inputs[1]):
        weight_only = (
            act_dq is None and [x for x in r if not x.startswith("missing Q/DQ on the activation")] == []
        )
        if weight_only and not only_q:
            r.clear()  # DQMatMulToMatMulNBits: float activation x 4/8-bit weight
            la.kernel = "MatMulNBits"
            return
        if int4 and not r:
            r.append(
                "INT4 weight with "
                + ("a Q/DQ'd activation" if act_dq is not None else "a Q on the output")
                + ": ORT has no integer kernel for it (MatMulNBits needs a float activation and float output)"
            )
            return
    if r or int4 or act_dq is None or w_dq is None:
        return
    bias = _bias_dq(node)
    if bias is not None and _q_dtype(bias) != ir.DataType.INT32:
        r.append(f"bias DQ of {_q_dtype(bias).name} (ORT fuses only an int32 bias)")
    a_t, w_t = _q_dtype(act_dq), _q_dtype(w_dq)
    if node.op_type != "MatMul" and a_t == ir.DataType.INT8 and w_t != ir.DataType.INT8:
        r.append(
            f"int8 activations with {w_t.name} weights (ORT fuses int8 activations with int8 weights only)"
        )
    if only_q and node.op_type != "Gemm" and any(_q_dtype(c) != a_t for c in consumers):
        r.append("output Q type differs from the input's (ORT fuses matching types only)")
    if only_q and w_dq.attributes.get_int("block_size", 0):
        r.append("block-quantized weight (QLinearMatMul/QLinearConv take per-tensor or per-channel scales)")
    if r:
        return
    if node.op_type == "Gemm":
        la.kernel = "QGemm"
    elif node.op_type == "MatMul":
        la.kernel = "QLinearMatMul" if only_q else "MatMulIntegerToFloat"
    elif only_q:
        la.kernel = "QLinear" + node.op_type
    else:
        r.append(
            "no Q on the output (or a reader besides the Q): ORT cannot form a DQ->op->Q unit and runs it in float"
        )


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


def ort_cross_check(path: str | os.PathLike, audit: dict, optimization: str = "extended") -> dict:
    """Ask ONNX Runtime itself which layers of ``path`` it fused (``runtime.audit.ort_fused_layers``) and compare
    with the rule-based ``audit``: the rules run without building a session, this is the ground truth they must
    agree with. Adds ``ort_kernel`` to each audited layer; returns counts and the disagreeing layers."""
    from pqcad_deploy.runtime.audit import is_integer_kernel, ort_fused_layers

    fused = ort_fused_layers(path, optimization)
    integer = weight_only = 0
    disagree = []
    for la in audit["layers"]:
        op = fused.get(la["name"], "")
        la["ort_kernel"] = op
        quantized = is_integer_kernel(op)
        integer += quantized and op != "MatMulNBits"
        weight_only += op == "MatMulNBits"
        if quantized != (la["status"] != "float"):
            disagree.append({"name": la["name"], "rules": la["status"], "ort_kernel": op or "(not found)"})
    if disagree:
        log.warning("%d layers: the audit rules disagree with ORT's optimized graph", len(disagree))
    return {
        "optimization": optimization,
        "integer": integer,
        "weight_only": weight_only,
        "float": len(audit["layers"]) - integer - weight_only,
        "kernels": dict(sorted(Counter(fused.values()).items())),
        "disagree": disagree,
    }


def format_ort_cross_check(x: dict) -> str:
    kernels = ", ".join(f"{k or '(not found)'} {v}" for k, v in x["kernels"].items())
    lines = [
        f"-- ORT optimized graph ({x['optimization']}): {x['integer']} integer kernels, {x['weight_only']} "
        f"weight-only (MatMulNBits), {x['float']} float [{kernels}]; {len(x['disagree'])} disagree with the rules"
    ]
    lines += [
        f"   {d['name']}: rules say {d['rules']}, ORT runs {d['ort_kernel']}" for d in x["disagree"][:20]
    ]
    return "\n".join(lines)
