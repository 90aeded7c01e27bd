"""The PQ stage-transition rule: switch bit-width once the smoothed loss stops improving.

Pure Python (no torch) so it can be unit-tested and stored in checkpoints as plain numbers. Definition
(docs/pqcad.md, step 3): on the smoothed loss L_k, evaluated every ``every`` steps,
``m_k = beta * m_{k-1} + (1 - beta) * (L_{k-1} - L_k)``; switch when ``|m_k| < eps * L_0`` for
``patience`` consecutive checks, or when the step cap is reached. ``m_k`` is bias-corrected (divided by
``1 - beta**k``) so the zero start of the average does not look like a plateau at the first checks.
:meth:`update` takes every training loss (smoothed here); :meth:`observe` takes a low-variance signal evaluated at
each check (PQCAD's ``switch_signal="probe"``: the eps-error on fixed held-out calibration points).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SwitchDecision:
    step: int
    reason: str  # "plateau" | "cap"
    momentum: float
    smoothed_loss: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MomentumSwitch:
    """Feed every training loss to :meth:`update`; it returns a :class:`SwitchDecision` once, then None."""

    beta: float = 0.9
    eps: float = 1e-3
    patience: int = 5
    cap: int = 1000
    every: int = 20
    smoothing: float = 0.9  # EMA factor of the per-step loss -> smoothed loss
    # state
    smoothed: float | None = None
    loss0: float | None = None
    prev: float | None = None
    momentum: float = 0.0
    n_checks: int = 0
    quiet: int = 0
    decided: dict[str, Any] | None = None
    trace: list[tuple[int, float, float]] = field(default_factory=list)  # (step, L_k, m_hat_k)

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"momentum beta must be in [0, 1), got {self.beta}.")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"loss smoothing must be in [0, 1), got {self.smoothing}.")
        if self.eps < 0 or self.patience < 1 or self.every < 1 or self.cap < 1:
            raise ValueError("need eps >= 0, patience >= 1, every >= 1 and cap >= 1 for the transition rule.")

    @property
    def threshold(self) -> float:
        return self.eps * (self.loss0 or 0.0)

    def update(self, step: int, loss: float) -> SwitchDecision | None:
        """``step`` counts finished optimizer steps of this stage (1-based); ``loss`` is that step's loss."""
        if self.decided is not None:
            return None
        if not math.isfinite(loss):
            raise ValueError(f"non-finite loss {loss} given to the transition rule at step {step}.")
        s = self.smoothing
        self.smoothed = loss if self.smoothed is None else s * self.smoothed + (1 - s) * loss
        if step % self.every == 0:
            self._check(step)
        if self.decided is None and step >= self.cap:
            self._decide(step, "cap")
        return SwitchDecision(**self.decided) if self.decided is not None else None

    def observe(self, step: int, value: float) -> SwitchDecision | None:
        """A low-variance signal evaluated at a check (e.g. the eps-error on fixed held-out points): it is the
        smoothed loss of that check as it is (no EMA). ``step`` counts finished optimizer steps of this stage."""
        if self.decided is not None:
            return None
        if not math.isfinite(value):
            raise ValueError(f"non-finite signal {value} given to the transition rule at step {step}.")
        self.smoothed = float(value)
        self._check(step)
        if self.decided is None and step >= self.cap:
            self._decide(step, "cap")
        return SwitchDecision(**self.decided) if self.decided is not None else None

    def _check(self, step: int) -> None:
        cur = float(self.smoothed)
        if self.loss0 is None:
            self.loss0 = cur
        if self.prev is not None:
            self.n_checks += 1
            self.momentum = self.beta * self.momentum + (1 - self.beta) * (self.prev - cur)
            m_hat = self.momentum / (1 - self.beta**self.n_checks)
            self.trace.append((step, cur, m_hat))
            self.quiet = self.quiet + 1 if abs(m_hat) < self.threshold else 0
            if self.quiet >= self.patience:
                self._decide(step, "plateau")
        self.prev = cur

    def _decide(self, step: int, reason: str) -> None:
        m_hat = self.momentum / (1 - self.beta**self.n_checks) if self.n_checks else 0.0
        self.decided = dict(
            step=step,
            reason=reason,
            momentum=float(m_hat),
            smoothed_loss=float(self.smoothed if self.smoothed is not None else float("nan")),
            threshold=float(self.threshold),
        )

    def state_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trace"] = [list(x) for x in self.trace]
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> MomentumSwitch:
        d = dict(d)
        d["trace"] = [tuple(x) for x in d.get("trace", [])]
        return cls(**d)
