"""Timestep-aware PTQ against single-set PTQ: K activation-range sets, per-interval and progressive calibration.

Every row calibrates on the same DDIM rollouts (``--trajectories`` x the ``--steps`` sampler, same noise) with the
same estimator, so the rows differ only in how many range sets there are and which trajectory interval k is
calibrated on (FP, or progressive: earlier intervals already quantized). Scored by fidelity to the FP teacher on the
same noise (PSNR, rel-L2 of the final images; PCR's fidelity-to-FP idea) over several noise seeds. No latency is
reported: per-interval engines (one ONNX per interval, switched by timestep) are not built yet.

    python benchmarks/interval_ptq.py --bits w8a8 w4a8 --ks 1 4 --n 32 --trajectories 32     # CPU, ~20 min
    python benchmarks/interval_ptq.py --quick                                                  # tiny model smoke
Writes benchmarks/results/interval_ptq_<UTC date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import open_model
from pqcad_deploy.metrics import fidelity
from pqcad_deploy.quant import QuantConfig, parse_bits
from pqcad_deploy.quant.config import CALIB_METHODS
from pqcad_deploy.sampling import make_scheduler, sample_many
from pqcad_deploy.timing import environment_info
from pqcad_deploy.train.ptq_intervals import interval_ptq
from pqcad_deploy.zoo import TEACHER_PATH

log = logging.getLogger("interval_ptq")
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=str(TEACHER_PATH), help="FP model (file or zoo name)")
    p.add_argument("--bits", nargs="+", default=["w8a8", "w4a8"])
    p.add_argument("--ks", type=int, nargs="+", default=[1, 4], help="numbers of intervals (1: single set)")
    p.add_argument("--method", choices=CALIB_METHODS, default="mse")
    p.add_argument(
        "--steps", type=int, default=50, help="DDIM steps of the sampler (calibration and scoring)"
    )
    p.add_argument("--trajectories", type=int, default=32, help="calibration rollouts")
    p.add_argument("--n", type=int, default=32, help="images per noise seed")
    p.add_argument("--noise-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="tiny random model, a few steps (CPU smoke)")
    a = p.parse_args(argv)
    if a.quick:
        a.teacher, a.steps, a.trajectories, a.n, a.ks, a.bits = "tiny-unet", 6, 4, 4, [1, 3], ["w8a8"]
    return a


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    teacher = open_model(a.teacher)
    spec, fp = teacher.spec, teacher.model.eval()

    def images(model: torch.nn.Module, seed: int) -> torch.Tensor:
        sched = lambda: make_scheduler("ddim", **spec.scheduler)  # noqa: E731
        return sample_many(
            TorchDenoiser(model), sched, a.n, spec.sample_shape, a.steps, a.n, seed, progress=False
        )

    ref = {s: images(fp, 1000 + s) for s in a.noise_seeds}
    rows: list[dict[str, Any]] = []
    for bits in a.bits:
        w, b = parse_bits(bits)
        qcfg = QuantConfig(weight_bits=w, act_bits=b, calib_method=a.method)
        for k in a.ks:
            for progressive in [False] if k == 1 else [False, True]:
                label = (
                    "single set" if k == 1 else f"K={k} {'progressive' if progressive else 'per-interval'}"
                )
                t0 = time.perf_counter()
                model, entry = interval_ptq(
                    fp, spec, qcfg, k, a.steps, a.trajectories, progressive, progress=False
                )
                calib_s = time.perf_counter() - t0
                runs = [fidelity(images(model, 1000 + s), ref[s]) for s in a.noise_seeds]
                row = {
                    "bits": bits,
                    "k": k,
                    "progressive": progressive,
                    "label": label,
                    "calib_s": round(calib_s, 1),
                }
                for key in ("psnr_db", "rel_l2"):
                    vals = [r[key] for r in runs]
                    row[key], row[f"{key}_spread"] = float(np.mean(vals)), float((max(vals) - min(vals)) / 2)
                row.update(runs=runs, intervals=entry["intervals"], points=entry["points_per_interval"])
                rows.append(row)
                log.info("%s %s: PSNR %.2f dB, rel-L2 %.4f", bits, label, row["psnr_db"], row["rel_l2"])
    print(f"\ntimestep-aware PTQ, {a.teacher}, DDIM {a.steps}, {a.method}, {a.trajectories} calibration rollouts, "
          f"{a.n} images x noise seeds {a.noise_seeds}, fidelity to FP on the same noise")  # fmt: skip
    print(f"{'bits':<6}{'row':<26}{'PSNR dB':>16}{'rel-L2':>18}{'calib s':>10}")
    for r in rows:
        print(f"{r['bits']:<6}{r['label']:<26}{r['psnr_db']:>10.2f}+-{r['psnr_db_spread']:.2f}"
              f"{r['rel_l2']:>12.4f}+-{r['rel_l2_spread']:.4f}{r['calib_s']:>10.1f}")  # fmt: skip
    date = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}{'_quick' if a.quick else ''}"
    out = a.out or RESULTS / f"interval_ptq_{date}.json"
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    atomic_json_save({"environment": environment_info(), "args": args, "rows": rows}, out)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
