"""Shared fixtures: tiny models and small fake IDX datasets, so tests run in seconds on 2 CPU cores."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run much faster single-threaded on the shared 2-core machine (no oversubscription);
    tests that time or run full pipelines set their own thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_idx(path: Path, arr: np.ndarray, magic: int, gz: bool = True) -> Path:
    header = struct.pack(">i", magic) + struct.pack(">" + "i" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def fake_fmnist(tmp_path: Path) -> Path:
    """A 64-image train / 32-image test Fashion-MNIST lookalike in IDX format."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("t10k", 32)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), 2049)
    return tmp_path
