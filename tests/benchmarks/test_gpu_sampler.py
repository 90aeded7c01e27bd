"""benchmarks/gpu_sampler.py logic on CPU (the real run needs a GPU): rows, speed-ups, table, JSON-ability."""

from __future__ import annotations

import json

import pytest
import torch

from pqcad_deploy.loading import open_model
from tests._utils import load_benchmark


@pytest.fixture(scope="module")
def gs():
    return load_benchmark("gpu_sampler")


def test_rows_speedups_and_table(gs, capsys):
    args = gs.parse_args(["--steps", "2", "--repeats", "1", "--unet-iters", "1", "--warmup", "0"])
    assert args.modes == ["fp32", "fp16", "fp16+graph"] and args.models[-1] == "sd15-unet"
    bundle = open_model("tiny-unet-cond", random_weights=True)
    cpu = torch.device("cpu")
    rows = [gs.bench_config(bundle.model, bundle.spec, 2, m, args, cpu) for m in ("fp32", "bf16")]
    rows.append({"model": "tiny-unet-cond", "batch": 2, "mode": "fp16+graph", "error": "RuntimeError: x"})
    gs.add_speedups(rows)
    assert rows[0]["speedup_vs_fp32"] == pytest.approx(1.0) and rows[1]["speedup_vs_fp16"] is None
    r = rows[1]
    assert r["step_ms"]["n"] == 2 and r["e2e_ms_per_image"] == pytest.approx(r["e2e_ms"]["median"] / 2)
    assert -1.0 < r["sampler_overhead"] < 1.0 and r["runner"]["precision"] == "bf16"
    assert r["unet_call_ms"] > 0 and r["peak_mem_gib"] is None and r["images_finite"]  # no CUDA memory on CPU
    json.dumps(rows)
    gs.print_table(rows, "header")
    out = capsys.readouterr().out
    assert "ERROR: RuntimeError" in out and "TensorRT: not run" in out


def test_refuses_without_gpu(gs, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gs.main(["--models", "tiny-unet"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
