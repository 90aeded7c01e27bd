"""Step halving where it pays (issue 19 item 3): FP teacher at S DDIM steps -> W8A8 student at S/2 -> W8A8 student
at S/4, each round distilling the previous model's two steps into one (progressive distillation), against the FP
teacher and the un-halved W8A8 student simply run at S, S/2 and S/4.

Round 1 trains on the teacher's S-step calibration set with ``halve_steps`` (``x_next2`` holds two of its steps);
round k > 1 collects its calibration set from round k-1's student at its own S/2^(k-1) steps and starts from that
student's weights (``init_student``), so each round learns two steps of the previous one. The un-halved student
trains on round 1's set for the same number of steps. Every model samples from the same noise for every
``--noise-seeds``; reported per (model, steps): FD-fmnist and PSNR / rel-L2 to the FP teacher at S steps. The same
chain from the CLI: ``pqcad-train calib --teacher STUDENT --calib-steps S/2`` and ``pqcad-train pqcad
--init-student STUDENT --calib THAT --halve-steps``.

    python benchmarks/halving_chain.py --steps 20 --rounds 2 --train-steps 400 --n-samples 10000 --noise-seeds 0 1
    python benchmarks/halving_chain.py ... --target onnxruntime    # students in the ORT placement (CPU INT8 form)
    python benchmarks/halving_chain.py --quick          # CPU smoke run on the tiny random model
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy.cli.common import refuse_bad_outputs
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.images import save_grid
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import open_model
from pqcad_deploy.metrics import fd_fmnist, fidelity, over_seeds
from pqcad_deploy.quant.config import TARGETS
from pqcad_deploy.sampling import make_scheduler, sample_many
from pqcad_deploy.timing import environment_info
from pqcad_deploy.train.calib import load_or_collect_calib
from pqcad_deploy.train.pqcad import train_pqcad
from pqcad_deploy.train.pqcad_config import PQCADConfig
from pqcad_deploy.zoo import TEACHER_PATH

log = logging.getLogger("halving_chain")
RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path("runs/halving_chain")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--teacher", default=str(TEACHER_PATH), help="FP teacher (.safetensors + .json) or zoo name")
    add("--work", type=Path, default=WORK, help="students and calibration sets")
    add("--out", type=Path, default=None, help="JSON (default results/halving_chain_<date>.json)")
    add("--steps", type=int, default=20, help="the teacher's DDIM steps S")
    add("--rounds", type=int, default=2, help="halvings: S -> S/2 -> ... -> S/2^rounds")
    add("--bits", default="w8a8")
    add(
        "--target",
        choices=TARGETS,
        default="tensorrt",
        help="quantizer placement the students train in (onnxruntime: the fast CPU INT8 form)",
    )
    add(
        "--train-steps",
        type=int,
        default=400,
        help="optimizer steps per round (and for the un-halved student)",
    )
    add("--batch-size", type=int, default=128)
    add("--lr", type=float, default=PQCADConfig.lr)
    add("--calib-trajectories", type=int, default=128)
    add("--seed", type=int, default=0, help="training seed")
    add("--n-samples", type=int, default=10000, help="images per (model, steps, noise seed)")
    add("--noise-seeds", type=int, nargs="+", default=[0, 1])
    add("--eval-batch", type=int, default=1000)
    add("--device", default=None)
    add("--reuse", action="store_true", help="use students already in --work instead of training them again")
    add("--quick", action="store_true", help="CPU smoke run: tiny random model, tiny budgets")
    a = p.parse_args(argv)
    refuse_bad_outputs(p, {"--out": a.out})
    if a.quick:
        a.teacher = "tiny-unet" if a.teacher == str(TEACHER_PATH) else a.teacher
        a.steps, a.rounds, a.train_steps, a.batch_size, a.calib_trajectories = 8, 2, 4, 4, 4
        a.n_samples, a.eval_batch, a.device = 16, 16, a.device or "cpu"
        a.work = a.work.with_name(a.work.name + "_quick") if a.work == WORK else a.work
    if a.rounds < 1 or a.steps % (2**a.rounds):
        p.error(f"--steps {a.steps} must be divisible by 2^--rounds = {2**a.rounds}")
    return a


def collect(model: torch.nn.Module, spec, steps: int, path: Path, a, dev) -> Any:
    """The calibration set of ``model``'s own ``steps``-step trajectories, saved at ``path``; a set left there by an
    earlier run is reused only with ``--reuse`` (its model may since have been trained again)."""
    if not a.reuse:
        for f in (path, path.with_suffix(".json")):
            f.unlink(missing_ok=True)
    kw = {
        "n_trajectories": a.calib_trajectories,
        "steps": steps,
        "n_points": steps,
        "batch_size": 256,
        "seed": 0,
    }
    return load_or_collect_calib(path, model, spec, dev, kw, progress=False)


def train_chain(a: argparse.Namespace, teacher, spec, dev) -> tuple[dict[str, tuple[Path, int]], float]:
    """{row name: (student file, the DDIM steps it is meant for)} and the training seconds of all rounds."""
    cfg = PQCADConfig(bits=(a.bits,), schedule="fixed", steps=a.train_steps, stage1_cap=a.train_steps,
                      batch_size=a.batch_size, lr=a.lr, seed=a.seed, save_every=max(100, a.train_steps // 4),
                      target=a.target)  # fmt: skip
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    calib = collect(teacher, spec, a.steps, a.work / f"calib_fp_{a.steps}.safetensors", a, dev)
    rows = {"unhalved": (a.work / "unhalved.safetensors", a.steps)}

    def train(c: PQCADConfig, calib, out: Path, init=None) -> None:
        if a.reuse and out.exists():
            log.info("reuse %s (--reuse)", out)
        else:
            train_pqcad(c, teacher, spec, calib, out, device=str(dev), progress=False, init_student=init)

    train(cfg, calib, rows["unhalved"][0])
    prev: Path | None = None
    for k in range(1, a.rounds + 1):
        out, steps = a.work / f"halved{k}.safetensors", a.steps // 2**k
        init = None
        if prev is not None:
            student = open_model(prev).model.to(dev)
            calib = collect(student, spec, 2 * steps, a.work / f"calib_round{k}.safetensors", a, dev)
            init = (student, str(prev))
        train(dataclasses.replace(cfg, halve_steps=True), calib, out, init)
        rows[f"halved x{k}"] = (out, steps)
        prev = out
    return rows, time.perf_counter() - t0


def evaluate(
    name: str, model, spec, steps: int, a, dev, ref: dict[int, torch.Tensor] | None
) -> tuple[dict[str, Any], dict[int, torch.Tensor]]:
    """(row, images per noise seed): FD-fmnist and fidelity to ``ref`` (the FP teacher at S steps); one grid."""
    den = TorchDenoiser(model.to(dev).eval())
    runs, images = [], {}
    for seed in a.noise_seeds:
        imgs = sample_many(den, lambda: make_scheduler("ddim", **spec.scheduler), a.n_samples, spec.sample_shape,
                           steps, a.eval_batch, seed=seed, device=dev, progress=False).cpu()  # fmt: skip
        run = {"noise_seed": seed, "fd_fmnist": fd_fmnist(imgs, device=dev)}
        if ref is not None:
            run.update({f"{k}_vs_fp": v for k, v in fidelity(imgs, ref[seed]).items()})
        runs.append(run)
        images[seed] = imgs
    save_grid(images[a.noise_seeds[0]][:64], a.grids / f"{name.replace(' ', '_')}_{steps}.png")
    row = {"model": name, "steps": steps, **over_seeds(runs, ["fd_fmnist"]), "runs": runs}
    if ref is not None:
        row.update(over_seeds(runs, ["psnr_db_vs_fp"]))
    log.info("%s @%d: FD %.3f +- %.3f", name, steps, row["fd_fmnist"], row["fd_fmnist_spread"])
    return row, images


def print_table(rows: list[dict[str, Any]], fp_at_s: float) -> None:
    print(f"{'model':16s} {'steps':>5s} {'FD-fmnist':>17s} {'vs FP@S':>8s} {'PSNR to FP@S dB':>17s}")
    for r in rows:
        psnr = f"{r['psnr_db_vs_fp']:.2f} +- {r['psnr_db_vs_fp_spread']:.2f}" if "psnr_db_vs_fp" in r else "-"
        rel = f"{100 * (r['fd_fmnist'] / fp_at_s - 1):+.1f}%"
        print(f"{r['model']:16s} {r['steps']:5d} {r['fd_fmnist']:8.3f} +- {r['fd_fmnist_spread']:6.3f} "
              f"{rel:>8s} {psnr:>17s}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bundle = open_model(a.teacher)
    teacher, spec = bundle.model.to(dev), bundle.spec
    out = a.out or RESULTS / f"halving_chain_{time.strftime('%Y-%m-%d')}{'_quick' if a.quick else ''}.json"
    a.grids = out.with_name(out.stem + "_grids")
    a.grids.mkdir(parents=True, exist_ok=True)
    students, train_s = train_chain(a, teacher, spec, dev)
    counts = [a.steps // 2**k for k in range(a.rounds + 1)]
    fp_row, ref = evaluate("FP", teacher, spec, a.steps, a, dev, None)
    rows = [fp_row] + [evaluate("FP", teacher, spec, s, a, dev, ref)[0] for s in counts[1:]]
    unhalved = open_model(students["unhalved"][0]).model
    rows += [evaluate(f"{a.bits} unhalved", unhalved, spec, s, a, dev, ref)[0] for s in counts]
    for name, (path, steps) in students.items():
        if name != "unhalved":
            rows.append(evaluate(f"{a.bits} {name}", open_model(path).model, spec, steps, a, dev, ref)[0])
    doc = {"command": " ".join(["python", "benchmarks/halving_chain.py", *(argv or sys.argv[1:])]),
           "environment": environment_info(), "args": {k: str(v) for k, v in vars(a).items()},
           "train_seconds": round(train_s, 1), "students": {k: str(p) for k, (p, _) in students.items()},
           "rows": rows}  # fmt: skip
    atomic_json_save(doc, out)
    print_table(rows, rows[0]["fd_fmnist"])
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
