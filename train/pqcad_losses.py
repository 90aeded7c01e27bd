"""CAD loss and the DDIM algebra behind step halving (all in eps-space, eta = 0).

A DDIM step from x at alpha a to alpha a' with noise prediction eps is
``x' = sqrt(a'/a) x + (sqrt(1-a') - sqrt(a'(1-a)/a)) eps``; it is linear in eps, so the two-step target x''
of the teacher converts to the one eps* that reaches it in one step:
``eps* = (x'' - sqrt(a''/a) x) / (sqrt(1-a'') - sqrt(a''(1-a)/a))``. The student then trains with the usual
eps loss, and the deployed sampler is unchanged (it just runs half the steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(a, dtype=torch.float64 if like.dtype == torch.float64 else torch.float32)
    return a.to(like.device).reshape(-1, *([1] * (like.dim() - 1)))


def ddim_step(
    x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, alpha_prev: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM step (what ``DDIMScheduler.step(eta=0, clip_sample=False)`` computes)."""
    a, ap = _bcast(alpha, x), _bcast(alpha_prev, x)
    return (ap / a).sqrt() * x + ((1 - ap).sqrt() - (ap * (1 - a) / a).sqrt()) * eps


def eps_from_two_step(
    x_t: torch.Tensor, x_next2: torch.Tensor, alpha_t: torch.Tensor, alpha_next2: torch.Tensor
) -> torch.Tensor:
    """The eps that takes x_t to x_next2 in one DDIM step (the step-halving target)."""
    a, a2 = _bcast(alpha_t, x_t), _bcast(alpha_next2, x_t)
    den = (1 - a2).sqrt() - (a2 * (1 - a) / a).sqrt()
    if bool((den.abs() < 1e-8).any()):
        raise ValueError(
            "step-halving target is undefined where alpha_next2 == alpha_t (a step that does not move); "
            "check the calibration set's alpha_next2."
        )
    return (x_next2 - (a2 / a).sqrt() * x_t) / den


def alphas_at(alphas_cumprod: torch.Tensor, final_alpha: float, t: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod[t], with t < 0 meaning the end of the schedule (DDIM's ``final_alpha_cumprod``)."""
    ac = alphas_cumprod.to(t.device)
    out = ac[t.clamp(min=0)]
    return torch.where(t < 0, torch.full_like(out, float(final_alpha)), out)


def cad_loss(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    fp_target: torch.Tensor,
    lambda_d: float = 1.0,
    lambda_c: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``lambda_d * ||s - teacher||^2 + lambda_c * ||s - fp_target||^2`` (means over all elements).

    ``teacher=None`` means the teacher is the FP model itself, whose output on calibration inputs *is* the FP
    target; both terms then pull to the same place, which is what stage 1 and fixed-bit QAT do.
    """
    if lambda_d < 0 or lambda_c < 0 or lambda_d + lambda_c == 0:
        raise ValueError(
            f"CAD weights must be >= 0 and not both 0 (lambda_d={lambda_d}, lambda_c={lambda_c})."
        )
    s = student.float()
    l_fp = F.mse_loss(s, fp_target.float())
    l_t = F.mse_loss(s, teacher.float()) if teacher is not None else l_fp
    total = lambda_d * l_t + lambda_c * l_fp
    return total, {"distill": l_t.detach(), "fp_anchor": l_fp.detach()}  # tensors: no device sync
