"""The one multi-file writer (``io.write_together`` / ``replace_together``) in-process: a failure at any point
leaves the previous files, signals wait for the renames, and the export's external data is switched as a unit."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from pqcad_deploy import io


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_a_failing_writer_leaves_every_previous_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old a")
    (tmp_path / "a.json").write_bytes(b"old sidecar")
    before = _files(tmp_path)

    def broken(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(io.WriteError, match="a.json"):
        io.write_together(
            [(tmp_path / "a.bin", lambda t: Path(t).write_bytes(b"new a")), (tmp_path / "a.json", broken)]
        )
    assert _files(tmp_path) == before  # no temporary file either


def test_a_failing_rename_rolls_the_earlier_ones_back(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"old a")
    (tmp_path / "a.json").write_bytes(b"old sidecar")
    before = _files(tmp_path)
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("a.json"):
            raise PermissionError(13, "Permission denied")
        real(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(PermissionError):
        io.write_together(
            [
                (tmp_path / "a.bin", lambda t: Path(t).write_bytes(b"new")),
                (tmp_path / "a.json", lambda t: Path(t).write_bytes(b"new")),
            ]
        )
    monkeypatch.undo()
    assert _files(tmp_path) == before


def test_signals_wait_until_the_unit_is_replaced(tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    def stop(*_):
        raise Stop

    previous = signal.signal(signal.SIGTERM, stop)
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives between the two renames
        real(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    try:
        with pytest.raises(Stop):
            io.write_together(
                [
                    (tmp_path / "a", lambda t: Path(t).write_bytes(b"1")),
                    (tmp_path / "b", lambda t: Path(t).write_bytes(b"2")),
                ]
            )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert _files(tmp_path) == {"a": b"1", "b": b"2"}  # both renamed before the signal was delivered


def test_export_switches_external_data_as_a_unit(tmp_path, monkeypatch):
    """The second export writes its weights under a name the current graph does not read, flips the .onnx, then
    deletes the old weights: at no point does a graph on disk point at another export's weights."""
    import onnx

    from pqcad_deploy.export import pipeline
    from pqcad_deploy.export.pipeline import ExportOptions, export
    from pqcad_deploy.loading import open_model

    monkeypatch.setattr(pipeline, "TWO_GB_PROTO", 1024)
    out = tmp_path / "u.onnx"
    opts = ExportOptions(check=False)
    first = export(open_model("tiny-unet", random_weights=True), out, opts)["files"]["external_data"]
    assert first == "u.onnx.data"
    seen = []
    real = pipeline.replace_together

    def spy(staged):
        # just before the switch, the graph on disk still reads the first export's weights, which exist
        seen.append(
            {
                e.value
                for i in onnx.load(str(out), load_external_data=False).graph.initializer
                for e in i.external_data
                if e.key == "location"
            }
        )
        assert (tmp_path / first).is_file()
        real(staged)

    monkeypatch.setattr(pipeline, "replace_together", spy)
    second = export(open_model("tiny-unet", random_weights=True), out, opts)["files"]["external_data"]
    assert seen == [{first}] and second != first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["u.onnx", second, "u.report.json"])
    onnx.checker.check_model(str(out), full_check=True)


def test_the_fork_server_matches_a_real_console_script(server, tmp_path):
    """One case through the installed ``.venv/bin`` script itself: the same exit code and stderr as its forked
    twin, so the matrix run through the fork server is what a user sees."""
    import shutil
    import subprocess
    import sys

    script = Path(sys.executable).with_name("pqcad-build")
    if not script.exists():
        script = Path(shutil.which("pqcad-build") or "")
    if not script.is_file():
        pytest.skip("pqcad-build is not installed as a console script here")
    argv = ["--onnx", str(tmp_path / "missing.onnx"), "--saveEngine", str(tmp_path / "e.ort.json"), "--backend",
            "onnxruntime"]  # fmt: skip
    real = subprocess.run([str(script), *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    forked = server.run("pqcad-build", argv, tmp_path)
    assert (real.returncode, real.stderr) == (forked.code, forked.stderr) == (2, real.stderr)
    assert real.stderr.startswith("pqcad-build: error: --onnx") and real.stderr.count("\n") == 1
