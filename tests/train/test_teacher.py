import pytest
import torch
from safetensors.torch import load_file

from pqcad_deploy.io import CheckpointError
from pqcad_deploy.train.cli import main


def _run(out, fake_fmnist, *extra, model="tiny-unet"):
    args = [
        "teacher",
        "--model",
        model,
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


def test_text_to_image_teacher_trains_on_captioned_tinted_data(tmp_path, fake_fmnist, tiny_t2i_cache):
    """tiny-t2i trains from the embedding cache, records the encoder it was trained on, and samples a grid."""
    import json

    from pqcad_deploy.loading import open_model

    out = tmp_path / "t2i"
    _run(
        out, fake_fmnist, "--steps", "2", "--embeddings", str(tiny_t2i_cache), "--save-fp16", model="tiny-t2i"
    )
    weights = out / "tiny-t2i.safetensors"
    assert all(v.dtype in (torch.float16, torch.int64) for v in load_file(str(weights)).values())
    spec = json.loads(weights.with_suffix(".json").read_text())["model"]
    assert len(spec["text"]["fingerprint"]) == 64 and spec["cond_shape"] == [16, 32]
    bundle = open_model(weights)
    assert next(bundle.model.parameters()).dtype is torch.float32  # fp16 file, fp32 model
    assert (out / "teacher_grid.png").stat().st_size > 0


def test_text_to_image_teacher_needs_the_cache(tmp_path, fake_fmnist, capsys):
    args = ["teacher", "--model", "tiny-t2i", "--data-dir", str(fake_fmnist), "--out", str(tmp_path / "x")]
    assert main([*args, "--steps", "1", "--device", "cpu"]) == 2
    assert "--embeddings" in capsys.readouterr().err
