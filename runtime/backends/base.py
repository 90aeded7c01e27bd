"""One runner interface for every backend (the Polygraphy pattern): a context manager with ``infer(feed)``.

``with runner: out = runner.infer({"sample": x, "timestep": t})`` returns ``{"out_sample": eps}`` (names from
``pqcad_deploy.denoiser``, the export spec's contract);
``runner.denoiser()`` adapts it to the sampler's ``(x, t, cond) -> eps`` signature. Optional packages
(onnxruntime-gpu, tensorrt, pycuda) are imported only when a runner that needs them is activated, and a
missing one raises :class:`MissingBackendError` whose message is one line saying what to install.
"""

from __future__ import annotations

import importlib
import logging
import time
from abc import ABC, abstractmethod
from types import ModuleType
from typing import Any

import torch

from pqcad_deploy.denoiser import COND, OUTPUT_NAME, SAMPLE, TIMESTEP
from pqcad_deploy.errors import PQCADError

log = logging.getLogger(__name__)

# What to install for each optional module, shown verbatim in the error.
INSTALL_HINTS = {
    "tensorrt": "pip install tensorrt  (on Jetson: it ships with JetPack; build engines on the device)",
    "pycuda": "pip install pycuda",
    "onnxruntime": "pip install onnxruntime  (GPU: pip install onnxruntime-gpu)",
    "polygraphy": "pip install polygraphy",
}


class MissingBackendError(PQCADError, ImportError):
    """An optional backend package is not installed; the message says what to install."""


class RunnerError(PQCADError, RuntimeError):
    """A runner was used wrongly (inactive, wrong inputs) or its engine failed to run."""


def require(module: str) -> ModuleType:
    """Import ``module`` or raise a one-line :class:`MissingBackendError` naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        hint = INSTALL_HINTS.get(top, f"pip install {top}")
        raise MissingBackendError(f"{module} is not installed ({e.msg}); install it with: {hint}") from None


class Runner(ABC):
    """Context-managed inference session (Polygraphy's ``BaseRunner`` contract).

    Subclasses implement ``activate``/``deactivate`` and ``_infer``; :meth:`infer` is the template around it: it
    checks that the runner is active and that the feed holds every input the engine declares
    (``input_names``, set by ``activate``), then times the call. ``last_inference_ms`` is host wall time, which
    includes a device synchronisation only where the backend performs one (ORT CPU, TensorRT's copy-out).
    """

    name: str = "runner"
    #: the device the runner reads inputs from and writes outputs to
    device: torch.device = torch.device("cpu")

    def __init__(self) -> None:
        self.is_active = False
        self.input_names: tuple[str, ...] = ()
        self.last_inference_ms: float | None = None

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
    def activate(self) -> None:
        """Load the engine/session; set ``input_names``."""

    def deactivate(self) -> None:  # noqa: B027 - optional hook
        """Release engines, sessions and device buffers."""

    def infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run one forward pass; ``feed`` maps input names to tensors (any device); outputs are on ``device``."""
        if not self.is_active:
            raise RunnerError(f"{self.name} runner is not active; use it inside `with runner:`.")
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise RunnerError(f"{self.name} needs inputs {missing}; the feed has {sorted(feed)}.")
        t0 = time.perf_counter()
        out = self._infer({n: feed[n] for n in self.input_names} if self.input_names else feed)
        self.last_inference_ms = (time.perf_counter() - t0) * 1e3
        return out

    @abstractmethod
    def _infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The backend's forward pass on a checked feed holding exactly ``input_names``."""

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
        feed = {SAMPLE: x, TIMESTEP: t}
        if cond is not None:
            feed[COND] = cond
        out = self.runner.infer(feed)[OUTPUT_NAME]
        return out.to(device=x.device, dtype=x.dtype)
