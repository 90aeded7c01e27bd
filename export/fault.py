"""Fault injection for QDQ files: give one layer a wrong quantization scale, to check that ``pqcad-debug`` ranks
the layer that is known to be broken first (on our exports and on files other tools wrote)."""

from __future__ import annotations

import os

import numpy as np
import onnx_ir as ir

from pqcad_deploy.export.layer_debug import DebugError, _const, load_model

WHICH = ("weight", "act")


def _scale_value(v: ir.Value) -> np.ndarray:
    """A constant scale: an initializer or the output of a Constant node (modelopt's form)."""
    const = _const(v)
    if const is None:
        raise DebugError(f"scale {v.name!r} is not a constant")
    return const[0]


def scale_quantizer(
    src: str | os.PathLike, dst: str | os.PathLike, node_name: str, which: str, factor: float = 50.0
) -> str:
    """Write ``dst``: ``src`` with one quantizer of node ``node_name`` given a wrong scale, ``factor`` times too large.

    ``weight`` (input 1): only its DequantizeLinear's scale, so the same integer codes dequantize to weights
    ``factor`` times too large, whether the file stores INT8 weights or float weights behind Q -> DQ with one shared
    scale (modelopt). ``act`` (input 0): the scale of its QuantizeLinear and DequantizeLinear, a calibrated range
    ``factor`` times too wide. Returns the DequantizeLinear's name."""
    if which not in WHICH:
        raise DebugError(f"which must be one of {WHICH}, got {which!r}")
    model = load_model(src, "QDQ model")
    node = next((n for n in model.graph if n.name == node_name), None)
    if node is None:
        raise DebugError(f"no node named {node_name!r} in {src}")
    v = node.inputs[0 if which == "act" else 1]
    while v is not None and v.producer() is not None and v.producer().op_type != "DequantizeLinear":
        v = v.producer().inputs[0]  # a MatMul weight comes through a Transpose
    if v is None or v.producer() is None:
        raise DebugError(f"the {which} input of {node_name!r} has no DequantizeLinear")
    dq = v.producer()
    q = dq.inputs[0].producer()
    users = [dq] + ([q] if which == "act" and q is not None and q.op_type == "QuantizeLinear" else [])
    scaled = ir.Value(name=f"{dq.name}_scale_x{factor:g}")
    scaled.const_value = ir.tensor(_scale_value(dq.inputs[1]) * np.float32(factor), name=scaled.name)
    model.graph.register_initializer(scaled)
    for user in users:  # a new value: a scale shared with other nodes stays as it was for them
        user.replace_input_with(1, scaled)
    ir.save(model, dst)
    return dq.name or ""
