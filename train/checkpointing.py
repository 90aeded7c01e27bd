"""Training checkpoints shared by the teacher and PQCAD trainers: only a sound state replaces the previous one, and
a checkpoint is validated field by field before anything is restored from it.

A checkpoint replaces the previous one only when every floating-point weight is finite and, when the trainer gives
one, the loss on a fixed probe batch is finite too (weights of 1e37 are finite but produce inf): a diverged run
stops with :class:`TrainingDiverged`, whose message names the checkpoint that is actually kept, or says that none
exists. The write itself is atomic (``io.atomic_torch_save``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pqcad_deploy.errors import PQCADError
from pqcad_deploy.io import CheckpointError, atomic_torch_save, safe_torch_load


class TrainingDiverged(PQCADError, RuntimeError):
    """The loss or the weights became non-finite; the last good checkpoint is kept."""


def kept(path: Path, step: int | None = None) -> str:
    """What survives a failed run, for messages: the checkpoint on disk, or that there is none."""
    if path.is_file():
        at = f" (step {step})" if step is not None else ""
        return f"the last good checkpoint{at} is kept at {path}"
    return f"no checkpoint was written yet (none at {path})"


def nonfinite(modules: dict[str, nn.Module]) -> list[str]:
    """Names of floating-point tensors holding NaN or inf, over ``{prefix: module}``."""
    return [
        f"{prefix}.{name}"
        for prefix, m in modules.items()
        if m is not None
        for name, v in m.state_dict().items()
        if v.is_floating_point() and not torch.isfinite(v).all()
    ]


def save_if_sound(
    path: Path,
    state: Callable[[], dict[str, Any]],
    step: int,
    modules: dict[str, nn.Module],
    probe: Callable[[], float] | None = None,
    hint: str = "Lower --lr and --resume.",
    last_good: int | None = None,
) -> None:
    """Write ``state()`` to ``path`` atomically, but only if the weights are finite and ``probe()`` (the loss on a
    fixed probe batch) is finite; otherwise raise :class:`TrainingDiverged` naming what is kept."""
    bad = nonfinite(modules)
    if bad:
        raise TrainingDiverged(
            f"non-finite weights at step {step} (e.g. {bad[0]}); {kept(path, last_good)}. {hint}"
        )
    if probe is not None:
        loss = probe()
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the weights at step {step} give a non-finite loss ({loss}) on a probe batch; {kept(path, last_good)}. "
                f"{hint}"
            )
    atomic_torch_save(state(), path)


# ---------------------------------------------------------------- reading
def read_checkpoint(path: Path, fmt: str, schema: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """A training checkpoint of format ``fmt`` whose fields have the types in ``schema`` (None allowed where the
    type tuple includes ``type(None)``); errors name the file and the field."""
    ck = safe_torch_load(path)
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        raise CheckpointError(f"{path} is not a {_kind(fmt)} checkpoint (format {fmt!r}).")
    for key, kind in schema.items():
        v = ck.get(key)
        if not isinstance(v, kind) or (isinstance(v, bool) and kind in (int, float, (int, float))):
            raise CheckpointError(
                f"{path}: field {key!r} is {type(v).__name__}, not {_names(kind)}; the checkpoint is damaged."
            )
    return ck


def load_weights(module: nn.Module, sd: Any, path: Path, name: str) -> None:
    """``module.load_state_dict(sd)`` after checking keys and shapes (a mismatch names the file, not a traceback)."""
    expected = module.state_dict()
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: {name!r} is not a weight dict.")
    missing, unexpected = set(expected) - set(sd), set(sd) - set(expected)
    wrong = [
        k
        for k in set(expected) & set(sd)
        if not isinstance(sd[k], torch.Tensor) or sd[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: {name} weights do not match the model config ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(wrong)} of the wrong shape, e.g. {sorted(missing | unexpected | set(wrong))[:1]})."
        )
    module.load_state_dict(sd)


def restore(what: str, path: Path, fn: Callable[[], Any]) -> Any:
    """Run one restore step (optimizer, RNG, rule state) and turn its failure into an error naming the file."""
    try:
        return fn()
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise CheckpointError(
            f"{path}: cannot restore the {what} ({type(e).__name__}: {e}); the file is damaged."
        ) from e


def _kind(fmt: str) -> str:
    return {"pqcad-train-state/1": "PQCAD training", "pqcad-teacher-train/1": "teacher training"}.get(
        fmt, fmt
    )


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
