"""StyleRef and Aux images for StyleForge (arXiv 2404.05256) on the text-to-image testbed.

A style is any folder of images (its subfolders included). Each image may carry a caption sidecar ``NAME.txt``
naming what it shows ("red dress"); its training caption is then ``--caption`` with that subject and the style
token ("a red dress in sks style"), and without a sidecar "a picture in sks style". The testbed's default styles
are deterministic renderings of test-set garments (:mod:`pqcad_deploy.styles`), written by ``pqcad-train
style-images`` into two subfolders, ``upper`` (tops, dresses, coats) and ``other`` (trousers, shoes, bags): the
split Multi-StyleForge binds to two tokens. Aux images are plain tinted garments of the training split with their
plain captions ("a red dress"): the "general rendering" that keeps the class and colour words broad.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from pqcad_deploy.captions import CLASS_WORDS, PALETTE, TRAIN_PAIRS, TRAIN_TEMPLATES, tint
from pqcad_deploy.data import CLASSES, load_fashion_mnist, to_model_range
from pqcad_deploy.errors import UsageError
from pqcad_deploy.images import save_grid
from pqcad_deploy.styles import STYLES, check_style, render
from pqcad_deploy.zoo import ModelSpec

from .finetune import PromptedImages
from .personalize_data import load_images

log = logging.getLogger(__name__)

DEFAULT_CAPTION = "a {subject} in {token} style"
NO_SUBJECT = "picture"  # the subject of an image without a caption sidecar
SUBSETS = {"upper": (0, 2, 3, 4, 6), "other": (1, 5, 7, 8, 9)}  # class indices; Multi-StyleForge's split
MIN_IMAGES, RECOMMENDED = 4, (15, 20)
# Words whose meaning the model already holds: a style token equal to one of them competes with it.
COMMON_WORDS = {"a", "an", "the", "in", "of", "on", "is", "style", "photo", "image", "black", "background"}


def subject_words(colour: int, cls: int) -> str:
    return f"{PALETTE[colour].name} {CLASS_WORDS[cls][0]}"


def caption_words() -> set[str]:
    """Every word of the testbed's captions (colours, garments, templates): words the teacher already knows."""
    words = set(COMMON_WORDS)
    for c in PALETTE:
        words.update(w for name in c.words for w in name.split())
    for names in CLASS_WORDS:
        words.update(w for name in names for w in name.split())
    for t in TRAIN_TEMPLATES:
        words.update(w for w in t.replace("{colour}", "").replace("{garment}", "").split())
    return words


def check_tokens(tokens: list[str]) -> None:
    """One word each, all different; a word the captions already use is warned about (it binds weakly)."""
    if len(set(tokens)) != len(tokens):
        raise UsageError(f"--token {' '.join(tokens)}: each token binds one folder; give different tokens.")
    for t in tokens:
        if not t or len(t.split()) != 1:
            raise UsageError(f"--token {t!r}: a token is one word (e.g. sks).")
        if t.lower() in caption_words():
            log.warning("--token %r is a common word the model already knows; its old meaning competes with the "
                        "style (a rare word such as sks binds better)", t)  # fmt: skip


def load_style(
    folder: str | Path, token: str, spec: ModelSpec, caption: str = DEFAULT_CAPTION
) -> PromptedImages:
    """StyleRef: every readable image under ``folder`` with its caption (sidecar subject + ``token``)."""
    if "{token}" not in caption:
        raise UsageError(f"--caption {caption!r} must contain {{token}} (and may contain {{subject}}).")
    images, files = load_images(
        folder, spec, "the style", f"{RECOMMENDED[0]}-{RECOMMENDED[1]}", recursive=True
    )
    if len(images) < MIN_IMAGES:
        raise UsageError(
            f"{folder} holds {len(images)} readable image(s); a style needs at least {MIN_IMAGES} "
            f"(StyleForge uses {RECOMMENDED[0]}-{RECOMMENDED[1]}). Add images of the style there."
        )
    if len(images) < RECOMMENDED[0]:
        log.warning("%s: %d style images; StyleForge uses %d-%d", folder, len(images), *RECOMMENDED)
    subjects = []
    for f in files:
        side = f.with_suffix(".txt")
        text = side.read_text(encoding="utf-8").strip() if side.is_file() else ""
        subjects.append(" ".join(text.split()) or NO_SUBJECT)
    missing = subjects.count(NO_SUBJECT)
    if missing:
        log.info("%d of %d style images have no caption sidecar (NAME.txt): captioned with %r", missing,
                 len(files), NO_SUBJECT)  # fmt: skip
    try:
        prompts = [caption.format(subject=s, token=token) for s in subjects]
    except (KeyError, IndexError) as e:
        raise UsageError(f"--caption {caption!r}: only {{subject}} and {{token}} may appear ({e}).") from None
    return PromptedImages(images, prompts, 1.0, augmented=True)


def _pick(split_labels: torch.Tensor, cls: int, g: torch.Generator) -> tuple[int, int]:
    """(a random seen colour of ``cls``, a random image index of ``cls`` in the split)."""
    colours = [c for c, k in TRAIN_PAIRS if k == cls]
    colour = colours[int(torch.randint(len(colours), (1,), generator=g))]
    pool = (split_labels == cls).nonzero().flatten()
    return colour, int(pool[torch.randint(len(pool), (1,), generator=g)])


def aux_set(
    n: int, weight: float, spec: ModelSpec, seed: int = 0, data_dir: str | None = None
) -> PromptedImages:
    """``n`` plain tinted garments of the training split (every class in turn, seen colours) with plain captions,
    at the model's size."""
    c, h, w = spec.sample_shape
    if c != 3:
        raise UsageError(
            f"Aux images are tinted RGB garments; {spec.name} makes {c}-channel images. Use --aux-images 0."
        )
    train = load_fashion_mnist("train", data_dir)
    g = torch.Generator().manual_seed(seed)
    images, prompts = [], []
    for i in range(n):
        cls = i % len(CLASSES)
        colour, idx = _pick(train.labels, cls, g)
        images.append(tint(to_model_range(train.images[idx : idx + 1]), torch.tensor([colour])))
        prompts.append(TRAIN_TEMPLATES[0].format(colour=PALETTE[colour].name, garment=CLASS_WORDS[cls][0]))
    x = torch.cat(images)
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return PromptedImages(x, prompts, weight)


def write_default_style(
    out: str | Path, style: str, count: int = 16, data_dir: str | None = None, seed: int = 0
) -> list[Path]:
    """``count`` test-set garments (every class in turn, seen colours) drawn in ``style``, as PNGs with caption
    sidecars in ``out/upper`` and ``out/other``."""
    if check_style(style) not in STYLES:
        raise UsageError(f"--style {style}: choose one of {', '.join(STYLES)}.")
    test = load_fashion_mnist("test", data_dir)
    g = torch.Generator().manual_seed(seed)
    out = Path(out)
    files = []
    for i in range(count):
        cls = i % len(CLASSES)
        colour, idx = _pick(test.labels, cls, g)
        image = tint(render(to_model_range(test.images[idx : idx + 1]), style), torch.tensor([colour]))
        sub = out / next(name for name, members in SUBSETS.items() if cls in members)
        sub.mkdir(parents=True, exist_ok=True)
        path = Path(save_grid(image, sub / f"{style}_{i:02d}.png", pad=0, scale=1))
        path.with_suffix(".txt").write_text(subject_words(colour, cls) + "\n", encoding="utf-8")
        files.append(path)
    return files
