"""Faults during the work: Ctrl-C and SIGTERM mid-export and mid-training, a full disk under an export and under a
training checkpoint, and a diverging run. Each ends with one line and the right exit code; the previous good
output is untouched and no temporary file or folder is left."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from .harness import check_one_line, check_untouched, hidden_leftovers, snapshot

TRAIN = "--teacher {teacher} --calib {calib} --batch-size 2 --check-every 2 --ptq-method maxabs --device cpu --no-progress".split()


def fmt(argv: list[str], art, **extra) -> list[str]:
    return [a.format(**art.paths(), **{k: str(v) for k, v in extra.items()}) for a in argv]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(child, ready, timeout: float = 60) -> None:
    """Poll until ``ready()`` (the command is working); fail if it exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert _alive(child.pid), f"exited before the signal:\n{child.wait(10)}"
        assert time.monotonic() < deadline, f"not working after {timeout}s:\n{child.stderr_so_far()}"
        time.sleep(0.02)


SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]


@pytest.mark.parametrize("signum,code", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_mid_export(server, art, tmp_path, signum, code):
    d = tmp_path / "out"
    d.mkdir()
    shutil.copy(art.onnx, d / "u.onnx")  # the previous good export
    before = snapshot(d)
    child = server.spawn(
        "pqcad-export", fmt(["--checkpoint", "{student}", "--onnx", str(d / "u.onnx")], art), d
    )
    wait_until(child, lambda: any(p.name.startswith(".u.onnx.") for p in d.iterdir()))  # its temporary folder
    child.signal(signum)
    r = child.wait(60)
    check_one_line(r, code, kind="interrupted")
    check_untouched(before, snapshot(d))
    assert not hidden_leftovers(d)


@pytest.mark.parametrize("signum,code", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_mid_training(server, art, tmp_path, signum, code):
    d = tmp_path / "out"
    d.mkdir()
    shutil.copy(art.student, d / "s.pt")  # the previous good student
    before = snapshot(d)
    argv = ["pqcad", *TRAIN, "--out", str(d / "s.pt"), "--steps", "100000", "--save-every", "2"]
    child = server.spawn("pqcad-train", fmt(argv, art), d)
    ckpt = d / "s_train.pt"
    wait_until(child, ckpt.exists)  # trained and checkpointed at least once
    child.signal(signum)
    r = child.wait(60)
    check_one_line(r, code, kind="interrupted")
    check_untouched(before, snapshot(d), allow_new=lambda p: p == ckpt)
    assert not hidden_leftovers(d)
    assert torch.load(ckpt, weights_only=True)["step"] >= 2  # the checkpoint on disk is whole


def test_sigterm_mid_teacher_training(server, art, tmp_path):
    d = tmp_path / "t"
    argv = [
        "teacher",
        "--model",
        "tiny-unet",
        "--data-dir",
        "{data}",
        "--out",
        str(d),
        "--steps",
        "100000",
        "--batch-size",
        "2",
        "--save-every",
        "2",
        "--warmup",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]
    child = server.spawn("pqcad-train", fmt(argv, art), tmp_path)
    wait_until(child, (d / "teacher_train.pt").exists)
    child.signal(signal.SIGTERM)
    r = child.wait(60)
    check_one_line(r, 143, kind="interrupted")
    assert not hidden_leftovers(d)
    assert torch.load(d / "teacher_train.pt", weights_only=True)["step"] >= 2


# ---------------------------------------------------------------- full disk
def _fill(folder: Path, leave_kb: int) -> None:
    """Fill ``folder``'s file system until about ``leave_kb`` KiB are free."""
    free = shutil.disk_usage(folder).free - leave_kb * 1024
    if free > 0:
        (folder / "filler").write_bytes(b"\0" * free)


def test_full_disk_under_export(server, art, tmpfs, tmp_path):
    d = tmpfs(4096)
    shutil.copy(art.onnx, d / "u.onnx")  # the previous good export (1.3 MB)
    _fill(d, 600)  # the new export (raw graph + processed graph) cannot fit
    before = snapshot(d)
    r = server.run(
        "pqcad-export", fmt(["--checkpoint", "{teacher}", "--onnx", str(d / "u.onnx")], art), tmp_path
    )
    check_one_line(r, 2, ["u.onnx", "disk is full"])
    check_untouched(before, snapshot(d))
    assert not hidden_leftovers(d)


def test_full_disk_under_training_checkpoint(server, art, tmpfs, tmp_path):
    d = tmpfs(4096)
    shutil.copy(art.student, d / "s_train.pt")  # a previous run's checkpoint (1.3 MB)
    _fill(d, 1500)  # a new checkpoint (student + optimizer state, about 4 MB) cannot fit
    before = snapshot(d)
    argv = ["pqcad", *TRAIN, "--out", str(d / "s.pt"), "--steps", "4", "--save-every", "2"]
    r = server.run("pqcad-train", fmt(argv, art), tmp_path)
    check_one_line(r, 2, ["s_train.pt", "disk is full"])
    check_untouched(before, snapshot(d))
    assert not hidden_leftovers(d)


def test_full_disk_under_ort_engine(server, art, tmpfs, tmp_path):
    d = tmpfs(4096)
    shutil.copy(art.engine, d / "e.ort.json")
    shutil.copy(art.engine.parent / __import__("json").loads(art.engine.read_text())["model"], d)
    _fill(d, 400)
    before = snapshot(d)
    argv = ["--onnx", "{onnx}", "--saveEngine", str(d / "e.ort.json"), "--backend", "onnxruntime"]
    r = server.run("pqcad-build", fmt(argv, art), tmp_path)
    check_one_line(r, 2, ["e.ort.json", "disk is full"])
    check_untouched(before, snapshot(d))
    assert not hidden_leftovers(d)


# ---------------------------------------------------------------- diverging training
def test_diverging_pqcad_run_never_replaces_the_checkpoint(server, art, tmp_path):
    """--lr 1e30: the weights stay finite (about 1e30) but give inf; no checkpoint is written, the error says so."""
    d = tmp_path / "out"
    d.mkdir()
    argv = ["pqcad", *TRAIN, "--out", str(d / "s.pt"), "--steps", "6", "--save-every", "2", "--lr", "1e30"]
    r = server.run("pqcad-train", fmt(argv, art), d)
    line = check_one_line(r, 2, ["no checkpoint was written", "s_train.pt", "--lr"])
    assert "step 2" in line
    assert not list(d.iterdir())


def test_diverging_teacher_keeps_the_last_good_checkpoint(server, art, tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    good = d / "teacher_train.pt"
    shutil.copy(art.student, good)  # stands for an earlier run's checkpoint: it must survive
    before = snapshot(d)
    argv = [
        "teacher",
        "--model",
        "tiny-unet",
        "--data-dir",
        "{data}",
        "--out",
        str(d),
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--save-every",
        "2",
        "--warmup",
        "0",
        "--lr",
        "1e30",
        "--device",
        "cpu",
        "--no-progress",
    ]
    r = server.run("pqcad-train", fmt(argv, art), tmp_path)
    check_one_line(r, 2, ["kept at", str(good), "--lr"])
    check_untouched(before, snapshot(d))
