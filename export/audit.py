"""Explicit-quantization audit: will each Conv/Gemm/MatMul run in INT8/INT4, and if not, why not.

Rules from tensorrt-qdq.md §0, §1.3-1.7 (TensorRT 10): Q/DQ on both the activation and the weight input,
zero-points all zero, an explicit ``axis`` on per-channel scales (the TRT parser assumes 0, ONNX 1), no Q/DQ on a
bias, no node between DQ and the op, equal scales on every input of a Concat feeding a Q, INT4 only as weights of
MatMul/Gemm (no INT4 convolution) and only at opset >= 21. For the ``onnxruntime`` target the uint8 zero-point
128 activations are the intended form, and a Q on the op's output is needed for ORT's QLinear fusion
(cpu-measurements §4). This reads the graph only; the engine's layer info is the final word (``pqcad-build``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from .onnx_export import consumers, get_attr, producers

QUANTIZABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_WEIGHT_PATH = ("Transpose", "Reshape", "Flatten", "Unsqueeze", "Squeeze", "Cast")
_INT4 = (TensorProto.INT4, TensorProto.UINT4)
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


def node_scope(node: onnx.NodeProto) -> str:
    """'/unet/down_blocks.0/resnets.0/conv1/Conv' -> 'unet.down_blocks.0.resnets.0.conv1'."""
    parts = [p for p in node.name.split("/") if p]
    return ".".join(parts[:-1]) if len(parts) > 1 else node.name


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.g = model.graph
        self.prod = producers(self.g)
        self.cons = consumers(self.g)
        self.inits = {i.name: i for i in self.g.initializer}
        self.consts = {n.output[0]: n.attribute[0].t for n in self.g.node if n.op_type == "Constant"}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name) or self.consts.get(name)
        return onnx.numpy_helper.to_array(t) if t is not None else None

    def is_const(self, name: str) -> bool:
        if name in self.inits or name in self.consts:
            return True
        p = self.prod.get(name)
        return p is not None and p.op_type in _WEIGHT_PATH + _QDQ and self.is_const(p.input[0])


def _find_dq(G: _Graph, name: str, weight: bool) -> tuple[onnx.NodeProto | None, onnx.NodeProto | None]:
    """(DQ feeding ``name``, node sitting between them). Weight paths may pass Transpose/Reshape (folded)."""
    p = G.prod.get(name)
    while p is not None and weight and p.op_type in _WEIGHT_PATH:
        p = G.prod.get(p.input[0])
    if p is None:
        return None, None
    if p.op_type == "DequantizeLinear":
        return p, None
    # A non-computing node (Pad, Cast, Identity, ...) whose data input is a DQ output sits "between".
    q = G.prod.get(p.input[0]) if p.input and p.op_type not in QUANTIZABLE else None
    if q is not None and q.op_type == "DequantizeLinear":
        return q, p
    return None, None


def _check_dq(G: _Graph, dq: onnx.NodeProto, role: str, target: str, reasons: list[str]) -> None:
    scale = G.const(dq.input[1])
    if scale is None:
        reasons.append(f"{role} scale is not a constant")
        return
    zp = G.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    if zp is not None and np.any(zp.astype(np.int32) != 0):
        ort_u8 = target == "onnxruntime" and role == "activation" and zp.dtype == np.uint8
        if not ort_u8:
            reasons.append(f"non-zero zero-point on {role} ({int(np.max(np.abs(zp.astype(np.int32))))})")
    if scale.size > 1 and get_attr(dq, "axis") is None:
        reasons.append(f"missing axis on per-channel {role} DQ")
    if scale.size > 1 and role == "activation" and get_attr(dq, "block_size", 0) == 0:
        reasons.append("per-channel scale on an activation (TensorRT: activations per-tensor only)")
    src = G.inits.get(dq.input[0])
    if (
        src is not None
        and src.data_type in (TensorProto.INT8, TensorProto.UINT8)
        and get_attr(dq, "block_size", 0)
    ):
        reasons.append("block quantization on INT8 weights (TensorRT: INT4/FP8 only)")


def _concat_reason(G: _Graph, act_dq: onnx.NodeProto) -> str | None:
    q = G.prod.get(act_dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return None
    cat = G.prod.get(q.input[0])
    if cat is None or cat.op_type != "Concat":
        return None
    qscale = G.const(q.input[1])
    dqs = [G.prod.get(i) for i in cat.input]
    if not any(d is not None and d.op_type == "DequantizeLinear" for d in dqs):
        return None  # float concat, quantized once after: fine
    for d in dqs:
        if d is None or d.op_type != "DequantizeLinear":
            return f"unequal concat scales at {cat.name or cat.output[0]} (an input is not quantized)"
        s = G.const(d.input[1])
        if (
            s is None
            or qscale is None
            or s.shape != qscale.shape
            or not np.allclose(s, qscale, rtol=0, atol=0)
        ):
            return f"unequal concat scales at {cat.name or cat.output[0]}"
    return None


def audit_node(G: _Graph, node: onnx.NodeProto, target: str) -> LayerAudit:
    la = LayerAudit(node.name or node.output[0], node.op_type, node_scope(node), "float")
    act_dq, act_between = _find_dq(G, node.input[0], weight=False)
    w_name = node.input[1]
    w_is_const = G.is_const(w_name)
    w_dq, w_between = _find_dq(G, w_name, weight=w_is_const)
    if node.op_type == "MatMul" and not w_is_const and w_dq is None and act_dq is None:
        la.reasons.append("activation x activation MatMul (attention BMM), float by design")
        return la
    if act_dq is None and w_dq is None and act_between is None and w_between is None:
        la.reasons.append("not quantized (no Q/DQ on its inputs)")
        return la
    w_src = G.inits.get(w_dq.input[0]) if w_dq is not None else None
    int4 = w_src is not None and w_src.data_type in _INT4
    la.weight_dtype = onnx.helper.tensor_dtype_to_string(w_src.data_type).split(".")[-1] if w_src else ""
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
            _check_dq(G, dq, role, target, r)
    if target == "tensorrt" and act_dq is not None and (reason := _concat_reason(G, act_dq)):
        r.append(reason)
    if len(node.input) > 2 and node.input[2]:
        b = G.prod.get(node.input[2])
        if b is not None and b.op_type == "DequantizeLinear":
            r.append("Q/DQ on a bias")
    if int4 and node.op_type in ("Conv", "ConvTranspose"):
        r.append("INT4 on a Conv (TensorRT has no INT4 convolution; carry 4-bit codes in INT8)")
    if int4 and G.opset < 21:
        r.append(f"opset {G.opset} too low for INT4 (needs 21)")
    if target == "onnxruntime" and act_dq is not None and not int4:
        outs = G.cons.get(node.output[0], [])
        if not any(c.op_type == "QuantizeLinear" for c in outs) and not (
            len(outs) == 1 and outs[0].op_type == "Add" and _feeds_q(G, outs[0])
        ):
            r.append("no Q on the output (ORT cannot form a DQ->op->Q unit and runs it in float)")
    if not r:
        la.status = "int4" if int4 else "int8"
    return la


def _feeds_q(G: _Graph, node: onnx.NodeProto) -> bool:
    return any(c.op_type == "QuantizeLinear" for c in G.cons.get(node.output[0], []))


def audit_model(model: onnx.ModelProto, target: str = "tensorrt", expected: set[str] | None = None) -> dict:
    """Per-layer audit plus counts. ``expected``: module scopes the checkpoint quantizes; any of them that
    ends up float is counted as blocked."""
    G = _Graph(model)
    layers = [audit_node(G, n, target) for n in model.graph.node if n.op_type in QUANTIZABLE]
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
    return {"target": target, "opset": G.opset, "counts": counts, "layers": [asdict(la) for la in layers]}


def _matches(scope: str, expected: set[str]) -> bool:
    return any(scope == e or scope.startswith(e + ".") for e in expected)
