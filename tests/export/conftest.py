"""Tiny calibrated students for export tests (built once per module; PTQ max-abs on sampler-like inputs)."""

from __future__ import annotations

import pytest
import torch

from pqcad_deploy import quant
from pqcad_deploy.export.spec import export_spec_for
from pqcad_deploy.zoo import build_model, get_spec


def make_student(path, name: str, target: str, bits: int, block: int | None = None):
    from pqcad_deploy.student import save_student

    spec = get_spec(name)
    model = build_model(spec, seed=0).eval()
    cfg = quant.QuantConfig(target=target, weight_bits=bits, int4_block_size=block)
    quant.quantize_model(model, cfg)
    es = export_spec_for(spec)

    def loop(m):
        for seed in range(2):
            f = es.sampler_inputs(4, seed=seed)
            with torch.no_grad():
                m(f["sample"], f["timestep"], **({"encoder_hidden_states": f["encoder_hidden_states"]}
                                                 if spec.cond_shape else {}))  # fmt: skip

    quant.calibrate(model, loop)
    save_student(path, model, spec, cfg, {})
    return path


@pytest.fixture(scope="session")
def students(tmp_path_factory):
    d = tmp_path_factory.mktemp("students")
    return {
        "trt8": make_student(d / "trt8.pt", "tiny-unet", "tensorrt", 8),
        "ort8": make_student(d / "ort8.pt", "tiny-unet", "onnxruntime", 8),
        "trt4c": make_student(d / "trt4c.pt", "tiny-unet-cond", "tensorrt", 4, 16),
        "ort4c": make_student(d / "ort4c.pt", "tiny-unet-cond", "onnxruntime", 4),
    }
