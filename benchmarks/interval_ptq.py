"""Timestep-aware PTQ against single-set PTQ (PCR's QDiffBench protocol): K activation-range sets, per-interval and
progressive calibration, activation relaxing, on the FP teacher or on top of a trained (PQCAD) student.

Every row calibrates on the same DDIM rollouts (``--trajectories`` x the ``--steps`` sampler, same noise) with the
same estimator, so rows differ only in how many range sets there are, which trajectory interval k is calibrated on
(FP, or progressive: earlier intervals already quantized) and whether some steps run relaxed (float activations).
Rows are named ``k<K>[p][+r<tau>]``: ``k1`` single set, ``k4`` four sets, ``k4p`` progressive, ``k4p+r0.1`` with 10 %
of the steps relaxed at ``--relax-end``; ``student`` is the given ``--student`` as trained. Scored against the FP
teacher's images from the same noise (and prompts): FD to FP and PSNR / rel-L2 to FP, FD-fmnist against the test
set, and for a text-to-image teacher class / colour accuracy on seen and held-out-template prompts; every number
over ``--noise-seeds`` (mean and half-range). The FP row's "FD to FP" is the FD between the FP images of two
noise seeds: the size of FD's sampling noise at this ``--n`` (a quantized row's images share the FP images' noise,
so its FD to FP can go below it).

    python benchmarks/interval_ptq.py --bits w8a8 w4a8 --rows k1 k4 k4p --n 32 --trajectories 32   # CPU, ~20 min
    python benchmarks/interval_ptq.py --n 10000 --batch-size 1000 --rows k1 k2 k4 k8 k4p k4p+r0.1  # GPU
    python benchmarks/interval_ptq.py --quick                                                        # tiny smoke
Several processes can share one FP image cache (``--fp-cache``; ``--rows fp`` fills it) and ``--merge`` prints one
table from their JSON files. Writes benchmarks/results/interval_ptq_<UTC date>.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy.cli.common import refuse_bad_outputs
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.errors import UsageError
from pqcad_deploy.io import atomic_json_save, atomic_write, load_safetensors
from pqcad_deploy.loading import open_model
from pqcad_deploy.metrics import fd_between, fd_fmnist, fidelity, over_seeds
from pqcad_deploy.quant import QuantConfig, parse_bits
from pqcad_deploy.quant.config import CALIB_METHODS
from pqcad_deploy.sampling import make_scheduler, sample_many
from pqcad_deploy.timing import environment_info
from pqcad_deploy.train.ptq_intervals import interval_ptq
from pqcad_deploy.zoo import TEACHER_PATH

log = logging.getLogger("interval_ptq")
RESULTS = Path(__file__).resolve().parent / "results"
ROW = re.compile(r"^k(\d+)(p?)(?:\+r([0-9.]+))?$")
METRICS = ("fd_to_fp", "psnr_to_fp", "rel_l2", "fd_fmnist", "class_accuracy", "colour_accuracy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=str(TEACHER_PATH), help="FP model (file or zoo name)")
    p.add_argument(
        "--student", default=None, help="trained single-set student: rows recalibrate its activations"
    )
    p.add_argument(
        "--embeddings", type=Path, default=Path("runs/t2i_embeddings.safetensors"), help="text-to-image"
    )
    p.add_argument(
        "--bits", nargs="+", default=["w8a8", "w4a8"], help="ignored with --student (its own bits)"
    )
    p.add_argument("--rows", nargs="+", default=["k1", "k4", "k4p"], help="k<K>[p][+r<tau>], student, fp")
    p.add_argument("--relax-end", choices=["x0", "xT"], default="x0")
    p.add_argument("--method", choices=CALIB_METHODS, default="mse")
    p.add_argument(
        "--steps", type=int, default=50, help="DDIM steps of the sampler (calibration and scoring)"
    )
    p.add_argument("--trajectories", type=int, default=32, help="calibration rollouts")
    p.add_argument("--n", type=int, default=32, help="images per noise seed (seen prompts)")
    p.add_argument(
        "--held-out", type=int, default=0, help="text-to-image: images per seed on held-out templates"
    )
    p.add_argument("--noise-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--batch-size", type=int, default=256, help="images sampled at once")
    p.add_argument(
        "--guidance-scale", type=float, default=None, help="text-to-image (default: the testbed's)"
    )
    p.add_argument("--fp-cache", type=Path, default=None, help="FP images, shared by processes")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--merge", type=Path, nargs="+", default=None, help="print one table from these JSON files"
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="tiny random model, a few steps (CPU smoke)")
    a = p.parse_args(argv)
    refuse_bad_outputs(p, {"--out": a.out})
    if a.quick:
        a.teacher, a.steps, a.trajectories, a.n, a.bits, a.method = "tiny-unet", 6, 4, 4, ["w8a8"], "maxabs"
        a.rows = ["k1", "k3", "k3p", "k2p+r0.34"]
    for r in a.rows:
        if r not in ("fp", "student") and not ROW.match(r):
            p.error(f"--rows: {r!r} is not k<K>[p][+r<tau>] (e.g. k4p+r0.1), 'student' or 'fp'")
    if "student" in a.rows and not a.student:
        p.error("--rows student needs --student")
    return a


class Bench:
    def __init__(self, a: argparse.Namespace):
        from pqcad_deploy.conditioning import DEFAULT_GUIDANCE, PromptEncoder

        self.a = a
        self.dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.teacher = open_model(a.teacher)
        self.spec, self.fp = self.teacher.spec, self.teacher.model.eval().to(self.dev)
        self.t2i = self.spec.text_conditioned
        self.prompts = PromptEncoder.open(self.spec, embeddings=a.embeddings) if self.t2i else None
        self.guidance = (a.guidance_scale or DEFAULT_GUIDANCE) if self.t2i else 1.0
        self.sets: dict[str, Any] = {"seen": None}
        if self.t2i:
            from pqcad_deploy.captions import evaluation_prompts

            self.sets = {"seen": evaluation_prompts("seen", a.n, seed=0)}
            if a.held_out:
                self.sets["held_out_templates"] = evaluation_prompts("held_out_templates", a.held_out, seed=0)
        self.ref: dict[tuple[str, int], torch.Tensor] = {}
        self.rows: list[dict[str, Any]] = []
        self.student = open_model(a.student) if a.student else None  # opened now: the file may go away later

    def images(self, model: torch.nn.Module, set_name: str, seed: int) -> torch.Tensor:
        a = self.a
        if self.t2i:
            from pqcad_deploy.conditioning import generate_for_prompts

            return generate_for_prompts(TorchDenoiser(model), self.spec, self.sets[set_name].prompts, self.prompts,
                                        a.steps, self.guidance, seed=1000 + seed, device=self.dev,
                                        batch_size=a.batch_size, progress=False)  # fmt: skip
        sched = lambda: make_scheduler("ddim", **self.spec.scheduler)  # noqa: E731
        return sample_many(TorchDenoiser(model), sched, a.n, self.spec.sample_shape, a.steps, a.batch_size,
                           1000 + seed, device=self.dev, progress=False).cpu()  # fmt: skip

    def cache_key(self) -> str:
        a = self.a
        return json.dumps({"teacher": str(self.teacher.source), "steps": a.steps, "n": a.n, "held_out": a.held_out,
                           "seeds": a.noise_seeds, "guidance": self.guidance}, sort_keys=True)  # fmt: skip

    def reference(self) -> None:
        """The FP images of every set and noise seed (from ``--fp-cache`` when it holds these settings)."""
        from safetensors.torch import save_file

        c = self.a.fp_cache
        if c is not None and c.exists():
            tensors, meta = load_safetensors(c, "FP image cache")
            if meta.get("key") != self.cache_key():
                raise UsageError(
                    f"{c} holds FP images of other settings; remove it or give another --fp-cache."
                )
            self.ref = {(k.split("/")[0], int(k.split("/")[1])): v for k, v in tensors.items()}
            return
        self.ref = {
            (s, seed): self.images(self.fp, s, seed) for s in self.sets for seed in self.a.noise_seeds
        }
        if c is not None:
            tensors = {f"{s}/{seed}": v.contiguous() for (s, seed), v in self.ref.items()}
            atomic_write(c, lambda tmp: save_file(tensors, tmp, metadata={"key": self.cache_key()}))

    def score(self, imgs: torch.Tensor, set_name: str, seed: int, ref: torch.Tensor) -> dict[str, float]:
        fid = fidelity(imgs, ref)
        out = {"n": len(imgs), "psnr_to_fp": fid["psnr_db"], "rel_l2": fid["rel_l2"]}
        if self.t2i:
            from pqcad_deploy.prompt_metrics import prompt_quality

            ev = self.sets[set_name]
            q = prompt_quality(imgs, ev.colours, ev.classes, ref, self.dev)
            out.update(fd_to_fp=q["fd_to_fp"], fd_fmnist=q["fd_fmnist_grey"], class_accuracy=q["class_accuracy"],
                       colour_accuracy=q["colour_accuracy"])  # fmt: skip
        else:
            out.update(fd_to_fp=fd_between(imgs, ref, self.dev), fd_fmnist=fd_fmnist(imgs, self.dev))
        return out

    def evaluate(self, model: torch.nn.Module | None, row: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        row["sets"] = {}
        seeds = self.a.noise_seeds
        for s in self.sets:
            runs = []
            for i, seed in enumerate(seeds):
                if model is None:  # the FP row: its "FD to FP" is the FD between two noise seeds' FP images
                    imgs, ref = self.ref[(s, seed)], self.ref[(s, seeds[(i + 1) % len(seeds)])]
                else:
                    imgs, ref = self.images(model, s, seed), self.ref[(s, seed)]
                runs.append(self.score(imgs, s, seed, ref))
            row["sets"][s] = {"runs": runs, **over_seeds(runs, METRICS)}
        row["eval_s"] = round(time.perf_counter() - t0, 1)
        self.rows.append(row)
        log.info("%s %s: %s", row["bits"], row["label"], {k: row["sets"]["seen"].get(k) for k in METRICS})
        self.save()

    def calibrate(self, row_name: str, qcfg: QuantConfig, student: Any) -> tuple[torch.nn.Module, dict]:
        k, progressive, tau = parse_row(row_name)
        cond = {}
        if self.t2i:
            cond = dict(cond_fn=self.prompts.calibration_cond_fn(1234 + 7), uncond=self.prompts.uncond(),
                        guidance_scale=self.guidance)  # fmt: skip
        return interval_ptq(
            self.fp, self.spec, qcfg, k, self.a.steps, self.a.trajectories, progressive, device=self.dev,
            batch_size=min(self.a.batch_size, 256), relax=(tau, self.a.relax_end) if tau else None,
            student=student, progress=False, **cond,
        )  # fmt: skip

    def run(self) -> None:
        a = self.a
        self.t0 = time.perf_counter()
        self.reference()
        if "fp" in a.rows:
            self.evaluate(None, {"bits": "fp32", "label": "FP (two noise seeds)"})
        student = self.student
        bits_list = [f"w{student.qcfg.weight_bits}a{student.qcfg.act_bits}"] if student else a.bits
        for bits in bits_list:
            w, b = parse_bits(bits)
            qcfg = student.qcfg if student else QuantConfig(weight_bits=w, act_bits=b)
            qcfg = QuantConfig(**{**qcfg.__dict__, "calib_method": a.method})
            for name in a.rows:
                if name == "fp":
                    continue
                prefix = "PQCAD " if student else ""
                if name == "student":
                    self.evaluate(
                        student.model.eval().to(self.dev), {"bits": bits, "label": "PQCAD as trained"}
                    )
                    continue
                t0 = time.perf_counter()
                model, entry = self.calibrate(name, qcfg, student.model if student else None)
                row = {"bits": bits, "label": prefix + name, "calib_s": round(time.perf_counter() - t0, 1),
                       "intervals": entry["intervals"], "relax": entry["relax"], "progressive": entry["progressive"],
                       "points": entry["points_per_interval"], "k": parse_row(name)[0]}  # fmt: skip
                self.evaluate(model, row)
                del model

    def save(self) -> None:
        a = self.a
        args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
        doc = {"environment": environment_info(), "args": args, "teacher": str(self.teacher.source),
               "text_to_image": self.t2i, "rows": self.rows,
               "elapsed_s": round(time.perf_counter() - getattr(self, "t0", time.perf_counter()), 1),
               "notes": "FD is the Frechet distance in the project's Fashion-MNIST classifier feature space (never "
               "Inception FID); 'to FP' compares with the FP teacher's images from the same noise and prompts."}  # fmt: skip
        atomic_json_save(doc, output_path(a))


def parse_row(name: str) -> tuple[int, bool, float]:
    """``k<K>[p][+r<tau>]`` -> (K quantized intervals, progressive, relaxed fraction; 0: none)."""
    m = ROW.match(name)
    return int(m[1]), bool(m[2]), float(m[3]) if m[3] else 0.0


def output_path(a: argparse.Namespace) -> Path:
    date = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}{'_quick' if a.quick else ''}"
    return a.out or RESULTS / f"interval_ptq_{date}.json"


def print_rows(rows: list[dict[str, Any]], title: str) -> None:
    print("\n" + title)
    head = (
        f"{'bits':<6}{'row':<24}{'set':<20}{'FD to FP':>14}{'PSNR to FP':>14}{'FD-fmnist':>14}{'class %':>12}"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        for s, m in r["sets"].items():

            def cell(k, scale=1.0, fmt=".2f", m=m):
                return f"{m[k] * scale:{fmt}}+-{m[k + '_spread'] * scale:{fmt}}" if k in m else "-"

            print(f"{r['bits']:<6}{r['label']:<24}{s:<20}{cell('fd_to_fp', fmt='.3f'):>14}{cell('psnr_to_fp'):>14}"
                  f"{cell('fd_fmnist'):>14}{cell('class_accuracy', 100, '.1f'):>12}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    if a.merge:
        docs = [json.loads(Path(f).read_text()) for f in a.merge]
        rows = [r for d in docs for r in d["rows"]]
        print_rows(rows, f"timestep-aware PTQ, merged from {len(docs)} runs")
        if a.out:
            atomic_json_save({"merged_from": [str(f) for f in a.merge], "runs": docs, "rows": rows}, a.out)
        return 0
    bench = Bench(a)
    if bench.dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bench.run()
    print_rows(bench.rows, f"timestep-aware PTQ, {a.teacher}{' on ' + a.student if a.student else ''}, DDIM "
               f"{a.steps}, {a.method}, {a.trajectories} calibration rollouts, {a.n} images x noise seeds "
               f"{a.noise_seeds}, relaxing at {a.relax_end}")  # fmt: skip
    print(f"JSON: {output_path(a)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
