"""Rewrite 4-bit weights (exported through the INT8 range) into opset-21 INT4 initializers.

Both torch exporters refuse a (-8, 7) fake-quant range, so 4-bit weights leave torch as INT8 Q/DQ with
scale = amax/7, which is bit-identical. After :func:`fold_weight_quantizers` they are INT8 codes in [-8, 7]
feeding a DequantizeLinear. Here:

* Linear weights reaching ``MatMul`` through the exporter's ``Transpose`` become ``W^T [K, N]`` INT4 with the
  scale on axis 1 (per output channel), or blocked along K (``axis=0, block_size=B``) when the checkpoint's
  scales are blocked; the Transpose is removed. This is the form TensorRT's weight-only INT4 path and ORT's
  MatMulNBits fusion accept.
* Linear weights feeding ``Gemm(transB=1)`` become INT4 ``[N, K]`` per-channel (axis 0).
* Conv weights stay INT8 containers holding 4-bit-grid codes: TensorRT has no INT4 convolution, and the
  numbers are the same, so they run as INT8 kernels.

INT4 tensors are ``ml_dtypes.int4`` arrays; onnx-ir packs them two per byte (low nibble first) on save.
"""

from __future__ import annotations

import logging

import ml_dtypes
import numpy as np
import onnx_ir as ir

from .onnx_export import ExportError, add_initializer, remove_unused

log = logging.getLogger(__name__)


def rewrite_int4(model: ir.Model, eligible: set[str] | None = None) -> dict[str, int]:
    """Convert weight DQs whose INT8 codes lie in [-8, 7] (and whose source weight name is in ``eligible``,
    when given) into INT4 form. Returns counts: ``int4_matmul``, ``int4_gemm``, ``int8_container_conv``."""
    graph = model.graph
    counts = {"int4_matmul": 0, "int4_gemm": 0, "int8_container_conv": 0}
    for dq in [n for n in graph if n.op_type == "DequantizeLinear" and n.inputs[0].is_initializer()]:
        weight = dq.inputs[0]
        if weight.const_value.dtype != ir.DataType.INT8 or len(weight.const_value.shape) < 2:
            continue
        base = weight.name.removesuffix("_quantized")
        if eligible is not None and base not in eligible:
            continue
        codes = weight.const_value.numpy()
        if codes.min() < -8 or codes.max() > 7:
            if eligible is not None:
                raise ExportError(
                    f"Weight {base} is marked 4-bit but its codes span [{codes.min()}, {codes.max()}]; the "
                    "4-bit quantizer must export with scale = amax/7 so codes stay in [-8, 7]."
                )
            continue
        scale = dq.inputs[1].const_value.numpy()
        chain, op = _chain(dq.outputs[0])
        if op is None:
            continue
        if op.op_type == "Conv":
            counts["int8_container_conv"] += 1
            continue
        block = 0
        reshape = next((c for c in chain if c.op_type == "Reshape"), None)
        if reshape is not None:  # blocked scales: [N*K/B, B] codes -> [N, K]
            shape = ir.convenience.get_const_tensor(reshape.inputs[1])
            if shape is None or shape.size != 2 or codes.ndim != 2:
                continue
            n_out, k = (int(v) for v in shape.numpy())
            block = codes.shape[1]
            codes, scale = codes.reshape(n_out, k), scale.reshape(n_out, k // block)
        transposed = any(c.op_type == "Transpose" for c in chain)
        if op.op_type == "Gemm" and op.attributes.get_int("transB", 0) == 1 and not transposed:
            # W [N, K]: per-channel on axis 0, or blocks along K (axis 1)
            _replace_dq(graph, dq, codes, scale, 1 if block else 0, block, f"{base}_int4")
            counts["int4_gemm"] += 1
        elif op.op_type == "MatMul" and transposed and op.inputs[1] is chain[-1].outputs[0]:
            # W^T [K, N]: per-channel on axis 1, or blocks along K (axis 0) -- TensorRT's weight-only form
            sc = scale.T.copy() if block else scale
            _replace_dq(graph, dq, codes.T.copy(), sc, 0 if block else 1, block, f"{base}_int4_T")
            counts["int4_matmul"] += 1
        else:
            continue
        if chain:  # the op reads the rewritten DQ directly; the Reshape/Transpose chain is left unused
            chain[-1].outputs[0].replace_all_uses_with(dq.outputs[0])
    remove_unused(model)
    log.info("INT4 rewrite: %s", counts)
    return counts


def _chain(value: ir.Value) -> tuple[list[ir.Node], ir.Node | None]:
    """Follow a single-consumer path of Reshape/Transpose nodes to the op that uses the weight."""
    chain = []
    while True:
        uses = value.uses()
        if len(uses) != 1:
            return chain, None
        user = uses[0].node
        if user.op_type in ("Reshape", "Transpose"):
            if user.op_type == "Transpose" and list(user.attributes.get_ints("perm", [1, 0])) != [1, 0]:
                return chain, None
            chain.append(user)
            value = user.outputs[0]
            continue
        return chain, (user if user.op_type in ("Conv", "Gemm", "MatMul") else None)


def _replace_dq(
    graph: ir.Graph, dq: ir.Node, codes: np.ndarray, scale: np.ndarray, axis: int, block: int, name: str
) -> None:
    if codes.shape[-1] % 2:
        raise ExportError(
            f"INT4 weight {name} has an odd last dimension {codes.shape}; TensorRT needs it even."
        )
    scale_dtype = dq.inputs[1].const_value.dtype.numpy()  # FP16 exports keep FP16
    zero = np.zeros(scale.shape if scale.size > 1 else (), ml_dtypes.int4)
    dq.resize_inputs(3)
    dq.replace_input_with(0, add_initializer(graph, name, codes.astype(ml_dtypes.int4)))
    dq.replace_input_with(1, add_initializer(graph, f"{name}_scale", scale.astype(scale_dtype)))
    dq.replace_input_with(2, add_initializer(graph, f"{name}_zp", zero))
    dq.outputs[0].shape = ir.Shape(codes.shape)
    dq.attributes.pop("axis", None)
    dq.attributes.pop("block_size", None)
    if scale.size > 1:
        dq.attributes["axis"] = ir.AttrInt64("axis", axis)
    if block:
        dq.attributes["block_size"] = ir.AttrInt64("block_size", block)
