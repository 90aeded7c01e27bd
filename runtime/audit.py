"""Fusion audits after a build: did the quantized layers really become integer kernels?

* TensorRT: reads the layer-info JSON (``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)``
  or ``trtexec --exportLayerInfo``: ``{"Layers": [...], "Bindings": [...]}``, one dict per layer with ``Name``,
  ``LayerType``, ``Inputs``/``Outputs`` carrying ``"Format/Datatype"``, optional ``Weights`` and ``Metadata``)
  and lists compute layers left in float, standalone Quantize/Dequantize layers and Reformat layers; each of
  those is a separate memory-bound kernel.
* ONNX Runtime: counts the operators of the optimized model ORT saved (QLinearConv, QGemm,
  MatMulIntegerToFloat, leftover Q/DQ, float Conv...).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_COMPUTE_TYPES = re.compile(r"convolution|deconvolution|gemm|matrixmultiply|fullyconnected", re.I)
_COMPUTE_NAMES = re.compile(r"(^|[/_.\s])(conv|convtranspose|gemm|matmul)([_\s/.]|\d|$)", re.I)
_QDQ_NAME = re.compile(r"(de)?quantize(linear)?|(^|[/_])(q|dq)(_|\d|$)", re.I)


def tensor_precision(fmt: str) -> str:
    """Map a ``Format/Datatype`` string (e.g. 'Thirty-two wide channel vectorized row major Int8 format.',
    'Row major linear FP16 format', 'Float', 'Half') to INT8/INT4/FP8/BF16/FP16/FP32/unknown."""
    s = fmt.lower()
    for key, pats in (
        ("INT8", ("int8",)),
        ("INT4", ("int4",)),
        ("FP8", ("fp8", "e4m3")),
        ("BF16", ("bf16", "bfloat16")),
        ("FP16", ("fp16", "half")),
        ("FP32", ("fp32", "float")),
        ("INT32", ("int32",)),
        ("INT64", ("int64",)),
        ("BOOL", ("bool",)),
    ):
        if any(p in s for p in pats):
            return key
    return "unknown"


def _parts(layer: dict[str, Any]) -> list[str]:
    """The ONNX nodes fused into one engine layer, from ``Metadata`` when present, else the joined name."""
    meta = layer.get("Metadata") or ""
    found = re.findall(r"\[ONNX Layer: ([^\]]+)\]", meta)
    return found or [p.strip() for p in str(layer.get("Name", "")).split(" + ") if p.strip()]


@dataclass
class LayerAuditReport:
    total_layers: int = 0
    compute_layers: int = 0
    quantized_compute: list[str] = field(default_factory=list)
    float_compute: list[tuple[str, str]] = field(default_factory=list)  # (name, precision)
    standalone_qdq: list[str] = field(default_factory=list)
    reformat: list[str] = field(default_factory=list)
    unknown_precision: int = 0
    precision_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"layers {self.total_layers}, compute {self.compute_layers}: "
            f"{len(self.quantized_compute)} integer/FP8, {len(self.float_compute)} left in float; "
            f"standalone Q/DQ {len(self.standalone_qdq)}, Reformat {len(self.reformat)}",
        ]
        for title, items in (
            ("compute layers left in float", [f"{n}  [{p}]" for n, p in self.float_compute]),
            ("standalone Q/DQ layers", self.standalone_qdq),
            ("Reformat layers", self.reformat),
        ):
            if items:
                lines.append(f"{title}:")
                lines += [f"  {s}" for s in items[:50]] + (
                    [f"  ... {len(items) - 50} more"] if len(items) > 50 else []
                )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def audit_layer_info(info: dict[str, Any] | list | str | os.PathLike) -> LayerAuditReport:
    """Audit TensorRT layer information (a dict, the ``Layers`` list, a JSON string or a file path)."""
    if isinstance(info, (str, os.PathLike)) and not str(info).lstrip().startswith(("{", "[")):
        info = json.loads(Path(info).read_text())
    elif isinstance(info, str):
        info = json.loads(info)
    layers = info.get("Layers", []) if isinstance(info, dict) else info
    rep = LayerAuditReport(total_layers=len(layers))
    precisions: Counter[str] = Counter()
    names_only = False
    for layer in layers:
        if isinstance(layer, str):  # ProfilingVerbosity.LAYER_NAMES_ONLY
            names_only = True
            layer = {"Name": layer}
        name = str(layer.get("Name", ""))
        ltype = str(layer.get("LayerType", ""))
        parts = _parts(layer)
        if ltype == "Reformat" or name.startswith("Reformatting CopyNode"):
            rep.reformat.append(name)
            continue
        compute_type = bool(_COMPUTE_TYPES.search(ltype))
        # Names decide only when the type does not: a standalone Q can be a "Scale" layer, while a convolution
        # may well be named like a quantizer ("conv_q").
        named_qdq = not compute_type and parts and all(_QDQ_NAME.search(p) for p in parts)
        if ltype in ("Quantize", "Dequantize") or named_qdq:
            rep.standalone_qdq.append(name)
            continue
        is_compute = compute_type or any(_COMPUTE_NAMES.search(p) for p in parts)
        if not is_compute:
            continue
        rep.compute_layers += 1
        ins = [tensor_precision(str(t.get("Format/Datatype", ""))) for t in layer.get("Inputs", [])]
        wtype = tensor_precision(str((layer.get("Weights") or {}).get("Type", "")))
        known = [p for p in [*ins, wtype] if p != "unknown"]
        if not known:
            rep.unknown_precision += 1
            continue
        prec = next((p for p in known if p in ("INT8", "INT4", "FP8")), known[0])
        precisions[prec] += 1
        if prec in ("INT8", "INT4", "FP8"):
            rep.quantized_compute.append(name)
        else:
            rep.float_compute.append((name, prec))
    rep.precision_counts = dict(precisions)
    if names_only:
        rep.notes.append(
            "layer info has names only; rebuild with --profilingVerbosity=detailed for precisions"
        )
    if rep.unknown_precision:
        rep.notes.append(
            f"{rep.unknown_precision} compute layers have no resolved format (dynamic shapes): export the layer "
            "info with an execution context whose input shapes are set"
        )
    return rep


# -- ONNX Runtime -------------------------------------------------------------------------------------
ORT_INTEGER_OPS = (
    "QLinearConv",
    "QGemm",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
    "MatMulNBits",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "QAttention",
)
ORT_FLOAT_COMPUTE = ("Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul", "FusedGemm")


def audit_onnx_ops(model: Any) -> dict[str, Any]:
    """Op counts of an (optimized) ONNX model: integer kernels vs float compute vs leftover Q/DQ."""
    import onnx

    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    ops = Counter(n.op_type for n in m.graph.node)
    integer = {k: ops[k] for k in ORT_INTEGER_OPS if ops.get(k)}
    float_ = {k: ops[k] for k in ORT_FLOAT_COMPUTE if ops.get(k)}
    return {
        "nodes": sum(ops.values()),
        "integer_ops": integer,
        "float_compute": float_,
        "quantize_linear": ops.get("QuantizeLinear", 0),
        "dequantize_linear": ops.get("DequantizeLinear", 0),
        "op_counts": dict(sorted(ops.items())),
    }


def format_onnx_audit(a: dict[str, Any]) -> str:
    fmt = lambda d: ", ".join(f"{k} {v}" for k, v in d.items()) or "none"  # noqa: E731
    return (
        f"nodes {a['nodes']}; integer kernels: {fmt(a['integer_ops'])}; float compute: {fmt(a['float_compute'])}; "
        f"leftover QuantizeLinear {a['quantize_linear']}, DequantizeLinear {a['dequantize_linear']}"
    )
