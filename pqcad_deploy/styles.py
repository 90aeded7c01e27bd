"""Styles the testbed can measure: deterministic renderings of garments that the text-to-image teacher never saw.

Each style maps a grey garment (intensity in [-1, 1], black background) to another grey image; the palette tint
goes on afterwards, so a styled garment keeps its colour and colour accuracy still measures the prompt. The
renderings are plain tensor functions (no randomness), so the shipped style classifier, the default StyleRef sets
and the tests all see the same pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import UsageError

PLAIN = "plain"  # the unstyled rendering: the teacher's own training distribution
STYLES = ("outline", "halftone", "stripes")
STYLE_CLASSES = (PLAIN, *STYLES)  # the style classifier's labels, in this order
HALFTONE_CELL = 4  # pixels per halftone cell (32 / 4 = 8 dots per row)
STRIPE_PERIOD = 4  # rows per stripe period: 2 bright, 2 dim
STRIPE_DIM = 0.15  # intensity kept on the dim rows


def check_style(name: str) -> str:
    if name not in STYLE_CLASSES:
        raise UsageError(f"unknown style {name!r}; choose one of {', '.join(STYLES)} (or {PLAIN!r}).")
    return name


def render(grey: torch.Tensor, style: str) -> torch.Tensor:
    """Grey images [N, 1, H, W] in [-1, 1] -> the same garments in ``style`` (same shape and range)."""
    check_style(style)
    if grey.dim() != 4 or grey.shape[1] != 1:
        raise ValueError(f"render expects grey images [N, 1, H, W], got {tuple(grey.shape)}")
    v = grey.add(1).div(2)  # intensity in [0, 1]
    if style == "outline":
        v = _outline(v)
    elif style == "halftone":
        v = _halftone(v)
    elif style == "stripes":
        v = _stripes(v)
    return v.clamp(0, 1).mul(2).sub(1)


def _outline(v: torch.Tensor) -> torch.Tensor:
    """Edges only: Sobel gradient magnitude, bright strokes where the garment's intensity changes."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=v.dtype, device=v.device)
    k = torch.stack([kx, kx.T])[:, None]  # [2, 1, 3, 3]
    g = F.conv2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), k)
    return g.square().sum(1, keepdim=True).sqrt().mul(0.75)


def _halftone(v: torch.Tensor) -> torch.Tensor:
    """A dot per cell whose area follows the cell's mean intensity (print halftone)."""
    c = HALFTONE_CELL
    h, w = v.shape[-2:]
    if h % c or w % c:
        raise ValueError(f"halftone needs a size divisible by {c}, got {h}x{w}")
    mean = F.avg_pool2d(v, c)  # [N, 1, H/c, W/c]
    radius = mean.sqrt().mul(c * 0.62)  # a full cell's dot just touches its neighbours
    radius = F.interpolate(radius, scale_factor=c, mode="nearest")
    offs = torch.arange(c, dtype=v.dtype, device=v.device) - (c - 1) / 2
    yy, xx = offs.repeat(h // c)[:, None], offs.repeat(w // c)[None, :]
    dist = (yy.square() + xx.square()).sqrt()
    return (radius - dist).add(0.5).clamp(0, 1)  # anti-aliased edge, one pixel wide


def _stripes(v: torch.Tensor) -> torch.Tensor:
    """Horizontal stripes: every other pair of rows dimmed."""
    rows = torch.arange(v.shape[-2], device=v.device)
    keep = torch.where((rows // (STRIPE_PERIOD // 2)) % 2 == 0, 1.0, STRIPE_DIM).to(v.dtype)
    return v * keep[:, None]
