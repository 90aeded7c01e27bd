"""pqcad-build (ONNX Runtime path) and pqcad-bench end to end on a tiny model."""

from __future__ import annotations

import json

import pytest

from pqcad_deploy.runtime import bench_cli, build_cli
from pqcad_deploy.runtime.bench import parse_engine


def test_ort_build_then_run(tiny_onnx, tmp_path, capsys):
    eng = tmp_path / "tiny.ort.json"
    rc = build_cli.main(
        [
            "--backend",
            "onnxruntime",
            "--onnx",
            str(tiny_onnx),
            "--saveEngine",
            str(eng),
            "--ortThreads",
            "1",
            "--iterations",
            "2",
            "--fp16",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    meta = json.loads(eng.read_text())
    assert meta["format"] == "pqcad-ort-engine" and (tmp_path / meta["model"]).is_file()
    first_model = meta["model"]
    assert meta["session"]["intra_op_num_threads"] == 1
    assert meta["audit"]["optimized"]["nodes"] < meta["audit"]["source"]["nodes"]
    assert "ignored for --backend onnxruntime: --fp16" in out and "inference at sample:1x1x16x16" in out
    # a rebuild writes a new optimized model, flips the JSON to it, then removes the old one: never a mixed pair
    args = ["--backend", "onnxruntime", "--onnx", str(tiny_onnx), "--saveEngine", str(eng), "--skipInference"]
    assert build_cli.main([*args, "--ortOptimization", "basic"]) == 0
    meta2 = json.loads(eng.read_text())
    assert meta2["session"]["graph_optimization_level"] == "basic" and (tmp_path / meta2["model"]).is_file()
    assert sorted(p.name for p in tmp_path.glob("*.opt.onnx")) == [meta2["model"]]
    assert meta2["model"] != first_model or meta2["audit"] == meta["audit"]


def test_build_errors_exit_2_with_one_line(tiny_onnx, tmp_path, capsys):
    assert (
        build_cli.main(
            ["--onnx", str(tiny_onnx), "--saveEngine", str(tmp_path / "e.plan"), "--stronglyTyped", "--fp16"]
        )
        == 2
    )
    assert "cannot be combined" in capsys.readouterr().err


def test_trt_build_without_tensorrt_says_what_to_install(tiny_onnx, tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed; this test covers machines without it")
    assert build_cli.main(["--onnx", str(tiny_onnx), "--saveEngine", str(tmp_path / "e.plan")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install tensorrt" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e.plan").exists()


def test_parse_engine_specs():
    assert parse_engine("torch:fp16+graph").cuda_graph
    e = parse_engine("int8=ort:models/u.onnx")
    assert (e.label, e.kind, e.target) == ("int8", "ort", "models/u.onnx")
    assert parse_engine("tensorrt:u.plan").kind == "trt"
    for bad in ("torch:int8", "u.onnx", "ort:u.onnx+graph", "jax:x"):
        with pytest.raises(ValueError):
            parse_engine(bad)


def test_bench_table_and_json(tiny_onnx, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    rc = bench_cli.main(
        [
            "--checkpoint",
            "tiny-unet",
            "--engine",
            "torch:fp32",
            "--engine",
            f"ort:{tiny_onnx}",
            "--steps",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--json",
            str(out_json),
            "--grid",
            str(tmp_path / "grids"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "torch:fp32" in out and "x torch:fp32" in out and "ms/img" in out
    res = json.loads(out_json.read_text())
    assert res["config"]["steps"] == 2 and res["config"]["batch"] == 2
    assert res["baselines"] == ["torch:fp32", f"ort:{tiny_onnx}"]  # unquantized ONNX is an FP baseline
    t, o = res["rows"]
    assert t["speedups"]["torch:fp32"] == pytest.approx(1.0)
    assert o["step_ms"]["n"] == 2 and o["e2e_ms"]["median"] > 0
    assert "versions" in res["environment"] and len(list((tmp_path / "grids").glob("*.png"))) == 2
    assert o["fidelity"]["rel_l2"] < 1e-3  # ORT FP32 == torch FP32 numerically


def test_bench_reports_a_broken_engine_and_continues(tmp_path, capsys):
    rc = bench_cli.main(
        [
            "--checkpoint",
            "tiny-unet",
            "--engine",
            "torch:fp32",
            "--engine",
            "trt:missing.plan",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 1 and "trt:missing.plan" in out and "ERROR" in out
