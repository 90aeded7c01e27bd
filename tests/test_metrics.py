import math

import numpy as np
import pytest
import torch

from pqcad_deploy.metrics import fd_fmnist, fidelity, frechet_distance, inception_score


def test_fidelity_identical_and_known_error():
    a = torch.zeros(2, 1, 4, 4)
    assert math.isinf(fidelity(a, a)["psnr_db"])
    b = a + 0.2
    f = fidelity(b, a)
    assert f["max_abs"] == pytest.approx(0.2)
    assert f["psnr_db"] == pytest.approx(10 * math.log10(4 / 0.04))
    with pytest.raises(ValueError, match="equal shapes"):
        fidelity(a, torch.zeros(1, 1, 4, 4))


def test_frechet_distance_of_shifted_gaussians():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    y = x + np.array([1.0, 0.0, 0.0])
    fd = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert fd == pytest.approx(1.0, abs=1e-3)


def test_fd_fmnist_real_vs_noise():
    """Real test images sit near the reference (1k samples carry a small-sample bias of about 2.8 in this 128-d
    feature space); uniform noise is hundreds away. Uses the shipped classifier."""
    from pqcad_deploy.data import load_fashion_mnist

    real = load_fashion_mnist("test").as_model_input()[:1000]
    noise = torch.rand(1000, 1, 32, 32) * 2 - 1
    fd_real, fd_noise = fd_fmnist(real), fd_fmnist(noise)
    assert fd_real < 5.0 and fd_noise > 100 * fd_real
    is_real, _ = inception_score(real)
    assert is_real > 4.0
