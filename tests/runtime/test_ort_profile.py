"""benchmarks/ort_profile.py: ORT's profiler through OrtRunner, summed per op type over the measured runs only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pqcad_deploy.runtime.backends.base import RunnerError
from pqcad_deploy.runtime.backends.ort_backend import OrtRunner
from tests._utils import load_benchmark


@pytest.fixture(scope="module")
def prof():
    return load_benchmark("ort_profile")


def _node(op: str, ts: int, dur: int) -> dict:
    return {"cat": "Node", "name": f"{op}_1_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_op_table_drops_warm_up_runs_and_sums_per_op(prof, tmp_path):
    events = [{"cat": "Session", "name": "model_run", "ts": t, "dur": 1} for t in (0, 100, 200)]
    events += [
        _node("Conv", 10, 9000),
        _node("Conv", 110, 1000),
        _node("Conv", 210, 3000),
        _node("Add", 220, 1000),
    ]
    events.append(
        {"cat": "Node", "name": "Conv_fence_before", "ts": 230, "dur": 500, "args": {"op_name": "Conv"}}
    )
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps(events))
    rows, ms = prof.op_table(trace, calls=2)  # the run at ts 0 is warm-up
    assert ms == pytest.approx(2.5)  # (1000 + 3000 + 1000) us over 2 calls
    assert rows[0] == {"op": "Conv", "ms_per_call": 2.0, "share": 0.8, "nodes_per_call": 1.0}
    assert rows[1]["op"] == "Add" and rows[1]["nodes_per_call"] == 0.5
    with pytest.raises(SystemExit, match="expected >= 5"):
        prof.op_table(trace, calls=5)


def test_profiles_a_real_engine_end_to_end(prof, tiny_onnx, tmp_path):
    engine = tmp_path / "tiny.ort.json"
    from pqcad_deploy.runtime.build_config import BuildPlan
    from pqcad_deploy.runtime.ort_builder import build_ort_engine

    build_ort_engine(BuildPlan(onnx=Path(tiny_onnx), save_engine=engine, backend="onnxruntime"))
    out = tmp_path / "p.json"
    argv = [
        "--engine",
        f"tiny={engine}",
        "--batch-size",
        "1",
        "--calls",
        "2",
        "--warmup",
        "1",
        "--out",
        str(out),
    ]
    assert prof.main(argv) == 0
    r = json.loads(out.read_text())["engines"]["tiny"]
    ops = {row["op"] for row in r["ops"]}
    assert "Conv" in ops or "FusedConv" in ops
    assert r["node_ms_per_call"] > 0 and sum(row["share"] for row in r["ops"]) == pytest.approx(1.0)


def test_end_profiling_needs_a_profiled_session(tiny_onnx):
    with pytest.raises(RunnerError, match="profile_prefix"):
        OrtRunner(tiny_onnx).end_profiling()
