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


# -- ONNX Runtime ground truth, per layer ---------------------------------------------------------------
ORT_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Integer kernels a Conv/Gemm/MatMul can become (QLinearConv keeps its name under the NHWC/NCHWc layout passes).
ORT_LAYER_INTEGER_OPS = (*ORT_INTEGER_OPS, "QLinearConvTranspose", "QOrderedMatMul", "QLinearAttention")


def ort_optimized_model(path: str | os.PathLike, optimization: str = "extended") -> Any:
    """Let ORT (CPU EP) optimize ``path`` once and return the model it wrote (``optimized_model_filepath``).

    ``extended`` is where the QDQ -> QLinear*/QGemm/MatMulIntegerToFloat fusions run; ``all`` adds only layout
    passes (NCHWc/NHWC), which do not change whether a layer is integer."""
    import tempfile

    import onnx

    from .backends.ort_backend import OrtRunner

    with tempfile.TemporaryDirectory(prefix="pqcad-ort-opt-") as d:
        out = Path(d) / "optimized.onnx"
        entries = {
            "session.optimized_model_external_initializers_file_name": "optimized.onnx.data",
            "session.optimized_model_external_initializers_min_size_in_bytes": "1024",
        }
        runner = OrtRunner(
            path,
            providers=["CPUExecutionProvider"],
            intra_op_threads=1,
            optimization=optimization,
            optimized_model_filepath=out,
            session_config_entries=entries,
            log_severity=3,
        )
        with runner:
            pass
        return onnx.load(str(out), load_external_data=False)


def _layer_key(node: Any) -> str:
    return node.name or (node.output[0] if node.output else "")


def ort_fused_layers(path: str | os.PathLike, optimization: str = "extended") -> dict[str, str]:
    """For every Conv/ConvTranspose/Gemm/MatMul of ``path``: the op ORT's optimized graph runs it as (e.g.
    ``QLinearConv``, ``MatMulIntegerToFloat``, ``FusedConv``, ``Conv``), keyed like the rule-based audit
    (node name, else first output). This is ORT's own answer to "which layers became integer kernels", used to
    check the rule-based audit (``export.audit``); ``""`` when no optimized node could be matched.

    Matching: fused nodes keep the name of the node they replace; unnamed layers are matched through their output
    tensor or the output of the Q that consumed it (a QLinear op writes the Q's output)."""
    import onnx

    src = onnx.load(str(path), load_external_data=False)
    opt = ort_optimized_model(path, optimization)
    by_name: dict[str, str] = {}
    by_output: dict[str, str] = {}
    for n in opt.graph.node:
        if n.name:
            by_name.setdefault(n.name, n.op_type)
        for o in n.output:
            by_output[o] = n.op_type
    consumers: dict[str, list[Any]] = {}
    for n in src.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    result: dict[str, str] = {}
    for n in src.graph.node:
        if n.op_type not in ORT_COMPUTE:
            continue
        op = by_name.get(n.name, "") if n.name else ""
        if not op and n.output:
            q_outs = [c.output[0] for c in consumers.get(n.output[0], []) if c.op_type == "QuantizeLinear"]
            op = next((by_output[o] for o in [n.output[0], *q_outs] if o in by_output), "")
        result[_layer_key(n)] = op
    return result


def is_integer_kernel(op_type: str) -> bool:
    """Does ORT run a layer fused into ``op_type`` with integer arithmetic?"""
    return op_type in ORT_LAYER_INTEGER_OPS
