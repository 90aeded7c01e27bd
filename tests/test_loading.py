"""The one model entry point: every kind of source, and every refusal names the problem."""

import json

import pytest
import torch

from pqcad_deploy.errors import UsageError
from pqcad_deploy.io import CheckpointError
from pqcad_deploy.loading import ModelBundle, default_steps, open_model
from pqcad_deploy.zoo import MODEL_SPECS, TEACHER_PATH, build_model, save_weights


@pytest.fixture
def saved_tiny(tmp_path):
    spec = MODEL_SPECS["tiny-unet"]
    return save_weights(build_model(spec), spec, tmp_path / "tiny.safetensors")


def test_fp_file_and_shipped_zoo_name_open_the_same_weights():
    by_path = open_model(TEACHER_PATH)
    by_name = open_model("fmnist-ddpm")
    assert isinstance(by_path, ModelBundle) and not by_path.quantized and by_name.spec.name == "fmnist-ddpm"
    a, b = by_path.model.state_dict(), by_name.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "shipped weights" in by_name.source


def test_zoo_without_weights_random_only_when_allowed(caplog):
    with caplog.at_level("WARNING"):
        b = open_model("tiny-unet")
    assert "RANDOM" in caplog.text and "random weights" in b.source
    with pytest.raises(CheckpointError, match="no shipped weights"):
        open_model("tiny-unet", random_weights=False)
    forced = open_model("fmnist-ddpm", random_weights=True)
    assert "random" in forced.source


def test_student_file_is_quantized(tmp_path):
    from pqcad_deploy.quant import QuantConfig, calibrate, quantize_model
    from pqcad_deploy.student import save_student

    spec = MODEL_SPECS["tiny-unet"]
    m = quantize_model(build_model(spec), QuantConfig())
    calibrate(m, lambda net: net(torch.randn(2, 1, 16, 16), torch.tensor([1, 500])))
    path = save_student(tmp_path / "s.pt", m, spec, meta={"sampling": {"scheduler": "ddim", "steps": 25}})
    b = open_model(path)
    assert b.quantized and b.qcfg.weight_bits == 8 and b.trained_steps == 25
    assert default_steps(b.meta, None) == 25 and default_steps(b.meta, 7) == 7


@pytest.mark.parametrize(
    "source, message",
    [
        ("missing.safetensors", "does not exist"),
        ("nope-model", "neither a checkpoint file nor a zoo model"),
    ],
)
def test_unknown_sources(tmp_path, source, message):
    with pytest.raises(CheckpointError, match=message):
        open_model(tmp_path / source if source.endswith(".safetensors") else source)


def test_directory_and_wrong_suffix(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        open_model(tmp_path)
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="Unsupported checkpoint type"):
        open_model(bad)
    with pytest.raises(UsageError, match="zoo names"):
        open_model(TEACHER_PATH, random_weights=True)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.update(model=[1, 2]), "no 'model' entry"),
        (lambda m: m["model"].update(sample_shape="1x16x16"), "sample_shape"),
        (lambda m: m["model"].update(sample_shape=[1, 16, -16]), "positive integers"),
        (lambda m: m["model"].update(cond_shape=[None, 3]), "cond_shape"),
        (lambda m: m["model"].update(config=None), "'config' must be a dict"),
        (lambda m: m["model"].update(extra=1), "unknown keys"),
        (lambda m: m["model"]["config"].update(block_out_channels=[64, 64]), "wrong shape"),
        (lambda m: m["model"]["config"].update(norm_num_groups=7), "invalid"),
        (lambda m: m["model"]["config"].update(block_out_channels=[16384, 16384]), "parameters"),
    ],
)
def test_hostile_sidecar_refused_before_allocation(saved_tiny, mutate, message):
    side = saved_tiny.with_suffix(".json")
    meta = json.loads(side.read_text())
    mutate(meta)
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        open_model(saved_tiny)


def test_sidecar_not_json(saved_tiny):
    saved_tiny.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        open_model(saved_tiny)
