"""pqcad_deploy.plots: a run's own switch mark lands on its panel only; marks near the right edge stay in frame."""

from __future__ import annotations

from PIL import Image, ImageChops

from pqcad_deploy.plots import save_curves

MARK_GRAY = (120, 120, 120)


def _gray_rows(img: Image.Image, x: int) -> list[int]:
    return [y for y in range(img.height) if img.getpixel((x, y)) == MARK_GRAY]


def test_panel_marks_are_drawn_on_their_own_panel_only(tmp_path):
    curve = [(0, 1.0), (100, 0.5)]
    path = save_curves(
        tmp_path / "c.png", {"a": curve, "b": curve}, log_y=False, panel_marks={"a": [(50, "s")]}
    )
    img = Image.open(path).convert("RGB")
    x = next(x for x in range(img.width) if _gray_rows(img, x))  # the one mark's column
    rows = _gray_rows(img, x)
    half = img.height // 2  # panel a is the top half, b the bottom
    assert rows and max(rows) < half
    shared = save_curves(tmp_path / "s.png", {"a": curve, "b": curve}, marks=[(50, "s")], log_y=False)
    rows = _gray_rows(Image.open(shared).convert("RGB"), x)
    assert min(rows) < half < max(rows)  # a shared mark crosses both panels


def test_a_mark_at_the_last_step_keeps_its_label_inside_the_frame(tmp_path):
    curve = [(0, 1.0), (400, 0.5)]
    paths = [
        save_curves(tmp_path / f"{i}.png", {"a": curve}, log_y=False, panel_marks={"a": [(400, label)]})
        for i, label in enumerate(["", "switch 400"])
    ]
    bare, labelled = (Image.open(p).convert("RGB") for p in paths)
    left, _, right, _ = ImageChops.difference(bare, labelled).getbbox()  # the label's own pixels
    line_x = max(x for x in range(bare.width) if _gray_rows(bare, x))
    assert right <= line_x and left > line_x - 80  # drawn just left of the line, not cut at the edge
