"""PyTorch runner: FP32 / FP16 / BF16 eager, and CUDA-graph replay on GPU.

CUDA graphs remove the per-kernel launch cost, which dominates small UNets at batch 1: each input
signature (names, shapes) gets static input buffers, a few warm-up calls on a side stream, one capture, and
afterwards every call is ``copy_ into the buffers -> graph.replay()``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pqcad_deploy.denoiser import (
    COND,
    FLOAT_INPUTS,
    OUTPUT_NAME,
    SAMPLE,
    TIMESTEP,
    TorchDenoiser,
    UNetWrapper,
    input_names_for,
)

from .base import Runner

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_precision(precision: str | torch.dtype) -> torch.dtype:
    if isinstance(precision, torch.dtype):
        if precision not in PRECISIONS.values():
            raise ValueError(f"Unsupported dtype {precision}; use one of {sorted(PRECISIONS)}.")
        return precision
    key = precision.lower()
    if key not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}.")
    return PRECISIONS[key]


def precision_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in PRECISIONS.items()}[dtype]


@dataclass
class _CapturedGraph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]  # static buffers the graph reads
    output: torch.Tensor  # static buffer the graph writes


class TorchRunner(Runner):
    """Runs a diffusers UNet (or ``UNetWrapper``) in a given precision, optionally through CUDA graphs.

    The model is converted on ``activate``; it is copied first unless it already has the requested device
    and dtype, so one FP32 model can feed several runners in one process.
    """

    def __init__(
        self,
        model: nn.Module,
        precision: str | torch.dtype = "fp32",
        device: str | torch.device = "cpu",
        cuda_graph: bool = False,
        warmup: int = 3,
        name: str | None = None,
    ):
        super().__init__()
        self.model = model if isinstance(model, UNetWrapper) else UNetWrapper(model)
        self.dtype = parse_precision(precision)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs a CUDA device; pass device='cuda' or drop cuda_graph.")
        self.cuda_graph = cuda_graph
        self.warmup = max(1, warmup)
        self.name = name or f"torch:{precision_name(self.dtype)}{'+graph' if cuda_graph else ''}"
        self._module: nn.Module | None = None
        self._graphs: dict[tuple, _CapturedGraph] = {}

    # -- lifecycle -----------------------------------------------------------------------------------
    def activate(self) -> None:
        p = next(self.model.parameters())
        module = self.model
        if p.device != self.device or p.dtype != self.dtype:
            module = copy.deepcopy(self.model)
            module.to(device=self.device, dtype=self.dtype)
        self._module = module.eval()
        self._eager = TorchDenoiser(
            self._module, self.dtype
        )  # the one torch call (inference mode, dtype casts)
        self.input_names = input_names_for(self.model.conditional)
        if self.dtype == torch.float16 and self.device.type == "cpu":
            log.warning("FP16 on CPU is slow and only useful for numerics checks.")

    def deactivate(self) -> None:
        self._graphs.clear()
        self._module = self._eager = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- inference -----------------------------------------------------------------------------------
    def _prepare(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            k: v.to(device=self.device, dtype=self.dtype if k in FLOAT_INPUTS else torch.int64)
            for k, v in feed.items()
        }

    def _forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self._module is not None
        return self._module(inputs[SAMPLE], inputs[TIMESTEP], inputs.get(COND))

    def _infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.cuda_graph:
            inputs = self._prepare(feed)
            return {OUTPUT_NAME: self._eager(inputs[SAMPLE], inputs[TIMESTEP], inputs.get(COND))}
        key = tuple(sorted((k, tuple(v.shape)) for k, v in feed.items()))
        g = self._graphs.get(key)
        if g is None:
            g = self._graphs[key] = self._capture(feed)
        with torch.no_grad():
            for k, v in feed.items():
                g.inputs[k].copy_(v, non_blocking=True)
            g.graph.replay()
            # The static output is overwritten by the next replay: hand out a copy.
            return {OUTPUT_NAME: g.output.clone()}

    def _capture(self, feed: dict[str, torch.Tensor]) -> _CapturedGraph:
        """Static buffers + warm-up on a side stream (cuDNN/cuBLAS autotuning, lazy inits) + one capture."""
        log.info("%s: capturing a CUDA graph for %s", self.name, {k: tuple(v.shape) for k, v in feed.items()})
        with torch.no_grad():
            static = {k: v.clone() for k, v in self._prepare(feed).items()}
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self._forward(static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = self._forward(static)
        torch.cuda.synchronize(self.device)
        return _CapturedGraph(graph=graph, inputs=static, output=output)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "backend": "torch",
            "precision": precision_name(self.dtype),
            "cuda_graph": self.cuda_graph,
            "graphs_captured": len(self._graphs),
        }
