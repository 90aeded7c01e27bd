"""Open whatever the user points a command at: an FP model (.safetensors + .json) or a student (student.pt)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .io import CheckpointError
from .zoo import ModelSpec, load_model


def load_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, ModelSpec, dict[str, Any]]:
    """(model, spec, meta). ``meta['kind']`` is 'fp' or 'student'; a student's meta carries its quant config and
    the step count it was trained for (``meta['sampling']['steps']``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    side = path.with_suffix(".json")
    is_fp = path.suffix == ".safetensors" and side.is_file() and "quant" not in json.loads(side.read_text())
    if is_fp:
        model, spec = load_model(path)
        return model, spec, {"kind": "fp"}
    from .student import load_student  # quantized checkpoint

    model, spec, qcfg, meta = load_student(path)
    return model, spec, {"kind": "student", "quant": qcfg.to_dict(), **meta}


def default_steps(meta: dict[str, Any], requested: int | None, fallback: int = 50) -> int:
    """The user's choice, else the step count a (step-halved) student was trained for, else ``fallback``."""
    if requested:
        return requested
    return int((meta.get("sampling") or {}).get("steps") or fallback)
