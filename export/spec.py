"""One export spec per network: I/O names, dynamic axes, sampler-like inputs and the engine shape profile.

The names here are the contract with the runtime (engines, ORT sessions, ``pqcad-build --minShapes``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pqcad_deploy.denoiser import COND, OUTPUT_NAME, SAMPLE, TIMESTEP, input_names_for, sampler_feed
from pqcad_deploy.zoo import ModelSpec


@dataclass(frozen=True)
class ExportSpec:
    """What the exporter and the engine builder need to know about one network's graph interface."""

    model: str
    sample_shape: tuple[int, int, int]
    cond_shape: tuple[int, ...] | None = None
    batch: int = 1
    dynamic_batch: bool = True
    max_batch: int = 16

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}.")
        if self.max_batch < self.batch:
            raise ValueError(f"max_batch {self.max_batch} is smaller than batch {self.batch}.")

    @property
    def input_names(self) -> tuple[str, ...]:
        return input_names_for(self.cond_shape is not None)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (OUTPUT_NAME,)

    def dynamic_axes(self) -> dict[str, dict[int, str]] | None:
        if not self.dynamic_batch:
            return None
        return {name: {0: "B"} for name in self.input_names + self.output_names}

    def input_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {SAMPLE: (batch, *self.sample_shape), TIMESTEP: (batch,)}
        if self.cond_shape:
            shapes[COND] = (batch, *self.cond_shape)
        return shapes

    def shape_profile(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """min/opt/max shapes for a TensorRT optimisation profile (static when not dynamic)."""
        lo, hi = (1, self.max_batch) if self.dynamic_batch else (self.batch, self.batch)
        return {
            n: {"min": self.input_shapes(lo)[n], "opt": s, "max": self.input_shapes(hi)[n]}
            for n, s in self.input_shapes(self.batch).items()
        }

    def sampler_inputs(
        self, batch: int, seed: int = 0, dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """:func:`sampler_feed` at this network's shapes."""
        return sampler_feed(self.input_shapes(batch), seed, dtype)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "inputs": {n: list(s) for n, s in self.input_shapes(self.batch).items()},
            "outputs": list(self.output_names),
            "dynamic_batch": self.dynamic_batch,
            "shape_profile": {n: {k: list(v) for k, v in p.items()} for n, p in self.shape_profile().items()},
        }


def export_spec_for(spec: ModelSpec, batch: int = 1, dynamic_batch: bool = True) -> ExportSpec:
    return ExportSpec(
        model=spec.name,
        sample_shape=tuple(spec.sample_shape),
        cond_shape=tuple(spec.cond_shape) if spec.cond_shape else None,
        batch=batch,
        dynamic_batch=dynamic_batch,
        max_batch=max(16, batch),
    )
