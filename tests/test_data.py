import gzip

import numpy as np
import pytest

from pqcad_deploy.data import DataError, load_fashion_mnist
from tests._utils import write_idx


def test_reads_gz_and_scales_to_model_range(fake_fmnist):
    ds = load_fashion_mnist("train", fake_fmnist)
    assert len(ds) == 64
    x = ds.as_model_input()
    assert x.shape == (64, 1, 32, 32)
    assert x.min() >= -1 and x.max() <= 1
    assert (x[:, :, :2, :] == -1).all(), "padding must be black (-1)"


def test_reads_uncompressed(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), 2051, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(3), 2049, gz=False)
    assert load_fashion_mnist("test", tmp_path).labels.tolist() == [0, 1, 2]


def test_missing_files_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setattr("pqcad_deploy.data.SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("PQCAD_FMNIST_DIR", raising=False)
    with pytest.raises(DataError) as e:
        load_fashion_mnist("train", tmp_path)
    assert str(tmp_path) in str(e.value) and "apt-get install -y dataset-fashion-mnist" in str(e.value)


def test_env_variable_is_used(fake_fmnist, monkeypatch):
    monkeypatch.setenv("PQCAD_FMNIST_DIR", str(fake_fmnist))
    assert len(load_fashion_mnist("test")) == 32


def test_wrong_magic(fake_fmnist):
    write_idx(fake_fmnist / "train-images-idx3-ubyte", np.zeros((64, 28, 28)), 2049)
    with pytest.raises(DataError, match="magic number 2049, expected 2051"):
        load_fashion_mnist("train", fake_fmnist)


def test_truncated_file(fake_fmnist):
    p = fake_fmnist / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist("train", fake_fmnist)


def test_corrupt_gzip(fake_fmnist):
    (fake_fmnist / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_fashion_mnist("train", fake_fmnist)


def test_count_mismatch(fake_fmnist):
    write_idx(fake_fmnist / "train-labels-idx1-ubyte", np.zeros(10), 2049)
    with pytest.raises(DataError, match="64 images but .* 10 labels"):
        load_fashion_mnist("train", fake_fmnist)
