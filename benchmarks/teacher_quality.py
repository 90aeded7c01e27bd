"""Teacher quality: FD-fmnist of N samples at DDIM 100 and 50 steps against the floor (real train images vs the
test set), classifier inception score, and an 8x8 sample grid. Runs on GPU in about a minute.

    python benchmarks/teacher_quality.py --n 10000
    python benchmarks/teacher_quality.py --quick       # CPU smoke run: 32 samples at 4 steps
Writes teacher_quality.json and teacher_grid_ddim<steps>.png under --out (``_quick`` names for --quick).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy.cli.common import add_device, resolve_device
from pqcad_deploy.data import load_fashion_mnist
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.images import save_grid
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import open_model
from pqcad_deploy.metrics import sample_quality
from pqcad_deploy.sampling import make_scheduler, sample_many
from pqcad_deploy.timing import DeviceTimer, environment_info
from pqcad_deploy.zoo import TEACHER_PATH

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--teacher", default=str(TEACHER_PATH), help="FP teacher (.safetensors + .json) or zoo name"
    )
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--steps", type=int, nargs="+", default=[100, 50])
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and the grids")
    p.add_argument(
        "--no-floor", action="store_true", help="skip the real-data floor row (needs the train split)"
    )
    p.add_argument("--quick", action="store_true", help="CPU smoke run: 32 samples at 4 steps")
    add_device(p)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.batch_size = 32, [4], 32
    return args


def _quality(images: torch.Tensor, device: torch.device) -> dict[str, float]:
    q = sample_quality(images, device)
    return {"fd_fmnist": q["fd_fmnist"], "is_mean": q["is_mean"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suffix = "_quick" if args.quick else ""
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = open_model(args.teacher)
    den, spec = TorchDenoiser(bundle.model.to(device)), bundle.spec
    rows: list[dict[str, Any]] = []
    if not args.no_floor:
        train = load_fashion_mnist("train").as_model_input()
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.n]
        floor = {"source": f"real train images ({args.n}) [floor]", "steps": None, "wall_s": None}
        rows.append({**floor, **_quality(train[idx], device)})
    for steps in args.steps:
        timer = DeviceTimer(device)
        mark = timer.start()
        sched = lambda: make_scheduler("ddim", **spec.scheduler)  # noqa: E731
        imgs = sample_many(
            den, sched, args.n, spec.sample_shape, steps, args.batch_size, seed=0, device=device
        )
        wall = timer.stop(mark) / 1e3
        rows.append(
            {"source": "teacher FP32", "steps": steps, **_quality(imgs, device), "wall_s": round(wall, 1)}
        )
        save_grid(imgs[:64], args.out / f"teacher_grid_ddim{steps}{suffix}.png", nrow=8)
    print(f"{'source':<36} {'steps':>5} {'FD-fmnist':>10} {'IS':>6} {'sample s':>9}")
    for r in rows:
        print(
            f"{r['source']:<36} {str(r['steps'] or '-'):>5} {r['fd_fmnist']:>10.3f} {r['is_mean']:>6.2f} "
            f"{str(r['wall_s'] or '-'):>9}"
        )
    record = {
        "benchmark": "teacher_quality",
        "environment": environment_info(),
        "teacher": bundle.source,
        "n": args.n,
        "rows": rows,
    }
    out = atomic_json_save(record, args.out / f"teacher_quality{suffix}.json")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
