"""TensorRT runner (TRT 10 I/O-tensor API): deserialize a plan, set input shapes, bind torch tensors by
address, ``execute_async_v3`` on a dedicated torch CUDA stream, optionally replay a captured CUDA graph.

TensorRT cannot be installed on the development machines: the tests run this code against a recording fake
of ``tensorrt`` and of the ``torch.cuda`` stream and graph calls, with host memory behind ``_empty``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy.denoiser import OUTPUT_NAME

from .base import Runner, RunnerError, require

log = logging.getLogger(__name__)

# trt.DataType member name -> torch dtype (INT4/FP8/FP4 never appear as engine I/O in this project).
TRT_TO_TORCH = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
}


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """Map a ``trt.DataType`` (or its member name) to the torch dtype used for the binding buffer."""
    name = getattr(trt_dtype, "name", str(trt_dtype).split(".")[-1])
    if name not in TRT_TO_TORCH:
        raise TypeError(
            f"Engine I/O type {name} has no torch equivalent; export the model with float/int64 I/O."
        )
    return TRT_TO_TORCH[name]


def shape_key(feed: dict[str, torch.Tensor], input_names: Sequence[str]) -> tuple:
    """One buffer set (and CUDA graph) per input-shape signature."""
    return tuple((n, tuple(feed[n].shape)) for n in input_names)


@dataclass
class _Bindings:
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    graph: Any = None  # torch.cuda.CUDAGraph once captured


class TrtRunner(Runner):
    """Runs a serialized TensorRT engine; buffers are torch CUDA tensors, one set per input-shape signature."""

    def __init__(
        self,
        engine_path: str | os.PathLike,
        device: str | torch.device = "cuda",
        cuda_graph: bool = False,
        name: str | None = None,
    ):
        super().__init__()
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise FileNotFoundError(
                f"TensorRT engine {self.engine_path} does not exist; build it with pqcad-build."
            )
        self.device = torch.device(device)
        self.cuda_graph = cuda_graph
        self.name = name or f"trt:{self.engine_path.name}{'+graph' if cuda_graph else ''}"
        self._bindings: dict[tuple, _Bindings] = {}
        self._last_key: tuple | None = None

    def activate(self) -> None:
        trt = require("tensorrt")
        if not torch.cuda.is_available():
            raise RunnerError("The TensorRT runner needs a CUDA GPU visible to torch.")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise RunnerError(
                f"TensorRT {trt.__version__} could not deserialize {self.engine_path}: engines are tied to the "
                "TensorRT version and GPU that built them; rebuild it with pqcad-build on this machine."
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = lambda n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT  # noqa: E731
        self.input_names = tuple(n for n in names if is_in(n))
        self.output_names = [n for n in names if not is_in(n)]
        self.stream = torch.cuda.Stream(device=self.device)  # TRT warns on the legacy default stream

    def deactivate(self) -> None:
        self._bindings.clear()
        self._last_key = None  # the next context starts with nothing bound
        self.context = None
        self.engine = None

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """One binding's device buffer (the single allocation point, which tests back with host memory)."""
        return torch.empty(shape, dtype=dtype, device=self.device)

    def _allocate(self, feed: dict[str, torch.Tensor]) -> _Bindings:
        ctx = self.context
        inputs = {}
        for n in self.input_names:
            if not ctx.set_input_shape(n, tuple(feed[n].shape)):
                raise RunnerError(
                    f"{self.name}: input {n} shape {tuple(feed[n].shape)} is outside the engine's optimization "
                    "profile; rebuild with wider --minShapes/--maxShapes."
                )
            inputs[n] = self._empty(tuple(feed[n].shape), torch_dtype(self.engine.get_tensor_dtype(n)))
        outputs = {
            n: self._empty(tuple(ctx.get_tensor_shape(n)), torch_dtype(self.engine.get_tensor_dtype(n)))
            for n in self.output_names
        }
        return _Bindings(inputs=inputs, outputs=outputs)

    def _bind(self, b: _Bindings) -> None:
        """Point the context at ``b``'s buffers (needed whenever the shape signature changes)."""
        for n, t in b.inputs.items():
            self.context.set_input_shape(n, tuple(t.shape))
        for n, t in (b.inputs | b.outputs).items():
            self.context.set_tensor_address(n, t.data_ptr())

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RunnerError(f"{self.name}: execute_async_v3 failed (see the TensorRT log above).")

    def _infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = shape_key(feed, self.input_names)
        b = self._bindings.get(key)
        if b is None:
            b = self._bindings[key] = self._allocate(feed)
        if key != self._last_key:
            self._bind(b)
            self._last_key = key
        cur = torch.cuda.current_stream(self.device)
        for n in self.input_names:
            b.inputs[n].copy_(feed[n], non_blocking=True)
        self.stream.wait_stream(cur)  # inputs written on the caller's stream
        if self.cuda_graph and b.graph is None:
            with torch.cuda.stream(self.stream):
                self._enqueue()  # TRT allocates lazily on the first enqueue: never capture that one
            b.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(b.graph, stream=self.stream, capture_error_mode="thread_local"):
                self._enqueue()
        if b.graph is not None:
            with torch.cuda.stream(self.stream):
                b.graph.replay()
        else:
            self._enqueue()
        cur.wait_stream(self.stream)
        # Hand out copies: the bound buffers are reused by the next call.
        outs = {n: t.clone() for n, t in b.outputs.items()}
        if OUTPUT_NAME not in outs and len(outs) == 1:
            outs[OUTPUT_NAME] = next(iter(outs.values()))
        return outs

    def describe(self) -> dict[str, Any]:
        d = {
            **super().describe(),
            "backend": "tensorrt",
            "engine": str(self.engine_path),
            "cuda_graph": self.cuda_graph,
        }
        if self.is_active:
            d["tensorrt"] = self._trt.__version__
        return d
