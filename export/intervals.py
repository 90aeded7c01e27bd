"""Per-interval deployment of a timestep-aware student: one ONNX per timestep interval plus a manifest.

Every file holds the same INT8 weights and its interval's activation scales (``quant.intervals.single_set_copy``),
exported and verified by the one export path; a relaxed interval (activation relaxing) is a weight-only file
whose activations stay float (precision ``w8``). The manifest (``<stem>.manifest.json``, written last, so it exists
only when every file does; format in ``pqcad_deploy.interval_manifest``) records the intervals, the files with their
SHA-256, and the precision per interval; runners switch engine by timestep (``runtime.backends.interval_backend``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pqcad_deploy.interval_manifest import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    interval_file,
    manifest_path,
    sha256,
)
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import ModelBundle
from pqcad_deploy.quant.intervals import IntervalError, get_intervals, single_set_copy

from .pipeline import ExportOptions, export


def export_intervals(bundle: ModelBundle, onnx_path: str | Path, opts: ExportOptions) -> dict[str, Any]:
    """Export interval k of ``bundle``'s K-set student to ``<stem>.i<k>.onnx`` for every k, then the manifest."""
    schedule = get_intervals(bundle.model)
    if schedule is None:
        raise IntervalError(f"{bundle.source} holds one set of activation ranges; export it as one file.")
    reports, entries = [], []
    precision = (
        f"w{bundle.qcfg.weight_bits}a{bundle.qcfg.act_bits}" if bundle.qcfg is not None else opts.precision
    )
    for k in range(schedule.k):
        one = ModelBundle(
            single_set_copy(bundle.model, k), bundle.spec, bundle.qcfg, bundle.meta, bundle.source
        )
        path = interval_file(onnx_path, k)
        relaxed = schedule.is_relaxed(k)
        # a relaxed interval's float activations are the point: its float layers are not an audit failure
        reports.append(export(one, path, replace(opts, strict_audit=False) if relaxed else opts))
        entries.append({
            "interval": k, "onnx": path.name, "sha256": sha256(path),
            "precision": f"w{bundle.qcfg.weight_bits}" if relaxed and bundle.qcfg is not None else precision,
            "activations": "float" if relaxed else "int",
        })  # fmt: skip
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "model": bundle.spec.name,
        "source": bundle.source,
        "target": reports[0]["target"],
        "intervals": schedule.to_dict(),
        "sampler_steps": calibrated_steps(bundle.meta),
        "entries": entries,
    }
    atomic_json_save(manifest, manifest_path(onnx_path))
    return {"manifest": str(manifest_path(onnx_path)), **manifest, "reports": reports}


def calibrated_steps(meta: dict[str, Any]) -> int | None:
    """The sampler step count the intervals were calibrated for: the checkpoint's sampling record, else its last
    interval-PTQ history entry."""
    steps = (meta.get("sampling") or {}).get("steps")
    if steps is None:
        ptq = [
            h for h in meta.get("history") or [] if isinstance(h, dict) and h.get("event") == "interval_ptq"
        ]
        steps = ptq[-1].get("sampler_steps") if ptq else None
    return int(steps) if steps is not None else None
