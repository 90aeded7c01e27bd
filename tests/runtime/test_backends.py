from __future__ import annotations

import pytest
import torch

from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.runtime.backends.base import MissingBackendError, RunnerError, require
from pqcad_deploy.runtime.backends.ort_backend import OrtRunner, resolve_providers, session_settings
from pqcad_deploy.runtime.backends.torch_backend import TorchRunner, parse_precision
from pqcad_deploy.sampling import make_scheduler, sample
from pqcad_deploy.zoo import build_model, example_inputs, get_spec


def test_require_missing_package_gives_one_install_line():
    with pytest.raises(MissingBackendError) as e:
        require("tensorrt_definitely_missing_pkg")
    msg = str(e.value)
    assert "\n" not in msg and "pip install tensorrt_definitely_missing_pkg" in msg


def test_precision_names():
    assert parse_precision("FP16") is torch.float16
    with pytest.raises(ValueError, match="fp32"):
        parse_precision("int8")


def test_torch_runner_fp32_matches_eager_and_leaves_model_alone():
    spec = get_spec("tiny-unet-cond")
    model = build_model(spec, seed=0).eval()
    feed = example_inputs(spec, batch=2)
    ref = TorchDenoiser(model)(feed["sample"], feed["timestep"], feed["encoder_hidden_states"])
    with TorchRunner(model, "fp32") as r:
        out = r.infer(feed)["out_sample"]
        den = r.denoiser()(feed["sample"], feed["timestep"], feed["encoder_hidden_states"])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(den, ref)
    with TorchRunner(model, "bf16") as r:
        out16 = r.infer(feed)["out_sample"]
    assert out16.dtype is torch.bfloat16
    assert next(model.parameters()).dtype is torch.float32  # the runner converted a copy
    assert (out16.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_runner_outside_context_is_an_error():
    r = TorchRunner(build_model("tiny-unet"), "fp32")
    with pytest.raises(RunnerError, match="with runner"):
        r.infer(example_inputs(get_spec("tiny-unet")))


def test_cuda_graph_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        TorchRunner(build_model("tiny-unet"), "fp16", device="cpu", cuda_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU; this machine has none")
def test_cuda_graph_matches_eager_on_gpu():
    spec = get_spec("tiny-unet-cond")
    model = build_model(spec, seed=0).eval()
    feed = example_inputs(spec, batch=2, device="cuda")
    with TorchRunner(model, "fp16", device="cuda") as eager, TorchRunner(model, "fp16", "cuda", True) as g:
        a = eager.infer(feed)["out_sample"]
        b1 = g.infer(feed)["out_sample"]
        feed2 = {k: (v + 1 if v.is_floating_point() else v) for k, v in feed.items()}
        b2 = g.infer(feed2)["out_sample"]
    torch.testing.assert_close(a, b1, atol=2e-3, rtol=2e-3)
    assert not torch.equal(b1, b2)  # the first output was a copy, not the static buffer


def test_ort_runner_matches_torch(tiny_cond_onnx):
    spec = get_spec("tiny-unet-cond")
    model = build_model(spec, seed=0).eval()
    feed = example_inputs(spec, batch=3)
    ref = TorchDenoiser(model)(feed["sample"], feed["timestep"], feed["encoder_hidden_states"])
    with OrtRunner(tiny_cond_onnx, intra_op_threads=1) as r:
        out = r.infer(feed)["out_sample"]
        assert r.describe()["providers_active"] == ["CPUExecutionProvider"]
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_ort_runner_in_sampler_matches_torch(tiny_onnx):
    spec = get_spec("tiny-unet")
    model = build_model(spec, seed=0).eval()
    shape = (2, *spec.sample_shape)
    ref = sample(TorchDenoiser(model), make_scheduler("ddim"), shape, steps=3, seed=1).images
    with OrtRunner(tiny_onnx, intra_op_threads=1) as r:
        got = sample(r.denoiser(), make_scheduler("ddim"), shape, steps=3, seed=1).images
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_ort_missing_inputs_and_providers(tiny_cond_onnx, tmp_path):
    with (
        OrtRunner(tiny_cond_onnx) as r,
        pytest.raises(RunnerError, match=r"needs inputs \['encoder_hidden_states'\]"),
    ):
        r.infer(example_inputs(get_spec("tiny-unet"), 1) | {"sample": torch.zeros(1, 4, 16, 16)})
    with pytest.raises(MissingBackendError, match="onnxruntime-gpu"):
        resolve_providers("cuda", ["CPUExecutionProvider"])
    assert (
        resolve_providers(
            ["tensorrt", "cuda"],
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        )[-1]
        == "CPUExecutionProvider"
    )
    with pytest.raises(ValueError, match="optimization level"):
        session_settings(optimization="max")
    with pytest.raises(RunnerError, match="pqcad-export"):
        OrtRunner(tmp_path / "nope.onnx")
