"""The PQ transition rule: switches on a plateau (not before), and at the step cap."""

import math

import pytest

from pqcad_deploy.train.pqcad_momentum import MomentumSwitch


def run(rule: MomentumSwitch, losses) -> tuple[int | None, str | None]:
    for i, lv in enumerate(losses, start=1):
        d = rule.update(i, lv)
        if d is not None:
            return d.step, d.reason
    return None, None


def decaying_then_flat(n_decay: int, n_flat: int) -> list[float]:
    dec = [1.0 * math.exp(-i / 60) for i in range(n_decay)]
    return dec + [dec[-1]] * n_flat


def test_no_switch_while_loss_falls():
    rule = MomentumSwitch(beta=0.9, eps=1e-3, patience=3, cap=10_000, every=10)
    losses = [1.0 * math.exp(-i / 200) for i in range(600)]  # still falling fast relative to eps * L0
    assert run(rule, losses) == (None, None)
    assert rule.n_checks > 10


def test_switches_on_plateau_after_patience_checks():
    rule = MomentumSwitch(beta=0.5, eps=1e-3, patience=3, cap=10_000, every=10, smoothing=0.0)
    step, reason = run(rule, decaying_then_flat(300, 400))
    assert reason == "plateau"
    assert 300 < step < 700  # not before the loss flattens, and before the data runs out
    assert step % 10 == 0
    # it needed `patience` quiet checks in a row
    quiet = [abs(m) < rule.threshold for (_, _, m) in rule.trace]
    assert all(quiet[-3:]) and len(quiet) >= 3


def test_cap_forces_switch_and_decides_once():
    rule = MomentumSwitch(beta=0.9, eps=1e-6, patience=5, cap=55, every=10)
    losses = [1.0 / (1 + i) for i in range(100)]
    assert run(rule, losses) == (55, "cap")
    assert rule.update(56, 0.1) is None  # one decision only


def test_noisy_flat_loss_does_not_switch_before_patience():
    rule = MomentumSwitch(beta=0.9, eps=1e-2, patience=4, cap=10_000, every=5, smoothing=0.9)
    step, reason = run(rule, [1.0] * 100)
    # the first check sets L_0; quiet checks start at the 2nd (step 10); 4 in a row -> step 25
    assert (step, reason) == (25, "plateau")


def test_state_round_trip_continues_identically():
    losses = decaying_then_flat(200, 400)
    a = MomentumSwitch(beta=0.8, eps=1e-3, patience=3, cap=10_000, every=10, smoothing=0.5)
    ref = run(a, losses)
    b = MomentumSwitch(beta=0.8, eps=1e-3, patience=3, cap=10_000, every=10, smoothing=0.5)
    for i, lv in enumerate(losses[:150], start=1):
        assert b.update(i, lv) is None
    c = MomentumSwitch.from_state_dict(b.state_dict())
    assert run_from(c, losses, 151) == ref


def run_from(rule, losses, start):
    for i in range(start, len(losses) + 1):
        d = rule.update(i, losses[i - 1])
        if d is not None:
            return d.step, d.reason
    return None, None


def test_rejects_bad_knobs_and_nonfinite():
    with pytest.raises(ValueError, match="beta"):
        MomentumSwitch(beta=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        MomentumSwitch().update(1, float("nan"))


def test_observe_takes_a_low_variance_signal_as_it_is():
    """``observe`` (the probe signal, one value per check): no EMA, the plateau rule and the cap as for ``update``."""
    rule = MomentumSwitch(beta=0.5, eps=1e-3, patience=3, cap=10_000, every=20)
    values = [math.exp(-k / 4) for k in range(10)] + [math.exp(-9 / 4)] * 10
    decision = next(d for k, v in enumerate(values, start=1) if (d := rule.observe(20 * k, v)) is not None)
    assert decision.reason == "plateau" and 200 < decision.step <= 400
    assert rule.trace[0][1] == values[1]  # the value itself is the smoothed loss of its check
    capped = MomentumSwitch(beta=0.5, eps=1e-9, patience=3, cap=60, every=20)
    assert [capped.observe(s, 1.0 / s) for s in (20, 40)] == [None, None]
    assert capped.observe(60, 1.0 / 60).reason == "cap" and capped.observe(80, 0.1) is None
    with pytest.raises(ValueError, match="non-finite signal"):
        MomentumSwitch().observe(20, float("inf"))
