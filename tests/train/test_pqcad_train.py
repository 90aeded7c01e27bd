"""PQCAD training end to end on tiny-unet: switch W8 -> W4, loadable student, exact resume, NaN stop; one slow
weight-training check at the shipped teacher's scale."""

import copy
import hashlib
from pathlib import Path

import pytest
import torch

from pqcad_deploy import calibset
from pqcad_deploy import student as student_mod
from pqcad_deploy.loading import open_model
from pqcad_deploy.train.pqcad import train_pqcad
from pqcad_deploy.train.pqcad_config import PQCADConfig

CAL_STEPS = 10


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    bundle = open_model("tiny-unet")
    teacher, spec = bundle.model, bundle.spec
    from pqcad_deploy.denoiser import TorchDenoiser

    cs = calibset.collect_calibset(
        TorchDenoiser(teacher),
        spec,
        n_trajectories=4,
        steps=CAL_STEPS,
        n_points=5,
        seed=0,
        device="cpu",
        batch_size=4,
    )
    return teacher, spec, cs


def cfg(**kw) -> PQCADConfig:
    base = dict(
        steps=30, stage1_cap=15, batch_size=4, check_every=5, save_every=10, patience=100, ptq_method="maxabs"
    )
    return PQCADConfig(**{**base, **kw})


def run(tiny, out, **kw):
    teacher, spec, cs = tiny
    c = kw.pop("config")
    return train_pqcad(c, teacher, spec, cs, out, device="cpu", progress=False, **kw)


def _train_ckpt(out: Path) -> dict:
    return torch.load(out.with_name(out.stem + "_train.pt"), weights_only=True)


def _weight_bits(model) -> set[int]:
    from pqcad_deploy.quant import iter_quantizers

    return {int(q.num_bits) for n, q in iter_quantizers(model) if n.endswith("weight_quantizer")}


def test_progressive_run_switches_and_writes_a_loadable_student(tiny, tmp_path):
    out = run(tiny, tmp_path / "student.pt", config=cfg())
    model, spec, qcfg, meta = student_mod.load_student(out)
    switch = [h for h in meta["history"] if h["event"] == "switch"]
    assert len(switch) == 1 and switch[0]["reason"] == "cap" and switch[0]["step"] == 15
    assert (switch[0]["from"], switch[0]["to"]) == ("w8a8", "w4a8")
    assert switch[0]["reinit"] in ("mse", "rescale") and set(switch[0]["reinit_probe_mse"]) == {
        "mse",
        "rescale",
    }
    assert meta["final_bits"] == "w4a8" and meta["sampling"] == {
        "scheduler": "ddim",
        "steps": CAL_STEPS,
        "calib_steps": CAL_STEPS,
    }
    assert _weight_bits(model) == {4}
    assert set(meta["loss_summary"]) == {"stage1", "stage2"}
    assert (tmp_path / "student_train_stage1.pt").exists()  # branch point for other stage-2 settings
    x = torch.randn(2, *spec.sample_shape)
    with torch.no_grad():
        y = model(x, torch.tensor([999, 10]), return_dict=False)[0]
    assert torch.isfinite(y).all()


def test_training_updates_the_weights_not_only_the_step_sizes(tiny, tmp_path):
    """The FP teacher is frozen; the student copied from it must train its weights (regression: it did not)."""
    teacher, _, _ = tiny
    out = run(tiny, tmp_path / "w.pt", config=cfg(bits=("w8a8",), schedule="fixed", steps=10, lr=1e-3))
    trained = student_mod.load_student(out)[0].state_dict()
    moved = [k for k, v in teacher.state_dict().items() if not torch.equal(trained[k], v)]
    convs = [k for k in moved if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
    assert convs, "no quantized conv weight changed during training"
    assert all(p.requires_grad is False for p in teacher.parameters())  # the teacher itself stays frozen


def test_fixed_schedule_with_halving_records_half_the_steps(tiny, tmp_path):
    out = run(
        tiny, tmp_path / "s.pt", config=cfg(bits=("w4a8",), schedule="fixed", steps=10, halve_steps=True)
    )
    _, _, qcfg, meta = student_mod.load_student(out)
    assert meta["sampling"]["steps"] == CAL_STEPS // 2
    assert qcfg.weight_bits == 4 and not [h for h in meta["history"] if h["event"] == "switch"]


def test_resume_continues_exactly(tiny, tmp_path):
    a = run(tiny, tmp_path / "a.pt", config=cfg(halve_steps=True))
    b = tmp_path / "b.pt"
    run(tiny, b, config=cfg(steps=10, halve_steps=True))  # stops in stage 1
    assert _train_ckpt(b)["step"] == 10
    run(tiny, b, config=cfg(halve_steps=True), resume="auto")
    ca, cb = _train_ckpt(a), _train_ckpt(b)
    assert ca["step"] == cb["step"] == 30 and ca["stage"] == cb["stage"] == 1
    for k, v in ca["model"].items():
        torch.testing.assert_close(cb["model"][k], v, rtol=0, atol=0, msg=k)
    assert ca["switch"]["decided"] == cb["switch"]["decided"]


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    teacher, spec, cs = tiny
    out = tmp_path / "s.pt"
    run(tiny, out, config=cfg(steps=10))
    ckpt = out.with_name("s_train.pt")
    before = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    poisoned = copy.copy(cs)
    poisoned.eps_fp = torch.full_like(cs.eps_fp, float("nan"))
    with pytest.raises(RuntimeError, match="non-finite loss at step 11"):
        train_pqcad(cfg(steps=20), teacher, spec, poisoned, out, resume="auto", device="cpu", progress=False)
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == before


def test_ptq_only_and_branch_from_stage1(tiny, tmp_path):
    out = run(tiny, tmp_path / "ptq.pt", config=cfg(steps=0, bits=("w8a8",), ptq_method="maxabs"))
    _, _, qcfg, meta = student_mod.load_student(out)
    assert qcfg.weight_bits == 8 and meta["history"][0]["event"] == "ptq"
    run(tiny, tmp_path / "pq.pt", config=cfg(steps=20))
    stage1 = tmp_path / "pq_train_stage1.pt"
    # branch: same stage 1, stage 2 at w8a8 with step halving and an FP-only loss
    out2 = run(
        tiny,
        tmp_path / "half.pt",
        config=cfg(steps=20, bits=("w8a8", "w8a8"), halve_steps=True, lambda_d=0.0),
        resume=stage1,
    )
    _, _, q2, meta2 = student_mod.load_student(out2)
    assert q2.weight_bits == 8 and meta2["sampling"]["steps"] == CAL_STEPS // 2
    assert any(h["event"] == "resume" for h in meta2["history"])
    with pytest.raises(Exception, match="different"):
        run(tiny, tmp_path / "x.pt", config=cfg(steps=20, target="onnxruntime"), resume=stage1)


def test_cli_trains_from_one_command(tmp_path, tiny):
    from pqcad_deploy.train.cli import main

    _, _, cs = tiny
    cal = tmp_path / "calib.safetensors"
    cs.save(cal)
    out = tmp_path / "cli" / "student.pt"
    argv = ["pqcad", "--teacher", "tiny-unet", "--calib", str(cal), "--out", str(out), "--steps", "6"]
    argv += (
        "--ptq-method maxabs --stage1-cap 3 --batch-size 4 --check-every 3 --device cpu --no-progress".split()
    )
    assert main(argv) == 0
    _, _, qcfg, meta = student_mod.load_student(out)
    assert qcfg.weight_bits == 4 and meta["pqcad"]["bits"] == ["w8a8", "w4a8"]
    assert main([*argv, "--bits", "w8a8:w5a8"]) == 2  # a clear error, not a traceback


@pytest.mark.slow
def test_shipped_teacher_training_moves_every_weight_and_fits_its_points(tmp_path):
    """At the shipped teacher's scale and the default weight LR, W8A8 training from percentile PTQ moves every
    weight tensor (not only the quantizer step sizes) and lowers the eps-MSE on the points it trains on.
    A training fit on a small calibration set (minutes on 2 CPU cores), not a quality result."""
    from pqcad_deploy.denoiser import TorchDenoiser
    from pqcad_deploy.train.ptq import ptq_student

    torch.manual_seed(0)
    torch.set_num_threads(2)
    bundle = open_model("fmnist-ddpm", random_weights=False)
    teacher, spec = bundle.model, bundle.spec
    cs = calibset.collect_calibset(
        TorchDenoiser(teacher),
        spec,
        n_trajectories=16,
        steps=20,
        n_points=10,
        seed=1,
        batch_size=16,
        progress=False,
    )
    config = PQCADConfig(
        bits=("w8a8",), schedule="fixed", steps=40, batch_size=16, ptq_method="percentile", save_every=1000
    )
    ptq, _ = ptq_student(teacher, config.quant_config((8, 8)), cs)
    out = train_pqcad(config, teacher, spec, cs, tmp_path / "s.pt", device="cpu", progress=False)
    trained = student_mod.load_student(out)[0]
    state = trained.state_dict()
    moved = [k for k, v in teacher.state_dict().items() if not torch.equal(state[k], v)]
    assert len(moved) == len(teacher.state_dict())
    every_point = torch.arange(len(cs))
    assert calibset.eps_mse(trained, cs, every_point, "cpu") < calibset.eps_mse(ptq, cs, every_point, "cpu")


def test_progressive_ort_run_becomes_weight_only_at_4_bits_and_reloads(tiny, tmp_path):
    """ORT target, W8A8 -> W4A8: at the switch Linear layers lose their activation quantizers (MatMulNBits form);
    the "auto" step-size re-initialisation tries both candidates on the same pre-switch state, and the saved
    student reloads with exactly that placement."""
    from pqcad_deploy.quant.modules import QuantLinear

    out = run(tiny, tmp_path / "ort.pt", config=cfg(target="onnxruntime", stage2_reinit="auto"))
    model, _, qcfg, meta = student_mod.load_student(out)
    assert qcfg.target == "onnxruntime" and qcfg.weight_bits == 4
    switch = next(h for h in meta["history"] if h["event"] == "switch")
    assert set(switch["reinit_probe_mse"]) == {"mse", "rescale"}
    lins = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert lins and all(m.input_quantizer is None and m.output_quantizer is None for m in lins)


def test_probe_signal_holds_its_points_out_records_its_curve_and_plots_it(tiny, tmp_path):
    from pqcad_deploy.train.pqcad_trainer import CalibTensors

    _, spec, cs = tiny
    data = CalibTensors(cs, spec, torch.device("cpu"))
    held = torch.tensor([0, 3, 7])
    data.hold_out(held)
    drawn = torch.cat([data.batch(step, 0, 0, 16) for step in range(50)])
    assert not set(drawn.tolist()) & set(held.tolist()) and len(set(drawn.tolist())) == data.n - 3
    # a loose threshold: the second check (the first with a momentum) is already a plateau
    out = run(tiny, tmp_path / "p.pt", config=cfg(switch_signal="probe", switch_probe=6, patience=1, eps=1.0))
    _, _, _, meta = student_mod.load_student(out)
    switch = [h for h in meta["history"] if h["event"] == "switch"]
    assert switch[0]["reason"] == "plateau" and switch[0]["step"] == 10
    assert [p[0] for p in meta["probe_curve"]] == [5, 10] and all(p[1] > 0 for p in meta["probe_curve"])
    assert [t[:2] for t in meta["switch_trace"]] == [meta["probe_curve"][1]]  # the rule's check at step 10
    from PIL import Image

    png = Image.open(tmp_path / "p_curve.png")
    assert png.size[0] == 720 and png.size[1] > 400  # two panels: training loss and the probe
    with pytest.raises(Exception, match="holds out every one"):
        run(tiny, tmp_path / "q.pt", config=cfg(switch_signal="probe", switch_probe=10_000))
