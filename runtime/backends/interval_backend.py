"""One runner over K per-interval engines: each UNet call goes to the engine of its timestep's interval.

Opened from an interval manifest (``pqcad-export`` of a timestep-aware student). For ONNX Runtime,
``share_weights=True`` hands the K sessions one copy of every initializer whose bytes are identical in all K files
(the INT8 weights; only activation scales differ) through ``SessionOptions.add_initializer``. Measured on the CPU it
saves nothing (RESULTS, "Timestep-aware PTQ"): ORT's INT8 kernels pre-pack their weights per session, so it is off by
default.
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

from .base import Runner, RunnerError, require

log = logging.getLogger(__name__)


class IntervalRunner(Runner):
    """``runners[k]`` serves interval k of ``schedule``; a feed whose samples span several intervals is split."""

    def __init__(self, schedule: IntervalSchedule, runners: Sequence[Runner], name: str = "intervals"):
        super().__init__()
        if len(runners) != schedule.k:
            raise RunnerError(f"{schedule.k} intervals need {schedule.k} engines, got {len(runners)}.")
        self.schedule, self.runners, self.name = schedule, list(runners), name
        self.shared: dict[str, Any] = {}  # OrtValues shared by the sessions (kept alive here)
        self.calls = [0] * schedule.k

    @classmethod
    def from_manifest(
        cls,
        path: str | os.PathLike,
        threads: int | None = None,
        share_weights: bool = False,
        name: str | None = None,
        **ort_kwargs: Any,
    ) -> IntervalRunner:
        """A runner per file of an interval manifest (checked: files present and unchanged): ONNX Runtime sessions
        for an exported manifest's ONNX files, or the engines of a ``pqcad-build`` manifest (ORT or TensorRT)."""
        from pqcad_deploy.export.intervals import read_manifest

        from .ort_backend import OrtRunner

        schedule, files, doc = read_manifest(path)
        name = name or f"{'trt' if doc.get('backend') == 'tensorrt' else 'ort'}:{Path(path).name}"
        if doc.get("backend") == "tensorrt":
            from .trt_backend import TrtRunner

            return cls(schedule, [TrtRunner(f, name=f"trt:{f.name}") for f in files], name=name)
        if doc.get("backend") == "onnxruntime":
            runners = [OrtRunner.from_engine(f, name=f"ort:{f.name}") for f in files]
            return cls(schedule, runners, name=name)
        shared = shared_initializers(files) if share_weights else {}
        runners = [
            OrtRunner(
                f, intra_op_threads=threads, shared_initializers=shared, name=f"ort:{f.name}", **ort_kwargs
            )
            for f in files
        ]
        runner = cls(schedule, runners, name=name)
        runner.shared = shared
        return runner

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

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device": str(self.device),
            "intervals": self.schedule.to_dict(),
            "shared_initializers": len(self.shared),
            "calls_per_interval": list(self.calls),
            "engines": [r.describe() for r in self.runners],
        }


def shared_initializers(files: Sequence[Path]) -> dict[str, Any]:
    """OrtValues of the initializers that are byte-identical (same name, dtype, shape, data) in every file."""
    onnx = require("onnx")
    ort = require("onnxruntime")
    from onnx import numpy_helper

    first, same = None, None
    for f in files:
        inits = {i.name: i for i in onnx.load(str(f)).graph.initializer}
        if first is None:
            first, same = inits, set(inits)
            continue
        same = {
            n for n in same if n in inits and inits[n].SerializeToString() == first[n].SerializeToString()
        }
    # scalars are not worth sharing (and ORT folds many of them into fused kernels)
    arrays = {n: numpy_helper.to_array(first[n]) for n in sorted(same or ())}
    shared = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in arrays.items() if a.size > 1}
    log.info(
        "%d of %d initializers shared by %d interval sessions", len(shared), len(first or {}), len(files)
    )
    return shared
