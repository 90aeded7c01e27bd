"""Shared fixtures: tiny models and small fake IDX datasets, so tests run in seconds on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

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
