"""One runner over K per-interval engines: each UNet call goes to the engine of its timestep's interval.

Opened from an interval manifest (``pqcad-export`` of a timestep-aware student, or ``pqcad-build``'s engine
manifest). The K ONNX Runtime sessions draw their activation memory from one shared CPU arena (``shared_arena``):
they run one after the other, so one arena's peak serves them all. Measured on the CPU (RESULTS, "Timestep-aware
PTQ"), per-session arenas are what made K sessions cost K times the memory; handing the sessions one copy of the
identical weight initializers (``SessionOptions.add_initializer``) saved nothing and was removed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy.denoiser import TIMESTEP
from pqcad_deploy.quant.intervals import IntervalSchedule

from .base import Runner, RunnerError

log = logging.getLogger(__name__)


class IntervalRunner(Runner):
    """``runners[k]`` serves interval k of ``schedule``; a feed whose samples span several intervals is split."""

    def __init__(
        self,
        schedule: IntervalSchedule,
        runners: Sequence[Runner],
        name: str = "intervals",
        sampler_steps: int | None = None,
    ):
        super().__init__()
        # the step count of the sampler the intervals were calibrated for (None: not recorded)
        self.sampler_steps = sampler_steps
        if len(runners) != schedule.k:
            raise RunnerError(f"{schedule.k} intervals need {schedule.k} engines, got {len(runners)}.")
        self.schedule, self.runners, self.name = schedule, list(runners), name
        self.calls = [0] * schedule.k

    @classmethod
    def from_manifest(
        cls,
        path: str | os.PathLike,
        threads: int | None = None,
        shared_arena: bool = True,
        name: str | None = None,
        **ort_kwargs: Any,
    ) -> IntervalRunner:
        """A runner per file of an interval manifest (checked: files present and unchanged): ONNX Runtime sessions
        for an exported manifest's ONNX files, or the engines of a ``pqcad-build`` manifest (ORT or TensorRT)."""
        from pqcad_deploy.interval_manifest import read_manifest

        from .ort_backend import OrtRunner

        schedule, files, doc = read_manifest(path)
        backend = doc.get("backend")  # None: the exported ONNX files
        runners: list[Runner]
        if backend == "tensorrt":
            from .trt_backend import TrtRunner

            runners = [TrtRunner(f, name=f"trt:{f.name}") for f in files]
        elif backend == "onnxruntime":
            runners = [
                OrtRunner.from_engine(f, name=f"ort:{f.name}", shared_arena=shared_arena) for f in files
            ]
        else:
            runners = [
                OrtRunner(f, intra_op_threads=threads, shared_arena=shared_arena, name=f"ort:{f.name}",
                          fold_weight_dq=e.get("activations") == "float", **ort_kwargs)
                for f, e in zip(files, doc["entries"], strict=True)
            ]  # fmt: skip
        name = name or f"{'trt' if backend == 'tensorrt' else 'ort'}:{Path(path).name}"
        return cls(schedule, runners, name=name, sampler_steps=doc.get("sampler_steps"))

    def activate(self) -> None:
        for r in self.runners:
            r.__enter__()
        names = {r.input_names for r in self.runners}
        if len(names) != 1:
            raise RunnerError(f"{self.name}: the interval engines take different inputs {sorted(names)}.")
        self.input_names = self.runners[0].input_names
        self.device = self.runners[0].device

    def deactivate(self) -> None:
        for r in self.runners:
            r.__exit__(None, None, None)

    def _infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t = feed[TIMESTEP]
        idx = self.schedule.index_of(t.reshape(-1).cpu())
        if t.numel() == 1 or bool((idx == idx[0]).all()):
            k = int(idx[0])
            self.calls[k] += 1
            return self.runners[k].infer(feed)
        out: dict[str, torch.Tensor] = {}
        for k in idx.unique().tolist():
            rows = (idx == k).nonzero().reshape(-1)
            part = self.runners[k].infer({n: v[rows.to(v.device)] for n, v in feed.items()})
            self.calls[k] += 1
            for n, v in part.items():
                if n not in out:
                    out[n] = torch.empty((len(idx), *v.shape[1:]), dtype=v.dtype, device=v.device)
                out[n][rows.to(v.device)] = v
        return out

    def sampler_warnings(self, timesteps: Sequence[int]) -> list[str]:
        """What is off when this student runs the sampler with ``timesteps``: another step count than it was
        calibrated for, or intervals that none of the steps fall into (their engines never run)."""
        out = []
        if self.sampler_steps and len(timesteps) != self.sampler_steps:
            out.append(
                f"{self.name} was calibrated for a {self.sampler_steps}-step sampler and runs {len(timesteps)} "
                "steps: its interval ranges were calibrated on other timesteps."
            )
        idx = self.schedule.index_of(torch.tensor([int(t) for t in timesteps]))
        unused = sorted(set(range(self.schedule.k)) - set(idx.tolist()))
        if unused:
            out.append(
                f"{self.name}: none of the {len(timesteps)} steps falls in interval(s) {unused}; their engines never run."
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device": str(self.device),
            "intervals": self.schedule.to_dict(),
            "shared_arena": all(getattr(r, "shared_arena", False) for r in self.runners),
            "calls_per_interval": list(self.calls),
            "engines": [r.describe() for r in self.runners],
        }
