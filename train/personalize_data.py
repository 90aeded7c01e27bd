"""Subject images for DreamBooth-style personalization: any folder of images, or the testbed's default subject.

A folder's readable images become model inputs in [-1, 1] with the model's channels and size (resized with one
message; unreadable files are named and skipped; a folder with none is refused). The default subject is one
particular garment of the Fashion-MNIST test set, tinted like the testbed's training data and written as a few
augmented PNGs, so its identity is measurable against the reference images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from pqcad_deploy.captions import PALETTE, tinted_model_input
from pqcad_deploy.data import CLASSES, load_fashion_mnist
from pqcad_deploy.errors import UsageError
from pqcad_deploy.images import save_grid
from pqcad_deploy.zoo import ModelSpec

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_SHIFT = 2  # pixels of random translation per augmented copy


def load_images(
    folder: str | Path,
    spec: ModelSpec,
    what: str = "the subject",
    advice: str = "3-5",
    recursive: bool = False,
) -> tuple[torch.Tensor, list[Path]]:
    """(float32 [N, C, H, W] in [-1, 1], their files) from every readable image in ``folder`` (sorted by path;
    with ``recursive`` its subfolders too). Unreadable files are named and skipped, other sizes resized with one
    message; a folder with none is refused. ``what`` and ``advice`` ("3-5" images) word the messages."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--images {folder} is not a folder; give a folder of {advice} images of {what}.")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    c, h, w = spec.sample_shape
    images, kept, unreadable, resized = [], [], [], 0
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB" if c == 3 else "L")
                if im.size != (w, h):
                    im, resized = im.resize((w, h), Image.BICUBIC), resized + 1
                x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(h, w, -1)
        except (OSError, UnidentifiedImageError):
            unreadable.append(f.name)
            continue
        images.append(x.permute(2, 0, 1).float().div(127.5).sub(1.0))
        kept.append(f)
    if unreadable:
        log.warning(
            "skipped %d unreadable image(s) in %s: %s", len(unreadable), folder, ", ".join(unreadable[:5])
        )
    if not images:
        raise UsageError(
            f"{folder} holds no readable image ({len(files)} file(s) with an image suffix {IMAGE_SUFFIXES}); "
            f"put {advice} PNG or JPEG images of {what} there."
        )
    if resized:
        log.warning("resized %d of %d image(s) of %s to the model's %dx%d", resized, len(images), what, w, h)
    return torch.stack(images), kept


def load_subject(folder: str | Path, spec: ModelSpec) -> torch.Tensor:
    """float32 [N, C, H, W] in [-1, 1] from every readable image in ``folder`` (sorted by name)."""
    images, _ = load_images(folder, spec)
    if len(images) < 3:
        log.warning(
            "only %d subject image(s); DreamBooth-style personalization works best with 3-5", len(images)
        )
    return images


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a shift of up to ``MAX_SHIFT`` pixels per image (the border filled black)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=g, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = torch.nn.functional.pad(x, (MAX_SHIFT,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * MAX_SHIFT + 1, (2, n), generator=g, device=x.device).tolist()
    h, w = x.shape[-2:]
    return torch.stack([pad[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def write_default_subject(
    out: str | Path,
    class_name: str = "Bag",
    colour: str = "red",
    index: int = 0,
    copies: int = 4,
    data_dir: str | None = None,
    seed: int = 0,
) -> list[Path]:
    """``copies`` augmented PNGs of the ``index``-th test image of ``class_name``, tinted ``colour``."""
    if class_name not in CLASSES:
        raise UsageError(f"unknown class {class_name!r}; choose one of {', '.join(CLASSES)}.")
    names = [c.name for c in PALETTE]
    if colour not in names:
        raise UsageError(f"unknown colour {colour!r}; choose one of {', '.join(names)}.")
    test = load_fashion_mnist("test", data_dir)
    pool = (test.labels == CLASSES.index(class_name)).nonzero().flatten()
    if not 0 <= index < len(pool):
        raise UsageError(f"--index {index}: the test set has {len(pool)} images of {class_name}.")
    image = tinted_model_input(test.images[pool[index]][None], torch.tensor([names.index(colour)]))
    g = torch.Generator().manual_seed(seed)
    shots = torch.cat([image, augment(image.repeat(copies - 1, 1, 1, 1), g)])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [
        Path(save_grid(shots[i : i + 1], out / f"subject_{i}.png", pad=0, scale=1)) for i in range(copies)
    ]
