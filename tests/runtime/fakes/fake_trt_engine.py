"""The engine half of the fake TensorRT: deserialize, inspect, bind and execute.

An engine is JSON behind a magic tag: its I/O tensors (shapes with -1 where dynamic, and the profile's
min/opt/max), which numpy kernel it runs (``kernels.py``) and its layer list. ``ExecutionContext`` checks input
shapes against the profile and that every tensor is bound, like TensorRT, then runs the kernel on the bound
device memory (``FakeDevice``), or records it while a CUDA graph is being captured.
"""

from __future__ import annotations

import json
from typing import Any

from pqcad_deploy.denoiser import COND, OUTPUT_NAME, SAMPLE, TIMESTEP

from .fake_trt_types import (
    ENGINE_MAGIC,
    NP_TYPES,
    DataType,
    ILogger,
    LayerInformationFormat,
    Logger,
    TensorIOMode,
)
from .kernels import text_states, unet_eps


def engine_plan(tensors: list[dict[str, Any]], kernel: str, profiling_verbosity: str = "DETAILED") -> bytes:
    """Serialized fake engine; each tensor: name, mode (INPUT/OUTPUT), dtype, shape (-1 dynamic), profile."""
    record = {"tensors": tensors, "kernel": kernel, "profiling_verbosity": profiling_verbosity, "layers": []}
    return ENGINE_MAGIC + json.dumps(record).encode()


class Runtime:
    def __init__(self, trt: Any, logger: ILogger) -> None:
        self.trt, self.logger = trt, logger

    def deserialize_cuda_engine(self, data: Any) -> Engine | None:
        data = bytes(data)
        self.trt.record("deserialize_cuda_engine", len(data))
        if not data.startswith(ENGINE_MAGIC):
            self.logger.log(Logger.ERROR, "Serialization assertion failed: magic tag does not match")
            return None
        return Engine(self.trt, json.loads(data[len(ENGINE_MAGIC) :]))


class Engine:
    def __init__(self, trt: Any, record: dict[str, Any]) -> None:
        self.trt, self.record = trt, record
        self.tensors = {t["name"]: t for t in record["tensors"]}
        self.names = list(self.tensors)
        trt.engines.append(self)

    num_io_tensors = property(lambda self: len(self.names))
    num_optimization_profiles = 1

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode[self.tensors[name]["mode"]]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self.tensors[name]["dtype"]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        profile = self.tensors[name].get("profile")
        return [tuple(s) for s in profile] if profile else [self.get_tensor_shape(name)] * 3

    def create_execution_context(self) -> ExecutionContext:
        ctx = ExecutionContext(self)
        self.trt.contexts.append(ctx)
        return ctx

    def create_engine_inspector(self) -> EngineInspector:
        return EngineInspector(self)


class ExecutionContext:
    """Checks shapes and bindings like TensorRT, then runs the engine's numpy kernel on the bound memory."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.trt = engine, engine.trt
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.calls: list[tuple] = []

    def _log(self, *entry: Any) -> None:
        self.calls.append(entry)
        self.trt.device.log.append(entry)

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(int(d) for d in shape)
        self._log("set_input_shape", name, shape)
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        if len(shape) != len(lo) or not all(a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True)):
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if self.engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return self.shapes.get(name, self.engine.get_tensor_shape(name))
        first_input = next(
            n for n in self.engine.names if self.engine.get_tensor_mode(n) == TensorIOMode.INPUT
        )
        known = self.get_tensor_shape(first_input)
        return tuple(known[i] if d < 0 else d for i, d in enumerate(self.engine.get_tensor_shape(name)))

    def set_tensor_address(self, name: str, address: int) -> bool:
        self._log("set_tensor_address", name, int(address))
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self._log("execute_async_v3", int(stream_handle))
        names = self.engine.names
        unbound = [n for n in names if n not in self.addresses]
        unshaped = [
            n
            for n in names
            if self.engine.get_tensor_mode(n) == TensorIOMode.INPUT and -1 in self.get_tensor_shape(n)
        ]
        # Stricter than TensorRT, which only warns on the legacy default stream: our runners must never use it.
        if unbound or unshaped or stream_handle == 0:
            self.trt.errors.append({"unbound": unbound, "unshaped": unshaped, "stream": stream_handle})
            return False
        plan = {
            n: (self.addresses[n], self.get_tensor_shape(n), NP_TYPES[self.engine.tensors[n]["dtype"]])
            for n in names
        }
        self.trt.device.launch(stream_handle, lambda: self._run(plan), "engine")
        return True

    def _run(self, plan: dict[str, tuple[int, tuple[int, ...], Any]]) -> None:
        dev, engine = self.trt.device, self.engine
        ins = {
            n: dev.read(*plan[n], what=n)
            for n in engine.names
            if engine.get_tensor_mode(n) == TensorIOMode.INPUT
        }
        outs = [n for n in engine.names if engine.get_tensor_mode(n) == TensorIOMode.OUTPUT]
        if engine.record["kernel"] == "text":
            result = {outs[0]: text_states(ins["input_ids"], ins["attention_mask"], plan[outs[0]][1][-1])}
        else:
            result = {OUTPUT_NAME: unet_eps(ins[SAMPLE], ins[TIMESTEP], ins.get(COND))}
        for n in outs:
            dev.write(plan[n][0], result[n].astype(plan[n][2]), what=n)


class EngineInspector:
    def __init__(self, engine: Engine) -> None:
        self.engine, self.execution_context = engine, None

    def get_engine_information(self, fmt: LayerInformationFormat) -> str:
        engine, ctx = self.engine, self.execution_context
        layers: list[Any] = engine.record["layers"]
        if engine.record["profiling_verbosity"] != "DETAILED":
            layers = [layer["Name"] for layer in layers]
        elif ctx is None and any(-1 in t["shape"] for t in engine.tensors.values()):
            layers = [{**layer, "Inputs": [{"Format/Datatype": "Unknown"}]} for layer in layers]  # unresolved
        return json.dumps({"Layers": layers, "Bindings": engine.names})
