"""PQCAD quality table: FP / PTQ (best) / fixed-bit QAT / PQ alone / PQ+CAD / PQ+CAD+halving at W8A8 and W4A8.

From the shipped teacher and one FP calibration set: the PTQ rows are ``train.ptq.select_ptq_method`` over
--ptq-methods; one progressive run (W8A8 stage 1, momentum switch, W4A8 stage 2) is trained per seed, and every
other PQCAD variant branches from its end-of-stage-1 checkpoint (BRANCH_RUNS), so all get the same step budget.
Each model samples DDIM at every --eval-steps count (step-halved students at their trained count) from the same
noise; reported: FD-fmnist, fidelity to the FP images (PSNR dB, rel-L2) and training time, on N samples per row
(fitted to --eval-budget-s unless --n-samples is given).

    python benchmarks/pqcad_table.py                                   # one H100, <= 9 min (--deadline-s 540)
    python benchmarks/pqcad_table.py --init-ptq percentile --lr 1e-5 --n-samples 10000 --seeds 0 1 --deadline-s 0
    python benchmarks/pqcad_table.py --quick                           # CPU smoke run, tiny random model
The W4A8 recipe decision (issue 19 item 2: lambda_c, PQ alone, QAT, adaptive vs fixed switch; two training and two
noise seeds):
    python benchmarks/pqcad_table.py --skip-ptq --n-samples 10000 --seeds 0 1 --noise-seeds 0 1 --deadline-s 0 \
        --switch-signal probe --branches pq pq_alone pq_c0.1 pq_c0.3 qat fixed_switch --eval-steps 100
(`benchmarks/pqcad_gpu.sh table` runs that per training seed in parallel, beside the halving chain in the ONNX
Runtime placement.)
Runs split across machines (``--skip-ptq``, ``--ptq-only``, ``--branches``) are combined by ``--merge a.json b.json --out t.json``.
Writes benchmarks/results/pqcad_table_<UTC date>.json and sample grids under benchmarks/results/pqcad_grids/.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy.calibset import eps_mse
from pqcad_deploy.cli.common import (
    add_calib_args,
    add_device,
    calib_collect_kwargs,
    refuse_bad_outputs,
    resolve_device,
)
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.images import save_grid
from pqcad_deploy.io import atomic_json_save, read_json_object, safe_torch_load
from pqcad_deploy.loading import open_model
from pqcad_deploy.metrics import fd_fmnist, fidelity
from pqcad_deploy.quant import parse_bits
from pqcad_deploy.quant.config import CALIB_METHODS
from pqcad_deploy.sampling import make_scheduler, sample_many
from pqcad_deploy.student import save_student
from pqcad_deploy.timing import DeviceTimer, environment_info, time_calls
from pqcad_deploy.train.calib import load_or_collect_calib
from pqcad_deploy.train.pqcad import train_pqcad
from pqcad_deploy.train.pqcad_config import SWITCH_SIGNALS, PQCADConfig
from pqcad_deploy.train.ptq import probe_indices, select_ptq_method
from pqcad_deploy.zoo import TEACHER_PATH

log = logging.getLogger("pqcad_table")
RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path("runs/pqcad_table")
METRICS = ("fd", "psnr_db_vs_fp", "rel_l2_vs_fp", "train_time_s")
# Rows trained per seed besides pq (PQ+CAD W4A8, trained whenever a row needs it): key -> (variant, bits, changes).
# Every one but FROM_SCRATCH branches from pq's end-of-stage-1 checkpoint; w8a8 is that stage 1 itself.
BRANCH_RUNS = {
    "qat": ("fixed-bit QAT", "w4a8", {"bits": ("w4a8",), "schedule": "fixed"}),
    "w8a8": ("PQCAD", "w8a8", {"bits": ("w8a8",)}),
    "half_w8a8": ("PQCAD+halving", "w8a8", {"bits": ("w8a8", "w8a8"), "halve_steps": True}),
    "half_w4a8": ("PQ+CAD+halving", "w4a8", {"halve_steps": True}),
    "fp_teacher": ("PQ+CAD (FP teacher)", "w4a8", {"teacher_kind": "fp"}),
    "pq_alone": ("PQ alone", "w4a8", {"lambda_c": 0.0}),
    "pq_c0.1": ("PQ+CAD lambda_c 0.1", "w4a8", {"lambda_c": 0.1}),
    "pq_c0.3": ("PQ+CAD lambda_c 0.3", "w4a8", {"lambda_c": 0.3}),
    # the adaptive switch's control: the same recipe switching at --stage1-cap whatever the signal says (eps 0)
    "fixed_switch": ("PQ+CAD switch at cap", "w4a8", {"eps": 0.0}),
}
BRANCHES = ("pq", *BRANCH_RUNS)
# branches whose stage 1 differs from pq's, so they cannot resume from its end-of-stage-1 checkpoint
FROM_SCRATCH = ("qat", "fixed_switch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--teacher", default=str(TEACHER_PATH), help="FP teacher (.safetensors + .json) or zoo name")
    add("--work", type=Path, default=WORK, help="students and the calibration set")
    add("--out", type=Path, default=None, help="JSON (default results/pqcad_table_<date>.json)")
    add("--train-steps", type=int, default=800, help="total optimizer steps per trained variant")
    add("--stage1-cap", type=int, default=400)
    add("--batch-size", type=int, default=128)
    add("--lr", type=float, default=PQCADConfig.lr)
    add("--lr-quant", type=float, default=PQCADConfig.lr_quant)
    add("--seeds", type=int, nargs="+", default=[0], help="training seeds (mean and spread if > 1)")
    add(
        "--noise-seeds",
        type=int,
        nargs="+",
        default=[0],
        help="sampling noise seeds per row; the spread is the half-range over every (training, noise) seed pair",
    )
    add(
        "--switch-signal",
        choices=SWITCH_SIGNALS,
        default=PQCADConfig.switch_signal,
        help="what the momentum rule watches: the smoothed training loss or the eps-error on held-out points",
    )
    add(
        "--eps",
        type=float,
        default=PQCADConfig.eps,
        help="the momentum rule's plateau threshold, a fraction of the signal's first value per check",
    )
    add(
        "--switch-probe",
        type=int,
        default=PQCADConfig.switch_probe,
        help="held-out points of --switch-signal probe",
    )
    add("--eval-steps", type=int, nargs="+", default=[100, 50])
    add("--n-samples", type=int, default=0, help="images per row (0: fit --eval-budget-s, max 10000)")
    add("--eval-budget-s", type=float, default=150.0, help="device seconds for all sampling (adaptive N)")
    add("--eval-batch", type=int, default=1000)
    add("--grid", type=int, default=64, help="images per sample grid")
    add("--ptq-methods", nargs="+", default=list(CALIB_METHODS), choices=CALIB_METHODS)
    add("--init-ptq", default="mse", choices=CALIB_METHODS, help="PTQ init of the trained variants")
    add("--deadline-s", type=float, default=540.0, help="skip the remaining rows after this (0: none)")
    add("--reuse", action="store_true", help="use students already in --work instead of retraining")
    add("--branches", nargs="+", default=list(BRANCHES), choices=BRANCHES, help="rows per seed, in order")
    add("--skip-ptq", action="store_true", help="no PTQ rows (a run that only adds a seed or a branch)")
    add("--ptq-only", action="store_true", help="only the FP and PTQ rows (no training)")
    add("--merge", type=Path, nargs="+", help="combine the table JSONs of separate runs; no training")
    add("--quick", action="store_true", help="CPU smoke test: tiny random model, tiny budgets")
    add_calib_args(p)
    add_device(p)
    p.set_defaults(calib_trajectories=256, calib_points=50, calib_batch_size=256)
    args = p.parse_args(argv)
    if args.quick:
        args.teacher = "tiny-unet" if args.teacher == str(TEACHER_PATH) else args.teacher
        args.calib_trajectories, args.calib_steps, args.calib_points = 8, 10, 10
        args.train_steps, args.stage1_cap, args.batch_size, args.switch_probe = 8, 4, 8, 8
        args.eval_steps, args.n_samples, args.eval_batch, args.grid = [10, 4], 16, 16, 16
        args.ptq_methods, args.init_ptq, args.deadline_s = ["maxabs", "mse"], "maxabs", 0.0
        args.work = args.work.with_name(args.work.name + "_quick") if args.work == WORK else args.work
    refuse_bad_outputs(p, {"--out": args.out}, inputs=args.merge or [])
    if args.switch_probe < 1:
        p.error(f"--switch-probe must be >= 1 (got {args.switch_probe})")
    if args.skip_ptq and not args.n_samples:
        p.error("--skip-ptq needs --n-samples (the adaptive N is measured on a PTQ model)")
    if args.skip_ptq and args.ptq_only:
        p.error("--skip-ptq and --ptq-only leave nothing to measure beyond FP; give one of them")
    return args


def base_config(args: argparse.Namespace) -> PQCADConfig:
    """The PQCAD settings every trained row shares; BRANCH_RUNS changes a few of them."""
    return PQCADConfig(
        steps=args.train_steps,
        stage1_cap=args.stage1_cap,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_quant=args.lr_quant,
        ptq_method=args.init_ptq,
        save_every=max(100, args.train_steps // 4),
        switch_signal=args.switch_signal,
        switch_probe=args.switch_probe,
        eps=args.eps,
    )


class Bench:
    """One table run: calibration set, PTQ selection, trained branches, evaluation and the JSON."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dev = resolve_device(args.device)
        torch.backends.cudnn.benchmark = self.dev.type == "cuda"
        bundle = open_model(args.teacher)
        self.teacher, self.spec = bundle.model.to(self.dev), bundle.spec
        args.work.mkdir(parents=True, exist_ok=True)
        self.grids = RESULTS / ("pqcad_grids_quick" if args.quick else "pqcad_grids")
        self.grids.mkdir(parents=True, exist_ok=True)
        self.fp_images: dict[tuple[int, int], torch.Tensor] = {}  # (steps, noise seed) -> FP images
        self.rows: list[dict[str, Any]] = []
        self.n = args.n_samples
        self.skipped: list[str] = []
        self.ptq_choice: dict[str, Any] = {}
        self.calib_s = 0.0
        self.base_cfg = base_config(args)

    def calib(self) -> None:
        t0 = time.perf_counter()
        path = self.args.calib or self.args.work / "calib.safetensors"
        collect = calib_collect_kwargs(self.args)
        self.cs = load_or_collect_calib(path, self.teacher, self.spec, self.dev, collect)
        self.calib_s = time.perf_counter() - t0
        self.probe_idx = probe_indices(self.cs)

    def cfg(self, seed: int, **changes: Any) -> PQCADConfig:
        return dataclasses.replace(self.base_cfg, seed=seed, **changes)

    def train(self, name: str, cfg: PQCADConfig, resume: Path | None = None) -> Path:
        out = self.args.work / f"{name}.pt"
        if self.args.reuse and out.exists():
            log.info("=== reuse %s (--reuse)", out)
            return out
        log.info("=== train %s", name)
        train_pqcad(cfg, self.teacher, self.spec, self.cs, out, resume=resume, device=str(self.dev))
        return out

    def load(self, path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
        bundle = open_model(path)
        return bundle.model.to(self.dev), bundle.meta

    def pick_n(self, fq_model: torch.nn.Module) -> None:
        """Time one fake-quant denoiser call at the eval batch and fit N into the eval budget."""
        a = self.args
        x = torch.randn(a.eval_batch, *self.spec.sample_shape, device=self.dev)
        t = torch.full((a.eval_batch,), 500, device=self.dev, dtype=torch.int64)
        den = TorchDenoiser(fq_model)
        den(x, t)  # warm-up
        per_img_step = time_calls(lambda: den(x, t), 3, self.dev) / 1e3 / a.eval_batch
        img_steps = 9 * sum(a.eval_steps) * len(a.noise_seeds)  # ~9 models at each step count (upper bound)
        n = int(a.eval_budget_s / (per_img_step * img_steps))
        self.n = max(500, min(10000, n // 500 * 500))
        log.info("fake-quant: %.3f ms/img/step -> %d samples per row", per_img_step * 1e3, self.n)

    def evaluate(self, row: dict[str, Any], model: torch.nn.Module, steps_list: list[int]) -> None:
        """Sample N images per step count and noise seed from the noise every row shares; FD, fidelity to FP from
        the same noise, a grid (first noise seed)."""
        sched = lambda: make_scheduler("ddim", **self.spec.scheduler)  # noqa: E731
        den, timer = TorchDenoiser(model), DeviceTimer(self.dev)
        shape, batch = self.spec.sample_shape, self.args.eval_batch
        for steps in steps_list:
            for noise in self.args.noise_seeds:
                mark = timer.start()
                imgs = sample_many(den, sched, self.n, shape, steps, batch, seed=noise, device=self.dev)
                secs = timer.stop(mark) / 1e3
                res = {"steps": steps, "noise_seed": noise, "fd": fd_fmnist(imgs, device=self.dev)}
                res["sample_s"] = round(secs, 2)
                if row["variant"] == "FP":
                    self.fp_images[steps, noise] = imgs
                else:
                    fp_steps = {s for s, n in self.fp_images if n == noise}
                    ref_steps = steps if steps in fp_steps else max(fp_steps)
                    ref = self.fp_images[ref_steps, noise]
                    res.update({f"{k}_vs_fp": v for k, v in fidelity(imgs, ref).items()})
                    res["fp_ref_steps"] = ref_steps
                if noise == self.args.noise_seeds[0]:
                    self.save_row_grid(row, steps, imgs)
                row.setdefault("evals", []).append(res)
                log.info("%s %s @%d, noise %d: FD %.4f", row["variant"], row["bits"], steps, noise, res["fd"])

    def save_row_grid(self, row: dict[str, Any], steps: int, imgs: torch.Tensor) -> None:
        seed = "" if row.get("seed") is None else f"_s{row['seed']}"
        tag = f"{row['variant']}_{row['bits']}{seed}_{steps}".replace("+", "-")
        save_grid(imgs[: self.args.grid], self.grids / f"{re.sub(r'[^A-Za-z0-9_-]', '', tag)}.png")

    def add(self, variant: str, bits: str, path: Path | None, seed: int | None = None, **extra: Any) -> None:
        row: dict[str, Any] = {"variant": variant, "bits": bits, "seed": seed, **extra}
        if path is None:
            model, steps = self.teacher.eval(), self.args.eval_steps
        else:
            model, meta = self.load(path)
            sampling = meta.get("sampling") or {}
            row["train_time_s"] = meta.get("train_time_s")
            row["history"] = [h for h in meta.get("history", []) if h.get("event") in ("switch", "ptq")]
            row["trained_sampler_steps"] = sampling.get("steps")
            halved = (meta.get("pqcad") or {}).get("halve_steps") and sampling.get("steps")
            steps = [sampling["steps"]] if halved else self.args.eval_steps
            row["eps_mse"] = eps_mse(model, self.cs, self.probe_idx, self.dev)
            row["probe_curve"], row["switch_trace"] = meta.get("probe_curve"), meta.get("switch_trace")
        self.evaluate(row, model, steps)
        self.rows.append(row)
        self.save()

    def run(self) -> None:
        self.t0 = time.perf_counter()
        self.calib()
        a = self.args
        ptq = {} if a.skip_ptq else self.select_ptq()
        if not self.n:  # N from a fake-quant throughput probe, fixed before FP (the fidelity reference) runs
            self.pick_n(self.load(ptq["w8a8"])[0])
        self.add("FP", "fp32", None)
        for bits, path in ptq.items():
            self.add("PTQ", bits, path, method=self.ptq_choice[bits]["best"])
        # pq is trained when a row needs it: its own, or a branch resuming from its end-of-stage-1 checkpoint
        needs_pq = any(k not in FROM_SCRATCH for k in a.branches)
        for seed in [] if a.ptq_only else a.seeds:
            if needs_pq:
                pq = self.train(f"pq_s{seed}", self.cfg(seed))  # stage 1 + PQ+CAD stage 2, the default recipe
            if "pq" in a.branches:
                # with eps 0 pq is the fixed_switch recipe: one label, so merged tables put them in one row
                label = BRANCH_RUNS["fixed_switch"][0] if self.base_cfg.eps == 0 else "PQ+CAD"
                self.add(label, "w4a8", pq, seed)
            stage1 = a.work / f"pq_s{seed}_train_stage1.pt"
            for key in (k for k in a.branches if k in BRANCH_RUNS):  # in the order given, most telling first
                variant, bits, changes = BRANCH_RUNS[key]
                if a.deadline_s and time.perf_counter() - self.t0 > a.deadline_s:  # listed in the JSON
                    self.skipped.append(f"{variant} {bits} seed {seed}")
                    continue
                if key == "w8a8":
                    changes = {**changes, "steps": int(safe_torch_load(stage1)["step"])}
                resume = None if key in FROM_SCRATCH else stage1
                self.add(variant, bits, self.train(f"{key}_s{seed}", self.cfg(seed, **changes), resume), seed)

    def select_ptq(self) -> dict[str, Path]:
        """The PTQ row per bit-width: the library's selection over --ptq-methods, saved as a student."""
        paths = {}
        for bits in ("w8a8", "w4a8"):
            path = self.args.work / f"ptq_{bits}.pt"
            if self.args.reuse and path.exists():
                entry = self.load(path)[1]["history"][0]
            else:
                qcfg = self.cfg(0, bits=(bits,)).quant_config(parse_bits(bits))
                methods = tuple(self.args.ptq_methods)
                model, entry = select_ptq_method(self.teacher, qcfg, self.cs, methods, self.dev)
                meta = {"history": [entry], "sampling": {"scheduler": "ddim", "steps": None}}
                save_student(path, model.cpu(), self.spec, meta=meta)
            self.ptq_choice[bits] = sel = entry["selection"]
            paths[bits] = path
            log.info("PTQ %s eps-MSE %s -> %s", bits, sel["eps_mse"], sel["best"])
        return paths

    def save(self) -> None:
        a = self.args
        date = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}{'_quick' if a.quick else ''}"
        self.out_path = a.out or RESULTS / f"pqcad_table_{date}.json"
        doc = {
            "environment": environment_info(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "n_samples": self.n,
            "calib_collect_s": round(self.calib_s, 1),
            "ptq_selection": self.ptq_choice or None,
            "rows": self.rows,
            "skipped_for_time": self.skipped,
            "summary": aggregate_rows(self.rows),
            "notes": "FD: Frechet distance in the Fashion-MNIST classifier's feature space (not Inception FID). "
            "Fidelity: against FP images from the same noise at the same step count (else FP's largest count).",
        }
        atomic_json_save(doc, self.out_path)


def aggregate_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread (half-range) over training runs (seeds, and repeats of a seed) and noise seeds per (variant,
    bits, steps)."""
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
        for key in METRICS:
            vals = [e[key] for e in evs if e.get(key) is not None]
            if vals:
                item[key] = sum(vals) / len(vals)
                item[key + "_spread"] = (max(vals) - min(vals)) / 2 if len(vals) > 1 else None
        out.append(item)
    return out


def print_table(summary: list[dict[str, Any]], title: str) -> None:
    """The aggregated rows; FD change is against FP at the same step count (step-halved rows: at twice theirs)."""
    fp_fd = {s["steps"]: s["fd"] for s in summary if s["variant"] == "FP" and s.get("fd") is not None}

    def f(v: Any, fmt: str, width: int) -> str:
        return format(v, fmt).rjust(width) if isinstance(v, (int, float)) else "-".rjust(width)

    cols = f"{'variant':<21}{'bits':<6}{'steps':>6}{'FD':>10}{'+-':>8}{'vs FP':>9}{'PSNR':>8}{'relL2':>8}{'train s':>9}"
    print(f"{title}\n{cols}\n" + "-" * len(cols))
    for r in summary:
        # a step-halved student is judged against FP at the step count it replaces (twice its own)
        ref_steps = 2 * r["steps"] if "halving" in r["variant"] and 2 * r["steps"] in fp_fd else r["steps"]
        ref = fp_fd.get(ref_steps) or (max(fp_fd.values()) if fp_fd else None)
        rel = (r["fd"] / ref - 1) * 100 if r.get("fd") is not None and ref else None
        print(
            f"{r['variant']:<21}{r['bits']:<6}{r['steps']:>6}{f(r.get('fd'), '.3f', 10)}"
            f"{f(r.get('fd_spread'), '.3f', 8)}{f(rel, '+.1f', 8)}%{f(r.get('psnr_db_vs_fp'), '.2f', 8)}"
            f"{f(r.get('rel_l2_vs_fp'), '.4f', 8)}{f(r.get('train_time_s'), '.1f', 9)}"
        )
    print("vs FP: FD change against FP at the same step count (step-halved rows: at twice theirs)")


def print_switches(rows: list[dict[str, Any]]) -> None:
    """Where each progressive run left stage 1, and why: ``plateau`` (the momentum rule fired) or ``cap``."""
    seen = set()
    for r in rows:
        for h in r.get("history") or []:
            key = (r["variant"], r.get("seed"), h.get("step"))
            if h.get("event") == "switch" and key not in seen:
                seen.add(key)
                print(f"switch: {r['variant']} seed {r.get('seed')}: step {h['step']} ({h['reason']})")


def read_table(path: Path) -> dict[str, Any]:
    """A pqcad_table.py JSON; anything else ends the run with a message naming the file."""
    what = "the --out JSON of a pqcad_table.py run"
    try:
        doc = read_json_object(path, what)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    if not isinstance(doc.get("rows"), list) or "n_samples" not in doc:
        raise SystemExit(f"{path} has no table rows or sample count; give {what}")
    return doc


def merge_runs(paths: list[Path], out: Path) -> dict[str, Any]:
    """One table from runs split across machines (same protocol and sample count).

    Untrained rows (FP, PTQ) are keyed by (variant, bits): the first file's row wins, and FP repeats are kept under
    ``fp_repeats`` as a reproducibility check. A trained row whose (variant, bits, seed) was already seen is a
    second training run of that seed (GPU training is not bit-reproducible): kept, marked ``repeat``, and counted.
    """
    docs = [read_table(p) for p in paths]
    n = {d["n_samples"] for d in docs}
    if len(n) != 1:
        raise SystemExit(f"cannot merge runs with different sample counts {sorted(n)}; use --n-samples")
    rows: list[dict[str, Any]] = []
    seen: dict[tuple, int] = {}
    fp_repeats = []
    for d in docs:
        for r in d["rows"]:
            for e in r["evals"]:  # files written before the PSNR key was metrics.fidelity's name
                if "psnr_vs_fp" in e:
                    e["psnr_db_vs_fp"] = e.pop("psnr_vs_fp")
            key = (r["variant"], r["bits"], r.get("seed"))
            earlier = seen.get(key, 0)
            seen[key] = earlier + 1
            if earlier and r.get("seed") is None:  # FP or PTQ again: not a new sample
                if r["variant"] == "FP":
                    fp_repeats.append({e["steps"]: e["fd"] for e in r["evals"]})
                continue
            rows.append({**r, "repeat": earlier} if earlier else r)
    sources = [
        {"path": str(p), "command": d["environment"]["command"]} for p, d in zip(paths, docs, strict=True)
    ]
    doc = {
        **docs[0],
        "merged_from": sources,
        "ptq_selection": next((d["ptq_selection"] for d in docs if d.get("ptq_selection")), None),
        "rows": rows,
        "fp_repeats": fp_repeats,
        "skipped_for_time": [s for d in docs for s in d.get("skipped_for_time", [])],
        "summary": aggregate_rows(rows),
    }
    doc.pop("command", None)
    atomic_json_save(doc, out)
    return doc


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.merge:
        out = args.out or RESULTS / "pqcad_table.json"
        doc = merge_runs(args.merge, out)
        print_table(doc["summary"], f"PQCAD table merged from {len(args.merge)} runs, N={doc['n_samples']}")
        print(f"\nJSON: {out}")
        return 0
    t0 = time.perf_counter()
    bench = Bench(args)
    try:
        bench.run()
    except Exception:
        log.exception("stopped early; partial results are in the JSON")
        bench.save()
        return 1
    title = (
        f"\nPQCAD table: N={bench.n} per row, teacher {args.teacher}, {time.perf_counter() - t0:.0f}s total"
    )
    print_table(aggregate_rows(bench.rows), title)
    print_switches(bench.rows)
    if bench.skipped:
        print(f"\nskipped for time (--deadline-s {args.deadline_s:.0f}): {', '.join(bench.skipped)}")
    print(f"\nJSON: {bench.out_path}\ngrids: {bench.grids}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
