"""benchmarks/cpu_pipeline.py: the speed-up goals check, and the --quick settings (loaded from its path)."""

from __future__ import annotations

import pytest

from tests._utils import load_benchmark


@pytest.fixture(scope="module")
def cp():
    return load_benchmark("cpu_pipeline")


def _row(label: str, median_ms: float, error: str | None = None) -> dict:
    return {"label": label, "e2e_ms": {"median": median_ms}, "error": error}


def test_speedups_are_checked_against_every_goal(cp):
    rows = [_row("torch-fp32", 300.0), _row("ort-fp32", 120.0), _row("ort-int8-ortq", 100.0)]
    rows.append(_row("ort-ptq-u8s8", float("nan"), error="RuntimeError: x"))
    lines = cp.check_speedups(rows, batch=1)
    assert len(lines) == len(cp.SPEEDUP_GOALS)
    assert "torch-fp32 3.00x (goal >= 2.5x: met)" in lines[0]
    assert "ort-fp32 1.20x (goal >= 1.5x: MISSED)" in lines[1]
    assert "ort-ptq-u8s8 nanx" in lines[2] and "MISSED" in lines[2]  # a failed baseline is never "met"
    lines8 = cp.check_speedups(rows, batch=8)  # larger batches have their own goals
    assert "goal >= 2.0x" in lines8[0] and "ort-fp32 1.20x (goal >= 1.9x: MISSED)" in lines8[1]


def test_without_the_int8_row_nothing_is_claimed(cp):
    assert cp.check_speedups([_row("torch-fp32", 300.0)], batch=1) == [
        "b1: ort-int8-ortq missing: speed-up goals not checked"
    ]


def test_quick_is_a_small_cpu_run(cp):
    a = cp.parse_args(["--quick"])
    assert (a.model, a.batches, a.steps) == ("tiny-unet", [1], 4) and a.out.name == "cpu_pipeline_quick.json"
    assert a.work.name == "cpu_pipeline_quick"
