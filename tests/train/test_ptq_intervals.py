"""Timestep-aware PTQ (per-interval and progressive calibration) and its ``pqcad-train ptq`` flags, on tiny UNets."""

from __future__ import annotations

import warnings

import pytest
import torch

from pqcad_deploy.quant import QuantConfig
from pqcad_deploy.quant.intervals import get_intervals, interval_ranges
from pqcad_deploy.sampling import make_scheduler
from pqcad_deploy.student import load_student
from pqcad_deploy.train.cli import main
from pqcad_deploy.train.ptq_intervals import interval_ptq
from pqcad_deploy.zoo import build_model, get_spec

warnings.filterwarnings("ignore", category=FutureWarning)

KW = dict(steps=6, n_trajectories=4, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def teacher():
    spec = get_spec("tiny-unet")
    return build_model(spec, seed=0).eval(), spec


def test_progressive_calibration_sees_the_quantized_past(teacher):
    fp, spec = teacher
    qcfg = QuantConfig(weight_bits=8, act_bits=8, calib_method="maxabs")
    plain, e_plain = interval_ptq(fp, spec, qcfg, 3, progressive=False, **KW)
    prog, e_prog = interval_ptq(fp, spec, qcfg, 3, progressive=True, **KW)
    assert (
        e_plain["points_per_interval"] == e_prog["points_per_interval"] == [8, 8, 8]
    )  # 4 rollouts x 2 steps
    assert e_prog["progressive"] and not e_plain["progressive"]
    a, b = interval_ranges(plain), interval_ranges(prog)
    assert a.keys() == b.keys()
    # interval 0 is calibrated on the same FP inputs either way; later ones on rollouts through quantized steps
    assert all(a[n][0] == b[n][0] for n in a)
    assert any(a[n][j] != b[n][j] for n in a for j in (1, 2))
    # K = 1 is single-set PTQ on the same rollouts: no interval state at all
    single, e1 = interval_ptq(fp, spec, qcfg, 1, **KW)
    assert get_intervals(single) is None and e1["intervals"] is None and e1["points_per_interval"] == [24]


def test_ptq_cli_intervals_write_a_loadable_k_set_student(tmp_path, teacher):
    out = tmp_path / "k3.safetensors"
    argv = ["ptq", "--teacher", "tiny-unet", "--intervals", "3", "--progressive", "--calib-trajectories", "4",
            "--calib-steps", "6", "--calib-batch-size", "2", "--ptq-method", "maxabs", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    model, spec, _, meta = load_student(out)
    assert meta["intervals"]["k"] == 3 and meta["history"][0]["event"] == "interval_ptq"
    assert meta["sampling"]["steps"] == 6
    with torch.no_grad():
        y = model(torch.randn(2, *spec.sample_shape), torch.tensor([900, 10])).sample
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--progressive"], "give --intervals K with K >= 2"),
        (["--intervals", "3", "--interval-starts", "500"], "make 2 intervals, not --intervals 3"),
        (["--intervals", "3", "--interval-starts", "300", "500"], "strictly decreasing"),
        (["--intervals", "2", "--calib", "x.safetensors"], "Drop --calib"),
        (["--intervals", "9"], "do not fit a sampler of 6 steps"),
        (["--relax-fraction", "0.05"], "relax at least one step"),
        (["--intervals", "2", "--interval-starts", "500", "--relax-fraction", "0.5"], "not both"),
    ],
)
def test_ptq_cli_interval_errors(tmp_path, capsys, extra, message):
    out = tmp_path / "s.pt"
    argv = [
        "ptq",
        "--teacher",
        "tiny-unet",
        "--calib-steps",
        "6",
        "--calib-trajectories",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_relaxed_interval_is_not_calibrated_and_progressive_rollouts_run_it_float(teacher):
    fp, spec = teacher
    qcfg = QuantConfig(weight_bits=8, act_bits=8, calib_method="maxabs")
    model, entry = interval_ptq(fp, spec, qcfg, 2, progressive=True, relax=(0.34, "xT"), **KW)
    sched = get_intervals(model)
    ddim = make_scheduler("ddim", **spec.scheduler)
    ddim.set_timesteps(6)
    assert sched.relaxed == (0,) and sched.steps_per_interval([int(t) for t in ddim.timesteps]) == [2, 2, 2]
    assert entry["points_per_interval"] == [0, 8, 8] and entry["relax"] == {"fraction": 0.34, "end": "xT"}
    # interval 1 was calibrated on rollouts whose first steps ran relaxed (W8 weights, float activations), not on
    # the FP trajectory; the relaxed set holds valid (unused) ranges: the last calibrated set
    plain, _ = interval_ptq(fp, spec, qcfg, 2, progressive=False, relax=(0.34, "xT"), **KW)
    a, b = interval_ranges(plain), interval_ranges(model)
    assert any(a[n][1] != b[n][1] for n in a)
    assert all(b[n][0] == b[n][2] > 0 for n in b)


def test_ptq_cli_relaxing(tmp_path):
    out = tmp_path / "r.safetensors"
    argv = ["ptq", "--teacher", "tiny-unet", "--intervals", "2", "--relax-fraction", "0.2", "--calib-trajectories",
            "2", "--calib-steps", "10", "--calib-batch-size", "2", "--ptq-method", "maxabs", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    _, _, _, meta = load_student(out)
    assert meta["intervals"]["relaxed"] == [2] and meta["history"][0]["relax"]["end"] == "x0"


def test_interval_ranges_on_a_trained_student_keep_its_weights_and_weight_scales(teacher):
    from pqcad_deploy.quant.calibrate import weight_quantizers

    fp, spec = teacher
    qcfg = QuantConfig(weight_bits=8, act_bits=8, calib_method="maxabs")
    student, _ = interval_ptq(fp, spec, qcfg, 1, **KW)
    with torch.no_grad():  # stand-in for training: other weights and learned weight scales
        for q, w in weight_quantizers(student):
            w.mul_(1.1)
            q.amax.mul_(0.9)
    k2, entry = interval_ptq(fp, spec, qcfg, 2, progressive=True, student=student, **KW)
    assert entry["student_weights"] and get_intervals(k2).k == 2
    for (qa, wa), (qb, wb) in zip(weight_quantizers(student), weight_quantizers(k2), strict=True):
        assert torch.equal(wa, wb) and torch.equal(qa.amax, qb.amax)
    assert get_intervals(student) is None  # the given student is not modified


def test_progressive_rollouts_run_calibrated_weights_even_after_a_relaxed_first_interval(
    teacher, monkeypatch
):
    """Regression: with the relaxed interval at xT nothing was calibrated before the first quantized rollout, so
    it ran weight quantizers at their initial range (amax 1)."""
    from pqcad_deploy.quant.calibrate import weight_quantizers
    from pqcad_deploy.train import ptq_intervals

    fp, spec = teacher
    seen, real = [], ptq_intervals.rollout_points

    def spy(fp_, quant, *args, **kw):
        if quant is not None:
            seen.append(all(bool(q.calibrated) for q, _ in weight_quantizers(quant)))
        return real(fp_, quant, *args, **kw)

    monkeypatch.setattr(ptq_intervals, "rollout_points", spy)
    qcfg = QuantConfig(weight_bits=8, act_bits=8, calib_method="maxabs")
    interval_ptq(fp, spec, qcfg, 2, progressive=True, relax=(0.34, "xT"), **KW)
    assert seen == [True, True]
