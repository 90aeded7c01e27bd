"""pqcad-sample and pqcad-eval end to end on a tiny model, and their one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pqcad_deploy.cli import evaluate, sample
from pqcad_deploy.data import load_fashion_mnist
from pqcad_deploy.zoo import build_model, get_spec, save_weights


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    spec = get_spec("tiny-unet")
    return save_weights(build_model(spec, seed=0), spec, tmp_path_factory.mktemp("m") / "tiny.safetensors")


def test_sample_writes_grid_and_json(tiny_ckpt, tmp_path):
    out, meta = tmp_path / "g.png", tmp_path / "g.json"
    argv = ["--checkpoint", str(tiny_ckpt), "--out", str(out), "--num-samples", "4", "--steps", "2"]
    assert sample.main([*argv, "--device", "cpu", "--json", str(meta)]) == 0
    im = Image.open(out)
    # 2x2 grid of 16x16 tiles, 2-pixel padding, scaled 2x
    assert im.size == (2 * (2 * 16 + 3 * 2),) * 2
    rec = json.loads(meta.read_text())
    assert rec["steps"] == 2 and rec["num_samples"] == 4 and rec["sampler_ms"] > 0


def test_sample_same_seed_same_grid(tiny_ckpt, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for p in (a, b):
        sample.main(["--checkpoint", str(tiny_ckpt), "--out", str(p), "--num-samples", "2", "--steps", "2"])
    assert a.read_bytes() == b.read_bytes()


def test_eval_against_itself_is_exact(tiny_ckpt, tmp_path, capsys):
    js = tmp_path / "e.json"
    argv = [
        "--checkpoint",
        str(tiny_ckpt),
        "--reference",
        str(tiny_ckpt),
        "--num-samples",
        "8",
        "--steps",
        "2",
    ]
    argv += ["--reference-steps", "2"]
    assert evaluate.main([*argv, "--batch-size", "4", "--device", "cpu", "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    assert r["n"] == 8 and r["fidelity_psnr_db"] == float("inf") and r["fidelity_rel_l2"] == 0.0
    assert np.isfinite(r["fd_fmnist"]) and 1.0 <= r["is_mean"] <= 10.0


def test_eval_image_folder_of_real_images_is_close_to_the_test_set(tmp_path):
    """Real test images scored against the test set: FD near the floor, far below random noise."""
    real = load_fashion_mnist("test").images[:400].numpy()
    folder = tmp_path / "real"
    folder.mkdir()
    for i, a in enumerate(real):
        Image.fromarray(a).save(folder / f"{i:04d}.png")
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(400):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(noise / f"{i:04d}.png")
    js_real, js_noise = tmp_path / "r.json", tmp_path / "n.json"
    assert evaluate.main(["--images", str(folder), "--json", str(js_real)]) == 0
    assert evaluate.main(["--images", str(noise), "--json", str(js_noise)]) == 0
    fd_real, fd_noise = (json.loads(p.read_text())["fd_fmnist"] for p in (js_real, js_noise))
    assert fd_real < 15.0 and fd_noise > 20 * fd_real  # 400 samples bias FD upwards; noise is far off


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--images", "{tmp}/none"], "is not a folder"),
        (["--images", "{tmp}", "--reference", "x.pt"], "--reference needs --checkpoint"),
        (["--checkpoint", "{tmp}/missing.pt"], "missing.pt does not exist"),
        (["--checkpoint", "tiny-unet", "--device", "cuda:7"], "no CUDA device"),
    ],
)
def test_eval_errors_are_one_line(tmp_path, capsys, argv, message):
    if message == "no CUDA device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pqcad-eval: error:") and message in err[0]


def test_sample_refuses_output_equal_to_input(tiny_ckpt, capsys):
    assert sample.main(["--checkpoint", str(tiny_ckpt), "--out", str(tiny_ckpt)]) == 2
    assert "also an input" in capsys.readouterr().err


@pytest.fixture(scope="module")
def t2i_ckpt(tmp_path_factory, tiny_t2i_cache):
    import dataclasses

    from pqcad_deploy.text import load_embedding_cache

    spec = get_spec("tiny-t2i")
    spec = dataclasses.replace(
        spec, text={**spec.text, "fingerprint": load_embedding_cache(tiny_t2i_cache).fingerprint}
    )
    return save_weights(build_model(spec, seed=0), spec, tmp_path_factory.mktemp("t2i") / "t2i.safetensors")


def test_sample_prompts_fill_rows(t2i_ckpt, tiny_t2i_cache, tmp_path):
    out, meta = tmp_path / "p.png", tmp_path / "p.json"
    argv = ["--checkpoint", str(t2i_ckpt), "--out", str(out), "--num-samples", "4", "--steps", "2"]
    argv += [
        "--prompt",
        "a red dress",
        "--prompt",
        "a photo of a blue sneaker",
        "--embeddings",
        str(tiny_t2i_cache),
    ]
    assert sample.main([*argv, "--json", str(meta)]) == 0
    rec = json.loads(meta.read_text())
    assert rec["prompts"] == [
        "a red dress",
        "a red dress",
        "a photo of a blue sneaker",
        "a photo of a blue sneaker",
    ]
    assert Image.open(out).size == (
        2 * (2 * 16 + 3 * 2),
        2 * (2 * 16 + 3 * 2),
    )  # 2 per row: one row per prompt


def test_eval_text_to_image_reports_prompt_fidelity_and_fidelity_to_fp(t2i_ckpt, tiny_t2i_cache, tmp_path):
    js = tmp_path / "t.json"
    argv = ["--checkpoint", str(t2i_ckpt), "--reference", str(t2i_ckpt), "--num-samples", "8", "--steps", "2"]
    argv += ["--reference-steps", "2", "--prompt-set", "held_out_pairs", "--embeddings", str(tiny_t2i_cache)]
    assert evaluate.main([*argv, "--batch-size", "4", "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    assert r["prompt_set"] == "held_out_pairs" and r["guidance_scale"] == 3.0
    assert 0.0 <= r["class_accuracy"] <= 1.0 and 0.0 <= r["colour_accuracy"] <= 1.0
    assert r["psnr_to_fp"] == float("inf") and abs(r["fd_to_fp"]) < 1e-2  # same model and noise (sqrtm noise)


def test_prompt_for_an_unconditional_model_is_refused(tiny_ckpt, tmp_path, capsys):
    argv = ["--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "x.png"), "--prompt", "a red dress"]
    assert sample.main(argv) == 2
    assert "not a text-to-image model" in capsys.readouterr().err
