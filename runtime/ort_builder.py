"""The ONNX Runtime "engine": ORT's optimized model (written through ``optimized_model_filepath``) plus a JSON
file with the session settings it was built with, so build -> run works the same way without TensorRT.

Layout for ``--saveEngine unet_int8.ort.json``: the JSON at that path and ``unet_int8.ort.<hash>.opt.onnx``
beside it. The optimized model gets a new name on every build and the JSON, which names it, is replaced last
(atomically): an interrupted or failed rebuild leaves the previous engine whole, never a JSON paired with another
build's model. The model the old JSON named is deleted only after the switch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pqcad_deploy.io import (
    default_file_mode,
    disk_full,
    json_writer,
    replace_together,
    require_file,
    writable_parent,
    write_failure,
)

from .audit import audit_onnx_ops
from .backends.base import RunnerError, require
from .backends.ort_backend import (
    ENGINE_FORMAT,
    ENGINE_VERSION,
    LAYOUTS,
    OrtRunner,
    read_engine_json,
    session_settings,
)
from .build_config import BuildConfigError, BuildPlan

log = logging.getLogger(__name__)
_EXTERNAL_DATA_ABOVE = 1_800_000_000  # protobuf's 2 GB limit, with margin


def _stem(engine_json: Path) -> str:
    name = engine_json.name
    return name[: -len(".json")] if name.endswith(".json") else engine_json.stem


def build_ort_engine(plan: BuildPlan) -> dict[str, Any]:
    """Run ORT's graph optimizers once, save the optimized model and the engine JSON; audit both graphs."""
    ort = require("onnxruntime")
    require_file(plan.onnx, "--onnx", BuildConfigError)
    out_dir = writable_parent(plan.save_engine, BuildConfigError, "choose another --saveEngine")
    previous = _previous_model(plan.save_engine)
    disabled = LAYOUTS[plan.ort_layout]
    settings = session_settings(
        plan.ort_threads, 1, plan.ort_optimization, list(plan.ort_providers), disabled
    )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{_stem(plan.save_engine)}.", suffix=".opt.onnx", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    entries = {}
    if plan.onnx.stat().st_size > _EXTERNAL_DATA_ABOVE:
        entries = {
            "session.optimized_model_external_initializers_file_name": tmp.name + ".data",
            "session.optimized_model_external_initializers_min_size_in_bytes": "1024",
        }
    runner = OrtRunner(
        plan.onnx,
        providers=list(plan.ort_providers),
        intra_op_threads=plan.ort_threads,
        optimization=plan.ort_optimization,
        optimized_model_filepath=tmp,
        session_config_entries=entries,
        log_severity=3,  # the NCHWc "hardware specific" warning is expected; it is in the notes
        fold_weight_dq=plan.ort_fold_weight_dq,  # the saved model then holds float weights
        disabled_optimizers=disabled,
    )
    try:
        t0 = time.perf_counter()
        try:
            with runner:
                pass
        except RunnerError as e:
            if disk_full(out_dir):  # ORT reports a full disk as a failed load
                raise write_failure(plan.save_engine, e) from e
            raise
        build_s = time.perf_counter() - t0
        if not tmp.is_file() or tmp.stat().st_size == 0:
            if disk_full(out_dir):
                raise write_failure(plan.save_engine, OSError(28, "No space left on device"))
            raise BuildConfigError(f"ONNX Runtime did not write the optimized model for {plan.onnx}.")
        digest = hashlib.sha256(
            tmp.read_bytes() if not entries else str(time.time_ns()).encode()
        ).hexdigest()[:10]
        final = out_dir / f"{_stem(plan.save_engine)}.{digest}.opt.onnx"
        report = _report(plan, final, tmp, settings, ort.__version__, build_s)
        json_tmp = tmp.with_name(tmp.name + ".json")
        try:
            json_writer(report)(str(json_tmp))
        except OSError as e:
            raise write_failure(plan.save_engine, e) from e
        staged = (
            [(tmp.with_name(tmp.name + ".data"), final.with_name(final.name + ".data"))] if entries else []
        )
        staged += [(tmp, final), (json_tmp, plan.save_engine)]  # the JSON that names the model last
        for src, _ in staged:
            os.chmod(src, default_file_mode())
        replace_together(staged)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".data"), tmp.with_name(tmp.name + ".json")):
            leftover.unlink(missing_ok=True)
    if previous is not None and previous != final:
        previous.unlink(missing_ok=True)
        previous.with_name(previous.name + ".data").unlink(missing_ok=True)
    log.info("wrote %s (optimized model %s, %.2f s)", plan.save_engine, final.name, build_s)
    return report


def _report(plan: BuildPlan, final: Path, built: Path, settings: dict, version: str, build_s: float) -> dict:
    return {
        "format": ENGINE_FORMAT,
        "version": ENGINE_VERSION,
        "model": final.name,
        "source_onnx": str(plan.onnx.resolve()),
        "session": settings,
        "onnxruntime": version,
        "build_s": round(build_s, 3),
        "audit": {"source": audit_onnx_ops(plan.onnx), "optimized": audit_onnx_ops(built)},
        "notes": [
            "The optimized model (ORT_ENABLE_ALL may add NCHWc layouts) is specific to this ONNX Runtime version "
            "and CPU; rebuild it on the target machine.",
        ],
    }


def _previous_model(engine_json: Path) -> Path | None:
    """The optimized model an existing engine JSON at this path names (removed after a successful rebuild)."""
    if not engine_json.is_file():
        return None
    try:
        return engine_json.parent / read_engine_json(engine_json)["model"]
    except Exception:  # an unreadable old engine is simply replaced
        return None
