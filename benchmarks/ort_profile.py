"""Where the CPU time of an ONNX Runtime engine goes: ORT's own profiler, per op type, side by side for several
engines (e.g. the demo's FP32 teacher and its INT8 student forms).

Each engine runs ``--calls`` UNet calls on the one sampler-like feed (``denoiser.sampler_feed``) after warm-up with
ORT's profiler on; node events are summed per op type (ms per call, share of the call, node count), and the rows
that are still float in an INT8 graph (Conv, MatMul, Gemm, GroupNorm, Sigmoid/Mul = SiLU, Q/DQ, ...) show what is
left to fuse. Timings include the profiler's own overhead (a few percent); the total per call is reported beside
the un-profiled median of the same engine.

    python benchmarks/ort_profile.py --engine fp32=runs/demo/teacher_fp32.ort.json \\
        --engine int8-ort=runs/demo/student_int8_ort.ort.json --batch-size 8 --calls 20
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from pqcad_deploy.denoiser import sampler_feed
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.runtime.backends.ort_backend import OrtRunner
from pqcad_deploy.runtime.build_cli import onnx_input_shapes, time_runner
from pqcad_deploy.timing import environment_info

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("ort_profile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--engine",
        action="append",
        required=True,
        metavar="NAME=ENGINE.ort.json",
        help="repeat for each engine",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--calls", type=int, default=20, help="profiled UNet calls per engine")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=14, help="op types shown per engine (all are in the JSON)")
    p.add_argument("--out", type=Path, default=RESULTS / "ort_profile.json")
    a = p.parse_args(argv)
    engines = {}
    for item in a.engine:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            p.error(
                f"--engine {item!r}: want NAME=PATH to an existing engine JSON (pqcad-build --backend onnxruntime)"
            )
        engines[name] = Path(path)
    a.engines = engines
    return a


def op_table(trace: Path, calls: int) -> tuple[list[dict[str, Any]], float]:
    """Per op type over the last ``calls`` runs of the trace (earlier runs are warm-up): ms per call, share of the
    node time, nodes per call; and the summed node ms per call."""
    events = json.loads(trace.read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(runs) < calls:
        raise SystemExit(f"{trace}: {len(runs)} runs in the trace, expected >= {calls}")
    since = runs[-calls]
    total_us: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if (
            e.get("cat") != "Node"
            or e.get("ts", 0) < since
            or not str(e.get("name", "")).endswith("_kernel_time")
        ):
            continue
        op = e.get("args", {}).get("op_name", "?")
        total_us[op] += float(e.get("dur", 0))
        count[op] += 1
    all_ms = sum(total_us.values()) / 1000 / calls
    rows = [
        {
            "op": op,
            "ms_per_call": us / 1000 / calls,
            "share": us / 1000 / calls / all_ms if all_ms else 0.0,
            "nodes_per_call": count[op] / calls,
        }
        for op, us in sorted(total_us.items(), key=lambda kv: -kv[1])
    ]
    return rows, all_ms


def profile_engine(path: Path, a: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plain = OrtRunner.from_engine(path, intra_op_threads=a.threads)
    shapes = onnx_input_shapes(plain.model_path, a.batch_size)
    median = time_runner(plain, shapes, a.warmup, a.calls)["median"]
    runner = OrtRunner.from_engine(path, intra_op_threads=a.threads, profile_prefix=workdir / path.stem)
    feed = sampler_feed(shapes)
    with runner:
        for _ in range(a.warmup + a.calls):
            runner.infer(feed)
        trace = runner.end_profiling()
    rows, node_ms = op_table(trace, a.calls)
    return {"engine": str(path), "model": str(plain.model_path), "median_ms_unprofiled": median,
            "node_ms_per_call": node_ms, "ops": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    a = parse_args(argv)
    out: dict[str, Any] = {"environment": environment_info(), "batch_size": a.batch_size, "calls": a.calls,
                           "threads": a.threads, "engines": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in a.engines.items():
            out["engines"][name] = profile_engine(path, a, Path(tmp))
    print(f"ORT profile: batch {a.batch_size}, {a.calls} calls, {a.threads} threads (ms per UNet call)")
    for name, r in out["engines"].items():
        print(
            f"\n{name}: un-profiled median {r['median_ms_unprofiled']:.1f} ms, node time {r['node_ms_per_call']:.1f} ms"
        )
        print(f"  {'op':<28}{'ms/call':>10}{'share':>8}{'nodes':>8}")
        for row in r["ops"][: a.top]:
            print(
                f"  {row['op']:<28}{row['ms_per_call']:>10.2f}{100 * row['share']:>7.1f}%{row['nodes_per_call']:>8.0f}"
            )
    atomic_json_save(out, a.out)
    print(f"\nJSON: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
