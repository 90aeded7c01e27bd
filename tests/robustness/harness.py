"""What every hostile case asserts: the exit code, one ``prog: error: ...`` line naming the file or flag, no
traceback, no file that existed before changed, and nothing new left behind (no output, no temporary file)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .forkserver import Result

Snapshot = dict[Path, str]


def snapshot(*folders: Path) -> Snapshot:
    """sha256 of every file under ``folders`` (directories as ``<dir>``)."""
    snap: Snapshot = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_symlink() or not (p.is_file() or p.is_dir()):
                continue
            snap[p] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def hidden_leftovers(*folders: Path) -> list[Path]:
    """Temporary files and folders our writers use: ``.name.*`` beside the destination, ``*.tmp``."""
    return [
        p
        for folder in folders
        for p in folder.rglob("*")
        if p.name.startswith(".") or p.name.endswith(".tmp")
    ]


def error_lines(prog: str, stderr: str, kind: str = "error") -> list[str]:
    """``prog: error: ...`` lines; argparse writes ``pqcad-train pqcad: error: ...`` for subcommands."""
    pat = re.compile(rf"^{re.escape(prog)}( [\w-]+)?: {kind}\b")
    return [line for line in stderr.splitlines() if pat.match(line)]


def check_one_line(r: Result, code: int, names: Iterable[str] = (), kind: str = "error") -> str:
    """Exit ``code``, no traceback, exactly one ``prog: error`` line, last on stderr, naming every ``names``."""
    assert not r.timed_out, f"timed out\n{r}"
    assert "Traceback" not in r.stderr, f"traceback\n{r}"
    assert r.code == code, f"exit {r.code}, want {code}\n{r}"
    lines = error_lines(r.prog, r.stderr, kind)
    assert len(lines) == 1, f"want one '{r.prog}: {kind}' line, got {len(lines)}\n{r}"
    last = [line for line in r.stderr.splitlines() if line.strip()][-1]
    assert last == lines[0], f"the error line is not the last line on stderr\n{r}"
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}\n{r}"
    return lines[0]


def check_untouched(
    before: Snapshot, after: Snapshot, allow_new: Callable[[Path], bool] = lambda p: False
) -> None:
    """Every file that existed is unchanged; no new file appeared (new empty folders are fine)."""
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"changed or removed: {changed}"
    new = [p for p, h in after.items() if p not in before and h != "<dir>" and not allow_new(p)]
    assert not new, f"new files left behind: {new}"


@dataclass
class Case:
    """One hostile invocation: ``argv`` may use ``{d}`` (the case folder) and the artefact names of
    :class:`~tests.robustness.artefacts.Artefacts` (``{teacher}``, ``{student}``, ...)."""

    id: str
    prog: str
    argv: list[str]
    names: list[str] = field(default_factory=list)  # substrings the error line must contain
    setup: Callable[[Path, Any], None] | None = None  # writes the hostile files into the case folder
    code: int = 2

    def param(self):
        import pytest

        return pytest.param(self, id=self.id)


def run_case(server, art, case: Case, tmp: Path, timeout: float = 90, **extra: Path) -> Result:
    """Set the case up, run it, and assert the whole contract (``extra``: more ``{name}`` folders to format)."""
    d = tmp / "case"
    d.mkdir()
    if case.setup is not None:
        case.setup(d, art)
    fmt = {"d": str(d), **art.paths(), **{k: str(v) for k, v in extra.items()}}
    argv = [a.format(**fmt) for a in case.argv]
    names = [n.format(**fmt) for n in case.names]
    before = snapshot(d, art.root)
    r = server.run(case.prog, argv, d, timeout=timeout)
    check_one_line(r, case.code, names)
    check_untouched(before, snapshot(d, art.root))
    assert not hidden_leftovers(d), f"temporary files left: {hidden_leftovers(d)}"
    return r
