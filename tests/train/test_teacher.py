import pytest
import torch
from safetensors.torch import load_file

from pqcad_deploy.io import CheckpointError
from pqcad_deploy.train.cli import main


def _run(out, fake_fmnist, *extra):
    args = [
        "teacher",
        "--model",
        "tiny-unet",
        "--data-dir",
        str(fake_fmnist),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--warmup",
        "2",
        "--save-every",
        "2",
        "--device",
        "cpu",
        *extra,
    ]
    assert main(args) == 0


def test_resume_continues_exactly(tmp_path, fake_fmnist):
    """4 steps in one go == 2 steps, stop, resume for 2 more (same data order, noise, optimizer, EMA)."""
    _run(tmp_path / "a", fake_fmnist, "--steps", "4")
    _run(tmp_path / "b", fake_fmnist, "--steps", "2")
    ck = torch.load(tmp_path / "b" / "teacher_train.pt", weights_only=True)
    assert ck["step"] == 2
    _run(tmp_path / "b", fake_fmnist, "--steps", "4", "--resume", "auto")
    a = load_file(str(tmp_path / "a" / "tiny-unet.safetensors"))
    b = load_file(str(tmp_path / "b" / "tiny-unet.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "teacher_grid.png").stat().st_size > 0


def test_resume_from_foreign_file_refused(tmp_path, fake_fmnist, capsys):
    from pqcad_deploy.train.teacher import _load_resume

    bad = tmp_path / "bad.pt"
    torch.save({"format": "something-else"}, bad)
    with pytest.raises(CheckpointError, match="not a teacher training checkpoint"):
        _load_resume(bad, torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), None)
    args = [
        "teacher",
        "--model",
        "tiny-unet",
        "--data-dir",
        str(fake_fmnist),
        "--out",
        str(tmp_path / "c"),
        "--steps",
        "1",
        "--resume",
        str(tmp_path / "missing.pt"),
        "--device",
        "cpu",
    ]
    assert main(args) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
