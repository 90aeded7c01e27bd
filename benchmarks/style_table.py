"""StyleForge table (issue 16): per style, the StyleRef-only baseline vs Single- vs Multi-StyleForge on the FP
text-to-image teacher, then the chosen FP row quantized (PTQ W8A8 / W4A8, calibrated on styled prompts; PQCAD W8A8
on the same set with ``--pqcad-steps``) and the quantized-personalization route (PEQA scales of the teacher's W8A8
student, ``--student``).

Styles are the testbed's renderings (``pqcad-train style-images``: 16 test-set garments each, split ``upper`` /
``other`` for Multi-StyleForge's two tokens). Every row tunes a fresh copy of its base with the same steps and seed
and is scored on images from the same noise for every ``--noise-seeds`` (mean and spread in the table):
- style fidelity (the shipped style classifier's vote for the target style) and the Gram distance to StyleRef, on
  "a {colour} {garment} in sks style" over every class and colour (``--per-prompt`` images each);
- prompt fidelity on the same images: class (style classifier's garment head) and colour accuracy, on the teacher's
  seen pairs and on its held-out pairs;
- leak: style fidelity of plain prompts ("a red dress"): how much the style spills into prompts without the token;
- FD-fmnist of the grey images (expected to rise with style), FD to the FP styled model for quantized rows;
- trainable parameters, training seconds, peak GPU memory.
One PNG grid per row (four styled prompts x four noise seeds, the same noise for every row). Prints the table and
writes JSON; ``--write-prompts FILE`` lists every prompt (for a prompts-only embedding cache on a GPU without the
text encoder); ``--merge`` prints several runs as one table.

    python benchmarks/style_table.py --styles outline --rows single --steps 100 --per-prompt 1 --device cpu
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pqcad_deploy.captions import ALL_PAIRS, EMPTY_PROMPT, HELD_OUT_PAIRS
from pqcad_deploy.cli.common import refuse_bad_outputs
from pqcad_deploy.conditioning import PromptEncoder, generate_for_prompts
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.images import save_grid, to_uint8
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import open_model
from pqcad_deploy.metrics import over_seeds
from pqcad_deploy.quant import QuantConfig, parse_bits
from pqcad_deploy.style_metrics import style_outputs, style_scores
from pqcad_deploy.styles import STYLE_CLASSES, STYLES
from pqcad_deploy.timing import environment_info
from pqcad_deploy.train.calib import load_or_collect_calib
from pqcad_deploy.train.finetune import SAMPLE_STEPS
from pqcad_deploy.train.pqcad import train_pqcad
from pqcad_deploy.train.pqcad_config import PQCADConfig
from pqcad_deploy.train.ptq import ptq_student
from pqcad_deploy.train.style import StyleConfig, stylize, training_sets
from pqcad_deploy.train.style_data import load_style, subject_words, write_default_style

log = logging.getLogger("style_table")
RESULTS = Path(__file__).resolve().parent / "results"
FP_ROWS = ("teacher", "dreambooth", "single", "multi")
TOKENS = {"multi": ("sks", "zwx")}
METRICS = ("style_fidelity", "gram_distance", "class_accuracy", "colour_accuracy", "class_held_out",
           "colour_held_out", "leak", "fd_fmnist_grey", "fd_to_fp")  # fmt: skip
PLAIN = ((0, 3), (5, 7), (3, 8), (6, 0))  # red dress, blue sneaker, green bag, purple t-shirt: leak prompts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="fmnist-t2i")
    p.add_argument(
        "--student", default=None, help="W8A8 student of the teacher: the peqa row (pqcad-train ptq)"
    )
    p.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    p.add_argument("--rows", nargs="+", default=list(FP_ROWS), choices=FP_ROWS, help="FP rows")
    p.add_argument(
        "--quantize", default="single", choices=FP_ROWS[1:], help="the FP row the PTQ rows quantize"
    )
    p.add_argument("--bits", nargs="*", default=["w8a8", "w4a8"], help="PTQ rows of --quantize (none: skip)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=None, help="fp rows (default: pqcad-train style's)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="images per step from each set (default: the CLI's)"
    )
    p.add_argument(
        "--label", default="", help="appended to every row name (runs with other settings, merged)"
    )
    p.add_argument("--pqcad-steps", type=int, default=0, help="W8A8 PQCAD row of --quantize (0: skip)")
    p.add_argument("--pqcad-batch", type=int, default=128)
    p.add_argument("--pqcad-lr", type=float, default=1e-5, help="the PQCAD row's weights")
    p.add_argument("--peqa-lr", type=float, default=None, help="the peqa row (default: 1e-3, log space)")
    p.add_argument("--aux-images", type=int, default=16)
    p.add_argument(
        "--per-prompt", type=int, default=4, help="images per (colour, class) prompt and noise seed"
    )
    p.add_argument("--noise-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--sample-steps", type=int, default=SAMPLE_STEPS, help="DDIM steps of the scored images")
    p.add_argument("--calib-trajectories", type=int, default=64, help="PTQ: styled rollouts")
    p.add_argument("--embeddings", default=None, help="prompt embedding cache (--write-prompts)")
    p.add_argument("--text-encoder", default=None)
    p.add_argument("--write-prompts", type=Path, default=None, help="write every prompt of the run and exit")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="print these runs' JSON as one table")
    p.add_argument(
        "--work", type=Path, default=None, help="where the style folders are written (default: temp)"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    refuse_bad_outputs(p, {"--out": a.out})
    if a.pqcad_steps < 0 or a.pqcad_batch < 1:  # refused before any training, not after the FP rows
        p.error(f"--pqcad-steps must be >= 0 and --pqcad-batch >= 1 (got {a.pqcad_steps}, {a.pqcad_batch})")
    return a


def eval_prompts(
    cfg: StyleConfig, per_prompt: int
) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Styled prompts over every (colour, class) pair: (prompts, colour, class, held-out?) per image."""
    pairs = [p for p in ALL_PAIRS for _ in range(per_prompt)]
    texts = [cfg.prompt(subject_words(c, k)) for c, k in pairs]
    held = torch.tensor([p in HELD_OUT_PAIRS for p in pairs])
    return texts, torch.tensor([c for c, _ in pairs]), torch.tensor([k for _, k in pairs]), held


def plain_prompts(per_prompt: int) -> list[str]:
    return [f"a {subject_words(c, k)}" for c, k in PLAIN for _ in range(per_prompt)]


def calib_prompts(cfg: StyleConfig) -> list[str]:
    """Styled prompts of the teacher's seen pairs: what a styled deployment is calibrated on (--calib-prompts)."""
    return [cfg.prompt(subject_words(c, k)) for c, k in ALL_PAIRS if (c, k) not in HELD_OUT_PAIRS]


def score(model, spec, prompts, cfg: StyleConfig, style: str, refs: torch.Tensor, a, seed: int, dev,
          fp_images: torch.Tensor | None = None, keep: Path | None = None
          ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:  # fmt: skip
    """(metrics, the styled images, the grid) of ``model`` for one noise seed; ``keep``: also save the scored
    images there (uint8 .npz, styled and plain) so that they can be scored again without a GPU."""
    den = TorchDenoiser(model.eval())

    def gen(texts: list[str], offset: int) -> torch.Tensor:
        return generate_for_prompts(den, spec, texts, prompts, a.sample_steps, cfg.guidance_scale,
                                    seed=10_000 * seed + offset, device=dev, progress=False).cpu()  # fmt: skip

    texts, colours, classes, held = eval_prompts(cfg, a.per_prompt)
    imgs = gen(texts, 1000)
    out = style_scores(imgs, style, refs, colours, classes, fp_images, dev, held_out=held)
    plain = gen(plain_prompts(a.per_prompt), 3000)
    out["leak"] = float((style_outputs(plain, dev)[0] == STYLE_CLASSES.index(style)).double().mean())
    if keep is not None:
        np.savez_compressed(keep, styled=to_uint8(imgs), plain=to_uint8(plain))
    grid = gen([t for t in cfg.showcase_prompts() for _ in range(4)], 5000)
    return out, imgs, grid


def row_config(row: str, a: argparse.Namespace, method: str = "fp") -> StyleConfig:
    extra = {"batch_size": a.batch_size} if a.batch_size else {}
    return StyleConfig(method=method, steps=a.steps, lr=a.peqa_lr if method != "fp" else a.lr,
                       tokens=TOKENS.get(row, ("sks",)), aux_images=0 if row == "dreambooth" else a.aux_images,
                       **extra)  # fmt: skip


def pqcad_config(a: argparse.Namespace) -> PQCADConfig:
    """W8A8 PQCAD of the styled FP model on its styled calibration set, in the ONNX Runtime placement of the PTQ
    rows: fixed bits (one width, so no switch), CAD towards the FP styled model, weights at ``--pqcad-lr``."""
    return PQCADConfig(bits=("w8a8",), schedule="fixed", target="onnxruntime", steps=a.pqcad_steps,
                       stage1_cap=a.pqcad_steps, batch_size=a.pqcad_batch, lr=a.pqcad_lr,
                       save_every=a.pqcad_steps)  # fmt: skip


def folders_for(row: str, style_dir: Path) -> list[Path]:
    return [style_dir / "upper", style_dir / "other"] if row == "multi" else [style_dir]


def all_prompts(a: argparse.Namespace, spec, work: Path) -> list[str]:
    texts = [EMPTY_PROMPT, *plain_prompts(1)]
    for style in a.styles:
        d = work / style
        write_default_style(d, style)
        for row in FP_ROWS[1:]:
            cfg = row_config(row, a)
            texts += [t for s in training_sets(cfg, folders_for(row, d), spec) for t in s.prompts]
            texts += eval_prompts(cfg, 1)[0] + cfg.showcase_prompts()
    return list(dict.fromkeys(texts))


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'style':9} {'row':18} {'style fid.':>12} {'Gram dist.':>12} {'class %':>11} {'colour %':>11} "
            f"{'held-out c/c %':>15} {'leak %':>7} {'FD-fm grey':>11} {'FD to FP':>9} {'params':>9} {'train s':>8}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in rows:

        def pm(k, scale=1.0, fmt=".3f", r=r):
            return "-" if k not in r else f"{scale * r[k]:{fmt}}+-{scale * r[k + '_spread']:{fmt}}"

        held = (
            "-"
            if "class_held_out" not in r
            else f"{100 * r['class_held_out']:.0f}/{100 * r['colour_held_out']:.0f}"
        )
        print(f"{r['style']:9} {r['row']:18} {pm('style_fidelity'):>12} {pm('gram_distance'):>12} "
              f"{pm('class_accuracy', 100, '.1f'):>11} {pm('colour_accuracy', 100, '.1f'):>11} {held:>15} "
              f"{100 * r.get('leak', 0):>6.1f} {r.get('fd_fmnist_grey', float('nan')):>11.2f} "
              f"{r.get('fd_to_fp', float('nan')):>9.3f} {r.get('trainable_parameters') or '-':>9} "
              f"{r.get('seconds') or '-':>8}")  # fmt: skip


def run_style(
    style: str, a, teacher, student, prompts, work: Path, grids_dir: Path, dev, on_row=lambda row: None
) -> list[dict[str, Any]]:
    """Every row of one style; ``on_row`` sees each row as it finishes (the JSON is rewritten per row)."""
    spec = teacher.spec
    style_dir = work / style
    write_default_style(style_dir, style)
    grids_dir.mkdir(parents=True, exist_ok=True)
    rows, fp_imgs, fp_models = [], {}, {}
    refs = load_style(
        style_dir, "sks", spec
    ).images  # StyleRef alone: training_sets would read the Aux set too

    def record(name: str, model, cfg: StyleConfig, train: dict | None, fp_of: str | None = None) -> None:
        runs, grids = [], []
        for seed in a.noise_seeds:
            ref = fp_imgs.get((fp_of, seed)) if fp_of else None
            keep = grids_dir / f"{style}_{name}{a.label}_seed{seed}.npz"
            metrics, imgs, grid = score(model, spec, prompts, cfg, style, refs, a, seed, dev, ref, keep)
            runs.append(metrics)
            grids.append(grid)
            if fp_of is None:
                fp_imgs[(name, seed)] = imgs
        save_grid(grids[0], grids_dir / f"{style}_{name}.png", nrow=4)
        row = {"style": style, "row": name, **over_seeds(runs, METRICS), "runs": runs}
        if train:
            row.update({k: train[k] for k in ("trainable_parameters", "seconds", "peak_gpu_memory_mb")})
        row["row"] += a.label
        rows.append(row)
        on_row(row)
        log.info("%s %s: %s", style, name, {k: row[k] for k in METRICS if k in row})

    for name in a.rows:
        cfg = row_config(name, a)
        model = copy.deepcopy(teacher.model).to(dev)
        train = None
        if name != "teacher":
            sets = training_sets(cfg, folders_for(name, style_dir), spec)
            train = stylize(model, spec, sets, prompts, cfg, dev, progress=False)
            fp_models[name] = model
        record(name, model, cfg, train)
    if a.quantize in fp_models and (a.bits or a.pqcad_steps):
        cfg = row_config(a.quantize, a)
        prompts.calibration_prompts = calib_prompts(cfg)  # as pqcad-train ptq --calib-prompts FILE does
        collect = {"n_trajectories": a.calib_trajectories, "steps": 20, "n_points": 10, "batch_size": 256,
                   "seed": 0}  # fmt: skip
        calib = load_or_collect_calib(None, fp_models[a.quantize], spec, dev, collect, False, prompts,
                                      cfg.guidance_scale)  # fmt: skip
        prompts.calibration_prompts = None
        for bits in a.bits:
            w, act = parse_bits(bits)
            q = QuantConfig(weight_bits=w, act_bits=act, target="onnxruntime", calib_method="mse")
            model, _ = ptq_student(fp_models[a.quantize], q, calib, dev)
            record(f"{a.quantize}-ptq-{bits}", model, cfg, None, fp_of=a.quantize)
        if a.pqcad_steps:
            t0 = time.perf_counter()
            path = train_pqcad(pqcad_config(a), fp_models[a.quantize], spec, calib,
                               work / f"{style}_{a.quantize}_pqcad_w8a8{a.label}.pt", device=str(dev),
                               progress=False)  # fmt: skip
            model = open_model(path).model.to(dev)
            train = {"trainable_parameters": sum(p.numel() for p in model.parameters()),
                     "seconds": round(time.perf_counter() - t0, 1), "peak_gpu_memory_mb": None}  # fmt: skip
            record(f"{a.quantize}-pqcad-w8a8", model, cfg, train, fp_of=a.quantize)
    if student is not None:
        cfg = row_config("single", a, method="peqa")
        model = copy.deepcopy(student.model)
        train = stylize(model, spec, training_sets(cfg, [style_dir], spec), prompts, cfg, dev, progress=False)
        record("single-peqa-w8a8", model, cfg, train, fp_of="single" if "single" in fp_models else None)
    return rows


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    if a.merge:
        rows = [r for f in a.merge for r in json.loads(f.read_text())["rows"]]
        print_table(rows)
        if a.out:
            atomic_json_save({"merged_from": [str(f) for f in a.merge], "rows": rows}, a.out)
        return 0
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher = open_model(a.teacher)
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        if a.write_prompts:
            texts = all_prompts(a, teacher.spec, work)
            a.write_prompts.write_text("\n".join(texts) + "\n", encoding="utf-8")
            print(f"wrote {len(texts)} prompts to {a.write_prompts}")
            return 0
        prompts = PromptEncoder.open(
            teacher.spec, embeddings=a.embeddings, text_encoder=a.text_encoder, device=dev
        )
        student = open_model(a.student) if a.student else None
        rows: list[dict[str, Any]] = []
        out = a.out or RESULTS / "style_table.json"

        def save(row: dict[str, Any]) -> None:
            rows.append(row)
            atomic_json_save({"args": {k: str(v) for k, v in vars(a).items()}, "environment": environment_info(),
                              "rows": rows}, out)  # fmt: skip

        for style in a.styles:
            run_style(
                style, a, teacher, student, prompts, work, out.with_name(out.stem + "_grids"), dev, save
            )
    print_table(rows)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
