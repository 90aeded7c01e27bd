"""Fixtures of the personalization tests: a tiny text-to-image teacher, its W8A8 student, subject images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from pqcad_deploy.text import load_embedding_cache
from pqcad_deploy.train.cli import main as train_main
from pqcad_deploy.zoo import build_model, get_spec, save_weights

CALIB = ["--calib-trajectories", "2", "--calib-steps", "4", "--calib-points", "2", "--calib-batch-size", "2"]


@pytest.fixture(scope="session")
def t2i(tmp_path_factory, tiny_t2i_cache, tiny_bert_dir):
    """A tiny-t2i teacher (random weights, the tiny encoder's fingerprint), its W8A8 PTQ student, subject images."""
    d = tmp_path_factory.mktemp("personalize")
    spec = get_spec("tiny-t2i")
    spec = dataclasses.replace(
        spec, text={**spec.text, "fingerprint": load_embedding_cache(tiny_t2i_cache).fingerprint}
    )
    teacher = save_weights(build_model(spec, seed=0), spec, d / "teacher.safetensors")
    student = d / "student.pt"
    argv = ["ptq", "--teacher", str(teacher), "--out", str(student), *CALIB, "--ptq-method", "maxabs"]
    assert train_main([*argv, "--embeddings", str(tiny_t2i_cache), "--device", "cpu"]) == 0
    subject = d / "subject"
    subject.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(subject / f"s{i}.png")
    return {"dir": d, "teacher": teacher, "student": student, "subject": subject, "bert": tiny_bert_dir,
            "calib": CALIB}  # fmt: skip


@pytest.fixture
def personalize(t2i):
    """``personalize(out, *extra, model=None)``: a 3-step ``pqcad-train personalize`` run; its exit code."""

    def run(out, *extra, model=None):
        argv = ["personalize", "--model", str(model or t2i["student"]), "--images", str(t2i["subject"]),
                "--out", str(out), "--steps", "3", "--batch-size", "2", "--prior-images", "2", "--text-encoder",
                str(t2i["bert"]), "--device", "cpu", *extra]  # fmt: skip
        return train_main(argv)

    return run
