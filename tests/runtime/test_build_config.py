from __future__ import annotations

from types import SimpleNamespace

import pytest

from pqcad_deploy.runtime.build_cli import build_parser
from pqcad_deploy.runtime.build_config import (
    BuildConfigError,
    ShapeProfile,
    check_profile_fits_network,
    dynamic_inputs_without_profile,
    format_shapes,
    parse_mem_pool,
    parse_shapes,
    plan_from_args,
)


def plan(*flags: str):
    return plan_from_args(build_parser().parse_args(["--onnx", "m.onnx", "--saveEngine", "m.plan", *flags]))


def test_parse_shapes_roundtrip_and_errors():
    s = parse_shapes("sample:1x4x64x64,timestep:1, encoder_hidden_states:1x77x768")
    assert s == {"sample": (1, 4, 64, 64), "timestep": (1,), "encoder_hidden_states": (1, 77, 768)}
    assert parse_shapes(format_shapes(s)) == s
    assert parse_shapes("/unet/in:0:2x3") == {"/unet/in:0": (2, 3)}  # names may contain ':'
    for bad, msg in [
        ("sample", "name:dims"),
        ("sample:1xAx3", "non-integer"),
        ("sample:0x1", "<= 0"),
        ("a:1,a:2", "twice"),
        ("", "empty"),
    ]:
        with pytest.raises(BuildConfigError, match=msg):
            parse_shapes(bad)


def test_mem_pool_units():
    assert parse_mem_pool("workspace:8G") == {"workspace": 8 << 30}
    assert parse_mem_pool("workspace:512,tacticSharedMem:64K") == {
        "workspace": 512 << 20,
        "tacticSharedMem": 64 << 10,
    }
    with pytest.raises(BuildConfigError, match="unknown pool"):
        parse_mem_pool("scratch:1G")
    with pytest.raises(BuildConfigError, match="pool:size"):
        parse_mem_pool("workspace:lots")


def test_profile_fill_in_and_validation():
    p = ShapeProfile.from_flags(None, "sample:2x1x8x8", None)
    assert p.min == p.opt == p.max == {"sample": (2, 1, 8, 8)}
    p = ShapeProfile.from_flags("sample:1x1x8x8", None, "sample:8x1x8x8")
    assert p.opt == {"sample": (8, 1, 8, 8)}  # opt defaults to max
    assert ShapeProfile.from_flags(None, None, None) is None
    with pytest.raises(BuildConfigError, match="min <= opt <= max"):
        ShapeProfile.from_flags("sample:4x1x8x8", "sample:2x1x8x8", "sample:8x1x8x8")
    with pytest.raises(BuildConfigError, match="different inputs"):
        ShapeProfile.from_flags("sample:1x1x8x8", "timestep:1", None)
    with pytest.raises(BuildConfigError, match="ranks"):
        ShapeProfile.from_flags("sample:1x1x8x8", "sample:1x1x8", None)


def test_strongly_typed_default_and_conflicts():
    p = plan()
    assert p.strongly_typed and not p.fp16 and not p.int8
    weak = plan("--fp16", "--int8")
    assert not weak.strongly_typed and weak.fp16 and weak.int8
    with pytest.raises(BuildConfigError, match="cannot be combined with --fp16 --int8"):
        plan("--stronglyTyped", "--fp16", "--int8")
    assert any("without --fp16" in n for n in plan("--int8").notes)


def test_full_plan_from_trtexec_flags():
    p = plan(
        "--minShapes",
        "sample:1x1x32x32,timestep:1",
        "--optShapes",
        "sample:4x1x32x32,timestep:4",
        "--maxShapes",
        "sample:8x1x32x32,timestep:8",
        "--timingCacheFile",
        "tc.bin",
        "--builderOptimizationLevel",
        "4",
        "--memPoolSize",
        "workspace:2G",
        "--exportLayerInfo",
        "layers.json",
        "--skipInference",
    )
    assert p.profile.min == {"sample": (1, 1, 32, 32), "timestep": (1,)}
    assert p.profile.max == {"sample": (8, 1, 32, 32), "timestep": (8,)}
    assert p.mem_pool == {"workspace": 2 << 30}
    assert p.builder_optimization_level == 4 and str(p.timing_cache) == "tc.bin"
    assert p.profiling_verbosity == "detailed"  # implied by --exportLayerInfo
    assert p.skip_inference and p.to_dict()["profile"]["opt"] == "sample:4x1x32x32,timestep:4"


def test_bad_values_are_named():
    with pytest.raises(BuildConfigError, match="0..5"):
        plan("--builderOptimizationLevel", "7")
    with pytest.raises(BuildConfigError, match="profilingVerbosity"):
        plan("--profilingVerbosity", "loud")
    with pytest.raises(BuildConfigError, match="needs --profilingVerbosity=detailed"):
        plan("--exportLayerInfo", "l.json", "--profilingVerbosity", "layer_names_only")
    with pytest.raises(BuildConfigError, match="--backend"):
        plan_from_args(SimpleNamespace(backend="openvino", onnx="m", saveEngine="e"))


def test_onnxruntime_plan_notes_ignored_trt_flags():
    p = plan("--backend", "onnxruntime", "--fp16", "--timingCacheFile", "tc.bin", "--ortThreads", "2")
    assert p.backend == "onnxruntime" and p.ort_threads == 2
    assert any("--fp16" in n and "--timingCacheFile" in n for n in p.notes)


def test_dynamic_inputs_need_a_profile():
    inputs = {"sample": (-1, 1, 32, 32), "timestep": (-1,), "static": (1, 3)}
    assert dynamic_inputs_without_profile(inputs, {"sample"}) == ["timestep"]
    assert dynamic_inputs_without_profile(inputs, {"sample", "timestep"}) == []


def test_profile_is_checked_against_the_network_inputs():
    inputs = {"sample": (-1, 1, 32, 32), "timestep": (-1,)}
    ok = ShapeProfile.from_flags("sample:1x1x32x32,timestep:1", None, "sample:8x1x32x32,timestep:8")
    check_profile_fits_network(ok, inputs)
    check_profile_fits_network(None, {"static": (1, 3)})
    for profile, message in [
        (ShapeProfile.from_flags(None, "sample:2x1x32x32,timestep:2,t:1", None), r"name \['t'\]"),
        (ShapeProfile.from_flags(None, "sample:2x1x32x32", None), "timestep:-1 have dynamic"),
        (None, "sample:-1x1x32x32,timestep:-1 have dynamic"),
        (ShapeProfile.from_flags(None, "sample:2x1x32,timestep:2", None), "sample has 3 dimensions"),
        (
            ShapeProfile.from_flags(None, "sample:2x1x32x32,timestep:2", "sample:4x3x32x32,timestep:4"),
            "--maxShapes: sample dimension 1 is 3, but the network fixes it at 1",
        ),
    ]:
        with pytest.raises(BuildConfigError, match=message):
            check_profile_fits_network(profile, inputs)


def test_ort_layout_is_checked_and_noted_when_ignored():
    assert plan("--backend", "onnxruntime", "--ortLayout", "nchw").ort_layout == "nchw"
    tensorrt = plan("--ortLayout", "nchw")  # TensorRT picks its own formats: the flag is noted as ignored
    assert any("--ortLayout" in n for n in tensorrt.notes)
    with pytest.raises(BuildConfigError, match="--ortLayout must be one of nhwc, nchw"):
        plan_from_args(SimpleNamespace(backend="onnxruntime", onnx="m", saveEngine="e", ortLayout="nc"))
