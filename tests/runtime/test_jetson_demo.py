"""The Jetson demo's numpy DDIM must match diffusers' DDIMScheduler as configured by sampling.make_scheduler."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from pqcad_deploy.runtime import jetson_demo as jd
from pqcad_deploy.sampling import make_scheduler, sample
from pqcad_deploy.zoo import get_spec


def _eps(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A deterministic, t-dependent fake denoiser."""
    return (np.tanh(x) * 0.5 + np.cos(t[:, None, None, None] / 100.0) * 0.3).astype(np.float32)


@pytest.mark.parametrize("model,steps", [("fmnist-ddpm", 10), ("fmnist-ddpm", 50), ("sd15-unet", 25)])
def test_numpy_ddim_matches_diffusers(model, steps):
    spec = get_spec(model)
    sched = make_scheduler("ddim", **spec.scheduler)
    sched.set_timesteps(steps)
    np.testing.assert_array_equal(jd.ddim_timesteps(steps), sched.timesteps.numpy())
    np.testing.assert_allclose(jd.alphas_cumprod(**spec.scheduler), sched.alphas_cumprod.numpy(), rtol=1e-5)

    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = sample(
        lambda x, t, c: torch.from_numpy(_eps(x.numpy(), t.numpy())),
        make_scheduler("ddim", **spec.scheduler),
        (2, 1, 8, 8),
        steps=steps,
        noise=noise,
    )
    got = jd.ddim_sample(_eps, noise.numpy().copy(), steps, spec.scheduler)
    np.testing.assert_allclose(got, ref.images.numpy(), atol=2e-5, rtol=1e-5)


def test_bad_steps_and_schedule():
    with pytest.raises(ValueError, match="steps"):
        jd.ddim_timesteps(0)
    with pytest.raises(ValueError, match="cosine"):
        jd.alphas_cumprod(beta_schedule="cosine")


def test_grid_png(tmp_path):
    from PIL import Image

    imgs = np.linspace(-1, 1, 5 * 1 * 4 * 6, dtype=np.float32).reshape(5, 1, 4, 6)
    im = Image.open(jd.save_grid_png(imgs, tmp_path / "g.png"))
    assert im.size == (3 * 6, 2 * 4) and im.mode == "L"
    rgb = Image.open(jd.save_grid_png(np.zeros((2, 3, 4, 4), np.float32), tmp_path / "c.png"))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (128, 128, 128)


def test_demo_module_is_torch_free():
    code = "import sys, pqcad_deploy.runtime.jetson_demo; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.skip(
    reason="needs TensorRT + pycuda + a GPU (Jetson); TensorRT is not installable in this environment"
)
def test_pycuda_engine_on_device():  # pragma: no cover
    pass
