"""Sample grids as PNG (people would rather look than read numbers)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import UsageError
from .io import atomic_write


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float [B, C, H, W] -> uint8 [B, H, W, C]."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def save_grid(
    images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, pad: int = 2, scale: int = 2
) -> str:
    """Tile images into one PNG; single-channel images are written as grayscale."""
    arr = to_uint8(images)
    b, h, w, c = arr.shape
    nrow = nrow or int(math.ceil(math.sqrt(b)))
    ncol = int(math.ceil(b / nrow))
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(b):
        r, q = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = arr[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid[..., :3])
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"{path}: unknown image type {Path(path).suffix!r}; use .png.")
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt))  # a failed write never clobbers an old grid
    return str(path)
