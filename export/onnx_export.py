"""Torch -> ONNX with explicit Q/DQ, and the graph passes that make the file what the engines expect.

Exporter choice: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``), opset <= 20.
Why, from cpu-measurements.md section 1: it maps ``fake_quantize_per_{tensor,channel}_affine`` straight to
QuantizeLinear/DequantizeLinear with an explicit ``axis`` under a dynamic batch, exports the 6.5M UNet in about
1 s (dynamo: 12 s, and it needs hand-registered Meta kernels for the fake-quant ops whenever the batch is
dynamic), and it is what NVIDIA's modelopt uses. Its limits are handled after export: opset 21 (INT4,
``block_size``) comes from a post-pass (``int4.py`` + :func:`set_opset`), and 4-bit weights travel through
the INT8 range (bit-identical when scale = amax/7). The exporter is deprecated in torch 2.9+; if it is removed,
the dynamo path with Meta kernels is the replacement (same post-passes apply to its output).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from pqcad_deploy.errors import PQCADError

from .spec import ExportSpec

log = logging.getLogger(__name__)

TORCHSCRIPT_MAX_OPSET = 20
MIN_OPSET_QDQ = 13  # per-channel QuantizeLinear/DequantizeLinear (axis)
MIN_OPSET_FP16_QDQ = 19  # float16 x/scale in QuantizeLinear/DequantizeLinear
MIN_OPSET_INT4 = 21
TWO_GB_PROTO = 2**31 - 2**20  # protobuf cannot serialize a message this large
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
_ONNX_FLOAT = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}


class ExportError(PQCADError, RuntimeError):
    """The model cannot be exported as asked; the message says what to change."""


def check_opset(opset: int, precision: str, quantized: bool, int4: bool) -> None:
    """Refuse opsets that cannot express the requested precision, before any work is done."""
    need, why = 13, "the TorchScript exporter"
    if quantized and MIN_OPSET_QDQ > need:
        need, why = MIN_OPSET_QDQ, "per-channel Q/DQ (axis attribute)"
    if quantized and precision == "fp16":
        need, why = MIN_OPSET_FP16_QDQ, "float16 scales on QuantizeLinear/DequantizeLinear"
    if int4:
        need, why = MIN_OPSET_INT4, "INT4 initializers and DequantizeLinear block_size"
    if opset < need:
        raise ExportError(
            f"Opset {opset} is too old: {why} needs opset >= {need}. Use --opset {need} or newer."
        )
    if opset > 21:
        raise ExportError(f"Opset {opset} is not supported; use 17-21.")


def torch_to_onnx(
    wrapper: torch.nn.Module, espec: ExportSpec, path: Path, opset: int, precision: str
) -> None:
    """Trace ``wrapper`` (a :class:`UNetWrapper`, quantizers already in export mode) into ``path``.

    Files above 2 GB get their weights written as external data by torch next to ``path``."""
    feed = espec.sampler_inputs(espec.batch, dtype=DTYPES[precision])
    args = tuple(feed[n] for n in espec.input_names)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*opset.*")
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            dynamo=False,
            opset_version=min(opset, TORCHSCRIPT_MAX_OPSET),
            input_names=list(espec.input_names),
            output_names=list(espec.output_names),
            dynamic_axes=espec.dynamic_axes(),
            do_constant_folding=True,
        )


# ---------------------------------------------------------------- graph helpers
def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def constant_value(graph: onnx.GraphProto, name: str, inits: dict | None = None) -> np.ndarray | None:
    """Value of an initializer or Constant-node output, else None."""
    inits = inits if inits is not None else {i.name: i for i in graph.initializer}
    if name in inits:
        return numpy_helper.to_array(inits[name])
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def get_attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def remove_unused(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads and initializers nobody reads (repeat to a fixed point)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        for n in dead:
            graph.node.remove(n)
        if not dead:
            break
    used = {i for n in graph.node for i in n.input} | outputs
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def inline_identities(graph: onnx.GraphProto) -> int:
    """The TorchScript exporter routes deduplicated constants (zero-points) through Identity nodes. TensorRT's
    parser wants zero-points to come straight from a constant, so consumers read the source directly."""
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    for n in list(graph.node):
        if n.op_type == "Identity" and n.output[0] not in outputs:
            rename[n.output[0]] = n.input[0]
            graph.node.remove(n)
    for n in graph.node:
        for k, i in enumerate(n.input):
            while i in rename:
                i = rename[i]
            n.input[k] = i
    return len(rename)


def _np_op(node: onnx.NodeProto, x: list[np.ndarray]) -> np.ndarray | None:
    op = node.op_type
    if op == "Min":
        return np.minimum(x[0], x[1]) if len(x) == 2 else None
    if op == "Max":
        return np.maximum(x[0], x[1]) if len(x) == 2 else None
    if op in ("Mul", "Div", "Add", "Sub"):
        f = {"Mul": np.multiply, "Div": np.divide, "Add": np.add, "Sub": np.subtract}[op]
        return f(x[0], x[1]).astype(np.result_type(x[0], x[1]))
    if op == "Cast":
        return x[0].astype(helper.tensor_dtype_to_np_dtype(get_attr(node, "to")))
    if op == "Reshape":
        shape = [d if d != 0 else x[0].shape[i] for i, d in enumerate(x[1].tolist())]
        return x[0].reshape(shape)
    if op == "Transpose":
        return np.transpose(x[0], get_attr(node, "perm"))
    if op == "Clip":
        lo = x[1] if len(x) > 1 and x[1] is not None else None
        hi = x[2] if len(x) > 2 and x[2] is not None else None
        return np.clip(x[0], lo, hi)
    return None


FOLDABLE = ("Min", "Max", "Mul", "Div", "Add", "Sub", "Cast", "Reshape", "Transpose", "Clip")


def fold_constants(graph: onnx.GraphProto) -> int:
    """Constant nodes become initializers, and arithmetic on constants feeding Q/DQ is evaluated (the
    TorchScript exporter does not fold ops on parameters, e.g. the 4-bit grid clamp ``Max(Min(W, hi), lo)``),
    so every weight quantizer reads an initializer, as TensorRT and the weight folding below need."""
    inits = {i.name: i for i in graph.initializer}
    folded = 0
    for n in list(graph.node):
        if n.op_type == "Constant" and get_attr(n, "value") is not None:
            t = onnx.TensorProto()
            t.CopyFrom(get_attr(n, "value"))
            t.name = n.output[0]
            graph.initializer.append(t)
            inits[t.name] = t
            graph.node.remove(n)
    qdq_inputs = {
        i for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in n.input
    }
    wanted: set[str] = set(qdq_inputs)
    for n in reversed(list(graph.node)):  # outputs that (transitively) only feed Q/DQ inputs
        if n.op_type in FOLDABLE and any(o in wanted for o in n.output):
            wanted.update(n.input)
    for n in list(graph.node):
        if n.op_type not in FOLDABLE or n.output[0] not in wanted:
            continue
        if not all(i in inits for i in n.input if i):
            continue
        vals = [numpy_helper.to_array(inits[i]) if i else None for i in n.input]
        out = _np_op(n, vals)
        if out is None:
            continue
        t = numpy_helper.from_array(np.asarray(out), n.output[0])
        graph.initializer.append(t)
        inits[t.name] = t
        graph.node.remove(n)
        folded += 1
    remove_unused(graph)
    return folded


# ---------------------------------------------------------------- Q/DQ passes
def quantize_codes(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int, qmin: int, qmax: int):
    """Integer codes exactly as torch's fake-quant computes them: rint(w * (1/s)) + zp, clamped.
    (ORT's QuantizeLinear divides instead; on 6.5M weights that flips ~15 codes, cpu-measurements §3.)"""
    w = w.astype(np.float32)
    inv = np.float32(1.0) / scale.astype(np.float32)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * w.ndim
        shape[axis] = -1
        inv, zp = inv.reshape(shape), zp.reshape(shape)
    return np.clip(np.rint(w * inv) + zp.astype(np.float32), qmin, qmax)


def fold_weight_quantizers(graph: onnx.GraphProto) -> int:
    """Q(float weight) -> DQ becomes INT8/UINT8 initializer -> DQ: a 4x smaller file, no runtime Q, and codes
    rounded as torch rounds them (TensorRT folds the weight Q anyway; ORT would round differently)."""
    inits = {i.name: i for i in graph.initializer}
    cons = consumers(graph)
    folded = 0
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]:
        w = numpy_helper.to_array(inits[q.input[0]])
        scale = constant_value(graph, q.input[1], inits)
        zp = constant_value(graph, q.input[2], inits) if len(q.input) > 2 and q.input[2] else None
        if scale is None or not np.issubdtype(w.dtype, np.floating):
            continue
        zdtype = zp.dtype if zp is not None else np.dtype(np.uint8)
        qmin, qmax = (0, 255) if zdtype == np.uint8 else (-128, 127)
        axis = get_attr(q, "axis", 1)
        axis = axis + w.ndim if axis < 0 else axis
        codes = quantize_codes(w, scale, zp if zp is not None else np.zeros(1), axis, qmin, qmax)
        name = f"{q.input[0]}_quantized"
        graph.initializer.append(numpy_helper.from_array(codes.astype(zdtype), name))
        for c in cons.get(q.output[0], []):
            for k, i in enumerate(c.input):
                if i == q.output[0]:
                    c.input[k] = name
        graph.node.remove(q)
        folded += 1
    remove_unused(graph)
    return folded


def model_bytes(model: onnx.ModelProto) -> int:
    """Serialized size, also for protos over 2 GB (where ``ByteSize`` raises instead of counting)."""
    try:
        return model.ByteSize()
    except Exception:  # protobuf EncodeError above 2 GB
        data = sum(_tensor_bytes(t) for t in model.graph.initializer)
        return data + sum(n.ByteSize() for n in model.graph.node)


def _tensor_bytes(t: onnx.TensorProto) -> int:
    if t.raw_data:
        return len(t.raw_data)
    return int(np.prod(t.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _weightless(model: onnx.ModelProto, keep_below: int = 1 << 20) -> onnx.ModelProto:
    """The model itself below 2 GB; above, a copy whose large initializers are graph inputs of the same type
    and shape (shape inference needs their types, not their values; protobuf cannot hold the full copy)."""
    if model_bytes(model) < TWO_GB_PROTO:
        return model
    graph = model.graph
    saved = list(graph.initializer)
    del graph.initializer[:]
    light = onnx.ModelProto()
    try:
        light.CopyFrom(model)
    finally:
        graph.initializer.extend(saved)
    for t in saved:
        if _tensor_bytes(t) < keep_below:
            light.graph.initializer.append(t)
        else:
            light.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of all tensors as exported (call before passes change Q/DQ types: inference would
    propagate the scales' types it is meant to fix). Models over 2 GB are inferred on a weightless copy."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_weightless(model), strict_mode=False)
    except Exception as e:  # inference is a refinement: missing names fall back to the export precision
        log.warning("shape inference failed (%s); Q/DQ scale types follow the export precision", e)
        return {}
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.input})
    return types


def fix_qdq_dtypes(model: onnx.ModelProto, precision: str, types: dict[str, int] | None = None) -> int:
    """Give every Q/DQ scale the float type of the tensor it scales (strong typing: a FP16 Q input needs a FP16
    scale, and a DQ's output type is its scale's type). Torch insists on FP32 scales, so FP16 exports need this.
    ``types``: from :func:`tensor_types` on the graph as exported; missing names get the export precision."""
    graph = model.graph
    want = _ONNX_FLOAT[precision]
    types = types or {}
    inits = {i.name: i for i in graph.initializer}
    prod = producers(graph)
    changed = 0
    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if n.op_type == "QuantizeLinear":
            dt = types.get(n.input[0], want)
        else:
            src = prod.get(n.input[0])
            dt = (
                types.get(src.input[0], want) if src is not None and src.op_type == "QuantizeLinear" else want
            )
        if dt not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16):
            dt = want
        s = inits.get(n.input[1])
        if s is None or s.data_type == dt:
            continue
        arr = numpy_helper.to_array(s).astype(helper.tensor_dtype_to_np_dtype(dt))
        name = f"{s.name}_{helper.tensor_dtype_to_string(dt).split('.')[-1].lower()}"
        if name not in inits:
            inits[name] = numpy_helper.from_array(arr, name)
            graph.initializer.append(inits[name])
        n.input[1] = name
        changed += 1
    remove_unused(graph)
    return changed


def remove_qdq_casts(graph: onnx.GraphProto) -> int:
    """FP16 graphs: the quantizers compute in FP32, so torch traces ``Cast(fp32) -> Q -> DQ -> Cast(fp16)``.
    A Cast between DQ and its Conv blocks TensorRT's fusion, so Q reads the FP16 tensor directly and the DQ
    output feeds the consumers directly; :func:`fix_qdq_dtypes` then gives the scales the FP16 type."""
    prod, cons = producers(graph), consumers(graph)
    outputs = {o.name for o in graph.output}
    removed = 0
    for n in list(graph.node):
        if n.op_type == "QuantizeLinear":
            c = prod.get(n.input[0])
            if c is not None and c.op_type == "Cast" and get_attr(c, "to") == TensorProto.FLOAT:
                n.input[0] = c.input[0]
                removed += 1
        elif n.op_type == "DequantizeLinear":
            users = cons.get(n.output[0], [])
            if len(users) == 1 and users[0].op_type == "Cast" and users[0].output[0] not in outputs:
                cast = users[0]
                if get_attr(cast, "to") not in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
                    continue
                for u in cons.get(cast.output[0], []):
                    for k, i in enumerate(u.input):
                        if i == cast.output[0]:
                            u.input[k] = n.output[0]
                graph.node.remove(cast)
                removed += 1
    remove_unused(graph)
    return removed


def set_opset(model: onnx.ModelProto, opset: int) -> None:
    """Raise the default-domain opset after export. From 20 to 21 only type lists and the new Q/DQ
    attributes change, except GroupNormalization (scale/bias shape), which the TorchScript exporter never emits."""
    cur = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if cur is None or cur >= opset:
        return
    if any(n.op_type == "GroupNormalization" for n in model.graph.node):
        raise ExportError("GroupNormalization changed meaning in opset 21; cannot raise the opset in place.")
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = opset
    model.ir_version = max(model.ir_version, 10)  # INT4 needs IR 10


def qdq_counts(graph: onnx.GraphProto) -> dict[str, int]:
    ops = [n.op_type for n in graph.node]
    inits = {i.name: i for i in graph.initializer}
    weights = [
        inits[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
    ]
    int4 = sum(w.data_type in (TensorProto.INT4, TensorProto.UINT4) for w in weights)
    int8 = sum(w.data_type in (TensorProto.INT8, TensorProto.UINT8) for w in weights)
    return {
        "nodes": len(ops),
        "QuantizeLinear": ops.count("QuantizeLinear"),
        "DequantizeLinear": ops.count("DequantizeLinear"),
        "int8_weight_initializers": int8,
        "int4_weight_initializers": int4,
    }
