"""Thin TensorRT build: apply ``build_config.trt_settings`` to the TRT 10 builder API, serialize, export
layer info and audit it. Every decision is made in the pure ``build_config`` module; this file only calls
TensorRT (which cannot be installed on the development machines, so it is exercised on GPU machines only).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pqcad_deploy.errors import PQCADError
from pqcad_deploy.io import atomic_write

from .audit import audit_layer_info
from .backends.base import require
from .build_config import BuildConfigError, BuildPlan, ShapeMap, trt_settings

log = logging.getLogger(__name__)


class BuildError(PQCADError, RuntimeError):
    """TensorRT refused to parse or build the network."""


def dynamic_inputs_without_profile(inputs: dict[str, tuple[int, ...]], profile_names: set[str]) -> list[str]:
    """Inputs with a dynamic (-1) dimension that no optimization profile covers."""
    return [n for n, shape in inputs.items() if any(d < 0 for d in shape) and n not in profile_names]


def build_engine(plan: BuildPlan, verbose: bool = False) -> dict[str, Any]:
    """Parse ``plan.onnx``, build, write ``plan.save_engine`` (+ timing cache, layer info); return a report."""
    trt = require("tensorrt")
    s = trt_settings(plan)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for f in s["network_flags"]:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, f))
    if int(trt.__version__.split(".")[0]) < 10:  # TRT 8.6 (JetPack 6.0) still needs explicit batch
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT could not parse {plan.onnx}: {errors}")
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}

    config = builder.create_builder_config()
    for f in s["builder_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, f))
    for pool, size in s["memory_pool_limits"].items():
        config.set_memory_pool_limit(getattr(trt.MemoryPoolType, pool), size)
    if s["builder_optimization_level"] is not None:
        config.builder_optimization_level = s["builder_optimization_level"]
    if s["profiling_verbosity"]:
        config.profiling_verbosity = getattr(trt.ProfilingVerbosity, s["profiling_verbosity"])
    covered: set[str] = set()
    for prof in s["profiles"]:
        p = builder.create_optimization_profile()
        for name, (mn, opt, mx) in prof.items():
            if name not in inputs:
                raise BuildConfigError(
                    f"Shape given for {name!r}, but the network inputs are {sorted(inputs)}."
                )
            p.set_shape(name, mn, opt, mx)
            covered.add(name)
        config.add_optimization_profile(p)
    missing = dynamic_inputs_without_profile(inputs, covered)
    if missing:
        raise BuildConfigError(
            f"Inputs {missing} have dynamic dimensions ({ {n: inputs[n] for n in missing} }); give them in "
            "--minShapes/--optShapes/--maxShapes."
        )
    cache_path = Path(s["timing_cache"]) if s["timing_cache"] else None
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if serialized is None:
        raise BuildError("TensorRT failed to build the engine; rerun with --verbose for the builder log.")
    atomic_write(plan.save_engine, lambda tmp: Path(tmp).write_bytes(bytes(serialized)))
    if cache_path is not None:
        cache = config.get_timing_cache()
        atomic_write(cache_path, lambda tmp: Path(tmp).write_bytes(bytes(cache.serialize())))
    report: dict[str, Any] = {
        "engine": str(plan.save_engine),
        "tensorrt": trt.__version__,
        "build_s": round(build_s, 2),
        "size_mb": round(plan.save_engine.stat().st_size / 2**20, 2),
        "settings": s,
    }
    if plan.export_layer_info is not None:
        info = engine_layer_info(trt, logger, plan.save_engine, plan.profile.opt if plan.profile else None)
        atomic_write(plan.export_layer_info, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1)))
        report["audit"] = audit_layer_info(info).to_dict()
    return report


def engine_layer_info(trt: Any, logger: Any, engine_path: Path, shapes: ShapeMap | None) -> dict[str, Any]:
    """Engine information as JSON, with input shapes set so that formats of dynamic tensors resolve."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    inspector = engine.create_engine_inspector()
    if shapes:
        ctx = engine.create_execution_context()
        for name, shape in shapes.items():
            ctx.set_input_shape(name, shape)
        inspector.execution_context = ctx
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
