"""The README's main command, in its smoke-test size: every stage runs and the outputs exist."""

import json

import pytest

from pqcad_deploy.cli.demo import ORT_STUDENT_PATH, STUDENT_PATH, main, plan_steps
from pqcad_deploy.errors import UsageError


def test_demo_quick_runs_the_whole_pipeline(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path), "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "ort-int8-pqcad" in out and "x ort-fp32" in out
    result = json.loads((tmp_path / "demo.json").read_text())
    labels = [r["label"] for r in result["rows"]]
    assert labels == ["torch-fp32", "ort-fp32", "ort-int8-pqcad"]
    assert all(r["error"] is None for r in result["rows"])
    # the shipped student runs at fewer steps than FP by default (in --quick: 2 vs 4)
    assert result["student"]["path"] == str(STUDENT_PATH)
    assert result["student"]["ort_form"] == str(
        ORT_STUDENT_PATH
    )  # the ORT-trained twin, not a demo-time retarget
    assert result["student"]["steps"] < result["student"]["fp_steps"]
    # both quantized exports passed the TensorRT audit with nothing blocked
    for name in ("student_trt_form", "student_ort_form"):
        assert result["exports"][name]["audit_counts"]["float_blocked"] == 0
        assert result["exports"][name]["counts"]["QuantizeLinear"] > 0
    assert (tmp_path / "demo_grid.png").stat().st_size > 0
    for f in (
        "teacher_fp32.onnx",
        "student_int8_trt.onnx",
        "student_int8_ort.onnx",
        "student_int8_ort.ort.json",
    ):
        assert (tmp_path / f).is_file()


def test_step_plan_halved_plain_and_overridden():
    # a student trained for 50 steps from 100-step calibration trajectories is step-halved: FP runs at 100
    assert plan_steps(50, 100, None, None) == (100, 50, True)
    # an un-halved student runs at the FP count unless told otherwise (the W8A8 student deployed at 50 steps)
    assert plan_steps(100, 100, None, None) == (100, 100, False)
    assert plan_steps(100, 100, None, 50) == (100, 50, False)
    assert plan_steps(50, 100, 200, None) == (200, 100, True)
    with pytest.raises(UsageError, match="must be >= 1"):
        plan_steps(100, 100, None, -5)


def test_shipped_student_is_weight_trained_w8a8():
    """The demo default must be a PQCAD student whose weights trained, not PTQ of the teacher in disguise."""
    from pqcad_deploy.student import load_student
    from pqcad_deploy.zoo import TEACHER_PATH, load_model

    student, _, qcfg, meta = load_student(STUDENT_PATH)
    teacher, _ = load_model(TEACHER_PATH)
    assert (qcfg.weight_bits, qcfg.act_bits) == (8, 8)
    assert (
        meta["pqcad"]["lr"] > 0
        and meta["loss_summary"]["stage1"]["last"] < meta["loss_summary"]["stage1"]["first"]
    )
    t_sd = teacher.state_dict()
    moved = [k for k, v in student.state_dict().items() if k in t_sd and not v.equal(t_sd[k])]
    assert len(moved) > 100, f"only {len(moved)} tensors differ from the teacher"


def test_shipped_ort_student_is_the_shipped_student_trained_in_the_ort_placement():
    """The CPU INT8 row is trained in the placement it runs in: retargeted from the shipped student, then trained."""
    from pqcad_deploy.student import load_student

    ort, _, qcfg, meta = load_student(ORT_STUDENT_PATH)
    trt, _, _, _ = load_student(STUDENT_PATH)
    assert qcfg.target == "onnxruntime" and (qcfg.weight_bits, qcfg.act_bits) == (8, 8)
    first = meta["history"][0]
    assert first["event"] == "retarget" and first["from"].endswith(STUDENT_PATH.name)
    assert meta["pqcad"]["steps"] > 0 and meta["pqcad"]["lr"] > 0
    assert meta["loss_summary"]["stage1"]["last"] < meta["loss_summary"]["stage1"]["first"]
    t_sd = trt.state_dict()
    moved = [
        k for k, v in ort.state_dict().items() if k in t_sd and "quantizer" not in k and not v.equal(t_sd[k])
    ]
    assert len(moved) > 100, f"only {len(moved)} tensors moved in the ORT placement"
