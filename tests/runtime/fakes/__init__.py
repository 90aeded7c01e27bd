"""Fakes of TensorRT, pycuda and the torch.cuda pieces TrtRunner uses, so that our TensorRT code and
Polygraphy's loaders execute in CI (TensorRT cannot be installed here). See each module's docstring for what
they prove and what they cannot.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch

from .fake_device import FakeDevice, fake_pycuda_modules, fake_torch_cuda
from .fake_tensorrt import FakeTensorRT
from .fake_trt_engine import engine_plan

__all__ = [
    "FakeDevice",
    "FakeTensorRT",
    "engine_plan",
    "install_fake_cuda_torch",
    "install_fake_pycuda",
    "install_fake_tensorrt",
]


def install_fake_tensorrt(
    monkeypatch: pytest.MonkeyPatch, device: FakeDevice, version: str = "10.3.0"
) -> FakeTensorRT:
    """Put a fresh fake ``tensorrt`` into ``sys.modules`` for one test, and hand it to Polygraphy too.

    Polygraphy imports ``tensorrt`` lazily once per module and keeps it (and a logger subclassing its
    ``ILogger``); pointing those module globals at this test's fake through ``monkeypatch`` means every test
    sees its own fake and, afterwards, Polygraphy's untouched lazy imports again.
    """
    import polygraphy.backend.trt  # noqa: F401 - loads every module that holds a lazy tensorrt import

    trt = FakeTensorRT(device, version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for name, module in list(sys.modules.items()):
        if name.startswith("polygraphy") and type(getattr(module, "trt", None)).__name__ == "LazyModule":
            monkeypatch.setattr(module, "trt", trt)
    monkeypatch.setattr(sys.modules["polygraphy.backend.trt.util"], "TRT_LOGGER", None)
    return trt


def install_fake_pycuda(monkeypatch: pytest.MonkeyPatch, device: FakeDevice) -> None:
    for name, module in fake_pycuda_modules(device).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "pycuda.autoinit", raising=False)


def install_fake_cuda_torch(monkeypatch: pytest.MonkeyPatch, device: FakeDevice) -> dict[str, Any]:
    """Replace the ``torch.cuda`` streams, graphs and availability checks TrtRunner calls."""
    replacements = fake_torch_cuda(device)
    for name, value in replacements.items():
        monkeypatch.setattr(torch.cuda, name, value)
    return replacements
