"""TrtRunner: plain helpers, and its binding/stream/CUDA-graph code run against the fake TensorRT and fake
torch.cuda streams (tests/runtime/fakes). A real engine build and run is gated on TensorRT, which cannot be
installed here."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from pqcad_deploy.denoiser import COND, OUTPUT_NAME, SAMPLE, TIMESTEP
from pqcad_deploy.runtime.backends.base import MissingBackendError, RunnerError
from pqcad_deploy.runtime.backends.trt_backend import TrtRunner, shape_key, torch_dtype
from tests.runtime.fakes import FakeDevice, engine_plan, install_fake_cuda_torch, install_fake_tensorrt
from tests.runtime.fakes.kernels import unet_eps

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT = "TensorRT cannot be installed in this environment (only download stubs are published for it here)"
CALLER = 0  # the fake torch.cuda's current (legacy default) stream


class _FakeDT:
    def __init__(self, name):
        self.name = name


def test_dtype_map():
    assert torch_dtype(_FakeDT("HALF")) is torch.float16
    assert torch_dtype("DataType.INT64") is torch.int64
    with pytest.raises(TypeError, match="no torch equivalent"):
        torch_dtype(_FakeDT("FP4"))


def test_shape_keys():
    feed = {"sample": torch.zeros(2, 1, 8, 8), "timestep": torch.zeros(2, dtype=torch.int64)}
    assert shape_key(feed, ["sample", "timestep"]) == (("sample", (2, 1, 8, 8)), ("timestep", (2,)))


def test_missing_engine_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="pqcad-build"):
        TrtRunner(tmp_path / "none.plan")


@pytest.mark.skipif(HAS_TRT, reason="covers machines without TensorRT")
def test_activate_without_tensorrt_names_the_install(tmp_path):
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(MissingBackendError, match="pip install tensorrt"):
        TrtRunner(plan).__enter__()


# -- on the fakes -----------------------------------------------------------------------------------------


@pytest.fixture
def gpu(monkeypatch):
    """Fake TensorRT and torch.cuda on one fake device; TrtRunner's buffers are host tensors it registers."""
    device = FakeDevice()
    trt = install_fake_tensorrt(monkeypatch, device)
    install_fake_cuda_torch(monkeypatch, device)

    def host_buffer(self, shape, dtype):
        t = torch.zeros(shape, dtype=dtype)
        device.register(t, t.data_ptr(), t.numel() * t.element_size())
        return t

    monkeypatch.setattr(TrtRunner, "_empty", host_buffer)
    return device, trt


@pytest.fixture
def unet_plan(tmp_path):
    dynamic = {"min": 1, "opt": 2, "max": 4}

    def io(name, mode, dtype, dims):
        profile = [[dynamic[k], *dims] for k in ("min", "opt", "max")] if mode == "INPUT" else None
        return {"name": name, "mode": mode, "dtype": dtype, "shape": [-1, *dims], "profile": profile}

    tensors = [
        io(SAMPLE, "INPUT", "FLOAT", [1, 8, 8]),
        io(TIMESTEP, "INPUT", "INT64", []),
        io(COND, "INPUT", "FLOAT", [3, 5]),
        io(OUTPUT_NAME, "OUTPUT", "FLOAT", [1, 8, 8]),
    ]
    path = tmp_path / "unet.plan"
    path.write_bytes(engine_plan(tensors, "unet"))
    return path


def _feed(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        SAMPLE: torch.randn(batch, 1, 8, 8, generator=g),
        TIMESTEP: torch.randint(0, 1000, (batch,), generator=g),
        COND: torch.randn(batch, 3, 5, generator=g),
    }


def _expected(feed):
    return torch.from_numpy(unet_eps(feed[SAMPLE].numpy(), feed[TIMESTEP].numpy(), feed[COND].numpy()))


def test_runner_binds_buffers_streams_and_copies_out(gpu, unet_plan):
    device, trt = gpu
    with TrtRunner(unet_plan) as runner:
        assert runner.input_names == (SAMPLE, TIMESTEP, COND) and runner.output_names == [OUTPUT_NAME]
        feed = _feed(2)
        out = runner.infer(feed)[OUTPUT_NAME]
        torch.testing.assert_close(out, _expected(feed))
        ctx = trt.contexts[0]
        assert ctx.shapes == {SAMPLE: (2, 1, 8, 8), TIMESTEP: (2,), COND: (2, 3, 5)}
        bound = runner._bindings[shape_key(feed, runner.input_names)]
        assert ctx.addresses == {n: t.data_ptr() for n, t in (bound.inputs | bound.outputs).items()}
        assert out.data_ptr() != bound.outputs[OUTPUT_NAME].data_ptr()  # a copy, not the reused buffer
        trt_stream = runner.stream.cuda_stream
        assert trt_stream != CALLER
        order = [e for e in device.log if e[0] in ("wait_stream", "execute_async_v3")]
        assert order == [
            (
                "wait_stream",
                trt_stream,
                CALLER,
            ),  # TensorRT waits for the inputs copied on the caller's stream
            ("execute_async_v3", trt_stream),
            ("wait_stream", CALLER, trt_stream),  # the caller waits for the outputs
        ]
        n_bind = sum(1 for e in device.log if e[0] == "set_tensor_address")
        feed2 = _feed(2, seed=1)
        torch.testing.assert_close(runner.infer(feed2)[OUTPUT_NAME], _expected(feed2))
        assert (
            sum(1 for e in device.log if e[0] == "set_tensor_address") == n_bind
        )  # same shapes: no rebinding
        torch.testing.assert_close(out, _expected(feed))  # the first result was not overwritten


def test_runner_rebinds_when_the_shape_changes_and_back(gpu, unet_plan):
    device, trt = gpu
    with TrtRunner(unet_plan) as runner:
        small, big = _feed(2), _feed(3, seed=2)
        runner.infer(small)
        first = dict(trt.contexts[0].addresses)
        torch.testing.assert_close(runner.infer(big)[OUTPUT_NAME], _expected(big))
        assert trt.contexts[0].shapes[SAMPLE] == (3, 1, 8, 8)
        assert set(trt.contexts[0].addresses.values()).isdisjoint(first.values())
        torch.testing.assert_close(runner.infer(small)[OUTPUT_NAME], _expected(small))
        assert trt.contexts[0].addresses == first and trt.contexts[0].shapes[SAMPLE] == (2, 1, 8, 8)


def test_cuda_graph_captures_once_and_replays_on_new_inputs(gpu, unet_plan):
    device, trt = gpu
    with TrtRunner(unet_plan, cuda_graph=True) as runner:
        feed = _feed(2)
        torch.testing.assert_close(runner.infer(feed)[OUTPUT_NAME], _expected(feed))
        trt_stream = runner.stream.cuda_stream
        events = [
            e
            for e in device.log
            if e[0] in ("ran", "captured", "capture_begin", "capture_end", "graph_replay")
        ]
        assert events == [
            (
                "ran",
                "engine",
                trt_stream,
            ),  # the first enqueue runs outside the capture (TensorRT allocates then)
            ("capture_begin", trt_stream),
            ("captured", "engine", trt_stream),
            ("capture_end", trt_stream),
            ("graph_replay", 1),
        ]
        device.log.clear()
        feed2 = _feed(2, seed=5)
        torch.testing.assert_close(runner.infer(feed2)[OUTPUT_NAME], _expected(feed2))
        assert [e[0] for e in device.log if e[0] in ("execute_async_v3", "graph_replay")] == ["graph_replay"]


def test_runner_reactivates_with_a_fresh_context(gpu, unet_plan):
    device, trt = gpu
    runner = TrtRunner(unet_plan)
    feed = _feed(2)
    for _ in range(2):
        with runner:
            torch.testing.assert_close(runner.infer(feed)[OUTPUT_NAME], _expected(feed))
    assert len(trt.contexts) == 2 and set(trt.contexts[1].addresses) == {SAMPLE, TIMESTEP, COND, OUTPUT_NAME}


def test_runner_errors_name_the_fix(gpu, unet_plan, tmp_path):
    device, trt = gpu
    with TrtRunner(unet_plan) as runner:
        with pytest.raises(RunnerError, match="needs inputs \\['encoder_hidden_states'\\]"):
            runner.infer({SAMPLE: torch.zeros(2, 1, 8, 8), TIMESTEP: torch.zeros(2, dtype=torch.int64)})
        with pytest.raises(RunnerError, match="outside the engine's optimization profile.*--maxShapes"):
            runner.infer(_feed(5))
    bad = tmp_path / "bad.plan"
    bad.write_bytes(b"a plan from another TensorRT")
    with pytest.raises(RunnerError, match="could not deserialize.*rebuild it with pqcad-build"):
        TrtRunner(bad).__enter__()


def test_runner_denoiser_and_describe(gpu, unet_plan):
    device, trt = gpu
    with TrtRunner(unet_plan, name="unet") as runner:
        feed = _feed(2)
        eps = runner.denoiser()(feed[SAMPLE].double(), feed[TIMESTEP], feed[COND])
        assert eps.dtype == torch.float64
        np.testing.assert_allclose(eps.numpy(), _expected(feed).numpy(), rtol=1e-6)
        assert runner.describe() == {
            "name": "unet",
            "device": "cuda:0",
            "backend": "tensorrt",
            "engine": str(unet_plan),
            "cuda_graph": False,
            "tensorrt": trt.__version__,
        }


# -- real TensorRT ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()), reason=NO_TRT + " (and it needs a GPU)")
def test_trt_build_and_run_matches_torch(tiny_onnx, tmp_path):
    from pqcad_deploy.runtime.build_cli import build_parser
    from pqcad_deploy.runtime.build_config import plan_from_args
    from pqcad_deploy.runtime.trt_builder import build_engine
    from pqcad_deploy.zoo import build_model, example_inputs, get_spec

    args = build_parser().parse_args(
        [
            "--onnx",
            str(tiny_onnx),
            "--saveEngine",
            str(tmp_path / "t.plan"),
            "--optShapes",
            "sample:2x1x16x16,timestep:2",
            "--exportLayerInfo",
            str(tmp_path / "l.json"),
            "--skipInference",
        ]
    )
    report = build_engine(plan_from_args(args))
    assert report["audit"]["compute_layers"] > 0
    spec = get_spec("tiny-unet")
    feed = example_inputs(spec, batch=2, device="cuda")
    ref = build_model(spec).eval().cuda()(feed[SAMPLE], feed[TIMESTEP]).sample
    for graph in (False, True):
        with TrtRunner(tmp_path / "t.plan", cuda_graph=graph) as r:
            out = r.infer(feed)[OUTPUT_NAME]
            out2 = r.infer(feed)[OUTPUT_NAME]
        torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(out2, out)
