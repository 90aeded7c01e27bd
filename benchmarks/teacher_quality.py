"""Teacher quality: FD-fmnist of N samples at DDIM 100 and 50 steps against the floor (real train images vs the
test set), classifier inception score, and an 8x8 sample grid. Runs on GPU in about a minute.

    python benchmarks/teacher_quality.py --n 10000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pqcad_deploy.data import load_fashion_mnist
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.images import save_grid
from pqcad_deploy.metrics import sample_quality
from pqcad_deploy.sampling import make_scheduler, sample_many
from pqcad_deploy.timing import environment_info
from pqcad_deploy.zoo import TEACHER_PATH, load_model


def _quality(images: torch.Tensor, device: str) -> dict[str, float]:
    q = sample_quality(images, device)
    return {"fd_fmnist": q["fd_fmnist"], "is_mean": q["is_mean"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--steps", type=int, nargs="+", default=[100, 50])
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument(
        "--no-floor", action="store_true", help="skip the real-data floor row (needs the train split)"
    )
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, spec = load_model(TEACHER_PATH)
    den = TorchDenoiser(model.to(args.device))
    rows = []
    if not args.no_floor:
        train = load_fashion_mnist("train").as_model_input()
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.n]
        rows.append(
            {
                "source": f"real train images ({args.n}) [floor]",
                "steps": None,
                **_quality(train[idx], args.device),
                "wall_s": None,
            }
        )
    for steps in args.steps:
        t0 = time.perf_counter()
        imgs = sample_many(
            den,
            lambda: make_scheduler("ddim", **spec.scheduler),
            args.n,
            spec.sample_shape,
            steps,
            args.batch_size,
            seed=0,
            device=args.device,
        )
        wall = time.perf_counter() - t0
        rows.append(
            {
                "source": "teacher FP32",
                "steps": steps,
                **_quality(imgs, args.device),
                "wall_s": round(wall, 1),
            }
        )
        save_grid(imgs[:64], out / f"teacher_grid_ddim{steps}.png", nrow=8)
    print(f"{'source':<36} {'steps':>5} {'FD-fmnist':>10} {'IS':>6} {'sample s':>9}")
    for r in rows:
        print(
            f"{r['source']:<36} {str(r['steps'] or '-'):>5} {r['fd_fmnist']:>10.3f} {r['is_mean']:>6.2f} {str(r['wall_s'] or '-'):>9}"
        )
    record = {
        "benchmark": "teacher_quality",
        "command": "python benchmarks/teacher_quality.py " + f"--n {args.n}",
        "environment": environment_info(),
        "n": args.n,
        "rows": rows,
    }
    (out / "teacher_quality.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
