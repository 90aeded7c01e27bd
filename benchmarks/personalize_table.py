"""Personalization table (issue 15): FP DreamBooth vs PEQA vs S1 vs S2 on the text-to-image testbed, per subject.

Each subject is one test-set garment written by ``pqcad-train subject`` (``--subjects Class:colour:index``). Every
method personalizes a fresh copy of its base with the same steps, prompts and seed: ``fp`` the FP teacher,
``peqa`` / ``s1`` / ``s2k2`` / ``s2k4`` / ``mcsu`` the quantized student (``--student``, made by ``pqcad-train ptq``;
S2 with 2 or 4 scale sets; MCSU scored as trained, ``mcsu-exact``, and as deployed, its input-channel scales folded
into new codes, ``mcsu``); ``base-fp`` / ``base-student`` are the models before personalization. All rows are scored on
images from the same noise, for every ``--noise-seeds`` (the table gives the mean and the spread):
- subject fidelity: mean cosine similarity between images of the instance prompt and the subject's reference images
  in the shipped classifier's feature space (the testbed's stand-in for DINO / CLIP-I);
- prompt fidelity: colour and class accuracy on "a photo of a <colour> sks <class>" over the palette's colours;
- class FD (``--fd-n`` > 0): Frechet distance between images of the plain class prompt and the test set's images of
  that class (classifier features): whether personalization damaged what the model knew of the class;
- trainable parameters, patch KB (scale methods), training seconds, peak GPU memory.
One PNG grid per row and subject (instance prompt, then three colours). Prints the table and writes JSON.
``--write-prompts FILE`` writes every prompt of the run (for ``python -m pqcad_deploy.text CACHE --prompts FILE``,
so a GPU without the text encoder runs it with ``--embeddings CACHE``); ``--merge`` prints runs as one table.

    python benchmarks/personalize_table.py --student runs/pers/student.safetensors --steps 200 --n 8   # CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pqcad_deploy.cli.common import refuse_bad_outputs
from pqcad_deploy.conditioning import PromptEncoder, generate_for_prompts
from pqcad_deploy.data import CLASSES, load_fashion_mnist, to_model_range
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.images import save_grid
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import open_model
from pqcad_deploy.metrics import fd_between
from pqcad_deploy.patch import student_patch
from pqcad_deploy.prompt_metrics import class_accuracy, colour_accuracy, subject_fidelity
from pqcad_deploy.quant.scale_tuning import codes_changed, frozen_codes, materialize
from pqcad_deploy.timing import environment_info
from pqcad_deploy.train.finetune import PATCH_METHODS, SAMPLE_STEPS
from pqcad_deploy.train.personalize import PersonalizeConfig, personalize
from pqcad_deploy.train.personalize_data import load_subject, write_default_subject

log = logging.getLogger("personalize_table")
RESULTS = Path(__file__).resolve().parent / "results"
ROWS = ("base-fp", "fp", "base-student", "peqa", "s1", "s2k2", "s2k4", "mcsu")
METRICS = ("subject_fidelity", "subject_fidelity_coloured", "colour_accuracy", "class_accuracy", "class_fd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="fmnist-t2i")
    p.add_argument("--student", default=None, help="quantized student of the teacher (pqcad-train ptq)")
    p.add_argument("--label", default=None, help="the student's name in the table (default: its file stem)")
    p.add_argument(
        "--subjects", nargs="+", default=["Bag:red:0", "Sneaker:blue:0"], help="Class:colour:index"
    )
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--s1-timesteps", default="0:500", help="LO:HI of the s1 rows")
    p.add_argument("--prior-weight", type=float, default=1.0)
    p.add_argument("--prior-images", type=int, default=16)
    p.add_argument("--sample-steps", type=int, default=SAMPLE_STEPS, help="DDIM steps of the scored images")
    p.add_argument("--n", type=int, default=16, help="images per prompt (instance prompt and each colour)")
    p.add_argument("--noise-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--fd-n", type=int, default=0, help="class-prompt images for the class FD (0: none)")
    p.add_argument(
        "--embeddings", default=None, help="prompt embedding cache (--write-prompts); else the encoder"
    )
    p.add_argument("--text-encoder", default=None)
    p.add_argument("--write-prompts", type=Path, default=None, help="write every prompt of the run and exit")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="print these runs' JSON as one table")
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    refuse_bad_outputs(p, {"--out": a.out})
    if a.merge is None and a.write_prompts is None and a.student is None and set(a.rows) - {"base-fp", "fp"}:
        p.error("--student is needed for every row but base-fp and fp")
    return a


def config(row: str, word: str, a: argparse.Namespace) -> PersonalizeConfig:
    lo, hi = (int(v) for v in a.s1_timesteps.split(":"))
    method = {"base-fp": "fp", "base-student": "peqa", "s2k2": "s2", "s2k4": "s2"}.get(row, row)
    return PersonalizeConfig(method, class_word=word, steps=a.steps, prior_weight=a.prior_weight,
                             prior_images=a.prior_images,
                             timesteps=(lo, hi) if row == "s1" else None,
                             intervals={"s2k2": 2, "s2k4": 4}.get(row))  # fmt: skip


def score(model, spec, prompts, cfg: PersonalizeConfig, refs, cls: int, a, seed: int, dev) -> dict[str, Any]:
    den = TorchDenoiser(model.eval())

    def gen(texts: list[str], offset: int) -> torch.Tensor:
        return generate_for_prompts(den, spec, texts, prompts, a.sample_steps, cfg.guidance_scale,
                                    seed=10_000 * seed + offset, device=dev, progress=False)  # fmt: skip

    inst = gen([cfg.instance_prompt] * a.n, 1000)
    coloured = cfg.coloured_prompts()
    imgs = gen([t for t in coloured for _ in range(a.n)], 2000)
    labels = torch.arange(len(coloured)).repeat_interleave(a.n)
    out = {
        "subject_fidelity": subject_fidelity(inst, refs, dev),
        "subject_fidelity_coloured": subject_fidelity(imgs, refs, dev),
        "colour_accuracy": colour_accuracy(imgs, labels),
        "class_accuracy": class_accuracy(imgs, torch.full((len(imgs),), cls), dev),
        "grid": torch.cat([inst[:4], imgs[: 4 * a.n : a.n]]),
    }
    if a.fd_n:
        test = load_fashion_mnist("test")
        ref = to_model_range(test.images[test.labels == cls])
        out["class_fd"] = fd_between(gen([cfg.class_prompt] * a.fd_n, 3000), ref, dev)
    return out


def table_prompts(a: argparse.Namespace) -> list[str]:
    return list(
        dict.fromkeys(p for s in a.subjects for p in config("peqa", s.split(":")[0].lower(), a).prompts())
    )


def summarize(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each metric over the noise seeds, and its spread (max - min)."""
    out: dict[str, Any] = {"per_seed": scores}
    for k in METRICS:
        vals = [s[k] for s in scores if k in s]
        if vals:
            out[k], out[f"{k}_spread"] = float(np.mean(vals)), float(np.ptp(vals))
    return out


def run(a: argparse.Namespace, dev: torch.device) -> list[dict[str, Any]]:
    teacher = open_model(a.teacher)
    student = open_model(a.student) if a.student else None
    label = a.label or (Path(a.student).stem if a.student else "fp")
    spec = teacher.spec
    prompts = PromptEncoder.open(spec, embeddings=a.embeddings, text_encoder=a.text_encoder, device=dev)
    out = a.out or RESULTS / "personalize_table.json"
    grids = out.with_suffix("")
    grids.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for subj in a.subjects:
        name, colour, index = subj.split(":")
        with tempfile.TemporaryDirectory() as d:
            write_default_subject(d, name, colour, int(index))
            refs = load_subject(d, spec)
        for row in a.rows:
            cfg = config(row, name.lower(), a)
            base = teacher if row in ("base-fp", "fp") else student
            model = copy.deepcopy(base.model).to(dev)
            rec: dict[str, Any] = {"subject": subj, "row": row, "student": None if base is teacher else label}
            if not row.startswith("base"):
                train = personalize(
                    model, spec, refs, prompts, cfg, dev, progress=False, keep_frozen=row == "mcsu"
                )
                rec.update({k: train[k] for k in ("trainable_parameters", "seconds", "peak_gpu_memory_mb")})
                if cfg.method in PATCH_METHODS:
                    with tempfile.TemporaryDirectory() as d:
                        path = student_patch(model, {"method": row}).save(Path(d) / "p.safetensors")
                        rec["patch_kb"] = round(
                            (path.stat().st_size + path.with_suffix(".json").stat().st_size) / 1024, 1
                        )
            todo = [(rec, model)]
            if row == "mcsu":  # scored as trained (exact), then as deployed: folded into new codes
                codes = frozen_codes(model)
                deployed = copy.deepcopy(model)
                materialize(deployed)
                todo = [({**rec, "row": "mcsu-exact"}, model),
                        ({**rec, "codes_changed": codes_changed(deployed, codes)}, deployed)]  # fmt: skip
            for r, m in todo:
                scores = [
                    score(m, spec, prompts, cfg, refs, CLASSES.index(name), a, s, dev) for s in a.noise_seeds
                ]
                grid = grids / f"{name.lower()}_{r['student'] or 'fp'}_{r['row']}.png"
                save_grid(scores[0]["grid"], grid, nrow=4)
                r.update(summarize([{k: v for k, v in s.items() if k != "grid"} for s in scores]))
                rows.append(r)
                log.info("%s %s %s: %s", subj, r["student"], r["row"],
                         {k: r[k] for k in (*METRICS, "codes_changed") if k in r})  # fmt: skip
            atomic_json_save({"environment": environment_info(), "args": {k: str(v) for k, v in vars(a).items()},
                              "rows": rows}, out)  # fmt: skip
    print(f"JSON: {out}")
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    def pm(r: dict[str, Any], k: str, scale: float = 1.0, fmt: str = ".3f") -> str:
        if k not in r:
            return "-"
        spread = r.get(f"{k}_spread", 0.0) * scale / 2
        return f"{r[k] * scale:{fmt}}+-{spread:{fmt}}"

    print(f"{'subject':15s} {'student':8s} {'row':12s} {'subject sim':>13s} {'colour %':>11s} {'class %':>11s} "
          f"{'class FD':>13s} {'params':>9s} {'patch KB':>8s} {'train s':>7s} {'GPU MB':>7s}")  # fmt: skip
    for r in rows:
        print(f"{r['subject']:15s} {r.get('student') or '-':8s} {r['row']:12s} {pm(r, 'subject_fidelity'):>13s} "
              f"{pm(r, 'colour_accuracy', 100, '.1f'):>11s} {pm(r, 'class_accuracy', 100, '.1f'):>11s} "
              f"{pm(r, 'class_fd', 1, '.2f'):>13s} {r.get('trainable_parameters', 0):9d} {r.get('patch_kb', 0):8.1f} "
              f"{r.get('seconds', 0):7.1f} {r.get('peak_gpu_memory_mb') or 0:7.0f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    if a.write_prompts is not None:
        a.write_prompts.write_text("\n".join(table_prompts(a)) + "\n")
        print(f"wrote {len(table_prompts(a))} prompts to {a.write_prompts}")
        return 0
    if a.merge is not None:
        rows = [r for f in a.merge for r in json.loads(f.read_text())["rows"]]
        print_table(rows)
        if a.out:
            atomic_json_save({"merged": [str(f) for f in a.merge], "rows": rows}, a.out)
        return 0
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print_table(run(a, dev))
    return 0


if __name__ == "__main__":
    sys.exit(main())
