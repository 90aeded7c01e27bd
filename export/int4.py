"""Rewrite 4-bit weights (exported through the INT8 range) into opset-21 INT4 initializers.

Both torch exporters refuse a (-8, 7) fake-quant range, so 4-bit weights leave torch as INT8 Q/DQ with
scale = amax/7, which is bit-identical (cpu-measurements §2). After :func:`fold_weight_quantizers` they are INT8
codes in [-8, 7] feeding a DequantizeLinear. Here:

* Linear weights reaching ``MatMul`` through the exporter's ``Transpose`` become ``W^T [K, N]`` INT4 with the
  scale on axis 1 (per output channel), or blocked along K (``axis=0, block_size=B``) when the checkpoint's
  scales are blocked; the Transpose is removed. This is the form TensorRT's weight-only INT4 path and ORT's
  MatMulNBits fusion accept.
* Linear weights feeding ``Gemm(transB=1)`` become INT4 ``[N, K]`` per-channel (axis 0).
* Conv weights stay INT8 containers holding 4-bit-grid codes: TensorRT has no INT4 convolution, and the
  numbers are the same, so they run as INT8 kernels.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_export import ExportError, constant_value, consumers, get_attr, remove_unused

log = logging.getLogger(__name__)


def _int4_tensor(values: np.ndarray, name: str) -> onnx.TensorProto:
    # helper.make_tensor packs two values per byte, low nibble first (the ONNX int4 layout).
    return helper.make_tensor(
        name, TensorProto.INT4, list(values.shape), values.astype(np.int8).flatten().tolist()
    )


def rewrite_int4(graph: onnx.GraphProto, eligible: set[str] | None = None) -> dict[str, int]:
    """Convert weight DQs whose INT8 codes lie in [-8, 7] (and whose source weight name is in ``eligible``,
    when given) into INT4 form. Returns counts: ``int4_matmul``, ``int4_gemm``, ``int8_container_conv``."""
    inits = {i.name: i for i in graph.initializer}
    cons = consumers(graph)
    counts = {"int4_matmul": 0, "int4_gemm": 0, "int8_container_conv": 0}
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]:
        w_init = inits[dq.input[0]]
        if w_init.data_type != TensorProto.INT8 or len(w_init.dims) < 2:
            continue
        base = dq.input[0].removesuffix("_quantized")
        if eligible is not None and base not in eligible:
            continue
        codes = numpy_helper.to_array(w_init)
        if codes.min() < -8 or codes.max() > 7:
            if eligible is not None:
                raise ExportError(
                    f"Weight {base} is marked 4-bit but its codes span [{codes.min()}, {codes.max()}]; the "
                    "4-bit quantizer must export with scale = amax/7 so codes stay in [-8, 7]."
                )
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]])
        chain, op = _chain(graph, cons, dq.output[0])
        if op is None:
            continue
        if op.op_type == "Conv":
            counts["int8_container_conv"] += 1
            continue
        block = 0
        reshape = next((c for c in chain if c.op_type == "Reshape"), None)
        if reshape is not None:  # blocked scales: [N*K/B, B] codes -> [N, K]
            shape = constant_value(graph, reshape.input[1], inits)
            if shape is None or len(shape) != 2 or codes.ndim != 2:
                continue
            n_out, k = (int(v) for v in shape)
            block = codes.shape[1]
            codes, scale = codes.reshape(n_out, k), scale.reshape(n_out, k // block)
        transposed = any(c.op_type == "Transpose" for c in chain)
        if op.op_type == "Gemm" and get_attr(op, "transB", 0) == 1 and not transposed:
            # W [N, K]: per-channel on axis 0, or blocks along K (axis 1)
            _replace_dq(graph, dq, codes, scale, 1 if block else 0, block, f"{base}_int4", inits)
            counts["int4_gemm"] += 1
        elif op.op_type == "MatMul" and transposed and op.input[1] == chain[-1].output[0]:
            # W^T [K, N]: per-channel on axis 1, or blocks along K (axis 0) -- TensorRT's weight-only form
            sc = scale.T.copy() if block else scale
            _replace_dq(graph, dq, codes.T.copy(), sc, 0 if block else 1, block, f"{base}_int4_T", inits)
            counts["int4_matmul"] += 1
        else:
            continue
        if chain:
            op.input[list(op.input).index(chain[-1].output[0])] = dq.output[0]
        for c in chain:
            graph.node.remove(c)
    remove_unused(graph)
    log.info("INT4 rewrite: %s", counts)
    return counts


def _chain(graph, cons, name: str):
    """Follow a single-consumer path of Reshape/Transpose nodes to the op that uses the weight."""
    chain = []
    while True:
        users = cons.get(name, [])
        if len(users) != 1:
            return chain, None
        u = users[0]
        if u.op_type in ("Reshape", "Transpose"):
            if u.op_type == "Transpose" and list(get_attr(u, "perm", [1, 0])) != [1, 0]:
                return chain, None
            chain.append(u)
            name = u.output[0]
            continue
        return chain, (u if u.op_type in ("Conv", "Gemm", "MatMul") else None)


def _replace_dq(
    graph, dq, codes: np.ndarray, scale: np.ndarray, axis: int, block: int, name: str, inits: dict
) -> None:
    if codes.shape[-1] % 2:
        raise ExportError(
            f"INT4 weight {name} has an odd last dimension {codes.shape}; TensorRT needs it even."
        )
    scale_dtype = helper.tensor_dtype_to_np_dtype(inits[dq.input[1]].data_type)  # FP16 exports keep FP16
    w = _int4_tensor(codes, name)
    zp = _int4_tensor(np.zeros(scale.shape if scale.size > 1 else (), np.int8), f"{name}_zp")
    s = numpy_helper.from_array(scale.astype(scale_dtype), f"{name}_scale")
    graph.initializer.extend([w, zp, s])
    for t in (w, zp, s):
        inits[t.name] = t
    del dq.input[:]
    dq.input.extend([w.name, s.name, zp.name])
    for a in [a for a in dq.attribute if a.name in ("axis", "block_size")]:
        dq.attribute.remove(a)
    if scale.size > 1:
        dq.attribute.append(helper.make_attribute("axis", axis))
    if block:
        dq.attribute.append(helper.make_attribute("block_size", block))
