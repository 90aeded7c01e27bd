"""CPU smoke check that PQCAD training moves the student's weights on the shipped teacher (regression of the bug
fixed in 0419f19, where only quantizer step sizes trained), and that the eps-MSE on the training points drops.

A training fit on a tiny calibration set, not a quality result. About 3-4 minutes on 2 cores:
    python benchmarks/weight_training_smoke.py
Prints a table and writes benchmarks/results/weight_training_smoke.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from pqcad_deploy.calibset import collect_calibset, eps_mse
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.student import load_student
from pqcad_deploy.timing import environment_info
from pqcad_deploy.train.pqcad import train_pqcad
from pqcad_deploy.train.pqcad_config import PQCADConfig
from pqcad_deploy.zoo import TEACHER_PATH, load_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "weight_training_smoke.json"
    )
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    teacher, spec = load_model(TEACHER_PATH)
    cs = collect_calibset(
        TorchDenoiser(teacher),
        spec,
        n_trajectories=16,
        steps=20,
        n_points=10,
        seed=1,
        batch_size=16,
        progress=False,
    )

    all_points = torch.arange(len(cs))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (0, args.steps):
            cfg = PQCADConfig(
                bits=("w8a8",), schedule="fixed", steps=steps, batch_size=16, lr=args.lr,
                ptq_method="percentile", save_every=1000,
            )  # fmt: skip
            t0 = time.perf_counter()
            path = Path(tmp) / f"s{steps}.pt"
            train_pqcad(cfg, teacher, spec, cs, path, device="cpu", progress=False)
            model = load_student(path)[0]
            sd = model.state_dict()
            moved = sum(not torch.equal(sd[k], v) for k, v in teacher.state_dict().items())
            rows.append({"train_steps": steps, "eps_mse_train_points": eps_mse(model, cs, all_points, "cpu"), "weights_moved": moved,
                         "weights_total": len(teacher.state_dict()), "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
    print("train steps | eps-MSE (training points) | weight tensors moved | seconds")
    for r in rows:
        print(f"{r['train_steps']:>11} | {r['eps_mse_train_points']:.3e} | {r['weights_moved']}/{r['weights_total']} | "
              f"{r['seconds']}")  # fmt: skip
    doc = {"environment": environment_info(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "calib": {"trajectories": 16, "steps": 20, "points": 10}, "lr": args.lr, "rows": rows}  # fmt: skip
    atomic_json_save(doc, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
