"""CAD loss and the step-halving eps* algebra, checked against diffusers' DDIMScheduler."""

import pytest
import torch

from pqcad_deploy.sampling import make_scheduler
from pqcad_deploy.train.pqcad_losses import alphas_at, cad_loss, ddim_step, eps_from_two_step


def _fake_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x * 0.7 + t.double() / 1000.0)  # any deterministic function of (x, t)


@pytest.mark.parametrize("n_steps", [10, 100])
def test_eps_star_reproduces_two_ddim_steps_in_one(n_steps):
    """Two DDIMScheduler steps at N, then one step at N/2 with eps* from the same x_t, land on the same x."""
    full, half = make_scheduler("ddim"), make_scheduler("ddim")
    full.set_timesteps(n_steps)
    half.set_timesteps(n_steps // 2)
    # trailing spacing: the N/2 schedule is every other step of the N schedule
    assert torch.equal(half.timesteps, full.timesteps[::2])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    for i in range(0, n_steps, 2):
        t0, t1 = full.timesteps[i], full.timesteps[i + 1]
        x1 = full.step(_fake_eps(x, t0), t0, x, eta=0.0).prev_sample
        x2 = full.step(_fake_eps(x1, t1), t1, x1, eta=0.0).prev_sample
        a = full.alphas_cumprod[t0]
        nxt = t1 - full.config.num_train_timesteps // n_steps
        a2 = full.alphas_cumprod[nxt] if nxt >= 0 else full.final_alpha_cumprod
        eps_star = eps_from_two_step(x, x2, a.expand(3), a2.expand(3))
        one = half.step(eps_star, t0, x, eta=0.0).prev_sample
        torch.testing.assert_close(one, x2, rtol=1e-6, atol=1e-6)
        x = x2


def test_ddim_step_matches_scheduler_and_alphas_at_end():
    s = make_scheduler("ddim")
    s.set_timesteps(20)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    t = s.timesteps[-1]
    eps = _fake_eps(x, t)
    prev = torch.tensor([t - 50, t - 50])
    a_prev = alphas_at(s.alphas_cumprod, float(s.final_alpha_cumprod), prev)
    assert torch.all(prev < 0) and torch.allclose(a_prev, s.final_alpha_cumprod.expand(2))
    want = s.step(eps, t, x, eta=0.0).prev_sample
    got = ddim_step(x, eps, s.alphas_cumprod[t].expand(2), a_prev)
    torch.testing.assert_close(got, want)


def test_eps_star_rejects_a_step_that_does_not_move():
    x = torch.randn(1, 1, 2, 2)
    a = torch.tensor([0.5])
    with pytest.raises(ValueError, match="alpha_next2"):
        eps_from_two_step(x, x, a, a)


def test_cad_loss_weights_each_term():
    s = torch.zeros(4, 3)
    teacher, fp = torch.full((4, 3), 1.0), torch.full((4, 3), 2.0)
    total, parts = cad_loss(s, teacher, fp, lambda_d=0.5, lambda_c=2.0)
    assert parts["distill"].item() == pytest.approx(1.0) and parts["fp_anchor"].item() == pytest.approx(4.0)
    assert total.item() == pytest.approx(0.5 * 1.0 + 2.0 * 4.0)
    only_fp, _ = cad_loss(s, None, fp, lambda_d=1.0, lambda_c=1.0)  # FP teacher == FP target
    assert only_fp.item() == pytest.approx(8.0)
    s.requires_grad_(True)
    cad_loss(s, teacher, fp, 1.0, 0.0)[0].backward()
    assert torch.allclose(s.grad, torch.full_like(s, -2.0 / 12))  # no gradient from the anchor at lambda_c=0
    with pytest.raises(ValueError):
        cad_loss(s, teacher, fp, 0.0, 0.0)
