"""``pqcad-train style``: StyleForge (arXiv 2404.05256) on a text-to-image model, from a folder of style images.

- Single-StyleForge: one ``--images`` folder (StyleRef, 15-20 images) bound to one ``--token``, captioned "a {subject}
  in {token} style", trained together with ``--aux-images`` Aux images (plain tinted garments of the training split
  with their plain captions, "a red dress") weighted by ``--aux-weight``: the dual binding that keeps class and
  colour words working in styled prompts ("a red dress in sks style");
- Multi-StyleForge: two or more ``--images`` folders, each bound to its own ``--token`` (one aspect of the style
  each; the testbed's default split is ``upper`` garments vs ``other``), trained jointly; prompts combine the tokens
  ("a red dress in sks zwx style");
- the DreamBooth-style baseline: ``--aux-images 0`` (StyleRef alone).
``--method fp`` (default) fine-tunes every weight of an FP model; on a quantized student ``--method peqa`` (or s1,
s2, mcsu) tunes only its scales, the quantized-personalization route (``pqcad-train personalize``), and ``--out`` is
a scale patch for ``pqcad-patch``. Optional prior preservation (``--prior-images``) adds the model's own images of
the Aux prompts. A sample grid of styled prompts is written beside ``--out``.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy.captions import EMPTY_PROMPT
from pqcad_deploy.cli.common import add_subcommand, float_range, int_range, resolve_device
from pqcad_deploy.conditioning import PromptEncoder, check_cache
from pqcad_deploy.errors import UsageError
from pqcad_deploy.loading import open_model
from pqcad_deploy.styles import STYLES
from pqcad_deploy.zoo import ModelSpec

from .finetune import SAMPLE_STEPS, PromptedImages, TuneConfig, tune
from .finetune_cli import add_tune_args, check_run, parse_timesteps, save_result, showcase
from .personalize import model_samples, warn_split_token
from .style_data import DEFAULT_CAPTION, aux_set, check_tokens, load_style, subject_words, write_default_style

log = logging.getLogger(__name__)

# what the grid shows: (colour, class) of a few garments, one row each
SHOWCASE = ((0, 3), (5, 7), (3, 8), (6, 0))  # red dress, blue sneaker, green bag, purple t-shirt


FP_LR = 5e-5  # learned the outline style in 300 steps of 8 + 8 images on the CPU (RESULTS "StyleForge")


@dataclass
class StyleConfig(TuneConfig):
    method: str = "fp"
    steps: int = 300
    lr: float | None = None  # default: FP_LR for fp, the loop's for the scale methods
    batch_size: int = 8
    tokens: tuple[str, ...] = ("sks",)
    caption: str = DEFAULT_CAPTION
    aux_images: int = 16  # 0: the DreamBooth-style baseline, StyleRef alone
    aux_weight: float = 1.0
    prior_images: int = 0
    prior_weight: float = 1.0
    guidance_scale: float = 3.0
    data_dir: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.lr is None and self.method == "fp":
            self.lr = FP_LR
        super().__post_init__()
        check_tokens(list(self.tokens))
        if self.prior_images > 0 and (self.aux_images == 0 or self.aux_weight == 0):
            raise UsageError(
                "--prior-images draws the model's own images of the Aux prompts; "
                "give --aux-images > 0 and --aux-weight > 0."
            )

    def prompt(self, subject: str) -> str:
        """A styled prompt; with several tokens (Multi-StyleForge) they are combined in one phrase."""
        return self.caption.format(subject=subject, token=" ".join(self.tokens))

    def showcase_prompts(self) -> list[str]:
        return [self.prompt(subject_words(c, k)) for c, k in SHOWCASE]


def training_sets(cfg: StyleConfig, folders: list[Path], spec: ModelSpec) -> list[PromptedImages]:
    """StyleRef (every folder with its token) and, with ``aux_images`` > 0, the Aux set."""
    refs = [load_style(f, t, spec, cfg.caption) for f, t in zip(folders, cfg.tokens, strict=True)]
    sets = [
        PromptedImages(torch.cat([r.images for r in refs]), [p for r in refs for p in r.prompts], 1.0, True)
    ]
    if cfg.aux_images > 0 and cfg.aux_weight > 0:
        sets.append(aux_set(cfg.aux_images, cfg.aux_weight, spec, cfg.seed, cfg.data_dir))
    return sets


def stylize(
    model: torch.nn.Module,
    spec: ModelSpec,
    sets: list[PromptedImages],
    prompts: PromptEncoder,
    cfg: StyleConfig,
    device: torch.device,
    progress: bool = True,
    sampler_steps: int = SAMPLE_STEPS,
    keep_frozen: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place on the StyleRef / Aux ``sets`` (:func:`training_sets`), with prior preservation
    on the model's own images of the Aux prompts when ``cfg.prior_images`` > 0; returns the training record."""
    sets = list(sets)
    if cfg.prior_images > 0 and cfg.prior_weight > 0:
        aux_prompts = sets[1].prompts
        texts = [aux_prompts[i % len(aux_prompts)] for i in range(cfg.prior_images)]
        sets.append(model_samples(model, spec, texts, prompts, cfg.guidance_scale, cfg.seed + 1, device,
                                  cfg.prior_weight))  # fmt: skip
    record = tune(model, spec, sets, prompts, cfg, device, progress, sampler_steps, keep_frozen)
    record["style"] = {"tokens": list(cfg.tokens), "multi": len(cfg.tokens) > 1, "aux_images": cfg.aux_images}
    return record


def run(args: argparse.Namespace) -> None:
    bundle = open_model(args.model)
    spec = bundle.spec
    out = check_run(args, bundle, "StyleForge")
    tokens = args.token or ["sks"]
    if len(tokens) != len(args.images):
        raise UsageError(f"{len(args.images)} --images folder(s) but {len(tokens)} --token(s): give one token per "
                         "folder (one folder: Single-StyleForge; several: Multi-StyleForge).")  # fmt: skip
    device = resolve_device(args.device)
    cfg = StyleConfig(method=args.method, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                      timesteps=parse_timesteps(args.timesteps), seed=args.seed, intervals=args.intervals,
                      tokens=tuple(tokens), caption=args.caption, aux_images=args.aux_images,
                      aux_weight=args.aux_weight, prior_images=args.prior_images, prior_weight=args.prior_weight,
                      guidance_scale=args.guidance_scale, data_dir=args.data_dir)  # fmt: skip
    sets = training_sets(cfg, args.images, spec)
    prompts = PromptEncoder.open(
        spec, embeddings=args.embeddings, text_encoder=args.text_encoder, device=device
    )
    check_cache(prompts, [EMPTY_PROMPT, *(p for s in sets for p in s.prompts), *cfg.showcase_prompts()],
                args.embeddings)  # fmt: skip
    for t in cfg.tokens:
        warn_split_token(prompts, t)
    steps = (bundle.meta.get("sampling") or {}).get("steps") or SAMPLE_STEPS
    record = stylize(bundle.model, spec, sets, prompts, cfg, device, progress=not args.no_progress,
                     sampler_steps=steps)  # fmt: skip
    record.update(images=[str(f) for f in args.images], base=str(bundle.source))
    save_result(bundle, cfg.method, record, out, args.save_student, "style")
    grid = showcase(bundle.model, spec, prompts, cfg, device, out.with_name(out.stem + "_grid.png"))
    kind = (
        "Multi-StyleForge" if len(tokens) > 1 else "Single-StyleForge" if cfg.aux_images else "StyleRef only"
    )
    print(f"wrote {out} ({kind}, {cfg.method}, {record['trainable_parameters']} trainable parameters, "
          f"{record['seconds']} s); samples: {grid}")  # fmt: skip


def run_images(args: argparse.Namespace) -> None:
    files = write_default_style(args.out, args.style, args.count, args.data_dir, args.seed)
    print(
        f"wrote {len(files)} {args.style} images (with caption sidecars) to {args.out}/upper and {args.out}/other"
    )


def register(sub: Any) -> None:
    s = add_subcommand(sub, "style-images", "write one of the testbed's styles as a StyleRef folder", None)
    s.add_argument("--style", choices=STYLES, required=True, help="the rendering (pqcad_deploy.styles)")
    s.add_argument(
        "--out", type=Path, required=True, help="folder for the PNGs (subfolders upper/ and other/)"
    )
    s.add_argument(
        "--count", type=int_range(4, 1000), default=16, help="images written (every class in turn)"
    )
    s.add_argument("--seed", type=int_range(0), default=0)
    s.add_argument(
        "--data-dir", default=None, help="Fashion-MNIST folder (default: $PQCAD_FMNIST_DIR or the system one)"
    )
    s.set_defaults(func=run_images)
    p = add_subcommand(sub, "style", "StyleForge: bind a style from a folder of images to a token", __doc__)
    p.add_argument(
        "--model", required=True, help="FP text-to-image model (fp) or quantized student (peqa, ...)"
    )
    p.add_argument("--images", type=Path, action="append", required=True,
                   help="StyleRef folder (15-20 images; NAME.txt sidecars name their subjects); repeat with "
                        "--token for Multi-StyleForge")  # fmt: skip
    p.add_argument(
        "--out", type=Path, required=True, help="model file (fp, mcsu) or scale patch (peqa, s1, s2)"
    )
    p.add_argument("--token", action="append", default=None, help="token per --images folder (default: sks)")
    p.add_argument("--caption", default=DEFAULT_CAPTION, help="StyleRef caption with {subject} and {token}")
    p.add_argument("--aux-images", type=int_range(0, 10_000), default=16,
                   help="Aux images: plain garments with plain captions (0: the StyleRef-only baseline)")  # fmt: skip
    p.add_argument(
        "--aux-weight", type=float_range(0.0, 100.0), default=1.0, help="loss weight of the Aux set"
    )
    p.add_argument("--prior-images", type=int_range(0), default=0,
                   help="prior preservation: the model's own images of the Aux prompts (0: none)")  # fmt: skip
    p.add_argument("--prior-weight", type=float_range(0.0, 100.0), default=1.0)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder for the Aux images")
    add_tune_args(
        p, steps=300, method="fp", batch_size=8, lr_help=f"default: {FP_LR:g} for fp, 1e-3 for scales"
    )
    p.set_defaults(func=run)
