"""The ONNX Runtime "engine": ORT's optimized model (written through ``optimized_model_filepath``) plus a JSON
file with the session settings it was built with, so build -> run works the same way without TensorRT.

Layout for ``--saveEngine unet_int8.ort.json``: the JSON at that path and ``unet_int8.ort.opt.onnx`` beside it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pqcad_deploy.io import atomic_json_save

from .audit import audit_onnx_ops
from .backends.base import require
from .backends.ort_backend import ENGINE_FORMAT, OPT_LEVELS, resolve_providers, session_settings
from .build_config import BuildPlan

log = logging.getLogger(__name__)
_EXTERNAL_DATA_ABOVE = 1_800_000_000  # protobuf's 2 GB limit, with margin


def optimized_model_path(engine_json: Path) -> Path:
    name = engine_json.name
    stem = name[: -len(".json")] if name.endswith(".json") else engine_json.stem
    return engine_json.with_name(f"{stem}.opt.onnx")


def build_ort_engine(plan: BuildPlan) -> dict[str, Any]:
    """Run ORT's graph optimizers once, save the optimized model and the engine JSON; audit both graphs."""
    ort = require("onnxruntime")
    if not plan.onnx.is_file():
        raise FileNotFoundError(f"--onnx {plan.onnx} does not exist.")
    out_dir = plan.save_engine.parent if str(plan.save_engine.parent) else Path(".")
    if not out_dir.is_dir():
        raise FileNotFoundError(f"Output folder {out_dir} does not exist; create it first.")
    opt_path = optimized_model_path(plan.save_engine)
    settings = session_settings(plan.ort_threads, 1, plan.ort_optimization, list(plan.ort_providers))
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[plan.ort_optimization])
    if plan.ort_threads:
        so.intra_op_num_threads = plan.ort_threads
    so.optimized_model_filepath = str(opt_path)
    so.log_severity_level = 3  # the NCHWc "hardware specific" warning is expected; it is in the notes
    if plan.onnx.stat().st_size > _EXTERNAL_DATA_ABOVE:
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", opt_path.name + ".data"
        )
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    providers = resolve_providers(list(plan.ort_providers), ort.get_available_providers())
    t0 = time.perf_counter()
    ort.InferenceSession(str(plan.onnx), sess_options=so, providers=providers)
    build_s = time.perf_counter() - t0
    if not opt_path.is_file():
        raise RuntimeError(f"ONNX Runtime did not write the optimized model {opt_path}.")
    report = {
        "format": ENGINE_FORMAT,
        "version": 1,
        "model": opt_path.name,
        "source_onnx": str(plan.onnx.resolve()),
        "session": settings,
        "onnxruntime": ort.__version__,
        "build_s": round(build_s, 3),
        "audit": {"source": audit_onnx_ops(plan.onnx), "optimized": audit_onnx_ops(opt_path)},
        "notes": [
            "The optimized model (ORT_ENABLE_ALL may add NCHWc layouts) is specific to this ONNX Runtime version "
            "and CPU; rebuild it on the target machine.",
        ],
    }
    atomic_json_save(report, plan.save_engine)
    return report
