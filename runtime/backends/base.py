"""One runner interface for every backend (the Polygraphy pattern): a context manager with ``infer(feed)``.

``with runner: out = runner.infer({"sample": x, "timestep": t})`` returns ``{"out_sample": eps}``;
``runner.denoiser()`` adapts it to the sampler's ``(x, t, cond) -> eps`` signature. Optional packages
(onnxruntime-gpu, tensorrt, pycuda) are imported only when a runner that needs them is activated, and a
missing one raises :class:`MissingBackendError` whose message is one line saying what to install.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from types import ModuleType
from typing import Any

import torch

from pqcad_deploy.errors import PQCADError

log = logging.getLogger(__name__)

INPUT_NAMES = ("sample", "timestep", "encoder_hidden_states")
OUTPUT_NAME = "out_sample"

# What to install for each optional module, shown verbatim in the error.
INSTALL_HINTS = {
    "tensorrt": "pip install tensorrt  (on Jetson: it ships with JetPack; build engines on the device)",
    "pycuda": "pip install pycuda",
    "onnxruntime": "pip install onnxruntime  (GPU: pip install onnxruntime-gpu)",
    "polygraphy": "pip install polygraphy",
}


class MissingBackendError(PQCADError, ImportError):
    """An optional backend package is not installed; the message says what to install."""


def require(module: str) -> ModuleType:
    """Import ``module`` or raise a one-line :class:`MissingBackendError` naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        hint = INSTALL_HINTS.get(top, f"pip install {top}")
        raise MissingBackendError(f"{module} is not installed ({e.msg}); install it with: {hint}") from None


class Runner(ABC):
    """Context-managed inference session. ``activate`` loads the engine/model, ``deactivate`` frees it."""

    name: str = "runner"
    #: the device the runner reads inputs from and writes outputs to
    device: torch.device = torch.device("cpu")

    def __init__(self) -> None:
        self.is_active = False

    def __enter__(self) -> Runner:
        if not self.is_active:
            self.activate()
            self.is_active = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.is_active:
            self.deactivate()
            self.is_active = False

    @abstractmethod
    def activate(self) -> None: ...

    def deactivate(self) -> None:  # noqa: B027 - optional hook
        """Release engines, sessions and device buffers."""

    @abstractmethod
    def infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run one forward pass; ``feed`` maps input names to tensors (any device); outputs are on ``device``."""

    def _check_active(self) -> None:
        if not self.is_active:
            raise RuntimeError(f"{self.name} runner is not active; use it inside `with runner:`.")

    def denoiser(self) -> RunnerDenoiser:
        """The sampler-facing callable; latents stay on ``self.device`` between steps."""
        return RunnerDenoiser(self)

    def describe(self) -> dict[str, Any]:
        """JSON-able settings recorded next to benchmark numbers."""
        return {"name": self.name, "device": str(self.device)}


class RunnerDenoiser:
    """``(x, t, cond) -> eps`` on top of ``Runner.infer``; the result keeps the dtype of ``x``."""

    def __init__(self, runner: Runner):
        self.runner = runner

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        feed = {"sample": x, "timestep": t}
        if cond is not None:
            feed["encoder_hidden_states"] = cond
        out = self.runner.infer(feed)[OUTPUT_NAME]
        return out.to(device=x.device, dtype=x.dtype)


def feed_from_args(
    x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    feed = {"sample": x, "timestep": t}
    if cond is not None:
        feed["encoder_hidden_states"] = cond
    return feed
