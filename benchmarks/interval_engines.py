"""What per-interval engines cost on the CPU: one ONNX Runtime session vs K sessions switched by timestep, with
and without activation relaxing (a relaxed interval is a weight-only engine with float activations).

Rows: the single-set engine (``--single``); for every ``--manifest LABEL=PATH`` the K sessions as ``IntervalRunner``
opens them (one shared CPU arena) and, for the first manifest, with one arena per session (``own arenas``).
Memory: resident set size of a fresh process after opening the sessions and running one UNet call in each interval
(so arenas and pre-packed kernels exist), minus the same process before. Latency: the sampler end to end
(``--steps`` DDIM steps at ``--batch-size``), rounds alternating between the rows, median over ``--repeats``.

    python benchmarks/interval_engines.py --single runs/speed/k1/unet.onnx \
        --manifest k4=runs/speed/k4/unet.manifest.json k4+r0.1=runs/speed/k4r/unet.manifest.json
Writes benchmarks/results/interval_engines_<UTC date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pqcad_deploy.cli.common import refuse_bad_outputs
from pqcad_deploy.denoiser import SAMPLE, TIMESTEP
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.runtime.backends.interval_backend import IntervalRunner
from pqcad_deploy.runtime.backends.ort_backend import OrtRunner
from pqcad_deploy.sampling import make_scheduler, sample
from pqcad_deploy.timing import environment_info

RESULTS = Path(__file__).resolve().parent / "results"
OWN = " own arenas"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--single", type=Path, required=True, help="the single-set student's ONNX")
    p.add_argument(
        "--manifest",
        nargs="+",
        required=True,
        metavar="LABEL=PATH",
        help="interval manifests of K-set students",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sample-shape", type=int, nargs=3, default=[1, 32, 32], help="C H W of the UNet input")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # child process mode
    a = p.parse_args(argv)
    refuse_bad_outputs(p, {"--out": a.out})
    a.manifests = dict(m.split("=", 1) for m in a.manifest)
    first = next(iter(a.manifests))
    a.rows = ["single", *a.manifests, first + OWN]
    return a


def open_row(a: argparse.Namespace, row: str):
    if row == "single":
        return OrtRunner(a.single, intra_op_threads=a.threads)
    label = row.removesuffix(OWN)
    return IntervalRunner.from_manifest(
        a.manifests[label], threads=a.threads, shared_arena=not row.endswith(OWN)
    )


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory_child(a: argparse.Namespace) -> None:
    before = rss_mb()
    runner = open_row(a, a.memory_of)
    with runner:
        x = torch.randn(a.batch_size, *a.sample_shape)
        sched = make_scheduler("ddim")
        sched.set_timesteps(a.steps)
        for t in sched.timesteps.tolist():  # every step once: each interval's engine runs (and allocates)
            runner.infer({SAMPLE: x, TIMESTEP: torch.full((a.batch_size,), int(t))})
        print(json.dumps({"rss_delta_mb": rss_mb() - before}))


def memory(a: argparse.Namespace, row: str) -> float:
    cmd = [sys.executable, __file__, "--single", str(a.single), "--manifest", *a.manifest, "--batch-size",
           str(a.batch_size), "--steps", str(a.steps), "--threads", str(a.threads), "--memory-of", row,
           "--sample-shape", *map(str, a.sample_shape)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return float(json.loads(out)["rss_delta_mb"])


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.memory_of:
        memory_child(a)
        return 0
    mem = {row: memory(a, row) for row in a.rows}
    runners = {row: open_row(a, row) for row in a.rows}
    times: dict[str, list[float]] = {row: [] for row in a.rows}
    for r in runners.values():
        r.__enter__()
    shape = (a.batch_size, *a.sample_shape)
    for i in range(a.repeats + 1):  # round 0 warms up
        for row, r in runners.items():
            t0 = time.perf_counter()
            sample(r.denoiser(), make_scheduler("ddim"), shape, steps=a.steps, seed=i)
            if i:
                times[row].append((time.perf_counter() - t0) * 1e3)
    described = {row: r.describe() for row, r in runners.items()}
    rows = []
    base_ms, base_mb = float(np.median(times["single"])), mem["single"]
    for row in a.rows:
        ms = float(np.median(times[row]))
        d = described[row]
        rows.append({"row": row, "e2e_ms_median": ms, "e2e_ms": times[row], "latency_vs_single": ms / base_ms,
                     "rss_delta_mb": mem[row], "memory_vs_single": mem[row] / base_mb,
                     "shared_arena": d.get("shared_arena"), "intervals": d.get("intervals"),
                     "calls_per_interval": d.get("calls_per_interval")})  # fmt: skip
    print(
        f"\nper-interval ORT engines, batch {a.batch_size}, DDIM {a.steps}, {a.threads} threads, {a.repeats} rounds"
    )
    print(f"{'row':<24}{'e2e ms':>10}{'x single':>10}{'RSS MB':>10}{'x single':>10}{'relaxed':>10}")
    for r in rows:
        relaxed = (r["intervals"] or {}).get("relaxed", "-")
        print(f"{r['row']:<24}{r['e2e_ms_median']:>10.1f}{r['latency_vs_single']:>10.3f}{r['rss_delta_mb']:>10.1f}"
              f"{r['memory_vs_single']:>10.2f}{str(relaxed):>10}")  # fmt: skip
    out = a.out or RESULTS / f"interval_engines_{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}.json"
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    atomic_json_save(
        {"environment": environment_info(), "args": args, "rows": rows, "engines": described}, out
    )
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
