"""A small recording fake of the TensorRT Python API (10.x, and 8.6 / 11.x where the API differs).

It covers what Polygraphy's ``NetworkFromOnnxPath``/``CreateConfig``/``EngineBytesFromNetwork``/
``EngineFromBytes``, our ``trt_builder``, ``TrtRunner`` and the Jetson demo's ``PycudaEngine`` call, and it
enforces the rules the real library enforces where our code could get them wrong: precision flags against
strong typing and Q/DQ layers, profiles covering every dynamic input, input shapes inside the profile, every
I/O tensor bound to device memory before ``execute_async_v3``. It proves the call sequence and the buffer
plumbing, never TensorRT's numerics, tactics or fusions: the "engine" runs a numpy function
(``kernels.py``), and its layer information is derived from the ONNX nodes by a toy fusion rule.
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path
from typing import Any

import onnx

from . import fake_trt_types
from .fake_device import FakeDevice
from .fake_trt_engine import Engine, ExecutionContext, Runtime
from .fake_trt_types import (
    CACHE_MAGIC,
    ENGINE_MAGIC,
    LAYER_OF_OP,
    NP_TYPES,
    ONNX_TYPES,
    DataType,
    DeviceType,
    HostMemory,
    ILogger,
    LayerType,
    Logger,
    MemoryPoolType,
    ProfilingVerbosity,
)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2])


class FakeTensor:
    def __init__(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        self.name, self.dtype, self.shape = name, DataType[dtype], tuple(shape)
        self.is_shape_tensor = False


class FakeLayer:
    def __init__(self, name: str, op: str, inputs: list[str]) -> None:
        self.name, self.inputs = name, inputs
        self.type = LayerType[LAYER_OF_OP.get(op, "ELEMENTWISE")]
        self.precision_is_set = False


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[FakeTensor] = []
        self.outputs: list[FakeTensor] = []
        self.layers: list[FakeLayer] = []
        self.producers: dict[str, FakeLayer] = {}  # tensor name -> the layer that writes it
        self.source = ""

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, i: int) -> FakeTensor:
        return self.inputs[i]

    def get_output(self, i: int) -> FakeTensor:
        return self.outputs[i]

    def get_layer(self, i: int) -> FakeLayer:
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def get_flag(self, flag: int) -> bool:
        return bool(self.flags & (1 << int(flag)))


class OnnxParser:
    """Fills the network from the ONNX graph: inputs/outputs (-1 for symbolic dims) and one layer per node."""

    def __init__(self, network: FakeNetwork, logger: ILogger) -> None:
        self.network, self.errors = network, []
        self.flags = 0

    def clear_flag(self, flag: int) -> None:
        self.flags &= ~(1 << int(flag))

    def parse_from_file(self, path: str) -> bool:
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as e:
            self.errors.append(f"ModelImporter: failed to parse {path}: {type(e).__name__}")
            return False
        graph, net = model.graph, self.network
        initializers = {i.name for i in graph.initializer}

        def tensor(v: onnx.ValueInfoProto) -> FakeTensor:
            dims = tuple(d.dim_value if d.dim_value > 0 else -1 for d in v.type.tensor_type.shape.dim)
            return FakeTensor(v.name, ONNX_TYPES[v.type.tensor_type.elem_type], dims)

        net.inputs = [tensor(v) for v in graph.input if v.name not in initializers]
        net.outputs = [tensor(v) for v in graph.output]
        net.layers = [
            FakeLayer(n.name or f"{n.op_type}_{i}", n.op_type, list(n.input))
            for i, n in enumerate(graph.node)
        ]
        net.producers = {
            out: layer for n, layer in zip(graph.node, net.layers, strict=True) for out in n.output
        }
        net.source = path
        return True

    num_errors = property(lambda self: len(self.errors))

    def get_error(self, i: int) -> str:
        return self.errors[i]


class OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, name: str) -> tuple:
        return self.shapes[name]

    def __bool__(self) -> bool:
        return all(all(a <= b <= c for a, b, c in zip(*s, strict=True)) for s in self.shapes.values())


class TimingCache:
    def __init__(self, entries: list[str]) -> None:
        self.entries = list(entries)

    def combine(self, other: TimingCache, ignore_mismatch: bool) -> bool:
        self.entries += [e for e in other.entries if e not in self.entries]
        return True

    def serialize(self) -> HostMemory:
        return HostMemory(CACHE_MAGIC + json.dumps(self.entries).encode())


class BuilderConfig:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        self.flags: set[str] = {"TF32"} if hasattr(trt.BuilderFlag, "TF32") else set()  # TensorRT's default
        self.pools: dict[str, int] = {}
        self.profiles: list[OptimizationProfile] = []
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.builder_optimization_level = 3
        self.timing_cache: TimingCache | None = None
        self.DLA_core, self.default_device_type, self.int8_calibrator = -1, DeviceType.GPU, None

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag.name)

    def clear_flag(self, flag: Any) -> None:
        self.flags.discard(flag.name)

    def get_flag(self, flag: Any) -> bool:
        return flag.name in self.flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.trt.record("set_memory_pool_limit", pool.name, size)
        self.pools[pool.name] = size

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self.pools.get(pool.name, 0)

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        self.trt.record("add_optimization_profile", dict(profile.shapes))
        self.profiles.append(profile)
        return len(self.profiles) - 1

    num_optimization_profiles = property(lambda self: len(self.profiles))

    def create_timing_cache(self, data: bytes) -> TimingCache:
        data = bytes(data)
        if data and not data.startswith(CACHE_MAGIC):
            raise RuntimeError("not a timing cache")
        entries = json.loads(data[len(CACHE_MAGIC) :]) if data else []
        self.trt.record("create_timing_cache", list(entries))
        return TimingCache(entries)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        self.trt.record("set_timing_cache", list(cache.entries), ignore_mismatch)
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> TimingCache | None:
        return self.timing_cache


class Builder:
    def __init__(self, trt: FakeTensorRT, logger: ILogger) -> None:
        self.trt, self.logger = trt, logger
        self.num_DLA_cores = 0

    def create_network(self, flags: int = 0) -> FakeNetwork:
        members = self.trt.NetworkDefinitionCreationFlag.__members__.items()
        self.trt.record("create_network", sorted(n for n, f in members if flags & (1 << int(f))))
        return FakeNetwork(flags)

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig(self.trt)

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def build_serialized_network(self, network: FakeNetwork, config: BuilderConfig) -> HostMemory | None:
        trt = self.trt
        strong = network.get_flag(getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", 31))
        trt.record(
            "build_serialized_network",
            {
                "strongly_typed": strong,
                "flags": sorted(config.flags),
                "pools": dict(config.pools),
                "builder_optimization_level": config.builder_optimization_level,
                "profiling_verbosity": ProfilingVerbosity(config.profiling_verbosity).name,
                "profiles": [dict(p.shapes) for p in config.profiles],
            },
        )
        error = self._refusal(network, config, strong)
        if error:
            self.logger.log(Logger.ERROR, error)
            return None
        if config.timing_cache is not None:
            key = f"tactics:{Path(network.source).name}"
            trt.cache_hits.append(key in config.timing_cache.entries)
            config.timing_cache.combine(TimingCache([key]), ignore_mismatch=False)
        return HostMemory(ENGINE_MAGIC + json.dumps(_engine_record(network, config, strong)).encode())

    def _refusal(self, network: FakeNetwork, config: BuilderConfig, strong: bool) -> str | None:
        precision = config.flags & {"FP16", "INT8", "BF16", "FP8"}
        if strong and precision:
            return f"Strongly typed networks cannot set the precision flags {sorted(precision)}."
        qdq = any(layer.type in (LayerType.QUANTIZE, LayerType.DEQUANTIZE) for layer in network)
        if qdq and not strong and "INT8" not in config.flags:
            return "Int8 precision has been set for a layer or layer output, but int8 is not configured"
        covered = set(config.profiles[0].shapes) if config.profiles else set()
        for t in network.inputs:
            if -1 in t.shape and t.name not in covered:
                return f"Network has dynamic or shape inputs, but no optimization profile covers {t.name}"
        return None


def _engine_record(network: FakeNetwork, config: BuilderConfig, strong: bool) -> dict[str, Any]:
    profile = config.profiles[0].shapes if config.profiles else {}
    int8 = strong or "INT8" in config.flags
    float_format = (
        "Row major linear FP16 format" if "FP16" in config.flags else "Row major linear FP32 format"
    )
    layers = []
    for layer in network.layers:  # toy fusion rule: a DQ feeding a conv/gemm fuses into it
        fed_by_dq = any(
            getattr(network.producers.get(i), "type", None) == LayerType.DEQUANTIZE for i in layer.inputs
        )
        if int8 and layer.type in (LayerType.QUANTIZE, LayerType.DEQUANTIZE):
            continue
        fmt = "Row major linear Int8 format" if int8 and fed_by_dq else float_format
        kind = {"CONVOLUTION": "CaskConvolution", "MATRIX_MULTIPLY": "CaskGemm"}.get(
            layer.type.name, layer.type.name
        )
        layers.append({"Name": layer.name, "LayerType": kind, "Inputs": [{"Format/Datatype": fmt}]})
    tensors = [
        {
            "name": t.name,
            "mode": "INPUT",
            "dtype": t.dtype.name,
            "shape": t.shape,
            "profile": profile.get(t.name),
        }
        for t in network.inputs
    ] + [{"name": t.name, "mode": "OUTPUT", "dtype": t.dtype.name, "shape": t.shape} for t in network.outputs]
    return {
        "tensors": tensors,
        "kernel": "text" if any(t.name == "last_hidden_state" for t in network.outputs) else "unet",
        "profiling_verbosity": ProfilingVerbosity(config.profiling_verbosity).name,
        "layers": layers,
    }


class FakeTensorRT(types.ModuleType):
    """The ``tensorrt`` module; ``version`` picks the API generation (8.6: no strong typing; 11: no weak)."""

    def __init__(self, device: FakeDevice, version: str = "10.3.0") -> None:
        super().__init__("tensorrt")
        self.__version__, self.device = version, device
        self.calls: list[tuple] = []
        self.cache_hits: list[bool] = []
        self.engines: list[Engine] = []
        self.contexts: list[ExecutionContext] = []
        self.errors: list[dict] = []
        strong = ["STRONGLY_TYPED"] if _version(version) >= (9, 1) else []
        self.NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", *strong], start=0
        )
        weak = ["FP16", "INT8", "BF16", "FP8"] if _version(version) < (11, 0) else []
        self.BuilderFlag = enum.IntEnum(
            "BuilderFlag", ["TF32", *weak, "REFIT", "DIRECT_IO", "GPU_FALLBACK"], start=0
        )
        for name, value in vars(fake_trt_types).items():
            if isinstance(value, type) and issubclass(value, enum.Enum):
                setattr(self, name, value)
        self.ILogger, self.Logger = ILogger, Logger

    def record(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        self.device.log.append((name, *args))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def last(self, name: str) -> tuple:
        return next(c for c in reversed(self.calls) if c[0] == name)

    def Builder(self, logger: ILogger) -> Builder:  # noqa: N802 - TensorRT's class name
        return Builder(self, logger)

    def Runtime(self, logger: ILogger) -> Runtime:  # noqa: N802
        return Runtime(self, logger)

    def OnnxParser(self, network: FakeNetwork, logger: ILogger) -> OnnxParser:  # noqa: N802
        return OnnxParser(network, logger)

    def init_libnvinfer_plugins(self, logger: ILogger, namespace: str) -> bool:
        return True

    @staticmethod
    def nptype(dtype: DataType) -> type:
        return NP_TYPES[DataType(dtype).name]
