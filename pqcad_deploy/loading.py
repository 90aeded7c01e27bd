"""The one model entry point: :func:`open_model` opens whatever a command is pointed at and returns one type.

Accepted sources: an FP model (``.safetensors`` + JSON sidecar), a student (``.pt``, or ``.safetensors`` whose
sidecar holds a quant config), or a zoo name (its shipped weights where the project ships them, else seeded random
weights for latency work). Every command, trainer and benchmark opens models through here, so they all tell the
kinds apart, refuse bad files and fall back to random weights the same way.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .errors import UsageError
from .io import CheckpointError
from .zoo import MODEL_SPECS, SHIPPED_WEIGHTS, ModelSpec, build_model, load_model

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclass
class ModelBundle:
    """A model and everything needed to sample, export or train from it."""

    model: nn.Module  # diffusers UNet in eval mode (quantized in place for a student)
    spec: ModelSpec
    qcfg: Any = None  # QuantConfig of a student; None for an FP model
    meta: dict[str, Any] = field(default_factory=dict)  # a student's history/sampling/pqcad records
    source: str = ""  # what was opened, for reports

    @property
    def quantized(self) -> bool:
        return self.qcfg is not None

    @property
    def trained_steps(self) -> int | None:
        """The DDIM step count a (step-halved) student was trained for; None when any count is fine."""
        steps = (self.meta.get("sampling") or {}).get("steps")
        return int(steps) if steps else None


def open_model(source: str | os.PathLike, *, random_weights: bool | None = None) -> ModelBundle:
    """Open a checkpoint path or a zoo name.

    ``random_weights``: True builds the zoo config with seeded random weights; None (default) uses a zoo entry's
    shipped weights and otherwise random weights with a warning; False refuses a zoo entry without shipped weights.
    """
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; point at a checkpoint file (.safetensors or .pt).")
    if path.is_file():
        if random_weights:
            raise UsageError(f"--random-weights applies to zoo names, not to the file {path}.")
        return _open_file(path)
    if text in MODEL_SPECS:
        return _open_zoo(text, random_weights)
    if path.suffix in CHECKPOINT_SUFFIXES or os.sep in text:
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    raise CheckpointError(
        f"{text!r} is neither a checkpoint file nor a zoo model; zoo models: {', '.join(sorted(MODEL_SPECS))}."
    )


def _open_zoo(name: str, random_weights: bool | None) -> ModelBundle:
    shipped = SHIPPED_WEIGHTS.get(name)
    if not random_weights and shipped is not None and shipped.is_file():
        bundle = _open_file(shipped)
        bundle.source = f"{name} (shipped weights {shipped.name})"
        return bundle
    if random_weights is False:
        raise CheckpointError(
            f"Zoo model {name} has no shipped weights; pass a checkpoint file, or ask for random weights "
            "(--random-weights) to measure latency only."
        )
    if random_weights is None:
        log.warning("%s: no shipped weights, using seeded RANDOM weights (latency only, no quality)", name)
    spec = MODEL_SPECS[name]
    return ModelBundle(build_model(spec, seed=0).eval(), spec, source=f"{name} (random weights, seed 0)")


def _open_file(path: Path) -> ModelBundle:
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(
            f"Unsupported checkpoint type {path.suffix!r} ({path}); use a student .pt or a .safetensors + .json pair."
        )
    if path.suffix == ".safetensors" and not _is_student_sidecar(path):
        model, spec = load_model(path)
        return ModelBundle(model, spec, source=str(path))
    from .student import load_student

    model, spec, qcfg, meta = load_student(path)
    return ModelBundle(model, spec, qcfg, meta, str(path))


def _is_student_sidecar(path: Path) -> bool:
    side = path.with_suffix(".json")
    if not side.is_file():
        return False  # load_model names the missing sidecar
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"Sidecar {side} is not valid JSON ({e}).") from e
    return isinstance(meta, dict) and "quant" in meta


def default_steps(meta: dict[str, Any], requested: int | None, fallback: int = 50) -> int:
    """The user's choice, else the step count a (step-halved) student was trained for, else ``fallback``."""
    if requested:
        return requested
    return int((meta.get("sampling") or {}).get("steps") or fallback)
