"""Torch -> ONNX with explicit Q/DQ, and the Q/DQ passes that make the file what the engines expect.

Two exporters, the same post-passes and checks after either. ``torchscript`` (default,
``torch.onnx.export(..., dynamo=False)``, opset <= 20) maps ``fake_quantize_per_{tensor,channel}_affine``
straight to QuantizeLinear/DequantizeLinear with an explicit ``axis`` and exports the 6.5M UNet in about 1 s;
it is deprecated since torch 2.9. ``dynamo`` (``torch.export``, about 10x slower) keeps the fake-quant ops
whole and onnxscript's torchlib translates them to Q/DQ, but tracing a dynamic batch needs Meta kernels for
them, which torch does not ship: :func:`_fake_quant_meta_kernels` adds them. Both exporters refuse a 4-bit
fake-quant range, so 4-bit weights travel through the INT8 range (bit-identical when scale = amax/7) and become
INT4 initializers in a post-pass (``int4.py`` + :func:`set_opset`).

Everything generic (use lists, dead-code removal, Identity elimination, constant folding, shape inference,
external data) is onnx-ir / onnxscript. What stays here is Q/DQ-specific: weight codes rounded as torch
rounds them, scale types for FP16 graphs, Casts around Q/DQ removed, opset raised in place, and Q/DQ counts.
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxscript.optimizer
import torch
from onnx_ir.passes.common import (
    IdentityEliminationPass,
    LiftConstantsToInitializersPass,
    RemoveUnusedNodesPass,
    ShapeInferencePass,
)

from pqcad_deploy.errors import PQCADError

from .spec import ExportSpec

log = logging.getLogger(__name__)
# onnx-ir and onnxscript log every node they skip or remove at INFO (thousands of lines for an SD-1.5 UNet);
# the export report already counts what each pass changed.
for _library in ("onnx_ir", "onnxscript"):
    logging.getLogger(_library).setLevel(logging.WARNING)

EXPORTERS = ("torchscript", "dynamo")
TORCHSCRIPT_MAX_OPSET = 20
MIN_OPSET_QDQ = 13  # per-channel QuantizeLinear/DequantizeLinear (axis)
MIN_OPSET_FP16_QDQ = 19  # float16 x/scale in QuantizeLinear/DequantizeLinear
MIN_OPSET_INT4 = 21
DYNAMO_NATIVE_OPSET = 18  # torch.export's translation writes 18+; older opsets go through a converter
TWO_GB_PROTO = 2**31 - 2**20  # protobuf cannot serialize a message this large
# Constant folding must reach whole UNet weights (e.g. the 4-bit grid clamp on an SD-1.5 conv, 15M values);
# onnxscript's defaults (8,192 in / 262,144 out) stop at small tensors.
FOLD_SIZE_LIMIT = 1 << 31
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
_IR_FLOAT = {"fp32": ir.DataType.FLOAT, "fp16": ir.DataType.FLOAT16}
_FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_QDQ = ("QuantizeLinear", "DequantizeLinear")


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
    wrapper: torch.nn.Module,
    espec: ExportSpec,
    path: Path,
    opset: int,
    precision: str,
    exporter: str = "torchscript",
) -> None:
    """Trace ``wrapper`` (a :class:`UNetWrapper`, quantizers already in export mode) into ``path``.

    Files above 2 GB get their weights written as external data by torch next to ``path``."""
    batch = espec.batch
    if exporter == "dynamo" and espec.dynamic_batch:
        batch = max(batch, 2)  # torch.export specializes a dimension traced at size 1 to the constant 1
    feed = espec.sampler_inputs(batch, dtype=DTYPES[precision])
    args = tuple(feed[n] for n in espec.input_names)
    names = {"input_names": list(espec.input_names), "output_names": list(espec.output_names)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*opset.*")
        warnings.filterwarnings("ignore", message=".*axis name.*")
        if exporter == "dynamo":
            _fake_quant_meta_kernels()
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=_dynamic_shapes(espec),
                optimize=True,
                verbose=False,
                **names,
            )
            return
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            dynamo=False,
            opset_version=min(opset, TORCHSCRIPT_MAX_OPSET),
            dynamic_axes=espec.dynamic_axes(),
            do_constant_folding=True,
            **names,
        )


def _dynamic_shapes(espec: ExportSpec) -> dict | None:
    if not espec.dynamic_batch:
        return None
    batch = torch.export.Dim("B", min=1, max=espec.max_batch)
    return {name: {0: batch} for name in espec.input_names}


@functools.cache
def _fake_quant_meta_kernels() -> torch.library.Library:
    """torch.export traces a dynamic batch with fake tensors, and torch has no Meta kernel for the fake-quant
    ops (``NotImplementedError: ... no fake impl or Meta kernel registered``). The ops are elementwise, so
    the output is shaped like the input (plus the boolean mask the cachemask variants return). The cache keeps
    the library alive: dropping it would unregister the kernels."""

    def like_input(x: torch.Tensor, *_args, **_kwargs):
        return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)

    lib = torch.library.Library("aten", "IMPL")
    for op in (
        "_fake_quantize_per_tensor_affine_cachemask_tensor_qparams",
        "fake_quantize_per_tensor_affine_cachemask",
        "fake_quantize_per_channel_affine_cachemask",
    ):
        try:
            lib.impl(op, like_input, "Meta")
        except RuntimeError as e:  # a torch that ships its own Meta kernel keeps it
            log.debug("Meta kernel for aten::%s not registered: %s", op, e)
    return lib


# ---------------------------------------------------------------- generic clean-up, by the libraries
def remove_unused(model: ir.Model) -> None:
    RemoveUnusedNodesPass()(model)


def eliminate_identities(model: ir.Model) -> int:
    """The TorchScript exporter routes deduplicated constants (zero-points) through Identity nodes. TensorRT's
    parser wants zero-points to come straight from a constant, so consumers read the source directly."""
    before = _count(model, "Identity")
    IdentityEliminationPass()(model)
    return before - _count(model, "Identity")


def fold_constants(model: ir.Model) -> int:
    """Arithmetic on constants is evaluated (the TorchScript exporter does not fold ops on parameters, e.g. the
    4-bit grid clamp ``Max(Min(W, hi), lo)``) and Constant nodes become initializers, so every weight
    quantizer reads an initializer, as TensorRT and :func:`fold_weight_quantizers` need. Q/DQ are never
    folded (onnxscript keeps them by default; folding a weight Q would round as ONNX does, not as torch)."""
    before = model.graph.num_nodes()
    onnxscript.optimizer.fold_constants(
        model, input_size_limit=FOLD_SIZE_LIMIT, output_size_limit=FOLD_SIZE_LIMIT
    )
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    remove_unused(model)
    return before - model.graph.num_nodes()


def infer_types(model: ir.Model) -> None:
    """Element types of every tensor as exported, for :func:`fix_qdq_dtypes`. Call before the passes change
    Q/DQ types: inference would then propagate the scales' types it is meant to fix. onnx-ir hands ONNX only
    the initializers' types, never their data, so this also works above 2 GB."""
    ShapeInferencePass(strict_mode=False)(model)


def forget_inferred_types(model: ir.Model) -> None:
    """Intermediate types were needed by the passes only; the file keeps no value_info, as exported."""
    outputs = set(model.graph.outputs)
    for node in model.graph:
        for v in node.outputs:
            if v not in outputs:
                v.type, v.shape = None, None


def initializer_bytes(model: ir.Model) -> int:
    """Size of all weights, read from tensor metadata (external tensors are not loaded)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _count(model: ir.Model, op_type: str) -> int:
    return sum(n.op_type == op_type for n in model.graph)


# ---------------------------------------------------------------- Q/DQ passes
def quantize_codes(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int, qmin: int, qmax: int):
    """Integer codes exactly as torch's fake-quant computes them: rint(w * (1/s)) + zp, clamped.
    (ORT's QuantizeLinear divides instead; on 6.5M weights that flips ~15 codes.)"""
    w = w.astype(np.float32)
    inv = np.float32(1.0) / scale.astype(np.float32)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * w.ndim
        shape[axis] = -1
        inv, zp = inv.reshape(shape), zp.reshape(shape)
    return np.clip(np.rint(w * inv) + zp.astype(np.float32), qmin, qmax)


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray | ir.TensorProtocol) -> ir.Value:
    tensor = array if isinstance(array, ir.TensorProtocol) else ir.Tensor(array, name=name)
    value = ir.Value(name=name, type=ir.TensorType(tensor.dtype), shape=tensor.shape, const_value=tensor)
    graph.register_initializer(value)
    return value


def fold_weight_quantizers(model: ir.Model) -> int:
    """Q(float weight) -> DQ becomes INT8/UINT8 initializer -> DQ: a 4x smaller file, no runtime Q, and codes
    rounded as torch rounds them (TensorRT folds the weight Q anyway; ORT would round differently)."""
    graph = model.graph
    folded = 0
    for q in [n for n in graph if n.op_type == "QuantizeLinear"]:
        w, scale = q.inputs[0], q.inputs[1]
        zp = q.inputs[2] if len(q.inputs) > 2 else None
        if w is None or not w.is_initializer() or scale is None or scale.const_value is None:
            continue
        weights = w.const_value.numpy()
        if not np.issubdtype(weights.dtype, np.floating):
            continue
        zero = zp.const_value.numpy() if zp is not None and zp.const_value is not None else None
        zdtype = zero.dtype if zero is not None else np.dtype(np.uint8)
        qmin, qmax = (0, 255) if zdtype == np.uint8 else (-128, 127)
        axis = q.attributes.get_int("axis", 1)
        axis = axis + weights.ndim if axis < 0 else axis
        codes = quantize_codes(
            weights, scale.const_value.numpy(), zero if zero is not None else np.zeros(1), axis, qmin, qmax
        )
        q.outputs[0].replace_all_uses_with(
            add_initializer(graph, f"{w.name}_quantized", codes.astype(zdtype))
        )
        graph.remove(q, safe=True)
        folded += 1
    remove_unused(model)
    return folded


def fix_qdq_dtypes(model: ir.Model, precision: str) -> int:
    """Give every Q/DQ scale the float type of the tensor it scales (strong typing: a FP16 Q input needs a FP16
    scale, and a DQ's output type is its scale's type). Torch insists on FP32 scales, so FP16 exports need this.
    Tensor types come from :func:`infer_types` on the graph as exported; untyped tensors get the export
    precision."""
    graph = model.graph
    want = _IR_FLOAT[precision]
    changed = 0
    for n in graph:
        if n.op_type not in _QDQ:
            continue
        if n.op_type == "QuantizeLinear":
            dt = n.inputs[0].dtype
        else:
            src = n.inputs[0].producer()
            dt = src.inputs[0].dtype if src is not None and src.op_type == "QuantizeLinear" else want
        if dt not in _FLOAT_TYPES:
            dt = want
        scale = n.inputs[1]
        if scale is None or not scale.is_initializer() or scale.const_value.dtype == dt:
            continue
        name = f"{scale.name}_{dt.name.lower()}"
        typed = graph.initializers.get(name) or add_initializer(
            graph, name, scale.const_value.numpy().astype(dt.numpy())
        )
        n.replace_input_with(1, typed)
        if n.op_type == "DequantizeLinear":
            n.outputs[0].dtype = dt
        changed += 1
    remove_unused(model)
    return changed


def remove_qdq_casts(model: ir.Model) -> int:
    """FP16 graphs: the quantizers compute in FP32, so torch traces ``Cast(fp32) -> Q -> DQ -> Cast(fp16)``.
    A Cast between DQ and its Conv blocks TensorRT's fusion, so Q reads the FP16 tensor directly and the DQ
    output feeds the consumers directly; :func:`fix_qdq_dtypes` then gives the scales the FP16 type."""
    graph = model.graph
    removed = 0
    for n in list(graph):
        if n.op_type == "QuantizeLinear":
            cast = n.inputs[0].producer()
            if (
                cast is not None
                and cast.op_type == "Cast"
                and cast.attributes.get_int("to") == ir.DataType.FLOAT
            ):
                n.replace_input_with(0, cast.inputs[0])
                removed += 1
        elif n.op_type == "DequantizeLinear":
            uses = n.outputs[0].uses()
            if len(uses) != 1 or uses[0].node.op_type != "Cast":
                continue
            cast = uses[0].node
            if cast.outputs[0].is_graph_output():
                continue
            if cast.attributes.get_int("to") not in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
                continue
            cast.outputs[0].replace_all_uses_with(n.outputs[0])
            graph.remove(cast, safe=True)
            removed += 1
    remove_unused(model)
    return removed


def set_opset(model: ir.Model, opset: int) -> None:
    """Raise the default-domain opset after export. From 20 to 21 only type lists and the new Q/DQ
    attributes change, except GroupNormalization (scale/bias shape), which the TorchScript exporter never emits."""
    cur = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if cur is None or cur >= opset:
        return
    if any(n.op_type == "GroupNormalization" for n in model.graph):
        raise ExportError("GroupNormalization changed meaning in opset 21; cannot raise the opset in place.")
    domain = "" if "" in model.opset_imports else "ai.onnx"
    model.opset_imports[domain] = opset
    model.ir_version = max(model.ir_version, 10)  # INT4 needs IR 10


def qdq_counts(model: ir.Model) -> dict[str, int]:
    graph = model.graph
    ops = [n.op_type for n in graph]
    weights = [
        n.inputs[0].const_value.dtype
        for n in graph
        if n.op_type == "DequantizeLinear" and n.inputs[0].is_initializer()
    ]
    return {
        "nodes": len(ops),
        "QuantizeLinear": ops.count("QuantizeLinear"),
        "DequantizeLinear": ops.count("DequantizeLinear"),
        "int8_weight_initializers": sum(d in (ir.DataType.INT8, ir.DataType.UINT8) for d in weights),
        "int4_weight_initializers": sum(d in (ir.DataType.INT4, ir.DataType.UINT4) for d in weights),
    }
