"""pqcad-build --ortLayout: an INT8 ONNX Runtime engine with its quantized convolutions in NCHW (ORT's
NhwcTransformer off) has no layout Transposes around them, keeps that setting when reopened, and computes what
the default NHWC engine computes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from pqcad_deploy.export import ExportOptions, export
from pqcad_deploy.export.spec import export_spec_for
from pqcad_deploy.loading import open_model
from pqcad_deploy.runtime import build_cli
from pqcad_deploy.runtime.backends.base import RunnerError
from pqcad_deploy.runtime.backends.ort_backend import OrtRunner
from pqcad_deploy.zoo import get_spec
from tests.export.conftest import make_student


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    d = tmp_path_factory.mktemp("layout")
    export(
        open_model(make_student(d / "s.pt", "tiny-unet", "onnxruntime", 8)),
        d / "q.onnx",
        ExportOptions(check=False),
    )
    out = {}
    for layout in ("nhwc", "nchw"):
        eng = d / f"{layout}.ort.json"
        argv = ["--backend", "onnxruntime", "--onnx", str(d / "q.onnx"), "--saveEngine", str(eng)]
        assert build_cli.main([*argv, "--ortThreads", "1", "--ortLayout", layout, "--skipInference"]) == 0
        out[layout] = eng
    return out


def _ops(engine_json, op):
    meta = json.loads(engine_json.read_text())
    model = onnx.load(engine_json.parent / meta["model"], load_external_data=False)
    return sum(n.op_type == op for n in model.graph.node)


def test_nchw_engine_has_no_layout_transposes_and_the_same_output(engines):
    meta = {k: json.loads(v.read_text()) for k, v in engines.items()}
    assert meta["nchw"]["session"]["disabled_optimizers"] == ["NhwcTransformer"]
    assert meta["nhwc"]["session"]["disabled_optimizers"] == []
    assert _ops(engines["nchw"], "QLinearConv") == _ops(engines["nhwc"], "QLinearConv") > 0
    assert _ops(engines["nchw"], "Transpose") < _ops(engines["nhwc"], "Transpose")
    feed = export_spec_for(get_spec("tiny-unet")).sampler_inputs(2, seed=3)
    outs = {}
    for layout, eng in engines.items():
        runner = OrtRunner.from_engine(eng)
        assert runner.settings["disabled_optimizers"] == meta[layout]["session"]["disabled_optimizers"]
        with runner:
            outs[layout] = next(iter(runner.infer(feed).values())).numpy()
    np.testing.assert_allclose(outs["nchw"], outs["nhwc"], atol=1e-5)


def test_a_bad_disabled_optimizers_entry_is_refused(engines, tmp_path):
    meta = json.loads(engines["nchw"].read_text())
    meta["session"]["disabled_optimizers"] = "NhwcTransformer"
    bad = engines["nchw"].parent / "bad.ort.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(RunnerError, match="'disabled_optimizers' must be a list of names"):
        OrtRunner.from_engine(bad)
