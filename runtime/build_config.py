"""Pure mapping from trtexec-style build flags to a validated build plan (no TensorRT import here).

``plan_from_args`` validates the flag combination the way trtexec does (e.g. ``--stronglyTyped`` cannot be
combined with ``--fp16/--int8``) and returns a frozen :class:`BuildPlan`; ``check_profile_fits_network`` checks
the shape flags against the parsed network's inputs, so a wrong flag fails before the slow build.
``trt_builder.py`` hands the plan's plain values to Polygraphy's loaders.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pqcad_deploy.errors import PQCADError

from .backends.ort_backend import LAYOUTS

Shape = tuple[int, ...]
ShapeMap = dict[str, Shape]

BACKENDS = ("tensorrt", "onnxruntime")
VERBOSITY = {  # trtexec spelling -> trt.ProfilingVerbosity member
    "layer_names_only": "LAYER_NAMES_ONLY",
    "default": "LAYER_NAMES_ONLY",
    "detailed": "DETAILED",
    "verbose": "DETAILED",
    "none": "NONE",
}
MEM_POOLS = {  # trtexec pool name -> trt.MemoryPoolType member
    "workspace": "WORKSPACE",
    "dlaSRAM": "DLA_MANAGED_SRAM",
    "dlaLocalDRAM": "DLA_LOCAL_DRAM",
    "dlaGlobalDRAM": "DLA_GLOBAL_DRAM",
    "tacticSharedMem": "TACTIC_SHARED_MEMORY",
}
_UNITS = {"B": 1, "K": 2**10, "M": 2**20, "G": 2**30}


class BuildConfigError(PQCADError, ValueError):
    """A flag value or combination is invalid; the message names the flag and the fix."""


def parse_shapes(text: str, flag: str = "--shapes") -> ShapeMap:
    """``"sample:1x1x32x32,timestep:1"`` -> ``{"sample": (1, 1, 32, 32), "timestep": (1,)}`` (trtexec syntax)."""
    shapes: ShapeMap = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, sep, dims = item.rpartition(":")
        if not sep or not name or not dims:
            raise BuildConfigError(f"{flag}: {item!r} is not name:dims (e.g. sample:1x1x32x32).")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise BuildConfigError(
                f"{flag}: {item!r} has non-integer dimensions; write them as 1x4x64x64."
            ) from None
        if any(d <= 0 for d in shape):
            raise BuildConfigError(
                f"{flag}: {item!r} has a dimension <= 0; engine profiles need positive sizes."
            )
        if name in shapes:
            raise BuildConfigError(f"{flag}: input {name!r} is given twice.")
        shapes[name] = shape
    if not shapes:
        raise BuildConfigError(f"{flag} is empty; give name:dims pairs separated by commas.")
    return shapes


def format_shapes(shapes: ShapeMap) -> str:
    return ",".join(f"{n}:{'x'.join(map(str, s))}" for n, s in shapes.items())


def parse_mem_pool(text: str) -> dict[str, int]:
    """``"workspace:8G,tacticSharedMem:1M"`` -> bytes per pool; plain numbers are MiB, as in trtexec."""
    pools: dict[str, int] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, sep, size = item.partition(":")
        if name not in MEM_POOLS:
            raise BuildConfigError(
                f"--memPoolSize: unknown pool {name!r}; choose from {', '.join(MEM_POOLS)}."
            )
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([BKMG]?)", size.strip(), flags=re.IGNORECASE)
        if not sep or not m:
            raise BuildConfigError(f"--memPoolSize: {item!r} is not pool:size (e.g. workspace:8G).")
        pools[name] = int(float(m.group(1)) * _UNITS[(m.group(2) or "M").upper()])
    return pools


@dataclass(frozen=True)
class ShapeProfile:
    """One optimization profile; every input named in one of min/opt/max appears in all three."""

    min: ShapeMap
    opt: ShapeMap
    max: ShapeMap

    @classmethod
    def from_flags(cls, min_s: str | None, opt_s: str | None, max_s: str | None) -> ShapeProfile | None:
        """trtexec's fill-in rule: opt defaults to max (else min); min and max default to opt."""
        if not (min_s or opt_s or max_s):
            return None
        mn = parse_shapes(min_s, "--minShapes") if min_s else None
        op = parse_shapes(opt_s, "--optShapes") if opt_s else None
        mx = parse_shapes(max_s, "--maxShapes") if max_s else None
        op = op or mx or mn
        mn, mx = mn or op, mx or op
        assert op is not None and mn is not None and mx is not None
        if not (set(mn) == set(op) == set(mx)):
            raise BuildConfigError(
                f"--minShapes/--optShapes/--maxShapes name different inputs ({sorted(mn)}, {sorted(op)}, "
                f"{sorted(mx)}); give every dynamic input in all three."
            )
        for n in op:
            if not (len(mn[n]) == len(op[n]) == len(mx[n])):
                raise BuildConfigError(f"Input {n!r} has different ranks in min/opt/max shapes.")
            if not all(a <= b <= c for a, b, c in zip(mn[n], op[n], mx[n], strict=True)):
                raise BuildConfigError(
                    f"Input {n!r}: need min <= opt <= max in every dimension, got "
                    f"{mn[n]} / {op[n]} / {mx[n]}."
                )
        return cls(min=mn, opt=op, max=mx)


@dataclass(frozen=True)
class BuildPlan:
    """Everything one build needs, validated; JSON-able through ``to_dict``."""

    onnx: Path
    save_engine: Path
    backend: str = "tensorrt"
    strongly_typed: bool = True
    fp16: bool = False
    int8: bool = False
    profile: ShapeProfile | None = None
    timing_cache: Path | None = None
    builder_optimization_level: int | None = None
    mem_pool: dict[str, int] = field(default_factory=dict)
    profiling_verbosity: str | None = None
    export_layer_info: Path | None = None
    skip_inference: bool = False
    ort_threads: int | None = None
    ort_optimization: str = "all"
    ort_providers: tuple[str, ...] = ("cpu",)
    ort_layout: str = "nhwc"  # a key of LAYOUTS
    # a relaxed interval's weight-only graph: fold weight DQ into float weights (pqcad-build of a manifest)
    ort_fold_weight_dq: bool = False
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
        if self.profile is not None:
            d["profile"] = {k: format_shapes(getattr(self.profile, k)) for k in ("min", "opt", "max")}
        return d


_TRT_ONLY = {
    "fp16": "--fp16",
    "int8": "--int8",
    "timing_cache": "--timingCacheFile",
    "builder_optimization_level": "--builderOptimizationLevel",
    "mem_pool": "--memPoolSize",
    "profiling_verbosity": "--profilingVerbosity",
    "export_layer_info": "--exportLayerInfo",
}


def plan_from_args(args: Any) -> BuildPlan:
    """Validate parsed CLI flags (an argparse Namespace or anything with the same attributes)."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    notes: list[str] = []
    backend = get("backend", "tensorrt")
    if backend not in BACKENDS:
        raise BuildConfigError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}.")
    if not get("onnx"):
        raise BuildConfigError("--onnx is required (the model to build from).")
    if not get("saveEngine"):
        raise BuildConfigError("--saveEngine is required (where to write the engine).")
    fp16, int8, strong = bool(get("fp16")), bool(get("int8")), bool(get("stronglyTyped"))
    if strong and (fp16 or int8):
        used = " ".join(f for f, on in (("--fp16", fp16), ("--int8", int8)) if on)
        raise BuildConfigError(
            f"--stronglyTyped cannot be combined with {used} (trtexec rejects it too): a strongly typed "
            "network takes its precisions from the ONNX. Drop the precision flags, or drop --stronglyTyped "
            "for the weakly typed TensorRT 8.6 / JetPack 6.0 path."
        )
    if not (fp16 or int8):
        strong = True  # default for QDQ graphs; an FP32 ONNX then builds an FP32 engine
    if int8 and not fp16:
        notes.append(
            "--int8 without --fp16: layers left in float run in FP32 (add --fp16 for the usual mix)."
        )
    level = get("builderOptimizationLevel")
    if level is not None and not 0 <= int(level) <= 5:
        raise BuildConfigError(f"--builderOptimizationLevel must be 0..5 (default 3), got {level}.")
    verbosity = get("profilingVerbosity")
    if verbosity is not None and verbosity not in VERBOSITY:
        raise BuildConfigError(f"--profilingVerbosity {verbosity!r}: choose one of {', '.join(VERBOSITY)}.")
    layer_info = get("exportLayerInfo")
    if layer_info and VERBOSITY.get(verbosity or "", "") != "DETAILED":
        if verbosity is not None:
            raise BuildConfigError(
                "--exportLayerInfo needs --profilingVerbosity=detailed to show precisions and formats."
            )
        verbosity = "detailed"
        notes.append(
            "--exportLayerInfo: using --profilingVerbosity=detailed so the layer info has precisions."
        )
    profile = ShapeProfile.from_flags(get("minShapes"), get("optShapes"), get("maxShapes"))
    mem_pool = parse_mem_pool(get("memPoolSize")) if get("memPoolSize") else {}
    threads = get("ortThreads")
    if (get("ortLayout") or "nhwc") not in LAYOUTS:
        raise BuildConfigError(f"--ortLayout must be one of {', '.join(LAYOUTS)}, got {get('ortLayout')!r}.")
    providers = tuple(p.strip() for p in (get("ortProviders") or "cpu").split(",") if p.strip())
    plan = BuildPlan(
        onnx=Path(get("onnx")),
        save_engine=Path(get("saveEngine")),
        backend=backend,
        strongly_typed=strong,
        fp16=fp16,
        int8=int8,
        profile=profile,
        timing_cache=Path(get("timingCacheFile")) if get("timingCacheFile") else None,
        builder_optimization_level=int(level) if level is not None else None,
        mem_pool=mem_pool,
        profiling_verbosity=verbosity,
        export_layer_info=Path(layer_info) if layer_info else None,
        skip_inference=bool(get("skipInference")),
        ort_threads=int(threads) if threads else None,
        ort_optimization=get("ortOptimization") or "all",
        ort_providers=providers,
        ort_layout=get("ortLayout") or "nhwc",
        notes=(),
    )
    if backend == "onnxruntime":
        ignored = [
            flag for attr, flag in _TRT_ONLY.items() if getattr(plan, attr) and not _implied(attr, notes)
        ]
        if ignored:
            notes.append(f"ignored for --backend onnxruntime: {' '.join(ignored)}.")
    else:
        ort_flags = [
            flag
            for flag, used in (
                ("--ortThreads", threads),
                ("--ortOptimization", plan.ort_optimization != "all"),
                ("--ortProviders", providers != ("cpu",)),
                ("--ortLayout", plan.ort_layout != "nhwc"),
            )
            if used
        ]
        if ort_flags:
            notes.append(f"ignored for --backend tensorrt: {' '.join(ort_flags)}.")
    return BuildPlan(**{**plan.__dict__, "notes": tuple(notes)})


def _implied(attr: str, notes: list[str]) -> bool:
    return attr == "profiling_verbosity" and any("--exportLayerInfo" in n for n in notes)


def dynamic_inputs_without_profile(inputs: dict[str, Shape], profile_names: set[str]) -> list[str]:
    """Inputs with a dynamic (-1) dimension that no optimization profile covers."""
    return [n for n, shape in inputs.items() if any(d < 0 for d in shape) and n not in profile_names]


def check_profile_fits_network(profile: ShapeProfile | None, inputs: dict[str, Shape]) -> None:
    """Raise :class:`BuildConfigError` when the shape flags cannot describe the network's inputs.

    ``inputs`` are the parsed network's input shapes, -1 where a dimension is dynamic. Run before the build:
    TensorRT would otherwise fail (or Polygraphy silently pin a dynamic dimension to 1) only after minutes.
    """
    given = profile.opt if profile else {}
    unknown = sorted(set(given) - set(inputs))
    if unknown:
        raise BuildConfigError(
            f"--minShapes/--optShapes/--maxShapes name {unknown}, which the network does not have; its inputs "
            f"are {format_shapes(inputs)}. Use those names."
        )
    if profile is not None:
        # opt first: with trtexec's fill-in rule the other two often repeat it
        for flag, shapes in (
            ("--optShapes", profile.opt),
            ("--minShapes", profile.min),
            ("--maxShapes", profile.max),
        ):
            for name, shape in shapes.items():
                _check_shape_fits(flag, name, shape, inputs[name])
    missing = dynamic_inputs_without_profile(inputs, set(given))
    if missing:
        raise BuildConfigError(
            f"Inputs {format_shapes({n: inputs[n] for n in missing})} have dynamic (-1) dimensions; give them in "
            "--minShapes/--optShapes/--maxShapes (or --optShapes alone for one fixed shape)."
        )


def _check_shape_fits(flag: str, name: str, shape: Shape, dims: Shape) -> None:
    network = format_shapes({name: dims})
    if len(shape) != len(dims):
        raise BuildConfigError(
            f"{flag}: {name} has {len(shape)} dimensions, but the network input is {network}; "
            f"give {len(dims)} dimensions."
        )
    for i, (want, got) in enumerate(zip(dims, shape, strict=True)):
        if want >= 0 and want != got:
            raise BuildConfigError(
                f"{flag}: {name} dimension {i} is {got}, but the network fixes it at {want} ({network}); "
                "only the -1 dimensions can vary."
            )
