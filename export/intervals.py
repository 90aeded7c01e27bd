"""Per-interval deployment of a timestep-aware student: one ONNX per timestep interval plus a manifest.

Every file holds the same INT8 weights and its interval's activation scales (``quant.intervals.single_set_copy``),
exported and verified by the one export path; a relaxed interval (activation relaxing) is a weight-only file
whose activations stay float (precision ``w8``). The manifest (``<stem>.manifest.json``, written last, so it exists
only when every file does) records the intervals, the files with their SHA-256, and the precision per interval;
runners switch engine by timestep (``runtime.backends.interval_backend``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from pqcad_deploy.io import CheckpointError, atomic_json_save
from pqcad_deploy.loading import ModelBundle
from pqcad_deploy.quant.intervals import IntervalError, IntervalSchedule, get_intervals, single_set_copy

from .pipeline import ExportOptions, export

MANIFEST_FORMAT = "pqcad-interval-manifest"
MANIFEST_VERSION = 1


def manifest_path(onnx_path: str | Path) -> Path:
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.manifest.json")


def interval_file(onnx_path: str | Path, k: int) -> Path:
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.i{k}{p.suffix or '.onnx'}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        "sampler_steps": (bundle.meta.get("sampling") or {}).get("steps"),
        "entries": entries,
    }
    atomic_json_save(manifest, manifest_path(onnx_path))
    return {"manifest": str(manifest_path(onnx_path)), **manifest, "reports": reports}


def write_engine_manifest(
    onnx_manifest: dict[str, Any], engines: list[Path], backend: str, path: Path
) -> dict[str, Any]:
    """The manifest of the engines ``pqcad-build`` made from an ONNX manifest's files (same intervals, precision
    per interval; ``engine`` instead of ``onnx`` and the backend that reads them); written last, atomically."""
    entries = [
        {**{k: v for k, v in e.items() if k not in ("onnx", "sha256")}, "engine": f.name, "sha256": sha256(f),
         "onnx": e["onnx"]}
        for e, f in zip(onnx_manifest["entries"], engines, strict=True)
    ]  # fmt: skip
    doc = {**onnx_manifest, "backend": backend, "entries": entries}
    atomic_json_save(doc, path)
    return doc


def read_manifest(path: str | Path) -> tuple[IntervalSchedule, list[Path], dict[str, Any]]:
    """(schedule, the file of every interval in order, the manifest); refuses a manifest whose files are missing
    or were replaced since it was written (SHA-256), or whose entries do not cover its intervals. The files are
    ONNX models (``pqcad-export``) or, in a manifest with a ``backend``, engines (``pqcad-build``)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"interval manifest {path} does not exist.") from e
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable interval manifest ({e}).") from e
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{path} is not an interval manifest (format {MANIFEST_FORMAT!r} expected).")
    if doc.get("format_version") != MANIFEST_VERSION:
        raise CheckpointError(
            f"{path} has manifest version {doc.get('format_version')!r}; this code reads {MANIFEST_VERSION}."
        )
    try:
        schedule = IntervalSchedule.from_dict(doc["intervals"])
    except (KeyError, TypeError, IntervalError) as e:
        raise CheckpointError(f"{path}: bad 'intervals' record ({e}).") from e
    entries = doc.get("entries")
    if not isinstance(entries, list) or [e.get("interval") for e in entries] != list(range(schedule.k)):
        raise CheckpointError(
            f"{path}: 'entries' must list intervals 0..{schedule.k - 1} in order, one file each; re-export."
        )
    files = []
    key = "engine" if "backend" in doc else "onnx"
    for e in entries:
        f = path.parent / str(e.get(key, ""))
        if not f.is_file():
            raise CheckpointError(
                f"{path}: interval {e['interval']}'s file {f} is missing; "
                + (
                    "rebuild the engines (pqcad-build --onnx ONNX_MANIFEST)."
                    if key == "engine"
                    else "re-export the student."
                )
            )
        if sha256(f) != e.get("sha256"):
            raise CheckpointError(
                f"{path}: {f} is not the file this manifest was written with (SHA-256 differs); "
                + ("rebuild the engines" if key == "engine" else "re-export the student")
                + " so that files and manifest match."
            )
        files.append(f)
    return schedule, files, doc
