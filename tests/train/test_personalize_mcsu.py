"""MCSU: PEQA plus a scale per input channel. QDQ weight scales are per output channel only, so the input-channel
scales are folded into the weights and the export rounds them to new codes; the record says how many changed."""

from __future__ import annotations

import torch

from pqcad_deploy.export.cli import main as export_main
from pqcad_deploy.loading import open_model
from pqcad_deploy.quant.scale_tuning import (
    codes_changed,
    freeze_codes,
    materialize,
    weight_codes,
    weight_layers,
)


def test_input_scales_start_neutral_and_fold_into_new_codes(t2i):
    model = open_model(t2i["student"]).model
    layers = weight_layers(model)
    before = {n: m.weight_quantizer(m.weight).detach().clone() for n, m in layers.items()}
    codes = {n: weight_codes(m).clone() for n, m in layers.items()}
    params = freeze_codes(model, input_scales=True)
    assert len(params) == 2 * len(layers)  # one amax and one in_scale per layer
    for n, m in layers.items():
        assert torch.equal(m.weight_quantizer(m.weight), before[n])  # in_scale = 1: the student, bit for bit
    layer = next(iter(layers.values()))
    with torch.no_grad():
        layer.weight_quantizer.in_scale[0] = 1.5  # one trained input channel
    want = layer.weight_quantizer(layer.weight).detach().clone()
    assert torch.allclose(want[:, 0], 1.5 * before[next(iter(layers))][:, 0])
    materialize(model)
    assert torch.equal(layer.weight, want.to(layer.weight.dtype))  # the folded weight...
    assert 0 < codes_changed(model, codes) < 0.05  # ...exports with new codes in that channel only


def test_mcsu_writes_a_student_whose_export_folds_the_scales(t2i, personalize, tmp_path, capsys):
    out = tmp_path / "mcsu.safetensors"
    assert personalize(out, "--method", "mcsu", "--prior-weight", "0", "--lr", "0.05") == 0  # codes must move
    bundle = open_model(out)
    record = bundle.meta["history"][-1]["personalize"]
    assert bundle.quantized and record["config"]["method"] == "mcsu"
    base = open_model(t2i["student"]).model
    assert record["trainable_parameters"] > sum(
        m.weight_quantizer.amax.numel() for m in weight_layers(base).values()
    )
    assert 0 < record["codes_changed"] <= 1
    assert export_main(["--checkpoint", str(out), "--onnx", str(tmp_path / "mcsu.onnx")]) == 0
    assert (
        personalize(tmp_path / "x.safetensors", "--method", "mcsu", "--save-student", str(tmp_path / "s.pt"))
        == 2
    )
    assert "writes the model itself" in capsys.readouterr().err
