"""The quantization path on a text-conditioned model: calibration on real prompt states along guided trajectories,
PTQ and PQCAD from the CLI, and the refusals that keep prompts and models matched."""

from __future__ import annotations

import pytest
import torch

from pqcad_deploy.calibset import CalibSet
from pqcad_deploy.captions import caption_index
from pqcad_deploy.loading import open_model
from pqcad_deploy.text import load_embedding_cache
from pqcad_deploy.train.cli import main
from pqcad_deploy.zoo import build_model, get_spec, save_weights
from tests._utils import save_tiny_bert


@pytest.fixture(scope="module")
def t2i_teacher(tmp_path_factory, tiny_t2i_cache):
    """A tiny-t2i "teacher" (random weights) whose spec records the tiny encoder's fingerprint."""
    import dataclasses

    spec = get_spec("tiny-t2i")
    fp = load_embedding_cache(tiny_t2i_cache).fingerprint
    spec = dataclasses.replace(spec, text={**spec.text, "fingerprint": fp})
    return save_weights(
        build_model(spec, seed=0), spec, tmp_path_factory.mktemp("t2i") / "teacher.safetensors"
    )


CALIB = ["--calib-trajectories", "3", "--calib-steps", "6", "--calib-points", "2", "--calib-batch-size", "3"]


def test_calibration_on_prompts_stores_both_halves_of_each_guided_call(t2i_teacher, tiny_t2i_cache, tmp_path):
    out = tmp_path / "calib.safetensors"
    argv = ["calib", "--teacher", str(t2i_teacher), "--out", str(out), *CALIB, "--device", "cpu"]
    assert main([*argv, "--embeddings", str(tiny_t2i_cache), "--guidance-scale", "3"]) == 0
    cs = CalibSet.load(out)
    assert len(cs) == 3 * 2 * 2 and cs.meta["guidance_scale"] == 3.0  # trajectories x points x (cond, uncond)
    cache_states = load_embedding_cache(tiny_t2i_cache).states
    empty = cache_states[0]
    is_empty = [bool(torch.equal(c, empty)) for c in cs.cond]
    assert sum(is_empty) == len(cs) // 2  # every call stored its unconditional half
    train_ids = set(caption_index().train_ids[caption_index().train_counts > 0].flatten().tolist())
    rows = {i for c in cs.cond for i, s in enumerate(cache_states) if torch.equal(c, s)}
    assert rows - {0} <= train_ids  # calibration prompts are training captions, never held-out ones


def test_ptq_and_pqcad_on_a_text_conditioned_teacher(t2i_teacher, tiny_t2i_cache, tmp_path):
    calib = tmp_path / "calib.safetensors"
    common = ["--teacher", str(t2i_teacher), "--calib", str(calib), *CALIB, "--device", "cpu"]
    common += ["--embeddings", str(tiny_t2i_cache)]
    assert main(["ptq", *common, "--out", str(tmp_path / "ptq.pt"), "--ptq-method", "percentile"]) == 0
    ptq = open_model(tmp_path / "ptq.pt")
    assert ptq.qcfg.calib_method == "percentile" and ptq.spec.text["fingerprint"]
    out = tmp_path / "pqcad.pt"
    args = ["pqcad", *common, "--out", str(out), "--bits", "w8a8", "--steps", "3", "--batch-size", "4"]
    assert main([*args, "--ptq-method", "maxabs", "--no-progress"]) == 0
    student = open_model(out)
    assert student.quantized and student.spec.cond_shape == (16, 32)
    assert student.meta["history"][0]["event"] == "ptq"


def test_halving_refused_on_guided_calibration(t2i_teacher, tiny_t2i_cache, tmp_path, capsys):
    common = ["--teacher", str(t2i_teacher), *CALIB, "--device", "cpu", "--embeddings", str(tiny_t2i_cache)]
    args = [
        "pqcad",
        *common,
        "--out",
        str(tmp_path / "h.pt"),
        "--bits",
        "w8a8",
        "--steps",
        "2",
        "--halve-steps",
    ]
    assert main([*args, "--ptq-method", "maxabs", "--no-progress"]) == 2
    assert "guided" in capsys.readouterr().err


def test_text_model_without_prompts_or_with_another_encoder_is_refused(
    t2i_teacher, tiny_t2i_cache, tiny_bert_dir, tmp_path, capsys
):
    base = ["calib", "--teacher", str(t2i_teacher), "--out", str(tmp_path / "c.safetensors"), *CALIB]
    # no --embeddings: falls back to the live default encoder, which is not the one the model was trained on
    other = tmp_path / "other_bert"
    save_tiny_bert(other, seed=1)
    assert main([*base, "--text-encoder", str(other), "--device", "cpu"]) == 2
    assert "not the text encoder" in capsys.readouterr().err
    assert not (tmp_path / "c.safetensors").exists()


def test_calib_prompts_replace_the_training_captions(t2i_teacher, tiny_t2i_cache, tmp_path, capsys):
    """--calib-prompts FILE: every conditional half of the set is one of the file's prompts; a file with no prompt
    or with prompts the cache lacks is refused before any work."""
    cache = load_embedding_cache(tiny_t2i_cache)
    chosen = ["a red dress", "a photo of a blue sneaker"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(chosen) + "\n\n", encoding="utf-8")
    out = tmp_path / "calib.safetensors"
    argv = ["calib", "--teacher", str(t2i_teacher), "--out", str(out), *CALIB, "--device", "cpu"]
    argv += ["--embeddings", str(tiny_t2i_cache), "--guidance-scale", "3"]
    assert main([*argv, "--calib-prompts", str(prompts)]) == 0
    allowed = [cache.lookup([t])[0].float() for t in ["", *chosen]]
    cs = CalibSet.load(out)
    assert all(any(torch.equal(c.float(), s) for s in allowed) for c in cs.cond)
    assert any(torch.equal(c.float(), allowed[1]) or torch.equal(c.float(), allowed[2]) for c in cs.cond)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("a dress in zzz style\n", encoding="utf-8")
    for bad, message in ((empty, "holds no prompt"), (unknown, "lacks 1 of the --calib-prompts")):
        out2 = tmp_path / f"{bad.stem}.safetensors"
        assert main([*argv[:4], str(out2), *argv[5:], "--calib-prompts", str(bad)]) == 2
        assert message in capsys.readouterr().err and not out2.exists()
