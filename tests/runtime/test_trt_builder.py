"""build_engine through Polygraphy's loaders, run against the fake TensorRT (tests/runtime/fakes): the calls
TensorRT receives, the checks made before the build, the atomic engine write, layer info and its audit.

No real TensorRT runs here: these tests prove what is asked of TensorRT, not what it builds."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pqcad_deploy.denoiser import OUTPUT_NAME, SAMPLE, TIMESTEP
from pqcad_deploy.runtime import trt_builder
from pqcad_deploy.runtime.build_cli import build_parser
from pqcad_deploy.runtime.build_config import BuildConfigError, plan_from_args
from pqcad_deploy.runtime.trt_builder import BuildError, build_engine
from tests.runtime.fakes import FakeDevice, install_fake_tensorrt
from tests.runtime.fakes.fake_tensorrt import Builder
from tests.runtime.fakes.fake_trt_types import ENGINE_MAGIC

SHAPES = (
    "--minShapes",
    "sample:1x1x8x8,timestep:1",
    "--optShapes",
    "sample:2x1x8x8,timestep:2",
    "--maxShapes",
    "sample:4x1x8x8,timestep:4",
)
PROFILE = {SAMPLE: ((1, 1, 8, 8), (2, 1, 8, 8), (4, 1, 8, 8)), TIMESTEP: ((1,), (2,), (4,))}


def _model(path, quantized: bool):
    """sample [B,1,8,8] -> (Q/DQ) -> Conv (INT8 weight via DQ) -> float Conv -> out_sample; timestep unused."""
    w = np.ones((1, 1, 3, 3), np.float32) * 0.1
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv_q", pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(w, "w2")]
    if quantized:
        nodes = [
            helper.make_node("QuantizeLinear", [SAMPLE, "s", "z"], ["xq"], name="q_in"),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x"], name="dq_in"),
            helper.make_node("DequantizeLinear", ["w1q", "ws"], ["w1"], name="dq_w", axis=0),
            *nodes,
        ]
        inits += [
            numpy_helper.from_array(np.array(0.05, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
            numpy_helper.from_array(np.full((1, 1, 3, 3), 13, np.int8), "w1q"),
            numpy_helper.from_array(np.array([0.01], np.float32), "ws"),
        ]
    else:
        nodes = [helper.make_node("Identity", [SAMPLE], ["x"], name="id_in"), *nodes]
        inits.append(numpy_helper.from_array(w, "w1"))
    nodes.append(helper.make_node("Conv", ["h", "w2"], [OUTPUT_NAME], name="conv_float", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info(SAMPLE, TensorProto.FLOAT, ["B", 1, 8, 8]),
            helper.make_tensor_value_info(TIMESTEP, TensorProto.INT64, ["B"]),
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["B", 1, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def qdq_onnx(tmp_path):
    return _model(tmp_path / "qdq.onnx", quantized=True)


@pytest.fixture
def float_onnx(tmp_path):
    return _model(tmp_path / "float.onnx", quantized=False)


@pytest.fixture
def trt(monkeypatch):
    return install_fake_tensorrt(monkeypatch, FakeDevice())


def plan(onnx_path, *flags):
    engine = onnx_path.with_name("unet.plan")
    return plan_from_args(
        build_parser().parse_args(["--onnx", str(onnx_path), "--saveEngine", str(engine), *flags])
    )


def test_strongly_typed_build_passes_every_setting(trt, qdq_onnx, tmp_path):
    layers = tmp_path / "layers.json"
    p = plan(
        qdq_onnx,
        *SHAPES,
        "--builderOptimizationLevel",
        "4",
        "--memPoolSize",
        "workspace:1G",
        "--exportLayerInfo",
        str(layers),
    )
    report = build_engine(p)
    assert trt.last("create_network") == ("create_network", ["STRONGLY_TYPED"])
    assert trt.last("add_optimization_profile")[1] == PROFILE
    assert trt.last("set_memory_pool_limit")[1:] == ("WORKSPACE", 1 << 30)
    built = trt.last("build_serialized_network")[1]
    assert built == {
        "strongly_typed": True,
        "flags": ["TF32"],  # no precision flags on a strongly typed network
        "pools": {"WORKSPACE": 1 << 30},
        "builder_optimization_level": 4,
        "profiling_verbosity": "DETAILED",  # implied by --exportLayerInfo
        "profiles": [PROFILE],
    }
    assert trt.names().index("create_network") < trt.names().index("build_serialized_network")
    assert p.save_engine.read_bytes().startswith(ENGINE_MAGIC)
    assert set(report) == {"engine", "tensorrt", "build_s", "size_mb", "plan", "audit"}
    assert report["engine"] == str(p.save_engine) and report["tensorrt"] == "10.3.0"
    assert report["plan"] == p.to_dict()
    # layer info came from an execution context at the opt shapes, so every format resolved
    inspected = trt.contexts[-1]
    assert inspected.shapes == {SAMPLE: (2, 1, 8, 8), TIMESTEP: (2,)}
    assert report["audit"]["quantized_compute"] == ["conv_q"]
    assert report["audit"]["float_compute"] == [("conv_float", "FP32")]
    assert report["audit"]["unknown_precision"] == 0 and report["audit"]["standalone_qdq"] == []
    assert json.loads(layers.read_text())["Bindings"] == [SAMPLE, TIMESTEP, OUTPUT_NAME]


def test_weakly_typed_tensorrt_8_6_build(monkeypatch, qdq_onnx):
    trt = install_fake_tensorrt(monkeypatch, FakeDevice(), version="8.6.2")
    build_engine(plan(qdq_onnx, "--fp16", "--int8", *SHAPES))
    # Polygraphy adds the explicit-batch flag TensorRT 8.6 needs; there is no strong typing to ask for
    assert trt.last("create_network") == ("create_network", ["EXPLICIT_BATCH"])
    built = trt.last("build_serialized_network")[1]
    assert not built["strongly_typed"] and built["flags"] == ["FP16", "INT8", "TF32"]
    assert built["profiling_verbosity"] == "LAYER_NAMES_ONLY"  # trtexec's default, not Polygraphy's


def test_timing_cache_is_loaded_and_saved(trt, qdq_onnx, tmp_path):
    cache = tmp_path / "orin.cache"
    build_engine(plan(qdq_onnx, *SHAPES, "--timingCacheFile", str(cache)))
    assert trt.last("create_timing_cache")[1] == [] and trt.cache_hits == [False]  # no file yet
    saved = cache.read_bytes()
    assert b"tactics:qdq.onnx" in saved
    build_engine(plan(qdq_onnx, *SHAPES, "--timingCacheFile", str(cache)))
    assert ("set_timing_cache", ["tactics:qdq.onnx"], False) in trt.calls  # loaded before the second build
    assert trt.cache_hits == [False, True]
    assert cache.read_bytes() == saved  # nothing new to add


def test_engine_is_written_atomically(trt, qdq_onnx, monkeypatch):
    p = plan(qdq_onnx, *SHAPES)
    p.save_engine.write_bytes(b"the previous engine")
    writes = []
    real = trt_builder.atomic_write
    monkeypatch.setattr(
        trt_builder, "atomic_write", lambda path, write: writes.append(path) or real(path, write)
    )
    with monkeypatch.context() as m:
        m.setattr(Builder, "build_serialized_network", lambda self, network, config: None)
        with pytest.raises(BuildError, match="failed to build .*--verbose"):
            build_engine(p)
    assert p.save_engine.read_bytes() == b"the previous engine" and writes == []
    build_engine(p)
    assert writes == [p.save_engine] and p.save_engine.read_bytes().startswith(ENGINE_MAGIC)
    assert sorted(f.name for f in p.save_engine.parent.iterdir()) == ["qdq.onnx", "unet.plan"]  # no temp left


@pytest.mark.parametrize(
    "flags,message",
    [
        (
            ("--optShapes", "sample:2x1x8x8,timestep:2,cond:2x4"),
            r"name \['cond'\], which the network does not have",
        ),
        (
            ("--optShapes", "sample:2x3x8x8,timestep:2"),
            "--optShapes: sample dimension 1 is 3, but the network fixes it at 1",
        ),
        (
            ("--maxShapes", "sample:4x1x8,timestep:4", "--optShapes", "sample:2x1x8,timestep:2"),
            "sample has 3 dimensions",
        ),
        (
            ("--optShapes", "sample:2x1x8x8"),
            "timestep:-1 have dynamic .* --minShapes/--optShapes/--maxShapes",
        ),
        (("--fp16", *SHAPES), "has Q/DQ nodes.*needs --int8.*--int8 --fp16"),
    ],
)
def test_plan_is_checked_against_the_network_before_the_build(trt, qdq_onnx, flags, message):
    with pytest.raises(BuildConfigError, match=message):
        build_engine(plan(qdq_onnx, *flags))
    assert "create_network" in trt.names() and "build_serialized_network" not in trt.names()


def test_tensorrt_version_limits_are_named(monkeypatch, qdq_onnx):
    trt = install_fake_tensorrt(monkeypatch, FakeDevice(), version="8.6.2")
    with pytest.raises(BuildConfigError, match="no strongly typed networks.*--int8 --fp16"):
        build_engine(plan(qdq_onnx, *SHAPES))
    assert trt.calls == []  # refused before parsing
    install_fake_tensorrt(monkeypatch, FakeDevice(), version="11.0.0")
    with pytest.raises(BuildConfigError, match="has no --fp16 --int8.*--stronglyTyped"):
        build_engine(plan(qdq_onnx, "--fp16", "--int8", *SHAPES))


def test_paths_and_parse_errors(trt, qdq_onnx, tmp_path):
    with pytest.raises(BuildConfigError, match="--onnx .*missing.onnx does not exist"):
        build_engine(plan(tmp_path / "missing.onnx", *SHAPES))
    p = plan_from_args(
        build_parser().parse_args(["--onnx", str(qdq_onnx), "--saveEngine", str(tmp_path / "no" / "u.plan")])
    )
    with pytest.raises(BuildConfigError, match="--saveEngine .*does not exist"):
        build_engine(p)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(BuildError, match="could not parse .*garbage.onnx"):
        build_engine(plan(garbage, *SHAPES))
    assert trt.calls == [("create_network", ["STRONGLY_TYPED"])]


def test_int8_without_qdq_warns_that_the_engine_is_for_timing_only(trt, float_onnx, caplog):
    with caplog.at_level(logging.WARNING, logger="pqcad_deploy.runtime.trt_builder"):
        build_engine(plan(float_onnx, "--fp16", "--int8", *SHAPES))
    assert "no Q/DQ nodes" in caplog.text and "placeholder scales" in caplog.text
    assert trt.last("build_serialized_network")[1]["flags"] == ["FP16", "INT8", "TF32"]
