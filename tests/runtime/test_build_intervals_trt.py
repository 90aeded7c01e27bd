"""pqcad-build of an interval manifest for TensorRT, against the fake TensorRT (tests/runtime/fakes): one engine
per interval through the one build path, the engine manifest written last, the runner that switches them.

No real TensorRT runs here: these tests prove what is asked of TensorRT, not what it builds."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper

from pqcad_deploy.interval_manifest import MANIFEST_FORMAT, MANIFEST_VERSION, read_manifest, sha256
from pqcad_deploy.runtime.backends.interval_backend import IntervalRunner
from pqcad_deploy.runtime.backends.trt_backend import TrtRunner
from pqcad_deploy.runtime.build_cli import main as build_main
from tests.runtime.fakes import FakeDevice, install_fake_tensorrt
from tests.runtime.fakes.fake_trt_types import ENGINE_MAGIC
from tests.runtime.test_trt_builder import SHAPES, _model


def _manifest(d, scales):
    """An exported-style manifest over one QDQ file per interval, differing only in the activation scale."""
    entries = []
    for k, s in enumerate(scales):
        f = _model(d / f"unet.i{k}.onnx", quantized=True)
        m = onnx.load(str(f))
        for init in m.graph.initializer:
            if init.name == "s":
                init.CopyFrom(numpy_helper.from_array(np.array(s, np.float32), "s"))
        onnx.save(m, str(f))
        entries.append(
            {"interval": k, "onnx": f.name, "sha256": sha256(f), "precision": "w8a8", "activations": "int"}
        )
    doc = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "model": "tiny", "target": "tensorrt",
           "intervals": {"k": len(scales), "starts": [500][: len(scales) - 1], "num_train_timesteps": 1000},
           "entries": entries}  # fmt: skip
    path = d / "unet.manifest.json"
    path.write_text(json.dumps(doc))
    return path


def test_tensorrt_manifest_build_writes_one_plan_per_interval_then_the_manifest(
    monkeypatch, tmp_path, capsys
):
    trt = install_fake_tensorrt(monkeypatch, FakeDevice())
    src = _manifest(tmp_path, [0.05, 0.02])
    out = tmp_path / "plans" / "unet.manifest.json"
    argv = ["--onnx", str(src), "--saveEngine", str(out), "--stronglyTyped", *SHAPES, "--skipInference"]
    assert build_main(argv) == 0
    assert trt.names().count("build_serialized_network") == 2  # the same flags, once per interval file
    schedule, files, doc = read_manifest(out)
    assert doc["backend"] == "tensorrt" and [f.name for f in files] == ["unet.i0.plan", "unet.i1.plan"]
    assert all(f.read_bytes().startswith(ENGINE_MAGIC) for f in files)
    assert "pqcad-bench --engine trt:" in capsys.readouterr().out
    runner = IntervalRunner.from_manifest(out)
    assert all(isinstance(r, TrtRunner) for r in runner.runners) and runner.name == "trt:unet.manifest.json"


def test_a_failed_interval_build_leaves_no_engine_manifest(monkeypatch, tmp_path, capsys):
    install_fake_tensorrt(monkeypatch, FakeDevice())
    src = _manifest(tmp_path, [0.05, 0.02])
    (tmp_path / "unet.i1.onnx").write_bytes(b"not onnx")  # replaced after export: refused by its hash
    out = tmp_path / "plans" / "unet.manifest.json"
    assert build_main(["--onnx", str(src), "--saveEngine", str(out), *SHAPES, "--skipInference"]) == 2
    assert "SHA-256 differs" in capsys.readouterr().err and not out.exists()
