"""Apply a personalization patch to an exported QDQ graph: only the weight dequantization scales change.

Every patched layer's integer codes are found by name (``<weight>_quantized``, as the exporter folds them), checked
against the patch's layout fingerprint (a patch for another model or another quantization is refused before
anything is written), and the scale initializer of the DequantizeLinear that reads them is replaced (in the
graph's scale type; a scale shared with another node gets its own copy). The codes are compared byte for byte
with the input graph after the rewrite; the output is written atomically.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from pqcad_deploy.io import atomic_write
from pqcad_deploy.patch import PatchError, ScalePatch, codes_digest, layout_fingerprint

from .onnx_export import TWO_GB_PROTO, add_initializer, initializer_bytes

log = logging.getLogger(__name__)
CODES_SUFFIX = "_quantized"


def _weight_codes(graph: ir.Graph) -> dict[str, list[tuple[ir.Value, np.ndarray]]]:
    """Every integer initializer a DequantizeLinear reads as its input, by codes digest (2-D ones also transposed:
    a 4-bit MatMul weight is stored [in, out]); the arrays in the torch layout the digest was taken of."""
    index: dict[str, list[tuple[ir.Value, np.ndarray]]] = {}
    for v in graph.initializers.values():
        if v.const_value is None or not any(n.op_type == "DequantizeLinear" and i == 0 for n, i in v.uses()):
            continue
        a = v.const_value.numpy()
        if not np.issubdtype(np.dtype(a.dtype), np.integer) and "int4" not in str(a.dtype):
            continue
        a = a.astype(np.int8)
        for arr in (a, a.T) if a.ndim == 2 else (a,):
            index.setdefault(codes_digest(arr), []).append((v, arr))
    return index


def _find_codes(index: dict, layer: str, digest: str | None) -> tuple[ir.Value, np.ndarray]:
    hits = index.get(digest or "", [])
    if len(hits) > 1:  # identical codes in several layers: the layer's own name decides
        hits = [h for h in hits if h[0].name.endswith(f"{layer}{CODES_SUFFIX}")]
    if len(hits) != 1:
        raise PatchError(
            f"the graph holds no integer weight codes matching {layer} (found {len(hits)}): it is not a QDQ export of "
            "the student this patch was trained from (another model or another quantization). Export the base "
            "student with pqcad-export and apply the patch to that file."
        )
    return hits[0]


def _dequantize_node(codes: ir.Value, layer: str) -> ir.Node:
    users = [n for n, _ in codes.uses() if n.op_type == "DequantizeLinear"]
    if len(users) != 1:
        raise PatchError(f"{layer}: expected one DequantizeLinear reading its codes, found {len(users)}.")
    return users[0]


def apply_patch(src: str | Path, patch: ScalePatch, out: str | Path) -> dict[str, Any]:
    """Write ``out``: ``src`` with the patch's scales. Returns what changed and how long it took."""
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise PatchError(f"--out {out} is the input graph; write the personalized graph to another file.")
    model = ir.external_data.load_to_model(ir.load(src))
    if initializer_bytes(model) >= TWO_GB_PROTO:
        raise PatchError(
            f"{src} holds more than 2 GB of weights; patching graphs with external data is not supported."
        )
    graph = model.graph
    digests = patch.meta.get("code_digests") or {}
    index = _weight_codes(graph)
    scales = patch.scales
    found = {name: _find_codes(index, name, digests.get(name)) for name in scales}
    codes = {name: v for name, (v, _) in found.items()}
    before = {name: v.const_value.tobytes() for name, v in codes.items()}
    if layout_fingerprint({n: arr for n, (_, arr) in found.items()}) != patch.fingerprint:
        raise PatchError(
            f"the patch does not fit {src}: the graph's codes differ from the layout it was trained on (another model, "
            "another quantization, or another student's export)."
        )
    copied = 0
    for name, value in codes.items():
        dq = _dequantize_node(value, name)
        scale = dq.inputs[1]
        if scale is None or scale.const_value is None:
            raise PatchError(f"{name}: its DequantizeLinear scale is not a constant initializer.")
        new = (
            scales[name]
            .numpy()
            .astype(scale.const_value.numpy().dtype)
            .reshape(scale.const_value.numpy().shape)
        )
        if len(scale.uses()) > 1:  # shared: give this DQ its own scale
            dq.replace_input_with(1, add_initializer(graph, f"{name}_patched_scale", new))
            copied += 1
        else:
            scale.const_value = ir.Tensor(new, name=scale.name)
    changed = [n for n, v in codes.items() if v.const_value.tobytes() != before[n]]
    if changed:  # cannot happen through the code above; guards later edits of it
        raise PatchError(f"internal error: the integer codes of {changed[:3]} changed; nothing was written.")
    atomic_write(out, lambda tmp: ir.save(model, tmp))
    info = {"layers": len(codes), "scale_copies": copied, "scale_values": patch.num_parameters,
            "seconds": round(time.perf_counter() - t0, 3), "out": str(out)}  # fmt: skip
    log.info("patched %d scale initializers of %s -> %s in %.2f s", len(codes), src, out, info["seconds"])
    return info
