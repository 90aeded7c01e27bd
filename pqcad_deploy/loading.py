"""Open whatever the user points a command at: an FP model (.safetensors + .json) or a student (.pt, or
.safetensors whose JSON sidecar holds a quant config). The one place that tells the two apart."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .io import CheckpointError
from .zoo import ModelSpec, load_model

_QUANT_KEYS = ("quant", "qcfg", "quant_config")


def open_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, ModelSpec, Any, dict[str, Any]]:
    """(model, spec, QuantConfig or None for an FP model, student meta or {})."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        side = path.with_suffix(".json")
        try:
            meta = json.loads(side.read_text()) if side.is_file() else {}
        except json.JSONDecodeError as e:
            raise CheckpointError(f"Sidecar {side} is not valid JSON ({e}).") from e
        if not any(k in meta for k in _QUANT_KEYS):
            model, spec = load_model(path)
            return model, spec, None, {}
    elif path.suffix not in (".pt", ".pth"):
        raise CheckpointError(
            f"Unsupported checkpoint type {path.suffix!r} ({path}); use a student .pt or a safetensors + JSON pair."
        )
    from .student import load_student

    return load_student(path)


def load_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, ModelSpec, dict[str, Any]]:
    """(model, spec, meta). ``meta['kind']`` is 'fp' or 'student'; a student's meta carries its quant config and
    the step count it was trained for (``meta['sampling']['steps']``)."""
    model, spec, qcfg, meta = open_checkpoint(path)
    if qcfg is None:
        return model, spec, {"kind": "fp"}
    return model, spec, {"kind": "student", "quant": qcfg.to_dict(), **meta}


def default_steps(meta: dict[str, Any], requested: int | None, fallback: int = 50) -> int:
    """The user's choice, else the step count a (step-halved) student was trained for, else ``fallback``."""
    if requested:
        return requested
    return int((meta.get("sampling") or {}).get("steps") or fallback)
