"""Apply a personalization patch to an exported QDQ graph: only the weight dequantization scales change.

Every patched layer's integer codes are found by name (``<weight>_quantized``, as the exporter folds them), checked
against the patch's layout fingerprint (a patch for another model or another quantization is refused before
anything is written), and the scale initializer of the DequantizeLinear that reads them is replaced (in the
graph's scale type; a scale shared with another node gets its own copy). The codes are compared byte for byte
with the input graph after the rewrite; the output is written atomically.

File sets: an S2 patch (one scale set per timestep interval) or an interval manifest as input gives one file per
interval (``<out stem>.i<k>.onnx``, interval k's scales) and an interval manifest of them, written last, which the
interval runners and ``pqcad-build`` read like an exported one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from pqcad_deploy.interval_manifest import (
    MANIFEST_FORMAT,
    MANIFEST_SUFFIX,
    MANIFEST_VERSION,
    interval_file,
    is_manifest,
    manifest_path,
    read_manifest,
    sha256,
)
from pqcad_deploy.io import CheckpointError, atomic_json_save, atomic_write
from pqcad_deploy.patch import PatchError, ScalePatch, codes_digest, layout_fingerprint

from .onnx_export import TWO_GB_PROTO, add_initializer, initializer_bytes
from .pipeline import report_path

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
    """Write ``out``: ``src`` with the patch's scales; for an S2 patch or a manifest ``src``, one file per interval
    and their manifest (``out`` may name the ONNX stem or the manifest). Returns what changed and how long it took."""
    src, out = Path(src), Path(out)
    if patch.intervals is None and not is_manifest(src):
        return _apply_one(src, patch, patch.scale_set(0), out)
    t0 = time.perf_counter()
    if is_manifest(out):
        out = out.with_name(out.name[: -len(MANIFEST_SUFFIX)] + ".onnx")
    base = _base_set(src, patch)
    outs = [interval_file(out, k) for k in range(len(base["entries"]))]
    if any(f.resolve() == s.resolve() for f in outs for s in base["files"]):
        raise PatchError(f"--out {out} would overwrite an input graph; write the personalized set elsewhere.")
    infos = [
        _apply_one(f, patch, patch.scale_set(k if patch.intervals is not None else 0), o)
        for k, (f, o) in enumerate(zip(base["files"], outs, strict=True))
    ]
    entries = [{**e, "onnx": o.name, "sha256": sha256(o)} for e, o in zip(base["entries"], outs, strict=True)]
    doc = {**base["doc"], "source": f"{base['doc'].get('source')} + {patch.meta.get('method', 'patch')} patch",
           "entries": entries}  # fmt: skip
    mpath = manifest_path(out)
    atomic_json_save(doc, mpath)  # last: the manifest exists only when every file does
    info = {"layers": infos[0]["layers"], "scale_copies": sum(i["scale_copies"] for i in infos),
            "scale_values": patch.num_parameters, "seconds": round(time.perf_counter() - t0, 3),
            "out": str(mpath), "files": [i["out"] for i in infos]}  # fmt: skip
    log.info("patched %d interval files -> %s in %.2f s", len(outs), mpath, info["seconds"])
    return info


def _base_set(src: Path, patch: ScalePatch) -> dict[str, Any]:
    """The graphs one per interval, their manifest entries and the manifest fields the patched set keeps: from an
    exported manifest, or (S2 patch on one graph) the same graph for every interval of the patch."""
    if is_manifest(src):
        try:
            schedule, files, doc = read_manifest(src)
        except CheckpointError as e:
            raise PatchError(str(e)) from None
        if doc.get("backend"):
            raise PatchError(
                f"{src} is an engine manifest (built for {doc['backend']}); patch the exported ONNX manifest, then "
                "build engines from the patched one."
            )
        if patch.intervals is not None and patch.intervals.starts != schedule.starts:
            raise PatchError(
                f"the patch's intervals start at {list(patch.intervals.starts)}, {src}'s at "
                f"{list(schedule.starts)}; apply it to the graphs of the student it was trained from."
            )
        return {"files": files, "entries": doc["entries"], "doc": doc}
    report = _export_report(src)
    entries = [{"interval": k, "precision": report.get("precision"), "activations": "int"}
               for k in range(patch.k)]  # fmt: skip
    doc = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "model": report.get("model"),
           "source": str(src), "target": report.get("target"), "intervals": patch.intervals.to_dict(),
           "sampler_steps": (patch.meta.get("training") or {}).get("sampler_steps")}  # fmt: skip
    return {"files": [src] * patch.k, "entries": entries, "doc": doc}


def _export_report(src: Path) -> dict[str, Any]:
    """Model, target and precision of ``src`` from its export report (``pqcad-export`` writes it beside the graph);
    empty when the report is not there."""
    try:
        r = json.loads(report_path(src).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    wbits = r.get("weight_bits")
    return {"model": r.get("model"), "target": r.get("target"), "precision": f"w{wbits}a8" if wbits else None}


def _apply_one(src: Path, patch: ScalePatch, scales: dict[str, torch.Tensor], out: Path) -> dict[str, Any]:
    """``src`` with ``scales`` (one set of the patch) written to ``out``."""
    t0 = time.perf_counter()
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
