"""One fork server and one set of good artefacts for the whole robustness suite."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from .artefacts import Artefacts, build
from .forkserver import ForkServer
from .harness import snapshot


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    # The children must not find the system Fashion-MNIST copy behind the test's back, nor oversubscribe 2 cores.
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PQCAD_FMNIST_DIR": ""}
    srv = ForkServer(tmp_path_factory.mktemp("forkserver_logs"), env=env)
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def art(tmp_path_factory) -> Artefacts:
    a = build(tmp_path_factory.mktemp("artefacts"))
    before = snapshot(a.root)
    yield a
    assert snapshot(a.root) == before, "a case changed the shared artefacts"


def _mount_tmpfs(where: Path, options: str) -> str | None:
    """Mount a tmpfs at ``where``; returns why not when this machine does not allow it (not root, no mount)."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, f"pqcad-{uuid.uuid4().hex[:6]}", str(where)],
        capture_output=True,
        text=True,
    )
    return None if r.returncode == 0 else f"mount -t tmpfs failed: {r.stderr.strip()}"


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size_kb, ro=False)`` -> a mounted folder (unmounted after the test); skips with the reason when
    the machine cannot mount one."""
    mounted: list[Path] = []

    def make(size_kb: int, ro: bool = False) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        why = _mount_tmpfs(where, f"size={size_kb}k,mode=0777")
        if why:
            pytest.skip(why)
        mounted.append(where)
        if ro:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def readonly_dir(tmp_path, tmpfs):
    """A folder nobody can write into: a read-only tmpfs as root, else a 0500 folder."""
    if os.geteuid() == 0:
        yield tmpfs(64, ro=True)
        return
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    yield d
    d.chmod(0o700)
