"""Runners behind one interface (``with runner: runner.infer(feed)``; ``runner.denoiser()`` for the sampler).

``TorchRunner`` (FP32/FP16/BF16, CUDA graphs), ``OrtRunner`` (CPU / CUDA / TensorRT execution providers) and
``TrtRunner`` (native TensorRT engines) are imported lazily, so importing this package never pulls in an
optional dependency.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import MissingBackendError, Runner, RunnerDenoiser, RunnerError, require

_LAZY = {
    "TorchRunner": ".torch_backend",
    "OrtRunner": ".ort_backend",
    "TrtRunner": ".trt_backend",
}

__all__ = ["MissingBackendError", "Runner", "RunnerDenoiser", "RunnerError", "require", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
