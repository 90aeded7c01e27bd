import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from pqcad_deploy.errors import UsageError
from pqcad_deploy.io import CheckpointError
from pqcad_deploy.zoo import (
    MODEL_SPECS,
    TEACHER_PATH,
    build_model,
    count_parameters,
    get_spec,
    load_model,
    save_weights,
)


def test_fmnist_teacher_has_6_to_10m_parameters():
    n = count_parameters(build_model("fmnist-ddpm"))
    assert 6e6 <= n <= 10e6


def test_cifar10_is_the_35_7m_ddpm():
    with torch.device("meta"):
        n = count_parameters(build_model("cifar10-ddpm"))
    assert abs(n - 35.7e6) < 0.1e6


def test_sd15_unet_is_860m():
    spec = get_spec("sd15-unet")
    with torch.device("meta"):
        m = UNet2DConditionModel(**spec.config)
    assert abs(count_parameters(m) - 859.5e6) < 2e6


def test_unknown_model_lists_choices():
    with pytest.raises(UsageError, match="fmnist-ddpm"):
        get_spec("nope")


def test_shipped_teacher_loads_and_runs():
    model, spec = load_model(TEACHER_PATH)
    assert spec.name == "fmnist-ddpm"
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32), torch.tensor([10, 900])).sample
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()


@pytest.fixture
def saved_tiny(tmp_path):
    spec = MODEL_SPECS["tiny-unet"]
    path = save_weights(build_model(spec), spec, tmp_path / "tiny.safetensors")
    return path


def test_round_trip_is_exact(saved_tiny):
    model, _ = load_model(saved_tiny)
    ref = build_model("tiny-unet")
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])


def test_truncated_weights_refused(saved_tiny):
    data = saved_tiny.read_bytes()
    saved_tiny.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(saved_tiny)


def test_missing_sidecar_refused(saved_tiny):
    saved_tiny.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="sidecar"):
        load_model(saved_tiny)


def test_config_mismatch_refused_before_loading(saved_tiny):
    side = saved_tiny.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["model"]["config"]["block_out_channels"] = [32, 64]
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="wrong shape|missing"):
        load_model(saved_tiny)


def test_non_finite_weights_refused(tmp_path):
    spec = MODEL_SPECS["tiny-unet"]
    m = build_model(spec)
    with torch.no_grad():
        m.conv_in.weight[0, 0, 0, 0] = float("nan")
    path = save_weights(m, spec, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match="non-finite"):
        load_model(path)
