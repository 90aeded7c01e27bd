"""Shared fixtures: tiny models and small fake IDX datasets, so tests run in seconds on 2 CPU cores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests._utils import save_tiny_bert, write_idx


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run much faster single-threaded on the shared 2-core machine (no oversubscription);
    tests that time or run full pipelines set their own thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fake_fmnist(tmp_path: Path) -> Path:
    """A 64-image train / 32-image test Fashion-MNIST lookalike in IDX format."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("t10k", 32)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), 2049)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT (32-d states) whose tokenizer covers every caption word."""
    pytest.importorskip(
        "transformers", reason="the text path needs the [t2i] extra (transformers, tokenizers)"
    )
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_t2i_cache(tiny_bert_dir, tmp_path_factory) -> Path:
    """The whole caption table embedded by the tiny BERT at 16 tokens: what ``tiny-t2i`` trains on."""
    from pqcad_deploy.text import build_embedding_cache, load_text_encoder

    path = tmp_path_factory.mktemp("t2i") / "emb.safetensors"
    build_embedding_cache(load_text_encoder(tiny_bert_dir, max_length=16), path)
    return path


CALIB = ["--calib-trajectories", "2", "--calib-steps", "4", "--calib-points", "2", "--calib-batch-size", "2"]


@pytest.fixture(scope="session")
def t2i(tmp_path_factory, tiny_t2i_cache, tiny_bert_dir):
    """A tiny-t2i teacher (random weights, the tiny encoder's fingerprint), its W8A8 PTQ student, subject images."""
    # imported here, as in tiny_t2i_cache: only the tests that use this fixture need the text path
    from pqcad_deploy.text import load_embedding_cache
    from pqcad_deploy.train.cli import main as train_main
    from pqcad_deploy.zoo import build_model, get_spec, save_weights

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
