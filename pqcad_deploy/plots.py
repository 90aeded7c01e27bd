"""Training curves as PNG (PIL only: matplotlib is not a dependency): one panel per series, a shared step axis, and
vertical marks (the PQ switch) across every panel or on one. People would rather look at a curve than read a loss
list."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from .io import atomic_write

Series = Sequence[Sequence[float]]  # (step, value) pairs
COLORS = [(70, 110, 180), (200, 60, 50), (60, 150, 80)]


def save_curves(
    path: str | os.PathLike,
    panels: dict[str, Series],
    marks: Sequence[tuple[float, str]] = (),
    title: str = "",
    log_y: bool = True,
    panel_marks: dict[str, Sequence[tuple[float, str]]] | None = None,
) -> Path:
    """Write one panel per non-empty series of ``panels`` (name -> points); ``marks`` are (step, label) lines on
    every panel, ``panel_marks`` (panel name -> marks) lines on that panel only (each run's own switch)."""
    from PIL import Image, ImageDraw, ImageFont

    panels = {k: [(float(x), float(y)) for x, y in v] for k, v in panels.items() if len(v)}
    if not panels:
        raise ValueError("no curve has any point to plot.")
    font = ImageFont.load_default()
    width, panel_h, left, right, top = 720, 200, 70, 20, 28
    height = top + len(panels) * (panel_h + 30) + 20
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((8, 8), title, fill="black", font=font)
    own = panel_marks or {}
    xs = [x for pts in panels.values() for x, _ in pts] + [m for ms in (marks, *own.values()) for m, _ in ms]
    x0, x1 = min(xs), max(xs)
    sx = lambda x: left + (x - x0) / ((x1 - x0) or 1.0) * (width - left - right)  # noqa: E731
    for i, (name, pts) in enumerate(panels.items()):
        y_top = top + i * (panel_h + 30) + 16
        ys = [y for _, y in pts]
        use_log = log_y and min(ys) > 0
        f = math.log10 if use_log else (lambda v: v)
        lo, hi = f(min(ys)), f(max(ys))
        sy = lambda y: y_top + panel_h - (f(y) - lo) / ((hi - lo) or 1.0) * panel_h  # noqa: E731, B023
        d.text((left, y_top - 14), f"{name}{' (log scale)' if use_log else ''}", fill="black", font=font)
        d.rectangle([left, y_top, width - right, y_top + panel_h], outline=(160, 160, 160))
        d.text((4, y_top - 4), f"{max(ys):.3g}", fill="black", font=font)
        d.text((4, y_top + panel_h - 8), f"{min(ys):.3g}", fill="black", font=font)
        color = COLORS[i % len(COLORS)]
        xy = [(sx(x), sy(y)) for x, y in pts]
        if len(xy) > 1:
            d.line(xy, fill=color, width=2)
        else:
            d.ellipse([xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=color)
        for m, label in [*marks, *own.get(name, ())]:
            d.line([(sx(m), y_top), (sx(m), y_top + panel_h)], fill=(120, 120, 120), width=1)
            text_w = d.textlength(label, font=font)
            fits_right = sx(m) + 3 + text_w <= width - right  # else left of the line, inside the frame
            d.text(
                (sx(m) + 3 if fits_right else sx(m) - 3 - text_w, y_top + 2),
                label,
                fill=(90, 90, 90),
                font=font,
            )
        d.text((left, y_top + panel_h + 2), f"{x0:g}", fill="black", font=font)
        d.text((width - right - 40, y_top + panel_h + 2), f"step {x1:g}", fill="black", font=font)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
