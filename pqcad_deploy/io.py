"""Atomic file writes and safe loading: no pickled code is ever executed.

Every write goes through :func:`write_together`: files are written under temporary names in their destination
folder and renamed into place only when all of them were written, so a failure, a full disk or Ctrl-C leaves the
previous files untouched and no temporary file. Artefacts made of several files (safetensors + JSON sidecar,
ONNX + external data, ORT engine JSON + optimized model) are replaced as one unit: renamed in an order where the
file that names or describes the others comes last, with SIGINT/SIGTERM held back between the renames and the
renames rolled back if one fails. Only a hard crash between two renames can pair old and new files; pairs that
share a name carry a pair id (:func:`new_pair_id`) in both files, so readers refuse a torn pair
(:func:`check_pair`) instead of half-loading it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import PQCADError

PAIR_KEY = "pair_id"  # the key that binds a data file and its sidecar (safetensors metadata and JSON)


class CheckpointError(PQCADError, RuntimeError):
    """A checkpoint is missing, corrupt or does not match what the caller expects."""


class WriteError(PQCADError, OSError):
    """An output could not be written (full disk, permissions); the previous file, if any, is unchanged."""


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


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a missing, unreadable or non-object file raises ValueError naming the file and
    ``what`` to give instead (a results file handed to a script, not a checkpoint sidecar)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path} as JSON ({e}); give {what}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a JSON {type(obj).__name__}, not {what}")
    return obj


def require_file(path: str | os.PathLike, what: str, error: type[Exception] = CheckpointError) -> Path:
    """``path`` as a Path if it is a regular file; else ``error`` saying whether it is a folder or missing."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a directory, not a file; give the file's path.")
    if not path.is_file():
        raise error(f"{what} {path} does not exist.")
    return path


def artefact_files(path: Path) -> list[Path]:
    """The files an artefact at ``path`` consists of: a safetensors file and its JSON sidecar, an ONNX model and
    its external data; anything else is one file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return [path, path.with_suffix(".json")]
    if path.suffix == ".onnx":
        return [path, path.with_name(path.name + ".data")]
    return [path]


def disk_full(folder: Path, need: int = 0) -> bool:
    """Whether ``folder``'s file system has less than ``need`` bytes (at least 1 MiB) free."""
    try:
        return shutil.disk_usage(folder).free < max(need, 1 << 20)
    except OSError:
        return False


def write_failure(dest: Path, exc: BaseException) -> WriteError:
    """One message for a failed write (torch, safetensors and onnx raise their own types for a full disk)."""
    folder = dest.parent if str(dest.parent) else Path(".")
    if disk_full(folder):
        reason = f"the disk is full ({shutil.disk_usage(folder).free // 1024} KiB free in {folder})"
    else:
        lines = str(exc).strip().splitlines()
        text = getattr(exc, "strerror", None) or (lines[0] if lines else "")
        reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return WriteError(
        f"Cannot write {dest}: {reason}. Nothing was replaced; free space or choose another path."
    )


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for a few renames, then deliver them (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, _f: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in caught[:1]:
            signal.raise_signal(s)


def replace_together(staged: Sequence[tuple[Path, Path]]) -> None:
    """Rename each written temporary file onto its destination, in order (the file that names the others last).

    Signals are held back until all renames are done; if a rename fails, the ones already done are rolled back
    (the previous files are restored), so the destinations hold either all old or all new files."""
    backups: list[tuple[Path, Path | None]] = []
    with signals_deferred():
        try:
            for i, (tmp, dest) in enumerate(staged):
                backup = None
                if i < len(staged) - 1 and dest.is_file():  # the last rename has nothing after it to fail
                    backup = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.old")
                    try:
                        os.link(dest, backup)
                    except OSError:
                        backup = None  # no hard links here: no rollback for this file
                os.replace(tmp, dest)
                backups.append((dest, backup))
        except BaseException:
            for dest, backup in reversed(backups):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, dest)
                    else:
                        dest.unlink()
            raise
        finally:
            for _, backup in backups:
                if backup is not None:
                    with contextlib.suppress(OSError):
                        backup.unlink()


def write_together(files: Sequence[tuple[str | os.PathLike, Callable[[str], None]]]) -> list[Path]:
    """Write several files as one unit: ``write(tmp_path)`` for each, every one under a temporary name in its
    destination folder, then :func:`replace_together` in the given order. Any failure (a full disk, an exception
    in ``write``, Ctrl-C) leaves the previous files as they were and no temporary file."""
    dests = [Path(p) for p, _ in files]
    staged: list[tuple[Path, Path]] = []
    try:
        for dest, (_, write) in zip(dests, files, strict=True):
            parent = writable_parent(dest, CheckpointError, "choose a path you can write to")
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
            except OSError as e:
                raise write_failure(dest, e) from e
            os.close(fd)
            staged.append((Path(tmp), dest))
            try:
                write(tmp)
            except PQCADError:  # Interrupted (SIGTERM) and the writer's own messages pass unchanged
                raise
            except Exception as e:  # torch and safetensors raise their own types for a full disk
                if isinstance(e, OSError) or disk_full(parent):
                    raise write_failure(dest, e) from e
                raise  # anything else is a bug in the writer: keep its traceback
            os.chmod(tmp, default_file_mode())  # mkstemp creates 0600
        replace_together(staged)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return dests


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename into place, so a crash never leaves a half-written file."""
    return write_together([(path, write)])[0]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def json_writer(obj: Any) -> Callable[[str], None]:
    def _write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    return _write


def atomic_json_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, json_writer(obj))


# ---------------------------------------------------------------- pairs (data file + JSON sidecar)
def new_pair_id() -> str:
    """A fresh id written into both files of a pair by one save."""
    return uuid.uuid4().hex


def save_safetensors_pair(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    sidecar: dict[str, Any],
    metadata: dict[str, str] | None = None,
    sidecar_path: str | os.PathLike | None = None,
) -> Path:
    """``path`` (safetensors) and its JSON sidecar (default ``path`` with ``.json``), written as one unit with a
    shared pair id; the sidecar is renamed last. Refuses a sidecar path equal to the data path."""
    from safetensors.torch import save_file

    path = Path(path)
    side = Path(sidecar_path) if sidecar_path is not None else path.with_suffix(".json")
    if side.resolve() == path.resolve():
        raise CheckpointError(
            f"{path}: the data file and its JSON sidecar would be the same file; use .safetensors."
        )
    pid = new_pair_id()
    meta = {**(metadata or {}), PAIR_KEY: pid}
    write_together(
        [
            (path, lambda tmp: save_file(tensors, tmp, metadata=meta)),
            (side, json_writer({**sidecar, PAIR_KEY: pid})),
        ]
    )
    return path


def load_safetensors(path: str | os.PathLike, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a safetensors file, with one error naming ``what`` and the file."""
    from safetensors import safe_open

    path = require_file(path, what)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:  # safetensors raises SafetensorError, OSError, ValueError... for damaged files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"Cannot read {what} {path}: {first}. The file is corrupt or truncated.") from e
    return tensors, meta


def read_json_sidecar(path: Path, owner: str, holds: str = "the model config") -> dict[str, Any]:
    """The JSON object in ``path``, the sidecar of the file ``owner``; errors name the sidecar."""
    if path.is_dir():
        raise CheckpointError(f"Sidecar {path} of {owner} is a directory, not a JSON file.")
    if not path.is_file():
        raise CheckpointError(f"{owner} has no JSON sidecar {path}; it holds {holds}.")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"Sidecar {path} is not valid JSON ({e}).") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"Sidecar {path} must hold a JSON object, got {type(obj).__name__}.")
    return obj


def check_pair(data: Path, data_meta: dict[str, Any], side: Path, side_meta: dict[str, Any]) -> None:
    """Refuse a data file and sidecar written by different saves (their pair ids differ). Files written before
    pair ids existed carry none on either side and are accepted. The id is removed from ``side_meta``."""
    a, b = data_meta.get(PAIR_KEY), side_meta.pop(PAIR_KEY, None)
    if a != b:
        raise CheckpointError(
            f"{data} and its sidecar {side} come from different saves (an interrupted write or a file copied over "
            "one of them); restore both files together or save them again."
        )


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` with errors that say what is wrong with the file."""
    path = require_file(path, "Checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files
        raise CheckpointError(
            f"Cannot load {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "The file is corrupt, truncated, not a torch checkpoint, or contains pickled objects other than "
            "tensors and plain containers (refused for safety)."
        ) from e
