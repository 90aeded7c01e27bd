"""Atomic file writes and safe loading: no pickled code is ever executed."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import PQCADError


class CheckpointError(PQCADError, RuntimeError):
    """A checkpoint is missing, corrupt or does not match what the caller expects."""


def default_file_mode() -> int:
    """The permissions a plain ``open()`` would give a new file (0666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def writable_parent(path: Path, error: type[Exception], hint: str) -> Path:
    """The folder ``path`` will be written into; raises ``error`` if it is missing or not writable."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise error(f"Output folder {parent} does not exist; create it or choose another path.")
    if not os.access(parent, os.W_OK):
        raise error(f"Output folder {parent} is not writable; {hint}.")
    return parent


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename into place, so a crash never leaves a half-written file."""
    path = Path(path)
    parent = writable_parent(path, CheckpointError, "choose a path you can write to")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_json_save(obj: Any, path: str | os.PathLike) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    return atomic_write(path, _write)


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files
        raise CheckpointError(
            f"Cannot load {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "The file is corrupt, truncated, not a torch checkpoint, or contains pickled objects other than "
            "tensors and plain containers (refused for safety)."
        ) from e
