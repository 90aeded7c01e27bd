"""Text-to-image testbed table: FP teacher vs PTQ W8A8 (best method) vs PQCAD W8A8, on seen and held-out prompts.

For every row and prompt set: class and colour accuracy (prompt fidelity), FD-fmnist of the grey images against the
test set, and FD / PSNR to the FP teacher's images for the same prompts and noise; each over several noise seeds
(mean and spread). The FP teacher also gets a guidance-scale sweep. Prints the table, writes JSON and one PNG grid
per row (same prompts and noise in every grid).

    python benchmarks/t2i_table.py --teacher runs/t2i/fmnist-t2i.safetensors \\
        --embeddings runs/t2i_embeddings.safetensors --num-samples 10000 --held-out-samples 5000
    python benchmarks/t2i_table.py --quick          # CPU smoke run: tiny sizes, random weights

Recipe sweeps run one process per PQCAD variant on a shared work folder: a first run with ``--rows fp ptq`` collects
the calibration (and ``--val-trajectories`` held-out) sets and caches the FP images; each variant then runs
``--rows pqcad --label NAME`` with its own settings (``--calib`` picks the set), in parallel; ``--merge`` prints
and writes one table from their JSON files (``bash benchmarks/t2i_gpu.sh sweep`` does all of it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy.calibset import eps_mse
from pqcad_deploy.captions import EVAL_SETS, evaluation_prompts
from pqcad_deploy.cli.common import refuse_bad_outputs
from pqcad_deploy.conditioning import DEFAULT_GUIDANCE, PromptEncoder, generate_for_prompts
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.errors import UsageError
from pqcad_deploy.images import save_grid
from pqcad_deploy.io import atomic_json_save, atomic_write, load_safetensors
from pqcad_deploy.loading import open_model
from pqcad_deploy.metrics import over_seeds
from pqcad_deploy.prompt_metrics import prompt_quality
from pqcad_deploy.quant import QuantConfig
from pqcad_deploy.timing import environment_info
from pqcad_deploy.train.calib import load_or_collect_calib
from pqcad_deploy.train.pqcad import train_pqcad
from pqcad_deploy.train.pqcad_config import PQCADConfig
from pqcad_deploy.train.ptq import select_ptq_method

log = logging.getLogger("t2i_table")
RESULTS = Path(__file__).parent / "results"
METRICS = ("class_accuracy", "colour_accuracy", "fd_fmnist_grey", "fd_to_fp", "psnr_to_fp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="fmnist-t2i", help="FP text-to-image model (file or zoo name)")
    p.add_argument("--embeddings", type=Path, default=Path("runs/t2i_embeddings.safetensors"))
    p.add_argument("--work", type=Path, default=Path("runs/t2i_table"), help="calibration set and students")
    p.add_argument("--num-samples", type=int, default=10000, help="images per noise seed on seen prompts")
    p.add_argument(
        "--held-out-samples", type=int, default=5000, help="images per noise seed per held-out set"
    )
    p.add_argument("--noise-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (the deployment sampler)")
    p.add_argument("--guidance-scale", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--guidance-sweep", type=float, nargs="*", default=[1.0, 2.0, 3.0, 5.0])
    p.add_argument("--sweep-samples", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=1000, help="images sampled at once")
    p.add_argument("--rows", nargs="+", default=["fp", "ptq", "pqcad"], choices=["fp", "ptq", "pqcad"])
    p.add_argument("--sets", nargs="+", default=list(EVAL_SETS), choices=list(EVAL_SETS), help="prompt sets")
    p.add_argument("--ptq-methods", nargs="+", default=["maxabs", "percentile", "mse"])
    p.add_argument(
        "--calib", type=Path, default=None, help="calibration set file (default WORK/calib.safetensors); "
        "collected there with --calib-trajectories x --calib-points when missing"
    )  # fmt: skip
    p.add_argument("--calib-trajectories", type=int, default=256)
    p.add_argument("--calib-points", type=int, default=20)
    p.add_argument(
        "--val-trajectories", type=int, default=0, help="held-out guided trajectories (other noise and "
        "prompts, WORK/val.safetensors): every quantized row records its eps-MSE to FP there (0: off)"
    )  # fmt: skip
    p.add_argument("--pqcad-steps", type=int, default=400)
    p.add_argument("--pqcad-batch", type=int, default=128)
    p.add_argument("--pqcad-lr", type=float, default=1e-5, help="LR of the weights")
    p.add_argument(
        "--pqcad-lr-quant", type=float, default=0.0, help="LR of the quantizer step sizes (0: frozen at their PTQ "
        "values; on this teacher any LR > 0 moved FD-fmnist +5-6 %%, RESULTS.md 'PQCAD recipe sweep')",
    )  # fmt: skip
    p.add_argument(
        "--pqcad-student", default=None, help="evaluate this PQCAD student instead of training one"
    )
    p.add_argument("--label", default="", help="suffix of the PQCAD row's name and student file (sweeps)")
    p.add_argument(
        "--merge", type=Path, nargs="+", default=None, help="print one table from these JSON files"
    )
    p.add_argument(
        "--prepare-only", action="store_true", help="collect the calibration (and validation) sets, then stop"
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--grids", type=Path, default=RESULTS / "t2i_grids")
    p.add_argument("--device", default=None)
    p.add_argument("--quick", action="store_true", help="CPU smoke run: tiny sizes")
    a = p.parse_args(argv)
    refuse_bad_outputs(p, {"--out": a.out})
    if a.quick:
        a.num_samples, a.held_out_samples, a.noise_seeds, a.steps, a.batch_size = 16, 8, [0, 1], 4, 16
        a.guidance_sweep, a.sweep_samples, a.calib_trajectories, a.calib_points = [1.0, 3.0], 8, 4, 2
        a.pqcad_steps, a.pqcad_batch, a.ptq_methods = 2, 4, ["maxabs", "percentile"]
        a.work, a.grids = Path("runs/t2i_table_quick"), RESULTS / "t2i_grids_quick"
        a.val_trajectories = min(a.val_trajectories, 4)
    a.calib = a.calib or a.work / "calib.safetensors"
    return a


class Table:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.fp = open_model(a.teacher)
        self.spec = self.fp.spec
        self.fp.model.to(self.dev)
        self.prompts = PromptEncoder.open(self.spec, embeddings=a.embeddings)
        n = {"seen": a.num_samples}
        n.update({s: a.held_out_samples for s in EVAL_SETS if s != "seen"})
        self.sets = {s: evaluation_prompts(s, n[s], seed=0) for s in a.sets}
        self.fp_images: dict[tuple[str, int], torch.Tensor] = {}
        self.val = None
        self.sweep: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        a.work.mkdir(parents=True, exist_ok=True)
        a.grids.mkdir(parents=True, exist_ok=True)

    def generate(
        self, model: torch.nn.Module, prompts, seed: int, guidance: float | None = None
    ) -> torch.Tensor:
        return generate_for_prompts(
            TorchDenoiser(model),
            self.spec,
            prompts,
            self.prompts,
            self.a.steps,
            self.a.guidance_scale if guidance is None else guidance,
            seed=seed,
            device=self.dev,
            batch_size=self.a.batch_size,
            progress=False,
        )

    def fp_cache_key(self) -> dict[str, str]:
        a = self.a
        key = {
            "teacher": str(self.fp.source),
            "steps": a.steps,
            "guidance": a.guidance_scale,
            "seeds": a.noise_seeds,
        }
        key["sets"] = {s: len(ev) for s, ev in self.sets.items()}
        return {"key": json.dumps(key, sort_keys=True)}

    def save_fp_images(self) -> None:
        """The FP images, for sweep processes that score against them without sampling the teacher again."""
        from safetensors.torch import save_file

        tensors = {f"{s}/{seed}": v.to(torch.float16).contiguous() for (s, seed), v in self.fp_images.items()}
        meta = self.fp_cache_key()
        atomic_write(
            self.a.work / "fp_images.safetensors", lambda tmp: save_file(tensors, tmp, metadata=meta)
        )

    def load_fp_images(self) -> None:
        path = self.a.work / "fp_images.safetensors"
        if not path.exists():
            log.warning(
                "%s is missing: no FD/PSNR to FP (run once with --rows fp, same --work, for them)", path
            )
            return
        tensors, meta = load_safetensors(path, "FP image cache")
        if meta != self.fp_cache_key():
            raise UsageError(
                f"{path} was sampled with other settings ({meta.get('key')}); run --rows fp again with these."
            )
        self.fp_images = {(k.split("/")[0], int(k.split("/")[1])): v.float() for k, v in tensors.items()}

    def val_mse(self, model: torch.nn.Module) -> dict[str, float]:
        if self.val is None:
            return {}
        return {"val_eps_mse": eps_mse(model, self.val, torch.arange(len(self.val)), self.dev)}

    def evaluate(self, name: str, model: torch.nn.Module, extra: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        row: dict[str, Any] = {
            "row": name,
            **extra,
            **(self.val_mse(model) if name != "FP" else {}),
            "sets": {},
        }
        for set_name, ev in self.sets.items():
            runs = []
            for seed in self.a.noise_seeds:
                imgs = self.generate(model, ev.prompts, seed)
                ref = None if name == "FP" else self.fp_images.get((set_name, seed))
                if name == "FP":
                    self.fp_images[(set_name, seed)] = imgs
                runs.append(prompt_quality(imgs, ev.colours, ev.classes, ref, self.dev))
                if set_name == "seen" and seed == self.a.noise_seeds[0]:
                    save_grid(imgs[:64], self.a.grids / f"{name.replace(' ', '_')}_seen.png", nrow=8)
            row["sets"][set_name] = {"runs": runs, **over_seeds(runs, METRICS)}
            log.info("%s %s: %s", name, set_name, {k: row["sets"][set_name].get(k) for k in METRICS})
        row["eval_s"] = round(time.perf_counter() - t0, 1)
        self.rows.append(row)
        self.save()

    def guidance_sweep(self) -> list[dict[str, Any]]:
        ev = evaluation_prompts("seen", self.a.sweep_samples, seed=1)
        out = []
        for g in self.a.guidance_sweep:
            imgs = self.generate(self.fp.model, ev.prompts, self.a.noise_seeds[0], guidance=g)
            q = prompt_quality(imgs, ev.colours, ev.classes, None, self.dev)
            out.append({"guidance_scale": g, **q})
            log.info("guidance %.1f: %s", g, q)
        return out

    def run(self) -> None:
        a = self.a
        self.t0 = time.perf_counter()
        if a.prepare_only:
            self.calibration_sets()
            return
        self.sweep = self.guidance_sweep() if a.guidance_sweep and "fp" in a.rows else []
        if "fp" in a.rows:
            self.evaluate("FP", self.fp.model, {"bits": "fp32", "training": self.fp.meta})
            self.save_fp_images()
        else:
            self.load_fp_images()
        if a.rows == ["fp"]:
            return
        needs_set = "ptq" in a.rows or not a.pqcad_student or a.val_trajectories
        cs = self.calibration_sets() if needs_set else None  # a given student is only scored
        if "ptq" in a.rows:
            t = time.perf_counter()
            model, entry = select_ptq_method(
                self.fp.model, QuantConfig(weight_bits=8, act_bits=8), cs, tuple(a.ptq_methods), self.dev
            )
            self.evaluate(
                "PTQ W8A8", model, {"bits": "w8a8", "ptq": entry, "ptq_s": round(time.perf_counter() - t, 1)}
            )
            self.ptq_method = entry["selection"]["best"]
            del model
        if "pqcad" in a.rows:
            name = "PQCAD W8A8" + (f" {a.label}" if a.label else "")
            if a.pqcad_student:
                student = open_model(a.pqcad_student)
                extra = {"student": a.pqcad_student, "pqcad": student.meta.get("pqcad")}
            else:
                student = open_model(self.train_pqcad(cs))
                extra = {"student": str(student.source), "pqcad": student.meta.get("pqcad")}
            extra.update(bits="w8a8", train_time_s=student.meta.get("train_time_s"), calib=str(a.calib))
            self.evaluate(name, student.model.to(self.dev), extra)

    def calibration_sets(self) -> Any:
        """The calibration set (``--calib``) and, with ``--val-trajectories``, the held-out one; collected if missing."""
        a = self.a
        collect = dict(n_trajectories=a.calib_trajectories, steps=a.steps, n_points=a.calib_points, seed=1234)
        collect["batch_size"] = 256
        t = time.perf_counter()
        cs = load_or_collect_calib(
            a.calib, self.fp.model, self.spec, self.dev, collect, True, self.prompts, a.guidance_scale
        )
        self.calib_s = time.perf_counter() - t
        if a.val_trajectories:
            collect.update(n_trajectories=a.val_trajectories, n_points=10, seed=98765)
            self.val = load_or_collect_calib(
                a.work / "val.safetensors", self.fp.model, self.spec, self.dev, collect, True, self.prompts,
                a.guidance_scale,
            )  # fmt: skip
        return cs

    def train_pqcad(self, cs: Any) -> Path:
        a = self.a
        cfg = PQCADConfig(
            bits=("w8a8",),
            schedule="fixed",
            steps=a.pqcad_steps,
            stage1_cap=max(1, a.pqcad_steps),
            batch_size=a.pqcad_batch,
            lr=a.pqcad_lr,
            lr_quant=a.pqcad_lr_quant,
            ptq_method=getattr(self, "ptq_method", "mse" if "mse" in a.ptq_methods else a.ptq_methods[0]),
            save_every=max(1, a.pqcad_steps),
        )
        out = a.work / f"pqcad_w8a8{'_' + a.label if a.label else ''}.pt"
        return train_pqcad(cfg, self.fp.model, self.spec, cs, out, device=str(self.dev), progress=False)

    def save(self) -> None:
        a = self.a
        doc = {
            "environment": environment_info(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "teacher": {"source": self.fp.source, "training": self.fp.meta},
            "prompt_sets": {s: len(ev) for s, ev in self.sets.items()},
            "guidance_sweep": getattr(self, "sweep", []),
            "calib_collect_s": round(getattr(self, "calib_s", 0.0), 1),
            "rows": self.rows,
            "elapsed_s": round(time.perf_counter() - self.t0, 1),
            "notes": "FD is the Frechet distance in the project's Fashion-MNIST classifier feature space on grey "
            "(untinted) images, never Inception FID; FD/PSNR to FP compare with the FP teacher's images for the same "
            "prompts and noise. Class accuracy: the shipped classifier on the untinted garment; colour accuracy: "
            "dominant hue against the prompt's colour.",
        }
        atomic_json_save(doc, a.out or RESULTS / f"t2i_table{'_quick' if a.quick else ''}.json")


def print_rows(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    print(
        f"\ntext-to-image testbed, DDIM {a.steps}, guidance {a.guidance_scale}, noise seeds {a.noise_seeds}"
    )
    w = max([12] + [len(r["row"]) + 2 for r in rows])
    head = f"{'row':<{w}}{'set':<20}{'n':>6}{'class %':>14}{'colour %':>14}{'FD grey':>14}{'FD to FP':>14}"
    head += f"{'PSNR':>12}{'val eps-MSE':>13}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        for s, m in r["sets"].items():

            def cell(k, scale=1.0, fmt=".2f", m=m):
                if k not in m:
                    return "-"
                return f"{m[k] * scale:{fmt}}+-{m[k + '_spread'] * scale:{fmt}}"

            n = m["runs"][0]["n"]
            val = f"{r['val_eps_mse']:.3e}" if "val_eps_mse" in r else "-"
            print(
                f"{r['row']:<{w}}{s:<20}{n:>6}{cell('class_accuracy', 100, '.1f'):>14}"
                f"{cell('colour_accuracy', 100, '.1f'):>14}{cell('fd_fmnist_grey'):>14}{cell('fd_to_fp'):>14}"
                f"{cell('psnr_to_fp', 1, '.1f'):>12}{val:>13}"
            )


def print_table(t: Table) -> None:
    print_rows(t.rows, t.a)
    if t.sweep:
        print("\nFP guidance sweep (seen prompts): " + ", ".join(
            f"s={w['guidance_scale']:g}: class {100 * w['class_accuracy']:.1f} % colour {100 * w['colour_accuracy']:.1f} % "
            f"FD {w['fd_fmnist_grey']:.2f}" for w in t.sweep
        ))  # fmt: skip


def merge(a: argparse.Namespace) -> None:
    """One table (printed, and written to ``--out``) from the JSON files of a sweep's processes."""
    docs = [json.loads(Path(f).read_text()) for f in a.merge]
    rows = [r for d in docs for r in d["rows"]]
    first = argparse.Namespace(**docs[0]["args"])
    print_rows(rows, first)
    if a.out:
        atomic_json_save({"merged_from": [str(f) for f in a.merge], "environment": environment_info(), "runs": docs,
                          "rows": rows}, a.out)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    if a.merge:
        merge(a)
        return 0
    t = Table(a)
    if t.dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t.run()
    print_table(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
