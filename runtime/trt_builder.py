"""Build a TensorRT engine from a :class:`BuildPlan` with Polygraphy's loaders, write it atomically, export the
layer info and audit it.

``NetworkFromOnnxPath``, ``CreateConfig`` and ``EngineBytesFromNetwork`` are builder code that NVIDIA tests
against every TensorRT release (on 8.6 Polygraphy also sets the explicit-batch flag that release needs). This
module only turns the plan's plain values into their arguments, and checks the plan against this TensorRT and
the parsed network first, because the build is the slow step. docs/jetson.md lists the trtexec equivalents.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from pqcad_deploy.errors import PQCADError
from pqcad_deploy.io import atomic_write, writable_parent

from .audit import audit_layer_info
from .backends.base import require
from .build_config import (
    MEM_POOLS,
    VERBOSITY,
    BuildConfigError,
    BuildPlan,
    ShapeMap,
    check_profile_fits_network,
)

log = logging.getLogger(__name__)


class BuildError(PQCADError, RuntimeError):
    """TensorRT refused to parse or build the network."""


def build_engine(plan: BuildPlan, verbose: bool = False) -> dict[str, Any]:
    """Parse ``plan.onnx``, check the plan against it, build, and write ``plan.save_engine`` atomically (plus
    the timing cache and layer info when asked); return a JSON-able report."""
    if plan.backend != "tensorrt":
        raise BuildConfigError(
            "build_engine() builds TensorRT engines; --backend onnxruntime uses ort_builder."
        )
    check_paths(plan)
    trt = require("tensorrt")
    poly = require("polygraphy.backend.trt")
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    check_tensorrt_supports(trt, plan)
    with G_LOGGER.verbosity(G_LOGGER.EXTRA_VERBOSE if verbose else G_LOGGER.WARNING):
        try:
            parsed = poly.NetworkFromOnnxPath(str(plan.onnx), strongly_typed=plan.strongly_typed)()
        except PolygraphyException as e:
            raise BuildError(
                f"TensorRT {trt.__version__} could not parse {plan.onnx}: {e} (parser errors are printed above)."
            ) from None
        check_network(trt, plan, parsed[1])
        log.info("building %s (%s)", plan.save_engine, describe_typing(plan))
        build = poly.EngineBytesFromNetwork(
            parsed,
            config=poly.CreateConfig(**config_arguments(trt, poly, plan)),
            save_timing_cache=str(plan.timing_cache) if plan.timing_cache else None,
        )
        t0 = time.perf_counter()
        try:
            engine_bytes = build()
        except PolygraphyException as e:
            raise BuildError(
                f"TensorRT {trt.__version__} failed to build {plan.onnx}: {e}; rerun with --verbose for the "
                "builder log."
            ) from None
        build_s = time.perf_counter() - t0
    atomic_write(plan.save_engine, lambda tmp: Path(tmp).write_bytes(engine_bytes))
    report: dict[str, Any] = {
        "engine": str(plan.save_engine),
        "tensorrt": trt.__version__,
        "build_s": round(build_s, 2),
        "size_mb": round(plan.save_engine.stat().st_size / 2**20, 2),
        "plan": plan.to_dict(),
    }
    if plan.export_layer_info is not None:
        engine = poly.EngineFromBytes(engine_bytes)()
        info = engine_layer_info(trt, engine, plan.profile.opt if plan.profile else None)
        atomic_write(plan.export_layer_info, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1)))
        report["audit"] = audit_layer_info(info).to_dict()
    return report


def config_arguments(trt: ModuleType, poly: ModuleType, plan: BuildPlan) -> dict[str, Any]:
    """``CreateConfig`` keyword arguments for the plan (each comment names the trtexec flag)."""
    profile = poly.Profile()
    if plan.profile is not None:
        for name, opt in plan.profile.opt.items():
            profile.add(name, plan.profile.min[name], opt, plan.profile.max[name])
    return {
        "tf32": True,  # TensorRT and trtexec enable TF32 by default; Polygraphy clears it unless asked
        "fp16": plan.fp16,  # --fp16
        "int8": plan.int8,  # --int8
        "profiles": [profile],  # --minShapes/--optShapes/--maxShapes; static inputs are filled in
        "load_timing_cache": str(plan.timing_cache) if plan.timing_cache else None,  # --timingCacheFile
        "builder_optimization_level": plan.builder_optimization_level,  # --builderOptimizationLevel
        "memory_pool_limits": {  # --memPoolSize
            getattr(trt.MemoryPoolType, MEM_POOLS[pool]): size for pool, size in plan.mem_pool.items()
        }
        or None,
        # --profilingVerbosity; trtexec's default (layer names only), where Polygraphy's would be detailed
        "profiling_verbosity": getattr(
            trt.ProfilingVerbosity, VERBOSITY[plan.profiling_verbosity or "default"]
        ),
    }


def describe_typing(plan: BuildPlan) -> str:
    if plan.strongly_typed:
        return "strongly typed"
    return "weakly typed " + "+".join(p for p, on in (("fp16", plan.fp16), ("int8", plan.int8)) if on)


def check_paths(plan: BuildPlan) -> None:
    """Fail on a missing input or an unwritable output before TensorRT is even loaded."""
    if not plan.onnx.is_file():
        raise BuildConfigError(f"--onnx {plan.onnx} does not exist; export the model first (pqcad-export).")
    for flag, path in (
        ("--saveEngine", plan.save_engine),
        ("--timingCacheFile", plan.timing_cache),
        ("--exportLayerInfo", plan.export_layer_info),
    ):
        if path is not None:
            try:
                writable_parent(path, BuildConfigError, "choose a path you can write to")
            except BuildConfigError as e:
                raise BuildConfigError(f"{flag} {path}: {e}") from None


def check_tensorrt_supports(trt: ModuleType, plan: BuildPlan) -> None:
    """The plan's typing mode and memory pools must exist in the installed TensorRT."""
    version = trt.__version__
    if plan.strongly_typed and not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        raise BuildConfigError(
            f"TensorRT {version} has no strongly typed networks (they arrived in 9.1), and a build is strongly "
            "typed unless --fp16/--int8 are given. For TensorRT 8.6 (JetPack 6.0) build a QDQ model with "
            "--int8 --fp16."
        )
    gone = [
        f for f, on in (("FP16", plan.fp16), ("INT8", plan.int8)) if on and not hasattr(trt.BuilderFlag, f)
    ]
    if gone:
        flags = " ".join(f"--{f.lower()}" for f in gone)
        raise BuildConfigError(
            f"TensorRT {version} has no {flags} (weak typing was removed); drop them and build "
            "--stronglyTyped from an FP16 export."
        )
    for pool in plan.mem_pool:
        if not hasattr(trt.MemoryPoolType, MEM_POOLS[pool]):
            raise BuildConfigError(f"--memPoolSize: TensorRT {version} has no {pool!r} pool; drop it.")


def check_network(trt: ModuleType, plan: BuildPlan, network: Any) -> None:
    """Shape flags against the network inputs, and precision flags against its Q/DQ layers."""
    inputs = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        inputs[tensor.name] = tuple(tensor.shape)
    check_profile_fits_network(plan.profile, inputs)
    qdq = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    has_qdq = any(network.get_layer(i).type in qdq for i in range(network.num_layers))
    if has_qdq and not plan.strongly_typed and not plan.int8:
        raise BuildConfigError(
            f"{plan.onnx} has Q/DQ nodes, and a weakly typed build of it needs --int8 (TensorRT fails with "
            "'int8 is not configured' otherwise): add --int8 --fp16, or build --stronglyTyped."
        )
    if plan.int8 and not has_qdq:
        log.warning(
            "--int8 on %s, which has no Q/DQ nodes: TensorRT uses placeholder scales, so the engine is only "
            "good for timing; export a QDQ model for correct INT8 outputs.",
            plan.onnx,
        )


def engine_layer_info(trt: ModuleType, engine: Any, shapes: ShapeMap | None) -> dict[str, Any]:
    """Engine information as JSON, with input shapes set so that formats of dynamic tensors resolve."""
    inspector = engine.create_engine_inspector()
    if shapes:
        ctx = engine.create_execution_context()
        for name, shape in shapes.items():
            ctx.set_input_shape(name, shape)
        inspector.execution_context = ctx
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
