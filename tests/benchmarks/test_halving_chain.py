"""benchmarks/halving_chain.py on the tiny model: the chain trains each round on the previous model's own
trajectories at twice its step count, and the table has every (model, steps) row with spreads over noise seeds."""

from __future__ import annotations

import json

from pqcad_deploy.calibset import CalibSet
from pqcad_deploy.loading import open_model
from tests._utils import load_benchmark


def test_quick_chain_halves_twice_and_scores_every_row(tmp_path):
    chain = load_benchmark("halving_chain")
    work, out = tmp_path / "work", tmp_path / "chain.json"
    assert chain.main(["--quick", "--work", str(work), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    got = [(r["model"], r["steps"]) for r in doc["rows"]]
    assert got == [("FP", 8), ("FP", 4), ("FP", 2), ("w8a8 unhalved", 8), ("w8a8 unhalved", 4),
                   ("w8a8 unhalved", 2), ("w8a8 halved x1", 4), ("w8a8 halved x2", 2)]  # fmt: skip
    for r in doc["rows"]:
        assert len(r["runs"]) == 2 and r["fd_fmnist_spread"] >= 0
        assert ("psnr_db_vs_fp" in r) == (r != doc["rows"][0])
    # round 2 learned from round 1's own 4-step trajectories, and each student records its step count
    assert CalibSet.load(work / "calib_round2.safetensors").meta["steps"] == 4
    assert CalibSet.load(work / "calib_fp_8.safetensors").meta["steps"] == 8
    assert open_model(work / "halved2.safetensors").meta["sampling"]["steps"] == 2
    assert (tmp_path / "chain_grids" / "w8a8_halved_x2_2.png").exists()


def test_quick_chain_trains_every_student_in_the_requested_placement(tmp_path):
    chain = load_benchmark("halving_chain")
    work = tmp_path / "work"
    args = ["--quick", "--target", "onnxruntime", "--noise-seeds", "0", "--work", str(work)]
    assert chain.main([*args, "--out", str(tmp_path / "chain.json")]) == 0
    for name in ("unhalved", "halved1", "halved2"):
        assert open_model(work / f"{name}.safetensors").meta["quant"]["target"] == "onnxruntime"
