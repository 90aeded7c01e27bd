"""Personalization of a quantized text-to-image student by scale-only fine-tuning (PEQA, S1), its patch, and the
patch applied to the exported graph with the integer codes byte-identical; the FP DreamBooth baseline; bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
import torch

from pqcad_deploy.export.cli import main as export_main
from pqcad_deploy.export.patch_cli import main as patch_main
from pqcad_deploy.loading import open_model
from pqcad_deploy.patch import PatchError, apply_to_student, load_patch, student_patch
from pqcad_deploy.quant.scale_tuning import freeze_codes, materialize, weight_codes, weight_layers
from pqcad_deploy.train.cli import main as train_main
from pqcad_deploy.zoo import build_model, save_weights


def test_frozen_codes_reproduce_the_fake_quant_forward_and_export_rounds_back(t2i):
    model = open_model(t2i["student"]).model
    layers = weight_layers(model)
    before = {n: m.weight_quantizer(m.weight).detach().clone() for n, m in layers.items()}
    codes = {n: weight_codes(m).clone() for n, m in layers.items()}
    params = freeze_codes(model)
    assert len(params) == len(layers) and all(p.requires_grad for p in params)
    assert not any(
        p.requires_grad for n, p in model.named_parameters() if not n.endswith("weight_quantizer.amax")
    )
    for n, m in layers.items():
        assert torch.equal(
            m.weight_quantizer(m.weight), before[n]
        )  # codes x scale == fake quant, bit for bit
    with torch.no_grad():
        for p in params:
            p.mul_(1.1)  # a trained scale
    materialize(model)
    for n, m in layers.items():
        assert torch.equal(weight_codes(m), codes[n])  # the new weight rounds back to the frozen codes


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime"])
def test_peqa_patch_applies_to_the_export_with_codes_byte_identical(t2i, personalize, tmp_path, target):
    """ORT form: 7-bit weights are clamped before their Q, so the exporter names their codes after the graph node,
    not the weight: the patch finds codes by content."""
    student = t2i["student"]
    if target == "onnxruntime":
        student = tmp_path / "ort.pt"
        argv = [
            "ptq",
            "--teacher",
            str(t2i["teacher"]),
            "--out",
            str(student),
            *t2i["calib"],
            "--target",
            target,
        ]
        assert train_main([*argv, "--text-encoder", str(t2i["bert"]), "--device", "cpu"]) == 0
    patch_path = tmp_path / "sks.safetensors"
    assert personalize(patch_path, "--save-student", str(tmp_path / "sks.pt"), model=student) == 0
    assert (tmp_path / "sks_grid.png").is_file()
    patch = load_patch(patch_path)
    assert (
        patch.meta["method"] == "peqa"
        and patch.meta["training"]["trainable_parameters"] == patch.num_parameters
    )
    base_onnx, tuned_onnx, patched = (
        tmp_path / "base.onnx",
        tmp_path / "tuned.onnx",
        tmp_path / "patched.onnx",
    )
    assert export_main(["--checkpoint", str(student), "--onnx", str(base_onnx)]) == 0
    assert export_main(["--checkpoint", str(tmp_path / "sks.pt"), "--onnx", str(tuned_onnx)]) == 0
    assert (
        patch_main(["--onnx", str(base_onnx), "--patch", str(patch_path), "--out", str(patched), "--verify"])
        == 0
    )

    def inits(path):
        return {v.name: v.const_value.numpy() for v in ir.load(path).graph.initializers.values()}

    base, tuned, out = inits(base_onnx), inits(tuned_onnx), inits(patched)
    codes = [k for k in base if k.endswith("_quantized")]
    assert codes and all(out[k].tobytes() == base[k].tobytes() for k in codes)  # INT8 codes untouched
    assert all(
        tuned[k].tobytes() == base[k].tobytes() for k in codes
    )  # a re-export of the tuned student agrees
    changed = [k for k in base if k in out and not np.array_equal(base[k], out[k])]
    assert len(changed) == len(patch.scales)  # exactly one scale initializer per layer changed
    # the patched graph is the tuned student's export: same initializers, same values
    assert all(np.array_equal(out[k], tuned[k]) for k in tuned if k in out)


def test_patch_refused_on_another_student_and_on_a_damaged_file(t2i, personalize, tmp_path, capsys):
    patch_path = tmp_path / "p.safetensors"
    assert personalize(patch_path, "--prior-weight", "0") == 0
    other = tmp_path / "other.pt"
    spec = open_model(t2i["teacher"]).spec
    other_teacher = save_weights(build_model(spec, seed=1), spec, tmp_path / "teacher1.safetensors")
    argv = [
        "ptq",
        "--teacher",
        str(other_teacher),
        "--out",
        str(other),
        *t2i["calib"],
    ]  # same layout, other codes
    assert train_main([*argv, "--text-encoder", str(t2i["bert"]), "--device", "cpu"]) == 0
    other_onnx = tmp_path / "other.onnx"
    assert export_main(["--checkpoint", str(other), "--onnx", str(other_onnx)]) == 0
    out = tmp_path / "never.onnx"
    assert patch_main(["--onnx", str(other_onnx), "--patch", str(patch_path), "--out", str(out)]) == 2
    assert "another model or another quantization" in capsys.readouterr().err and not out.exists()
    with pytest.raises(PatchError, match="another student"):
        apply_to_student(open_model(other).model, load_patch(patch_path))
    side = patch_path.with_suffix(".json")
    doc = json.loads(side.read_text())
    side.write_text(json.dumps({**doc, "format_version": 99}))
    assert patch_main(["--onnx", str(other_onnx), "--patch", str(patch_path), "--out", str(out)]) == 2
    assert "version" in capsys.readouterr().err and not out.exists()


def test_patch_turns_the_base_student_into_the_tuned_one(t2i, personalize, tmp_path):
    assert personalize(tmp_path / "p.safetensors", "--save-student", str(tmp_path / "s.pt")) == 0
    base, tuned = open_model(t2i["student"]).model, open_model(tmp_path / "s.pt").model
    apply_to_student(base, load_patch(tmp_path / "p.safetensors"))
    sd_b, sd_t = base.state_dict(), tuned.state_dict()
    assert all(torch.equal(sd_b[k], sd_t[k]) for k in sd_t)
    assert student_patch(base).fingerprint == load_patch(tmp_path / "p.safetensors").fingerprint


def test_s1_and_fp_methods_and_their_refusals(t2i, personalize, tmp_path, capsys):
    assert personalize(tmp_path / "s1.safetensors", "--method", "s1", "--timesteps", "0:500") == 0
    assert load_patch(tmp_path / "s1.safetensors").meta["training"]["config"]["timesteps"] == [0, 500]
    assert personalize(tmp_path / "fp.safetensors", "--method", "fp", model=t2i["teacher"]) == 0
    assert open_model(tmp_path / "fp.safetensors").quantized is False
    cases = [
        (["--method", "s1"], "--timesteps"),
        (["--method", "fp"], "fine-tunes an FP model"),
        (["--timesteps", "9:3"], "LO < HI"),
    ]
    for extra, message in cases:
        assert personalize(tmp_path / "x.safetensors", *extra) == 2
        assert message in capsys.readouterr().err
    assert personalize(tmp_path / "x.safetensors", model=t2i["teacher"]) == 2
    assert "quantized student" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_subject_folder_without_images_is_refused(t2i, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"not a png")
    argv = ["personalize", "--model", str(t2i["student"]), "--images", str(empty), "--out", str(tmp_path / "p.safetensors"),
            "--text-encoder", str(t2i["bert"]), "--device", "cpu"]  # fmt: skip
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert "no readable image" in err and not (tmp_path / "p.safetensors").exists()


def test_scales_stay_positive_at_a_large_learning_rate(t2i, personalize, tmp_path):
    """Scales train in log space: a step changes a scale by a fraction of itself and can never flip its sign (with
    plain steps of 0.5 most step sizes of this model would go negative)."""
    assert personalize(tmp_path / "p.safetensors", "--lr", "0.5", "--prior-weight", "0") == 0
    patch = load_patch(tmp_path / "p.safetensors")  # refuses non-positive scales
    base = student_patch(open_model(t2i["student"]).model)
    moved = [k for k in patch.scales if not torch.allclose(patch.scales[k], base.scales[k])]
    assert len(moved) == len(patch.scales)
