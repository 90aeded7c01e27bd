"""Weight learning-rate sweep for PQCAD stage 1 (W8A8 from PTQ) before the full table.

The PQCAD defaults (``--lr 1e-5`` for weights) were set while the trainer only trained step sizes (fixed in
0419f19); this sweep checks them with weight training (2026-11-23, H100: 1e-5 kept, 1e-4 diverges). It trains the common stage 1 (fixed-schedule W8A8,
PTQ-initialised, CAD loss) once per weight LR and scores each student on
  - eps-MSE vs FP on the training calibration points and on held-out trajectories (another noise seed), and
  - fidelity to the FP teacher (PSNR, rel-L2) and FD-fmnist on ``--n`` samples from the same noise.
The table's pick is the LR with the lowest held-out eps-MSE.

    python benchmarks/pqcad_lr_sweep.py --lrs 1e-5 3e-5 1e-4 --steps 400          # H100, ~4 min
    python benchmarks/pqcad_lr_sweep.py --quick                                     # CPU smoke, tiny model
Writes benchmarks/results/pqcad_lr_sweep_<UTC date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from pathlib import Path

import torch
from pqcad_table import RESULTS, _fd, _fidelity

from pqcad_deploy.calibset import eps_mse
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.sampling import make_scheduler, sample_many
from pqcad_deploy.student import load_student
from pqcad_deploy.train.pqcad import load_or_collect_calib, load_teacher, train_pqcad
from pqcad_deploy.train.pqcad_config import PQCADConfig
from pqcad_deploy.zoo import TEACHER_PATH

log = logging.getLogger("pqcad_lr_sweep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=str(TEACHER_PATH))
    p.add_argument("--work", type=Path, default=Path("runs/pqcad_table"), help="calib set and students")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4])
    p.add_argument("--lr-quant", type=float, default=PQCADConfig.lr_quant)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--bits", default="w8a8")
    p.add_argument("--init-ptq", default="percentile", choices=("maxabs", "percentile", "mse"))
    p.add_argument("--n", type=int, default=2000, help="samples for fidelity and FD")
    p.add_argument("--eval-steps", type=int, default=50)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--quick", action="store_true", help="CPU smoke test: tiny random model, tiny budgets")
    a = p.parse_args(argv)
    if a.quick:
        a.teacher, a.steps, a.batch_size, a.n, a.eval_steps = "tiny-unet", 6, 8, 16, 4
        a.lrs, a.init_ptq, a.work = [1e-5, 1e-3], "maxabs", Path("runs/pqcad_lr_sweep_quick")
    return a


def print_sweep(rows: list[dict], a: argparse.Namespace) -> None:
    print(
        f"\nPQCAD stage-1 weight-LR sweep: {a.bits}, {a.steps} steps x batch {a.batch_size}, {a.n} samples @{a.eval_steps} DDIM steps"
    )
    print(f"{'':<16}{'eps-MSE train':>14}{'held-out':>11}{'FD':>8}{'PSNR':>8}{'relL2':>8}{'train s':>9}")
    for r in rows:
        cells = [
            r.get("eps_mse_train"),
            r.get("eps_mse_heldout"),
            r.get("fd"),
            r.get("psnr_vs_fp"),
            r.get("rel_l2_vs_fp"),
            r.get("train_s"),
        ]
        fmts = [".3e", ".3e", ".3f", ".2f", ".4f", ".1f"]
        widths = [14, 11, 8, 8, 8, 9]
        print(
            f"{r['label']:<16}"
            + "".join(
                format(v, f).rjust(w) if v is not None else "-".rjust(w)
                for v, f, w in zip(cells, fmts, widths, strict=True)
            )
        )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher, spec = load_teacher(a.teacher)
    teacher.to(dev).eval()
    a.work.mkdir(parents=True, exist_ok=True)
    # the table's calibration set (same settings and seed) and a held-out one from other noise
    steps, points = (10, 10) if a.quick else (100, 50)

    def calib(name: str, trajectories: int, seed: int):
        collect = dict(n_trajectories=trajectories, steps=steps, n_points=points, seed=seed, batch_size=256)
        return load_or_collect_calib(a.work / name, teacher, spec, dev, collect)

    train_cs = calib("calib.safetensors", 8 if a.quick else 256, 1234)
    val_cs = calib("calib_heldout.safetensors", 4 if a.quick else 32, 4321)
    g = torch.Generator().manual_seed(99)
    train_idx = torch.randperm(train_cs.x_t.shape[0], generator=g)[:2048]
    val_idx = torch.arange(val_cs.x_t.shape[0])

    def sample(model) -> torch.Tensor:
        return sample_many(
            TorchDenoiser(model),
            lambda: make_scheduler("ddim", **spec.scheduler),
            a.n,
            spec.sample_shape,
            a.eval_steps,
            batch_size=1000,
            seed=0,
            device=dev,
            progress=False,
        )

    fp_imgs = sample(teacher)
    rows = [
        {
            "lr": None,
            "label": "FP",
            "fd": _fd(fp_imgs, dev),
            "eps_mse_heldout": eps_mse(teacher, val_cs, val_idx, dev),
        }
    ]
    for lr in [0.0, *a.lrs]:  # lr 0: the PTQ init alone (no training), the point the sweep starts from
        cfg = PQCADConfig(
            bits=(a.bits,),
            schedule="fixed",
            ptq_method=a.init_ptq,
            steps=0 if lr == 0.0 else a.steps,
            stage1_cap=max(1, a.steps),
            batch_size=a.batch_size,
            lr=lr,
            lr_quant=a.lr_quant,
            save_every=10**9,
        )
        out = a.work / f"lr_sweep_{a.bits}_{'ptq' if lr == 0.0 else f'{lr:g}'}.pt"
        t0 = time.perf_counter()
        train_pqcad(cfg, teacher, spec, train_cs, out, device=str(dev), progress=not a.quick)
        train_s = time.perf_counter() - t0
        model = load_student(out, device=dev)[0]
        imgs = sample(model)
        row = {
            "lr": lr or None,
            "label": f"PTQ {a.init_ptq}" if lr == 0.0 else f"lr {lr:g}",
            "train_s": round(train_s, 1),
            "eps_mse_train": eps_mse(model, train_cs, train_idx, dev),
            "eps_mse_heldout": eps_mse(model, val_cs, val_idx, dev),
            "fd": _fd(imgs, dev),
            **{f"{k}_vs_fp": v for k, v in _fidelity(imgs, fp_imgs).items()},
        }
        rows.append(row)
        log.info("%s", row)
    trained = [r for r in rows if r["lr"]]
    best = min(trained, key=lambda r: r["eps_mse_heldout"])
    print_sweep(rows, a)
    print(f"pick (lowest held-out eps-MSE): --lr {best['lr']:g}")
    from pqcad_deploy.timing import environment_info

    out = (
        a.out
        or RESULTS
        / f"pqcad_lr_sweep_{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}{'_quick' if a.quick else ''}.json"
    )
    atomic_json_save(
        {
            "environment": environment_info(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "rows": rows,
            "pick_lr": best["lr"],
        },
        out,
    )
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
