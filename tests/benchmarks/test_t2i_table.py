"""benchmarks/t2i_table.py: sweep pieces that run without a GPU (merge of per-variant JSON files, rows without FP
references, the spread over noise seeds), loaded from its path."""

from __future__ import annotations

import json

import pytest

from pqcad_deploy.metrics import over_seeds
from tests._utils import load_benchmark


@pytest.fixture(scope="module")
def tt():
    return load_benchmark("t2i_table")


def _doc(row: str, fd: list[float], val: float | None = None, reference: bool = True) -> dict:
    runs = [{"n": 4, "class_accuracy": 0.9, "colour_accuracy": 1.0, "fd_fmnist_grey": f} for f in fd]
    if reference:
        for r in runs:
            r.update(fd_to_fp=0.3, psnr_to_fp=36.0)
    out = {"row": row, "sets": {"seen": {"runs": runs}}}
    if val is not None:
        out["val_eps_mse"] = val
    return out


def test_spread_is_mean_and_half_range_and_skips_missing_metrics(tt):
    runs = [{"fd_fmnist_grey": 22.0, "fd_to_fp": None}, {"fd_fmnist_grey": 23.0, "fd_to_fp": None}]
    s = over_seeds(runs, tt.METRICS)
    assert s["fd_fmnist_grey"] == pytest.approx(22.5) and s["fd_fmnist_grey_spread"] == pytest.approx(0.5)
    assert "fd_to_fp" not in s  # a row scored without FP references reports none, not zero


def test_merge_prints_one_table_and_writes_every_row(tt, tmp_path, capsys):
    files = []
    for name, fd, val, ref in [
        ("FP", [22.0, 23.0], None, False),
        ("PQCAD W8A8 long_label", [24.0, 24.0], 2e-4, False),
    ]:
        row = _doc(name, fd, val, ref)
        row["sets"]["seen"].update(over_seeds(row["sets"]["seen"]["runs"], tt.METRICS))
        doc = {"args": {"steps": 50, "guidance_scale": 3.0, "noise_seeds": [0, 1]}, "rows": [row]}
        files.append(tmp_path / f"{len(files)}.json")
        files[-1].write_text(json.dumps(doc))
    out = tmp_path / "merged.json"
    assert tt.main(["--merge", *map(str, files), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    pqcad = next(line for line in lines if line.startswith("PQCAD W8A8 long_label"))
    assert "24.00+-0.00" in pqcad and "2.000e-04" in pqcad
    fp = next(line for line in lines if line.startswith("FP "))
    assert "22.50+-0.50" in fp and fp.split()[-1] == "-"  # no validation score for the FP row
    merged = json.loads(out.read_text())
    assert [r["row"] for r in merged["rows"]] == ["FP", "PQCAD W8A8 long_label"]
    assert merged["merged_from"] == [str(f) for f in files]


def test_quantizer_step_sizes_are_frozen_by_default(tt):
    # the measured text-to-image recipe: any step-size LR > 0 cost 5-6 % FD-fmnist on the shipped teacher
    a = tt.parse_args([])
    assert a.pqcad_lr_quant == 0.0 and a.pqcad_lr == 1e-5
