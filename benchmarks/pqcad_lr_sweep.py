"""Weight learning-rate sweep for PQCAD stage 1 (W8A8 from PTQ) before the full table.

Trains the common stage 1 (fixed-schedule W8A8, PTQ-initialised, CAD loss) once per weight LR and scores each
student, and the PTQ starting point, on
  - eps-MSE vs FP (``calibset.eps_mse``, the score behind PTQ-method selection) on the training calibration
    points and on held-out trajectories from other noise, and
  - fidelity to the FP teacher (PSNR dB, rel-L2) and FD-fmnist on ``--n`` samples from the same noise.
The pick is the LR with the lowest held-out eps-MSE.

    python benchmarks/pqcad_lr_sweep.py --lrs 1e-5 3e-5 1e-4 --steps 400          # H100, ~4 min
    python benchmarks/pqcad_lr_sweep.py --quick                                     # CPU smoke, tiny model
Writes benchmarks/results/pqcad_lr_sweep_<UTC date>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy.calibset import CalibSet, eps_mse
from pqcad_deploy.cli.common import add_device, refuse_bad_outputs, resolve_device
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import open_model
from pqcad_deploy.metrics import fd_fmnist, fidelity
from pqcad_deploy.quant import parse_bits
from pqcad_deploy.quant.config import CALIB_METHODS
from pqcad_deploy.sampling import make_scheduler, sample_many
from pqcad_deploy.timing import environment_info
from pqcad_deploy.train.calib import load_or_collect_calib
from pqcad_deploy.train.pqcad import train_pqcad
from pqcad_deploy.train.pqcad_config import PQCADConfig
from pqcad_deploy.train.ptq import probe_indices, ptq_student
from pqcad_deploy.zoo import TEACHER_PATH

log = logging.getLogger("pqcad_lr_sweep")
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--teacher", default=str(TEACHER_PATH), help="FP teacher (.safetensors + .json) or zoo name"
    )
    p.add_argument(
        "--work", type=Path, default=Path("runs/pqcad_table"), help="calibration sets and students"
    )
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4])
    p.add_argument("--lr-quant", type=float, default=PQCADConfig.lr_quant)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--bits", default="w8a8")
    p.add_argument("--init-ptq", default="percentile", choices=CALIB_METHODS)
    p.add_argument("--n", type=int, default=2000, help="samples for fidelity and FD")
    p.add_argument("--eval-steps", type=int, default=50)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="CPU smoke test: tiny random model, tiny budgets")
    add_device(p)
    a = p.parse_args(argv)
    refuse_bad_outputs(p, {"--out": a.out})
    if a.quick:
        a.teacher, a.steps, a.batch_size, a.n, a.eval_steps = "tiny-unet", 6, 8, 16, 4
        a.lrs, a.init_ptq, a.work = [1e-5, 1e-3], "maxabs", a.work.with_name(a.work.name + "_quick")
    return a


def print_sweep(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    head = f"{a.bits}, {a.steps} steps x batch {a.batch_size}, {a.n} samples @{a.eval_steps} DDIM steps"
    print(f"\nPQCAD stage-1 weight-LR sweep: {head}")
    print(f"{'':<16}{'eps-MSE train':>14}{'held-out':>11}{'FD':>8}{'PSNR':>8}{'relL2':>8}{'train s':>9}")
    keys = ("eps_mse_train", "eps_mse_heldout", "fd", "psnr_db_vs_fp", "rel_l2_vs_fp", "train_s")
    cols = list(zip(keys, (".3e", ".3e", ".3f", ".2f", ".4f", ".1f"), (14, 11, 8, 8, 8, 9), strict=True))
    for r in rows:
        cells = (format(r[k], f).rjust(w) if r.get(k) is not None else "-".rjust(w) for k, f, w in cols)
        print(f"{r['label']:<16}" + "".join(cells))


class Sweep:
    """The sweep's shared state: teacher, calibration sets, FP reference images."""

    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.dev = resolve_device(a.device)
        bundle = open_model(a.teacher)
        self.teacher, self.spec = bundle.model.to(self.dev).eval(), bundle.spec
        a.work.mkdir(parents=True, exist_ok=True)
        # the table's calibration set (same settings and seed) and a held-out one from other noise
        self.train_cs = self.calib("calib.safetensors", 8 if a.quick else 256, 1234)
        self.val_cs = self.calib("calib_heldout.safetensors", 4 if a.quick else 32, 4321)
        self.train_idx, self.val_idx = probe_indices(self.train_cs), torch.arange(len(self.val_cs))
        self.fp_images = self.sample(self.teacher)
        self.stage1 = PQCADConfig(
            bits=(a.bits,),
            schedule="fixed",
            ptq_method=a.init_ptq,
            steps=a.steps,
            stage1_cap=max(1, a.steps),
            batch_size=a.batch_size,
            lr_quant=a.lr_quant,
            save_every=10**9,
        )

    def calib(self, name: str, trajectories: int, seed: int) -> CalibSet:
        steps, points = (10, 10) if self.a.quick else (100, 50)
        collect = dict(n_trajectories=trajectories, steps=steps, n_points=points, seed=seed, batch_size=256)
        return load_or_collect_calib(self.a.work / name, self.teacher, self.spec, self.dev, collect)

    def sample(self, model: torch.nn.Module) -> torch.Tensor:
        sched = lambda: make_scheduler("ddim", **self.spec.scheduler)  # noqa: E731
        a, shape = self.a, self.spec.sample_shape
        return sample_many(
            TorchDenoiser(model), sched, a.n, shape, a.eval_steps, 1000, 0, self.dev, progress=False
        )

    def score(self, model: torch.nn.Module, **row: Any) -> dict[str, Any]:
        imgs = self.sample(model)
        row["eps_mse_heldout"] = eps_mse(model, self.val_cs, self.val_idx, self.dev)
        row["fd"] = fd_fmnist(imgs, device=self.dev)
        if model is not self.teacher:
            row["eps_mse_train"] = eps_mse(model, self.train_cs, self.train_idx, self.dev)
            row.update({f"{k}_vs_fp": v for k, v in fidelity(imgs, self.fp_images).items()})
        log.info("%s", row)
        return row

    def train(self, lr: float) -> tuple[torch.nn.Module, float]:
        a = self.a
        cfg = dataclasses.replace(self.stage1, lr=lr)
        out = a.work / f"lr_sweep_{a.bits}_{lr:g}.pt"
        t0 = time.perf_counter()
        train_pqcad(
            cfg, self.teacher, self.spec, self.train_cs, out, device=str(self.dev), progress=not a.quick
        )
        return open_model(out).model.to(self.dev), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    sweep = Sweep(a)
    rows = [sweep.score(sweep.teacher, lr=None, label="FP")]
    # the PTQ model every run starts from (the one PTQ path, as the trainer's own initialisation)
    qcfg = sweep.stage1.quant_config(parse_bits(a.bits))
    ptq, _ = ptq_student(sweep.teacher, qcfg, sweep.train_cs, sweep.dev)
    rows.append(sweep.score(ptq, lr=None, label=f"PTQ {a.init_ptq}"))
    for lr in a.lrs:
        model, secs = sweep.train(lr)
        rows.append(sweep.score(model, lr=lr, label=f"lr {lr:g}", train_s=round(secs, 1)))
    best = min((r for r in rows if r["lr"]), key=lambda r: r["eps_mse_heldout"])
    print_sweep(rows, a)
    print(f"pick (lowest held-out eps-MSE): --lr {best['lr']:g}")
    date = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}{'_quick' if a.quick else ''}"
    out = a.out or RESULTS / f"pqcad_lr_sweep_{date}.json"
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    atomic_json_save(
        {"environment": environment_info(), "args": args, "rows": rows, "pick_lr": best["lr"]}, out
    )
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
