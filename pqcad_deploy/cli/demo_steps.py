"""The stages both halves of ``pqcad-demo`` run: a checked export and an ONNX Runtime engine build, through the
same library calls a user makes (``pqcad-export``, ``pqcad-build --backend onnxruntime``)."""

from __future__ import annotations

from pathlib import Path

from ..export.pipeline import ExportOptions, export
from ..loading import ModelBundle
from ..runtime.build_config import BuildPlan
from ..runtime.ort_builder import build_ort_engine


def export_checked(bundle: ModelBundle, path: Path, parity_samples: int) -> dict:
    """ONNX with explicit Q/DQ, moved into place only after checker, ORT parity and TensorRT audit passed."""
    return export(bundle, path, ExportOptions(parity_samples=parity_samples))


def build_ort(onnx_path: Path, threads: int | None) -> Path:
    """The ORT engine (optimized model + settings JSON) beside the ONNX; returns the JSON path."""
    engine = onnx_path.with_suffix(".ort.json")
    build_ort_engine(
        BuildPlan(onnx=onnx_path, save_engine=engine, backend="onnxruntime", ort_threads=threads or None)
    )
    return engine
