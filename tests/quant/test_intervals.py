"""Per-interval activation ranges: schedule checks, per-sample selection, K = 1 equivalence, checkpoints, refusals."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pqcad_deploy.denoiser import UNetWrapper
from pqcad_deploy.io import CheckpointError
from pqcad_deploy.quant import QuantConfig, QuantizerStateError, calibrate, export_mode, quantize_model
from pqcad_deploy.quant.intervals import (
    IntervalError,
    IntervalSchedule,
    act_quantizers,
    add_intervals,
    get_intervals,
    interval_ranges,
    store_interval,
)
from pqcad_deploy.sampling import make_scheduler
from pqcad_deploy.student import load_student, save_student
from pqcad_deploy.zoo import build_model, get_spec

T = torch.tensor([900, 600, 300, 10])  # intervals 0, 1, 1, 2 under starts (700, 200)


@pytest.fixture(scope="module")
def student():
    spec = get_spec("tiny-unet")
    model = quantize_model(build_model(spec, seed=0).eval(), QuantConfig(weight_bits=8, act_bits=8))
    x = torch.randn(4, *spec.sample_shape, generator=torch.Generator().manual_seed(0))

    def loop(m):
        with torch.no_grad():
            UNetWrapper(m)(x, T)

    calibrate(model, loop)
    return model, spec, x


def run(model, x, t=T):
    with torch.no_grad():
        return UNetWrapper(model)(x, t)


def test_schedule_maps_timesteps_in_sampling_order():
    s = IntervalSchedule((700, 200))
    assert s.k == 3 and s.index_of(T).tolist() == [0, 1, 1, 2]
    starts_open = s.index_of(torch.tensor([701, 700, 201, 200])).tolist()
    assert starts_open == [0, 1, 1, 2]  # a start is the first timestep of its interval
    ddim = make_scheduler("ddim")
    ddim.set_timesteps(50)
    ts = [int(t) for t in ddim.timesteps]
    eq = IntervalSchedule.equal_steps(ts, 4)
    assert eq.steps_per_interval(ts) == [12, 13, 12, 13] and list(eq.starts) == [ts[12], ts[25], ts[37]]
    assert IntervalSchedule.from_dict(json.loads(json.dumps(eq.to_dict()))) == eq


@pytest.mark.parametrize(
    "starts, match",
    [
        ((200, 700), "strictly decreasing"),
        ((500, 500), "strictly decreasing"),
        ((1000,), r"lie in \[0, 999\]"),
    ],
)
def test_overlapping_or_out_of_range_intervals_are_refused(starts, match):
    with pytest.raises(IntervalError, match=match):
        IntervalSchedule(starts)


def test_an_interval_without_sampler_steps_is_refused():
    ts = list(range(999, 0, -200))  # 999, 799, 599, 399, 199
    with pytest.raises(IntervalError, match=r"leave interval\(s\) \[1\] without any"):
        IntervalSchedule((900, 850)).steps_per_interval(ts)
    with pytest.raises(IntervalError, match="do not fit"):
        IntervalSchedule.equal_steps(ts, 6)


def test_equal_sets_are_bit_identical_and_each_sample_uses_its_own_interval(student):
    model, _, x = student
    ref = run(model, x)
    k3 = add_intervals(copy.deepcopy(model), IntervalSchedule((700, 200)))
    assert torch.equal(run(k3, x), ref)  # K sets all equal to the single set: the same student, bit for bit
    with torch.no_grad():
        for q in act_quantizers(k3):
            q.interval_amax[1] *= 0.5
    out = run(k3, x)
    changed = (out - ref).flatten(1).abs().amax(1)
    assert changed[0] == 0 and changed[3] == 0 and (changed[1:3] > 0).all()  # only interval 1's samples
    # a mixed batch gives each sample exactly what a single-set student holding that sample's ranges gives
    half = copy.deepcopy(model)
    with torch.no_grad():
        for q in act_quantizers(half):
            q.amax.mul_(0.5)
    assert torch.equal(out[1:3], run(half, x)[1:3]) and torch.equal(out[[0, 3]], ref[[0, 3]])
    # a deep copy keeps hook and quantizers on one (copied) state
    assert torch.equal(run(copy.deepcopy(k3), x), out)


def test_k_set_student_round_trips_and_bad_files_are_refused(student, tmp_path):
    model, spec, x = student
    k3 = add_intervals(copy.deepcopy(model), IntervalSchedule((700, 200)))
    with torch.no_grad():
        for i, q in enumerate(act_quantizers(k3)):
            q.interval_amax[2] *= 1.5 + 0.01 * i
    for name in ("s.safetensors", "s.pt"):
        path = save_student(tmp_path / name, k3, spec)
        loaded, _, _, meta = load_student(path)
        assert meta["intervals"]["starts"] == [700, 200] and get_intervals(loaded) == get_intervals(k3)
        assert interval_ranges(loaded) == interval_ranges(k3)
        assert torch.equal(run(loaded, x), run(k3, x))
    # the single-set student's file has no intervals and still loads as before
    plain = save_student(tmp_path / "plain.safetensors", model, spec)
    assert "intervals" not in json.loads(plain.with_suffix(".json").read_text())
    # a sidecar whose interval record was edited is refused with the reason
    side = tmp_path / "s.json"
    meta = json.loads(side.read_text())
    meta["intervals"]["starts"] = [200, 700]
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="strictly decreasing"):
        load_student(tmp_path / "s.safetensors")
    # interval tensors without the record (or vice versa) do not half-load
    del meta["intervals"]
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError):
        load_student(tmp_path / "s.safetensors")


def test_non_positive_interval_ranges_are_refused(student, tmp_path):
    model, spec, _ = student
    k2 = add_intervals(copy.deepcopy(model), IntervalSchedule((500,)))
    with torch.no_grad():
        act_quantizers(k2)[0].interval_amax[1] = -1.0
    path = save_student(tmp_path / "bad.pt", k2, spec)
    with pytest.raises(CheckpointError, match="non-positive scales"):
        load_student(path)


def test_k_set_students_refuse_export_training_and_k1(student):
    model, _, x = student
    k2 = add_intervals(copy.deepcopy(model), IntervalSchedule((500,)))
    with pytest.raises(QuantizerStateError, match="per-interval export is not built"):
        with export_mode(k2):
            pass
    k2.train()
    with pytest.raises(QuantizerStateError, match="not supported"):
        UNetWrapper(k2)(x, T)
    with pytest.raises(IntervalError, match="already holds"):
        add_intervals(k2, IntervalSchedule((300,)))
    with pytest.raises(IntervalError, match="K = 1"):
        add_intervals(copy.deepcopy(model), IntervalSchedule(()))
    with pytest.raises(IntervalError, match="does not exist"):
        store_interval(k2, 2)


def test_relaxing_adds_one_float_interval_at_the_chosen_end():
    ddim = make_scheduler("ddim")
    ddim.set_timesteps(50)
    ts = [int(t) for t in ddim.timesteps]
    x0 = IntervalSchedule.with_relaxing(ts, 2, 0.1, "x0")
    assert x0.k == 3 and x0.relaxed == (2,) and x0.steps_per_interval(ts) == [22, 23, 5]
    xt = IntervalSchedule.with_relaxing(ts, 1, 0.2, "xT")
    assert xt.k == 2 and xt.relaxed == (0,) and xt.steps_per_interval(ts) == [10, 40]
    assert IntervalSchedule.from_dict(json.loads(json.dumps(x0.to_dict()))) == x0
    assert "relaxed" not in IntervalSchedule((500,)).to_dict()  # files without relaxing look as before
    with pytest.raises(IntervalError, match="relax at least one step"):
        IntervalSchedule.with_relaxing(ts, 2, 0.001, "x0")
    with pytest.raises(IntervalError, match="leave at least 4 quantized"):
        IntervalSchedule.with_relaxing(ts[:5], 4, 0.5, "x0")
    with pytest.raises(IntervalError, match="must be among"):
        IntervalSchedule((500,), relaxed=(2,))
    with pytest.raises(IntervalError, match="no activation quantized"):
        IntervalSchedule((500,), relaxed=(0, 1))


def test_a_relaxed_interval_runs_float_activations_on_quantized_weights(student):
    model, _, x = student
    relaxed = add_intervals(copy.deepcopy(model), IntervalSchedule((700, 200), relaxed=(2,)))
    out = run(relaxed, x)
    weight_only = copy.deepcopy(model)
    for q in act_quantizers(weight_only):
        q.enabled = False
    assert torch.equal(out[3], run(weight_only, x)[3])  # t=10: interval 2, float activations
    assert torch.equal(out[:3], run(model, x)[:3])  # the others: the quantized student
    assert not torch.equal(out[3], run(model, x)[3])
    # its single-set copy (what the relaxed engine exports) is the weight-only student
    from pqcad_deploy.quant.intervals import single_set_copy

    assert torch.equal(run(single_set_copy(relaxed, 2), x), run(weight_only, x))
