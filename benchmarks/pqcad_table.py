"""PQCAD quality table: FP / PTQ (best) / fixed-bit QAT / PQ alone / PQ+CAD / PQ+CAD+halving at W8A8 and W4A8.

Everything starts from the shipped teacher (``pqcad_deploy/assets/fmnist_ddpm.safetensors``) and one FP
calibration set collected once. Training runs share work: one progressive stage 1 (W8A8, PTQ-initialised,
momentum switch) is trained once, and every stage-2 variant branches from its end-of-stage-1 checkpoint
(``pqcad-train pqcad --resume <..._stage1.pt>``). All variants get the same total step budget; the fixed-bit
QAT baseline trains that whole budget straight at W4A8. Rows:

  W8A8: FP | PTQ (best of maxabs/percentile/mse, picked by eps-MSE on calibration points) |
        PQCAD W8A8 (the trained stage 1) | PQCAD W8A8 + step halving (stage 2 kept at W8A8, halving targets)
  W4A8: PTQ | fixed-bit QAT | PQ alone (stage-2 teacher = frozen W8A8 model, no FP anchor) |
        PQ+CAD (teacher + FP anchor) | PQ+CAD+halving | PQ+CAD (FP teacher: stage 2 distils from the FP model)

Each model is sampled with DDIM at 100 and 50 steps (step-halved students at the count they were trained
for) from the same seeded noise; reported: FD in the Fashion-MNIST classifier's feature space
(``metrics.fd_fmnist``, not Inception FID), fidelity to the FP images from the same noise (PSNR, rel-L2),
and GPU training time. The sample count adapts to ``--eval-budget-s`` (measured throughput) unless
``--n-samples`` is forced; it is the same for every row.

Run on one H100 (budgeted for <= 9 minutes: 800 steps x batch 128 per variant, adaptive N in 150 s of sampling;
rows still pending after --deadline-s 540 are skipped and listed in the JSON):
    python benchmarks/pqcad_table.py
    python benchmarks/pqcad_table.py --init-ptq percentile --lr 1e-5 --n-samples 10000 --seeds 0 1 --deadline-s 0
                                                                     # full protocol (~50 min)
Split across machines: ``--skip-ptq`` (rows of one seed only), ``--branches`` (a subset of the trained rows), then
``--merge a.json b.json ... --out pqcad_table.json`` prints and writes the combined table.
CPU smoke test (tiny random model, 2-10 min on 2 shared cores):  python benchmarks/pqcad_table.py --quick
Writes benchmarks/results/pqcad_table_<UTC date>.json and sample grids under benchmarks/results/pqcad_grids/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pqcad_deploy.calibset import eps_mse
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.images import save_grid
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.metrics import fd_fmnist, fidelity
from pqcad_deploy.sampling import make_scheduler, sample_many
from pqcad_deploy.train.pqcad import load_or_collect_calib, load_teacher, train_pqcad
from pqcad_deploy.train.pqcad_config import PQCADConfig
from pqcad_deploy.zoo import TEACHER_PATH

log = logging.getLogger("pqcad_table")
RESULTS = Path(__file__).resolve().parent / "results"
PTQ_METHODS = ("maxabs", "percentile", "mse")
BRANCHES = ("pq", "qat", "w8a8", "half_w8a8", "half_w4a8", "fp_teacher", "pq_alone")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=str(TEACHER_PATH))
    p.add_argument(
        "--calib", default=None, help="calibration set; default <work>/calib.safetensors (collected once)"
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("runs/pqcad_table"),
        help="students, checkpoints, calib set (gitignored)",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON (default results/pqcad_table_<date>.json)")
    p.add_argument("--calib-trajectories", type=int, default=256)
    p.add_argument("--calib-steps", type=int, default=100, help="DDIM steps of the calibration trajectories")
    p.add_argument("--calib-points", type=int, default=50, help="points per trajectory (at most steps/2)")
    p.add_argument("--train-steps", type=int, default=800, help="total optimizer steps per trained variant")
    p.add_argument("--stage1-cap", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=PQCADConfig.lr)
    p.add_argument("--lr-quant", type=float, default=PQCADConfig.lr_quant)
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="training seeds (mean and spread if > 1)"
    )
    p.add_argument("--eval-steps", type=int, nargs="+", default=[100, 50])
    p.add_argument(
        "--n-samples", type=int, default=0, help="images per row (0: fit --eval-budget-s, max 10000)"
    )
    p.add_argument(
        "--eval-budget-s", type=float, default=150.0, help="GPU seconds for all sampling (adaptive N)"
    )
    p.add_argument("--eval-batch", type=int, default=1000)
    p.add_argument("--grid", type=int, default=64, help="images per sample grid")
    p.add_argument("--ptq-methods", nargs="+", default=list(PTQ_METHODS), choices=PTQ_METHODS)
    p.add_argument("--init-ptq", default="mse", choices=PTQ_METHODS, help="PTQ init of the trained variants")
    p.add_argument(
        "--deadline-s", type=float, default=540.0, help="skip the remaining rows after this (0: none)"
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="use students already in --work instead of retraining (finish a run cut by --deadline-s)",
    )
    p.add_argument(
        "--branches",
        nargs="+",
        default=list(BRANCHES),
        choices=BRANCHES,
        help="rows per seed, trained in this order; pq = PQ+CAD W4A8 (always trained: the others branch from its stage 1)",
    )
    p.add_argument(
        "--skip-ptq", action="store_true", help="no PTQ rows (e.g. a second lease that only adds a seed)"
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="combine table JSONs of separate runs (same protocol) into --out and print the table; no GPU work",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--quick", action="store_true", help="CPU smoke test: tiny random model, tiny budgets")
    args = p.parse_args(argv)
    if args.quick:
        args.teacher = "tiny-unet" if args.teacher == str(TEACHER_PATH) else args.teacher
        args.calib_trajectories, args.calib_steps, args.calib_points = 8, 10, 10
        args.train_steps, args.stage1_cap, args.batch_size = 8, 4, 8
        args.eval_steps, args.n_samples, args.eval_batch, args.grid = [10, 4], 16, 16, 16
        args.ptq_methods, args.init_ptq, args.deadline_s = ["maxabs", "mse"], "maxabs", 0.0
        args.work = args.work.with_name(args.work.name + "_quick")
    if args.skip_ptq and not args.n_samples:
        p.error("--skip-ptq needs --n-samples (the adaptive N is measured on a PTQ model)")
    return args


def _fd(images: torch.Tensor, device: torch.device) -> float | None:
    """FD-fmnist; tiny test models (16x16) are padded to the classifier's 32x32. None if it cannot be computed."""
    if images.shape[-1] != 32:
        images = F.interpolate(images, size=(32, 32), mode="nearest")
    if images.shape[1] != 1:
        images = images[:, :1]
    try:
        return float(fd_fmnist(images, device=device))
    except Exception as e:  # classifier asset missing etc.: keep the rest of the table
        log.warning("FD failed: %s", e)
        return None


def _fidelity(a: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    return {("psnr" if k == "psnr_db" else k): float(v) for k, v in fidelity(a, ref).items()}


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.teacher, self.spec = load_teacher(args.teacher)
        self.teacher.to(self.dev)
        args.work.mkdir(parents=True, exist_ok=True)
        self.grids = RESULTS / ("pqcad_grids_quick" if args.quick else "pqcad_grids")
        self.grids.mkdir(parents=True, exist_ok=True)
        self.fp_images: dict[int, torch.Tensor] = {}
        self.rows: list[dict[str, Any]] = []
        self.n = args.n_samples
        self.skipped: list[str] = []

    # -- building blocks ------------------------------------------------------------------------------------
    def calib(self):
        a = self.args
        path = a.calib or a.work / "calib.safetensors"
        t0 = time.perf_counter()
        collect = dict(
            n_trajectories=a.calib_trajectories,
            steps=a.calib_steps,
            n_points=a.calib_points,
            seed=1234,
            batch_size=256,
        )
        self.cs = load_or_collect_calib(path, self.teacher, self.spec, self.dev, collect)
        self.calib_s = time.perf_counter() - t0
        g = torch.Generator().manual_seed(99)
        self.probe_idx = torch.randperm(self.cs.x_t.shape[0], generator=g)[:2048]

    def cfg(self, seed: int, **kw) -> PQCADConfig:
        a = self.args
        base = dict(
            steps=a.train_steps,
            stage1_cap=a.stage1_cap,
            batch_size=a.batch_size,
            lr=a.lr,
            lr_quant=a.lr_quant,
            seed=seed,
            ptq_method=a.init_ptq,
            save_every=max(100, a.train_steps // 4),
        )
        return PQCADConfig(**{**base, **kw})

    def train(self, name: str, cfg: PQCADConfig, resume: Path | None = None) -> Path:
        out = self.args.work / f"{name}.pt"
        if self.args.reuse and out.exists():
            log.info("=== reuse %s (--reuse)", out)
            return out
        log.info("=== train %s", name)
        train_pqcad(
            cfg, self.teacher, self.spec, self.cs, out, resume=resume, device=str(self.dev), progress=True
        )
        return out

    def eps_mse(self, model) -> float:
        return eps_mse(model, self.cs, self.probe_idx, self.dev)

    def load(self, path: Path):
        from pqcad_deploy.student import load_student

        model, _, _, meta = load_student(path, device=self.dev)
        return model, meta

    def generate(self, model, steps: int) -> tuple[torch.Tensor, float]:
        a = self.args
        sync = torch.cuda.synchronize if self.dev.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        imgs = sample_many(
            TorchDenoiser(model),
            lambda: make_scheduler("ddim", **self.spec.scheduler),
            self.n,
            self.spec.sample_shape,
            steps,
            batch_size=a.eval_batch,
            seed=0,
            device=self.dev,
            progress=True,
        )
        sync()
        return imgs, time.perf_counter() - t0

    def pick_n(self, fq_model) -> None:
        """Measure one fake-quant denoiser call at the eval batch and fit N into the eval budget."""
        if self.n:
            return
        a = self.args
        x = torch.randn(a.eval_batch, *self.spec.sample_shape, device=self.dev)
        t = torch.full((a.eval_batch,), 500, device=self.dev, dtype=torch.int64)
        den = TorchDenoiser(fq_model)
        den(x, t)
        sync = torch.cuda.synchronize if self.dev.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            den(x, t)
        sync()
        per_img_step = (time.perf_counter() - t0) / 3 / a.eval_batch
        img_steps = 9 * sum(a.eval_steps)  # ~9 models at each step count (upper bound)
        n = int(a.eval_budget_s / (per_img_step * img_steps))
        self.n = max(500, min(10000, n // 500 * 500))
        log.info(
            "fake-quant: %.3f ms/img/step -> %d samples per row fit %.0fs",
            per_img_step * 1e3,
            self.n,
            a.eval_budget_s,
        )

    def evaluate(self, row: dict[str, Any], model, steps_list: list[int]) -> None:
        for steps in steps_list:
            imgs, secs = self.generate(model, steps)
            res = {"steps": steps, "fd": _fd(imgs, self.dev), "sample_s": round(secs, 2)}
            if row["variant"] == "FP":
                self.fp_images[steps] = imgs
            else:
                ref_steps = steps if steps in self.fp_images else max(self.fp_images)
                res.update({f"{k}_vs_fp": v for k, v in _fidelity(imgs, self.fp_images[ref_steps]).items()})
                res["fp_ref_steps"] = ref_steps
            seed = "" if row.get("seed") is None else f"_s{row['seed']}"
            tag = re.sub(
                r"[^A-Za-z0-9_-]", "", f"{row['variant']}_{row['bits']}{seed}_{steps}".replace("+", "-")
            )
            save_grid(imgs[: self.args.grid], self.grids / f"{tag}.png")
            row.setdefault("evals", []).append(res)
            log.info("%s %s @%d steps: FD %s", row["variant"], row["bits"], steps, res["fd"])

    def add(self, variant: str, bits: str, path: Path | None, seed: int | None = None, **extra) -> None:
        row: dict[str, Any] = {"variant": variant, "bits": bits, "seed": seed, **extra}
        if path is None:
            model, steps = self.teacher.eval(), self.args.eval_steps
        else:
            model, meta = self.load(path)
            row["train_time_s"] = meta.get("train_time_s")
            row["history"] = [h for h in meta.get("history", []) if h.get("event") in ("switch", "ptq_init")]
            row["trained_sampler_steps"] = meta["sampling"].get("steps")
            halved = meta.get("pqcad", {}).get("halve_steps") and meta["sampling"].get("steps")
            steps = [meta["sampling"]["steps"]] if halved else self.args.eval_steps
            row["eps_mse"] = self.eps_mse(model)
            self.pick_n(model)
        self.evaluate(row, model, steps)
        self.rows.append(row)
        self.save()

    # -- the table -----------------------------------------------------------------------------------------
    def run(self) -> None:
        self.t0 = time.perf_counter()
        self.calib()
        a = self.args
        ptq_choice = {} if a.skip_ptq else self.select_ptq()
        self.ptq_choice = ptq_choice
        # FP first: it is the fidelity reference (N is fixed from a fake-quant throughput probe)
        if not self.n:
            self.pick_n(self.load(a.work / f"ptq_w8a8_{ptq_choice['w8a8']['best']}.pt")[0])
        self.add("FP", "fp32", None)
        for bits, choice in ptq_choice.items():
            self.add("PTQ", bits, a.work / f"ptq_{bits}_{choice['best']}.pt", method=choice["best"])
        for seed in a.seeds:
            s = f"s{seed}"
            # stage 1 + PQ+CAD stage 2 (the default recipe); every other PQ variant branches from its stage 1
            pq = self.train(f"pq_{s}", self.cfg(seed))
            stage1 = a.work / f"pq_{s}_train_stage1.pt"
            if "pq" in a.branches:
                self.add("PQ+CAD", "w4a8", pq, seed)
            # branch key: (row variant, bits, student name, config, resume from)
            jobs = {
                "qat": (
                    "fixed-bit QAT",
                    "w4a8",
                    f"qat_w4a8_{s}",
                    self.cfg(seed, bits=("w4a8",), schedule="fixed"),
                    None,
                ),
                "w8a8": (
                    "PQCAD",
                    "w8a8",
                    f"pq_w8a8_{s}",
                    self.cfg(seed, bits=("w8a8",), steps=_step_of(stage1)),
                    stage1,
                ),
                "half_w8a8": (
                    "PQCAD+halving",
                    "w8a8",
                    f"pqcad_half_w8a8_{s}",
                    self.cfg(seed, bits=("w8a8", "w8a8"), halve_steps=True),
                    stage1,
                ),
                "half_w4a8": (
                    "PQ+CAD+halving",
                    "w4a8",
                    f"pqcad_half_w4a8_{s}",
                    self.cfg(seed, halve_steps=True),
                    stage1,
                ),
                "fp_teacher": (
                    "PQ+CAD (FP teacher)",
                    "w4a8",
                    f"pq_fpteacher_{s}",
                    self.cfg(seed, teacher_kind="fp"),
                    stage1,
                ),
                "pq_alone": ("PQ alone", "w4a8", f"pq_alone_{s}", self.cfg(seed, lambda_c=0.0), stage1),
            }
            for key in (k for k in a.branches if k in jobs):  # in the order given, most telling first
                variant, bits, name, cfg, resume = jobs[key]
                if self.late():
                    self.skipped.append(f"{variant} {bits} seed {seed}")
                    continue
                self.add(variant, bits, self.train(name, cfg, resume=resume), seed)

    def select_ptq(self) -> dict[str, Any]:
        """PTQ of the teacher with every method; the best per bit-width by eps-MSE is the PTQ row."""
        choice = {}
        for bits in ("w8a8", "w4a8"):
            scores = {}
            for m in self.args.ptq_methods:
                path = self.train(f"ptq_{bits}_{m}", self.cfg(0, steps=0, bits=(bits,), ptq_method=m))
                scores[m] = self.eps_mse(self.load(path)[0])
            best = min(scores, key=scores.get)
            choice[bits] = {"best": best, "eps_mse": scores}
            log.info("PTQ %s eps-MSE %s -> %s", bits, scores, best)
        return choice

    def late(self) -> bool:
        """Past --deadline-s: the remaining rows are skipped (listed in the JSON) so the GPU lease is not overrun."""
        return bool(self.args.deadline_s) and time.perf_counter() - self.t0 > self.args.deadline_s

    def save(self) -> None:
        from pqcad_deploy.timing import environment_info

        a = self.args
        out = (
            a.out
            or RESULTS
            / f"pqcad_table_{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}{'_quick' if a.quick else ''}.json"
        )
        doc = {
            "environment": environment_info(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "n_samples": self.n,
            "calib_collect_s": round(getattr(self, "calib_s", 0.0), 1),
            "ptq_selection": getattr(self, "ptq_choice", None),
            "rows": self.rows,
            "skipped_for_time": self.skipped,
            "summary": summarize(self.rows),
            "notes": "FD is the Frechet distance in the project's Fashion-MNIST classifier feature space (not "
            "Inception FID). Fidelity compares each row to FP images from the same noise (FP at the same step "
            "count; step-halved rows against FP at the calibration step count).",
        }
        atomic_json_save(doc, out)
        self.out_path = out


def _step_of(train_ckpt: Path) -> int:
    from pqcad_deploy.io import safe_torch_load

    return int(safe_torch_load(train_ckpt)["step"])


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread over training runs (seeds, and repeats of a seed) per (variant, bits, steps)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        for e in r.get("evals", []):
            groups.setdefault((r["variant"], r["bits"], e["steps"]), []).append(
                {**e, "train_time_s": r.get("train_time_s"), "seed": r.get("seed")}
            )
    out = []
    for (variant, bits, steps), evs in groups.items():
        item: dict[str, Any] = {"variant": variant, "bits": bits, "steps": steps, "n_runs": len(evs)}
        item["seeds"] = sorted({e["seed"] for e in evs if e["seed"] is not None})
        for key in ("fd", "psnr_vs_fp", "rel_l2_vs_fp", "train_time_s"):
            vals = [e[key] for e in evs if e.get(key) is not None]
            if vals:
                mean = sum(vals) / len(vals)
                item[key] = mean
                item[key + "_spread"] = (max(vals) - min(vals)) / 2 if len(vals) > 1 else None
        out.append(item)
    return out


def print_table(summary: list[dict[str, Any]], fp_fd: dict[int, float]) -> None:
    def f(v: Any, fmt: str, width: int) -> str:
        return format(v, fmt).rjust(width) if isinstance(v, (int, float)) else "-".rjust(width)

    cols = f"{'variant':<21}{'bits':<6}{'steps':>6}{'FD':>10}{'+-':>8}{'vs FP':>9}{'PSNR':>8}{'relL2':>8}{'train s':>9}"
    print(cols)
    print("-" * len(cols))
    for r in summary:
        # a step-halved student is judged against FP at the step count it replaces (twice its own)
        ref_steps = 2 * r["steps"] if "halving" in r["variant"] and 2 * r["steps"] in fp_fd else r["steps"]
        ref = fp_fd.get(ref_steps) or (max(fp_fd.values()) if fp_fd else None)
        rel = (r["fd"] / ref - 1) * 100 if r.get("fd") is not None and ref else None
        print(
            f"{r['variant']:<21}{r['bits']:<6}{r['steps']:>6}{f(r.get('fd'), '.3f', 10)}"
            f"{f(r.get('fd_spread'), '.3f', 8)}{f(rel, '+.1f', 8)}%{f(r.get('psnr_vs_fp'), '.2f', 8)}"
            f"{f(r.get('rel_l2_vs_fp'), '.4f', 8)}{f(r.get('train_time_s'), '.1f', 9)}"
        )
    print("vs FP: FD change against FP at the same step count (step-halved rows: at twice theirs)")


def merge(paths: list[Path], out: Path) -> dict[str, Any]:
    """One table from runs split across machines (e.g. one seed per GPU lease).

    Untrained rows (FP, PTQ) are keyed by (variant, bits): the first file's row wins. The FP row is recomputed by
    every run (it is the fidelity reference); its repeats are kept under ``fp_repeats`` as a reproducibility check.
    A trained row whose (variant, bits, seed) was already seen is a second training run of that seed (GPU training
    is not bit-reproducible), so it is kept, marked ``repeat``, and counts in the mean and spread.
    """
    docs = [json.loads(Path(p).read_text()) for p in paths]
    n = {d["n_samples"] for d in docs}
    if len(n) != 1:
        raise SystemExit(
            f"cannot merge runs with different sample counts {sorted(n)}; rerun with --n-samples"
        )
    rows: list[dict[str, Any]] = []
    seen: dict[tuple, int] = {}
    fp_repeats = []
    for d in docs:
        for r in d["rows"]:
            key = (r["variant"], r["bits"], r.get("seed"))
            earlier = seen.get(key, 0)
            seen[key] = earlier + 1
            if earlier and r.get("seed") is None:  # FP or PTQ again: not a new sample
                if r["variant"] == "FP":
                    fp_repeats.append({e["steps"]: e["fd"] for e in r["evals"]})
                continue
            rows.append({**r, "repeat": earlier} if earlier else r)
    doc = {
        **docs[0],
        "merged_from": [{"path": str(p), "command": d["command"]} for p, d in zip(paths, docs, strict=True)],
        "ptq_selection": next((d["ptq_selection"] for d in docs if d.get("ptq_selection")), None),
        "rows": rows,
        "fp_repeats": fp_repeats,
        "skipped_for_time": [s for d in docs for s in d.get("skipped_for_time", [])],
        "summary": summarize(rows),
    }
    atomic_json_save(doc, out)
    return doc


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.merge:
        out = args.out or RESULTS / "pqcad_table.json"
        doc = merge(args.merge, out)
        fp_fd = {s["steps"]: s["fd"] for s in doc["summary"] if s["variant"] == "FP" and s.get("fd")}
        print(f"PQCAD table merged from {len(args.merge)} runs: {doc['n_samples']} samples per row")
        print_table(doc["summary"], fp_fd)
        print(f"\nJSON: {out}")
        return 0
    t0 = time.perf_counter()
    bench = Bench(args)
    try:
        bench.run()
    except Exception:
        traceback.print_exc()
        log.error("stopped early; partial results are in the JSON")
        bench.save()
        return 1
    finally:
        log.info("total %.1fs", time.perf_counter() - t0)
    summary = summarize(bench.rows)
    fp_fd = {s["steps"]: s["fd"] for s in summary if s["variant"] == "FP" and s.get("fd") is not None}
    print(
        f"\nPQCAD table: {bench.n} samples per row, teacher {args.teacher}, {time.perf_counter() - t0:.0f}s total"
    )
    print_table(summary, fp_fd)
    if bench.skipped:
        print(f"\nskipped for time (--deadline-s {args.deadline_s:.0f}): {', '.join(bench.skipped)}")
    print(f"\nJSON: {bench.out_path}\ngrids: {bench.grids}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
