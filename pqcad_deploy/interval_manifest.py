"""The interval manifest of a timestep-aware student: which file serves which timestep interval, with its SHA-256
and precision. ``pqcad-export`` writes it beside the per-interval ONNX files, ``pqcad-build`` one beside the
engines it builds from them (with the ``backend`` that reads them); runners read either. Kept apart from the export
pipeline so that runtimes read manifests without importing the exporter.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .io import CheckpointError, atomic_json_save
from .quant.intervals import IntervalError, IntervalSchedule

MANIFEST_FORMAT = "pqcad-interval-manifest"
MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"


def is_manifest(path: str | Path) -> bool:
    return str(path).endswith(MANIFEST_SUFFIX)


def manifest_path(onnx_path: str | Path) -> Path:
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}{MANIFEST_SUFFIX}")


def interval_file(onnx_path: str | Path, k: int) -> Path:
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.i{k}{p.suffix or '.onnx'}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    fix = (
        "rebuild the engines (pqcad-build --onnx ONNX_MANIFEST)"
        if key == "engine"
        else "re-export the student"
    )
    for e in entries:
        f = path.parent / str(e.get(key, ""))
        if not f.is_file():
            raise CheckpointError(f"{path}: interval {e['interval']}'s file {f} is missing; {fix}.")
        if sha256(f) != e.get("sha256"):
            raise CheckpointError(
                f"{path}: {f} is not the file this manifest was written with (SHA-256 differs); {fix} so that "
                "files and manifest match."
            )
        files.append(f)
    return schedule, files, doc
