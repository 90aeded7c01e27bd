"""pqcad-debug: a layer given a wrong scale is ranked first, on our exports, on ORT quantize_static output, on a
modelopt file and in the torch sweep; bad input is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
import torch

from pqcad_deploy.export import ExportOptions, export, ort_quantize_static
from pqcad_deploy.export.debug_cli import main
from pqcad_deploy.export.fault import scale_quantizer
from pqcad_deploy.export.layer_debug import DebugError, debug_onnx, final_error, find_layers
from pqcad_deploy.export.layer_sweep import quant_layers, sensitivity_sweep
from pqcad_deploy.export.spec import export_spec_for
from pqcad_deploy.loading import ModelBundle, open_model
from pqcad_deploy.zoo import build_model, get_spec
from tests.export.conftest import make_student

FAST = {"timesteps": (999, 100), "batch": 1, "max_exclude": 1, "threads": 1}
BROKEN = 50.0


def _export(bundle_or_path, out):
    bundle = open_model(bundle_or_path) if not isinstance(bundle_or_path, ModelBundle) else bundle_or_path
    export(bundle, out, ExportOptions(check=False))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """FP and W8A8 (TensorRT form) exports of tiny-unet and of tiny-unet-cond (text-conditioned: an
    encoder_hidden_states input), from the same seeded random weights as the students."""
    d = tmp_path_factory.mktemp("debug")
    cond = make_student(d / "cond.pt", "tiny-unet-cond", "tensorrt", 8)
    uncond = make_student(d / "s.pt", "tiny-unet", "tensorrt", 8)
    return {
        "q": _export(uncond, d / "q.onnx"),
        "cond_q": _export(cond, d / "cond_q.onnx"),
        "cond_fp": _export(open_model("tiny-unet-cond", random_weights=True), d / "cond_fp.onnx"),
        "fp": _export(open_model("tiny-unet", random_weights=True), d / "fp.onnx"),
        "dir": d,
    }


def test_broken_activation_scale_is_rank_one_on_our_export(models, tmp_path):
    layer = "/unet/mid_block/resnets.0/conv1/Conv"
    broken = tmp_path / "broken.onnx"
    scale_quantizer(models["q"], broken, layer, "act", BROKEN)
    rep = debug_onnx(broken, models["fp"], **FAST)
    top = rep["layers"][0]
    assert top["name"] == layer and top["module"] == "mid_block.resnets.0.conv1"
    assert top["error_removed"] > 0.5 and top["local_rel_l2"] is not None
    assert rep["exclude"]["layers"] == [layer]
    assert rep["exclude"]["rel_l2_after"] < rep["final_rel_l2"] / 2
    # the healthy export: every weighted layer matched to its FP twin, errors small
    healthy = debug_onnx(models["q"], models["fp"], **FAST)
    assert healthy["final_rel_l2"] < rep["final_rel_l2"] / 2
    assert all(r["fp_node"] for r in healthy["layers"] if any(q.startswith("const") for q in r["quantizers"]))


def test_broken_weight_scale_is_rank_one_in_quantize_static_output(models, tmp_path):
    spec = export_spec_for(get_spec("tiny-unet"))
    feeds = [{k: v.numpy() for k, v in spec.sampler_inputs(4, seed=s).items()} for s in range(2)]
    qs = ort_quantize_static(models["fp"], tmp_path / "qs.onnx", feeds)
    layer = "/unet/up_blocks.0/resnets.0/conv2/Conv"
    broken = tmp_path / "qs_broken.onnx"
    scale_quantizer(qs, broken, layer, "weight", BROKEN)
    rep = debug_onnx(broken, models["fp"], **FAST)
    assert rep["layers"][0]["name"] == layer
    assert rep["layers"][0]["match"].startswith("weights")
    # quantize_static also quantizes the attention BMMs (no weights): matched to the FP graph by node name
    assert any(r["match"] == "node name" and r["op_type"] == "MatMul" for r in rep["layers"])


# Made by NVIDIA Model Optimizer from tiny-unet's seeded random weights (benchmarks/debug_faults.py --model tiny-unet
# --sources modelopt --save-modelopt ...): float weights behind Q/DQ, scales in Constant nodes, its own names.
MODELOPT = Path(__file__).resolve().parents[1] / "data" / "modelopt_tiny_unet_int8.onnx"


@pytest.mark.parametrize(
    ("layer", "which"),
    [("/unet/up_blocks.0/resnets.0/conv2/Conv", "weight"), ("/unet/mid_block/resnets.0/conv1/Conv", "act")],
)
def test_broken_scale_is_rank_one_in_a_modelopt_file(models, tmp_path, layer, which):
    assert "modelopt" in onnx.load(MODELOPT, load_external_data=False).doc_string
    broken = tmp_path / "mo_broken.onnx"
    scale_quantizer(MODELOPT, broken, layer, which, BROKEN)
    rep = debug_onnx(broken, models["fp"], **FAST)
    assert rep["layers"][0]["name"] == layer
    assert all(r["match"].startswith("weights") for r in rep["layers"])  # float weights behind Q/DQ match FP
    healthy = final_error(MODELOPT, models["fp"], FAST["timesteps"], FAST["batch"], threads=FAST["threads"])
    assert healthy < rep["final_rel_l2"]


def test_scale_quantizer_refuses_what_it_cannot_break(tmp_path):
    with pytest.raises(DebugError, match="no node named"):
        scale_quantizer(MODELOPT, tmp_path / "x.onnx", "/unet/nope", "weight")
    with pytest.raises(DebugError, match="which must be one of"):
        scale_quantizer(MODELOPT, tmp_path / "x.onnx", "/unet/conv_in/Conv", "bias")
    assert not (tmp_path / "x.onnx").exists()


def test_torch_sweep_finds_a_broken_quantizer(tmp_path):
    student = open_model(make_student(tmp_path / "s.pt", "tiny-unet", "tensorrt", 8))
    model = student.model
    groups = quant_layers(model)
    assert "mid_block.resnets.1.conv2" in groups and len(groups) > 30
    q = model.get_submodule("mid_block.resnets.1.conv2").input_quantizer
    with torch.no_grad():
        q.amax.mul_(BROKEN)
    shapes = export_spec_for(student.spec).input_shapes(1)
    rep = sensitivity_sweep(model, shapes, (999, 100), max_exclude=1)
    assert rep["layers"][0]["name"] == "mid_block.resnets.1.conv2"
    assert rep["exclude"]["modules"] == ["mid_block.resnets.1.conv2"]
    assert all(q.enabled for qs in groups.values() for q in qs)  # every switch restored


def test_cli_on_a_text_conditioned_model_writes_table_json_and_png(models, tmp_path, capsys):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["--onnx", str(models["cond_q"]), "--fp", str(models["cond_fp"]), "--timesteps", "500",
            "--batch-size", "1", "--max-exclude", "1", "--top", "5", "--json", str(out_json), "--png", str(out_png)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "suggested exclude list" in table and "rank" in table
    rep = json.loads(out_json.read_text())
    assert rep["timesteps"] == [500] and [r["rank"] for r in rep["layers"]][:3] == [1, 2, 3]
    from PIL import Image

    assert Image.open(out_png).size[0] > 300


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("no_qdq", "has no QuantizeLinear/DequantizeLinear"),
        ("other_io", "do not match: inputs"),
        ("other_weights", "no FP layer with the same weights"),
        ("no_fp", "--onnx needs --fp"),
        ("bad_timesteps", "--timesteps"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(models, tmp_path, capsys, case, message):
    q, fp = str(models["q"]), str(models["fp"])
    if case == "other_weights":
        spec = get_spec("tiny-unet")
        fp = str(_export(ModelBundle(build_model(spec, seed=1).eval(), spec), tmp_path / "seed1.onnx"))
    argv = {
        "missing": ["--onnx", str(tmp_path / "nope.onnx"), "--fp", fp],
        "no_qdq": ["--onnx", fp, "--fp", fp],
        "other_io": ["--onnx", q, "--fp", str(models["cond_fp"])],
        "other_weights": ["--onnx", q, "--fp", fp],
        "no_fp": ["--onnx", q],
        "bad_timesteps": ["--onnx", q, "--fp", fp, "--timesteps", "10,x"],
    }[case]
    if case == "bad_timesteps":
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    else:
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith(("pqcad-debug: error:", "usage:"))
    assert case == "bad_timesteps" or len(err.splitlines()) == 1


def test_find_layers_needs_qdq(models):
    assert find_layers(ir.load(models["fp"])) == []
    with pytest.raises(DebugError, match="FP reference"):
        debug_onnx(models["q"], models["q"], **FAST)
