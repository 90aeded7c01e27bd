"""The StyleForge table runs end to end on a tiny text-to-image model: every kind of row, spreads over noise seeds,
the scored images kept for re-scoring, a grid per row, and ``--merge``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests._utils import load_benchmark


def test_style_table_on_a_tiny_model(tmp_path, t2i, tiny_bert_dir, fake_fmnist, monkeypatch):
    monkeypatch.setenv("PQCAD_FMNIST_DIR", str(fake_fmnist))
    teacher, student = t2i["teacher"], t2i["student"]
    bench = load_benchmark("style_table")
    out = tmp_path / "table.json"
    assert bench.main(["--teacher", str(teacher), "--student", str(student), "--styles", "stripes", "--rows",
                       "teacher", "dreambooth", "single", "--bits", "w8a8", "--pqcad-steps", "2", "--pqcad-batch",
                       "4", "--steps", "2", "--batch-size", "2", "--aux-images", "4", "--per-prompt", "1",
                       "--noise-seeds", "0", "1", "--sample-steps", "2", "--calib-trajectories", "2",
                       "--text-encoder", str(tiny_bert_dir), "--work", str(tmp_path / "work"), "--device", "cpu",
                       "--label", "@t", "--out", str(out)]) == 0  # fmt: skip
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    names = ["teacher", "dreambooth", "single", "single-ptq-w8a8", "single-pqcad-w8a8", "single-peqa-w8a8"]
    assert list(rows) == [f"{n}@t" for n in names]
    for r in rows.values():
        assert 0 <= r["style_fidelity"] <= 1 and 0 <= r["class_accuracy"] <= 1 and 0 <= r["leak"] <= 1
        assert len(r["runs"]) == 2 and r["style_fidelity_spread"] >= 0 and r["fd_fmnist_grey"] >= 0
    for n in ("single-ptq-w8a8", "single-pqcad-w8a8", "single-peqa-w8a8"):  # scored against the FP styled row
        assert rows[f"{n}@t"]["fd_to_fp"] >= 0
    assert "fd_to_fp" not in rows["single@t"] and "seconds" not in rows["teacher@t"]
    assert rows["single-pqcad-w8a8@t"]["seconds"] > 0
    assert 0 < rows["single-peqa-w8a8@t"]["trainable_parameters"] < rows["single@t"]["trainable_parameters"]
    assert (tmp_path / "work" / "stripes_single_pqcad_w8a8@t.pt").is_file()
    grids = tmp_path / "table_grids"
    assert (grids / "stripes_single-pqcad-w8a8.png").is_file()
    kept = np.load(grids / "stripes_dreambooth@t_seed1.npz")
    assert kept["styled"].dtype == np.uint8 and len(kept["styled"]) == 80  # one per (colour, class) prompt
    merged = tmp_path / "merged.json"
    assert bench.main(["--merge", str(out), str(out), "--out", str(merged)]) == 0
    assert len(json.loads(merged.read_text())["rows"]) == 2 * len(rows)


@pytest.mark.parametrize("bad", [["--pqcad-steps", "-1"], ["--pqcad-steps", "10", "--pqcad-batch", "0"]])
def test_bad_pqcad_settings_are_refused_before_any_work(bad, capsys):
    with pytest.raises(SystemExit) as e:
        load_benchmark("style_table").main(["--styles", "stripes", *bad])
    assert e.value.code == 2 and "--pqcad-steps must be >= 0" in capsys.readouterr().err
