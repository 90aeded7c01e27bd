"""Personalization table (issue 15): FP DreamBooth vs PEQA vs S1 on the text-to-image testbed, per subject.

Each subject is one test-set garment written by ``pqcad-train subject`` (``--subjects Class:colour:index``). Every
method personalizes a fresh copy of its base with the same steps, prompts and seed: ``fp`` the FP teacher,
``peqa`` / ``s1`` the quantized student (``--student``, made by ``pqcad-train ptq``); ``base-fp`` / ``base-student``
are the models before personalization. All rows are scored on images from the same noise:
- subject fidelity: mean cosine similarity between images of the instance prompt and the subject's reference images
  in the shipped classifier's feature space (the testbed's stand-in for DINO / CLIP-I);
- prompt fidelity: colour and class accuracy on "a photo of a <colour> sks <class>" over the palette's colours;
- trainable parameters, patch KB (scale methods), training seconds, peak GPU memory.
One PNG grid per row and subject (instance prompt, then three colours). Prints the table and writes JSON.

    python benchmarks/personalize_table.py --student runs/pers/student.safetensors --steps 200 --n 8   # CPU
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy.captions import PALETTE
from pqcad_deploy.conditioning import PromptEncoder, generate_for_prompts
from pqcad_deploy.data import CLASSES
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.images import save_grid
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import open_model
from pqcad_deploy.patch import student_patch
from pqcad_deploy.prompt_metrics import class_accuracy, colour_accuracy, subject_fidelity
from pqcad_deploy.timing import environment_info
from pqcad_deploy.train.personalize import SAMPLE_STEPS, PersonalizeConfig, personalize
from pqcad_deploy.train.personalize_data import load_subject, write_default_subject

log = logging.getLogger("personalize_table")
RESULTS = Path(__file__).resolve().parent / "results"
ROWS = ("base-fp", "fp", "base-student", "peqa", "s1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="fmnist-t2i")
    p.add_argument("--student", required=True, help="quantized student of the teacher (pqcad-train ptq)")
    p.add_argument(
        "--subjects", nargs="+", default=["Bag:red:0", "Sneaker:blue:0"], help="Class:colour:index"
    )
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--s1-timesteps", default="0:500", help="LO:HI of the s1 rows")
    p.add_argument("--prior-weight", type=float, default=1.0)
    p.add_argument("--n", type=int, default=16, help="images per prompt (instance prompt and each colour)")
    p.add_argument("--text-encoder", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def score(model, spec, prompts, cfg: PersonalizeConfig, refs: torch.Tensor, cls: int, n: int, dev) -> dict:
    den = TorchDenoiser(model.eval())
    inst = generate_for_prompts(den, spec, [cfg.instance_prompt] * n, prompts, SAMPLE_STEPS, cfg.guidance_scale,
                                seed=1000, device=dev, progress=False)  # fmt: skip
    colours = [c.name for c in PALETTE]
    texts = [f"a photo of a {c} {cfg.token} {cfg.class_word}" for c in colours for _ in range(n)]
    imgs = generate_for_prompts(den, spec, texts, prompts, SAMPLE_STEPS, cfg.guidance_scale, seed=2000,
                                device=dev, progress=False)  # fmt: skip
    labels = torch.arange(len(colours)).repeat_interleave(n)
    return {
        "subject_fidelity": subject_fidelity(inst, refs, dev),
        "subject_fidelity_coloured": subject_fidelity(imgs, refs, dev),
        "colour_accuracy": colour_accuracy(imgs, labels),
        "class_accuracy": class_accuracy(imgs, torch.full((len(imgs),), cls), dev),
        "grid": torch.cat([inst[:4], imgs[: 4 * n : n]]),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher, student = open_model(a.teacher), open_model(a.student)
    spec = teacher.spec
    prompts = PromptEncoder.open(spec, text_encoder=a.text_encoder, device=dev)
    out = a.out or RESULTS / "personalize_table.json"
    grids = out.with_suffix("")
    grids.mkdir(parents=True, exist_ok=True)
    lo, hi = (int(v) for v in a.s1_timesteps.split(":"))
    rows: list[dict[str, Any]] = []
    for subj in a.subjects:
        name, colour, index = subj.split(":")
        with tempfile.TemporaryDirectory() as d:
            write_default_subject(d, name, colour, int(index))
            refs = load_subject(d, spec)
        word = name.lower()
        for row in a.rows:
            trained = not row.startswith("base")
            cfg = PersonalizeConfig(row if trained else "fp", class_word=word, steps=a.steps,
                                    prior_weight=a.prior_weight, timesteps=(lo, hi) if row == "s1" else None)  # fmt: skip
            base = teacher if row in ("base-fp", "fp") else student
            model = copy.deepcopy(base.model).to(dev)
            rec: dict[str, Any] = {"subject": subj, "row": row}
            if trained:
                train = personalize(model, spec, refs, prompts, cfg, dev, progress=False)
                rec.update({k: train[k] for k in ("trainable_parameters", "seconds", "peak_gpu_memory_mb")})
                if row in ("peqa", "s1"):
                    with tempfile.TemporaryDirectory() as d:
                        path = student_patch(model, {"method": row}).save(Path(d) / "p.safetensors")
                        rec["patch_kb"] = round(path.stat().st_size / 1024, 1)
            s = score(model, spec, prompts, cfg, refs, CLASSES.index(name), a.n, dev)
            save_grid(s.pop("grid"), grids / f"{name.lower()}_{row}.png", nrow=4)
            rec.update(s)
            rows.append(rec)
            log.info("%s %s: %s", subj, row, {k: v for k, v in rec.items() if k not in ("subject", "row")})
            atomic_json_save({"environment": environment_info(), "args": {k: str(v) for k, v in vars(a).items()},
                              "rows": rows}, out)  # fmt: skip
    print(f"{'subject':16s} {'row':13s} {'subject sim':>11s} {'colour %':>9s} {'class %':>8s} {'params':>9s} "
          f"{'patch KB':>9s} {'train s':>8s}")  # fmt: skip
    for r in rows:
        print(f"{r['subject']:16s} {r['row']:13s} {r['subject_fidelity']:11.3f} {100 * r['colour_accuracy']:9.1f} "
              f"{100 * r['class_accuracy']:8.1f} {r.get('trainable_parameters', 0):9d} {r.get('patch_kb', 0):9.1f} "
              f"{r.get('seconds', 0):8.1f}")  # fmt: skip
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
