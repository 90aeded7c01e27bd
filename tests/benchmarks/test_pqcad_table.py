"""benchmarks/pqcad_table.py and pqcad_lr_sweep.py on CPU: merging split runs (old files too), the table's
reference, the branch configs, the sweep. The scripts are loaded from their paths (they are not a package)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from tests._utils import load_benchmark


@pytest.fixture(scope="module")
def table():
    return load_benchmark("pqcad_table")


def _row(variant, bits, seed, fds: dict[int, float]):
    return {
        "variant": variant,
        "bits": bits,
        "seed": seed,
        "evals": [{"steps": s, "fd": v} for s, v in fds.items()],
    }


def _doc(rows, n=100, command="python pqcad_table.py"):
    env = {"command": command}
    return {"n_samples": n, "environment": env, "rows": rows, "ptq_selection": None, "skipped_for_time": []}


def test_merge_keeps_first_untrained_rows_and_trained_repeats(table, tmp_path):
    a = _doc([_row("FP", "fp32", None, {100: 3.0, 50: 3.2}), _row("PQCAD", "w8a8", 0, {100: 3.1})])
    b = _doc(
        [
            _row("FP", "fp32", None, {50: 3.21}),  # FP again: a's row wins, this is a check
            _row("PQCAD", "w8a8", 0, {100: 3.4}),  # seed 0 trained again: a second run, kept as a repeat
            _row("PQCAD", "w8a8", 1, {100: 3.3}),
        ]
    )
    b["ptq_selection"] = {"w8a8": {"best": "mse"}}
    pa, pb, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "m.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    doc = table.merge_runs([pa, pb], out)
    assert json.loads(out.read_text())["rows"] == doc["rows"]
    keys = [(r["variant"], r["seed"], r.get("repeat")) for r in doc["rows"]]
    assert keys == [("FP", None, None), ("PQCAD", 0, None), ("PQCAD", 0, 1), ("PQCAD", 1, None)]
    assert doc["fp_repeats"] == [{50: 3.21}]
    assert doc["ptq_selection"] == {"w8a8": {"best": "mse"}}
    pq = next(s for s in doc["summary"] if s["variant"] == "PQCAD")
    assert pq["n_runs"] == 3 and pq["seeds"] == [0, 1]
    assert pq["fd"] == pytest.approx(3.2667, abs=1e-4) and pq["fd_spread"] == pytest.approx(0.15)


def test_merge_refuses_runs_with_different_sample_counts(table, tmp_path):
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(_doc([], n=1000)))
    pb.write_text(json.dumps(_doc([], n=10000)))
    with pytest.raises(SystemExit, match="different sample counts"):
        table.merge_runs([pa, pb], tmp_path / "m.json")


def test_halved_rows_are_judged_against_fp_at_twice_their_steps(table, capsys):
    rows = [
        _row("FP", "fp32", None, {100: 2.0, 50: 2.5}),
        _row("PQCAD+halving", "w8a8", 0, {50: 2.2}),
        _row("PQCAD", "w8a8", 0, {50: 2.75}),
    ]
    table.print_table(table.aggregate_rows(rows), "title")
    lines = capsys.readouterr().out.splitlines()
    halved = next(line for line in lines if line.startswith("PQCAD+halving"))
    plain = next(line for line in lines if line.startswith("PQCAD ") and " 50 " in line)
    assert "+10.0%" in halved  # 2.2 vs FP at 100 steps, not -12 % vs FP at 50
    assert "+10.0%" in plain  # 2.75 vs FP at 50 steps


def test_merge_reads_files_written_with_the_old_psnr_key(table, tmp_path):
    old = _row("PQCAD", "w8a8", 0, {100: 3.0})
    old["evals"][0]["psnr_vs_fp"] = 30.0
    new = _row("PQCAD", "w8a8", 1, {100: 3.2})
    new["evals"][0]["psnr_db_vs_fp"] = 32.0
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps({**_doc([old]), "command": "python pqcad_table.py"}))
    pb.write_text(json.dumps(_doc([new])))
    doc = table.merge_runs([pa, pb], tmp_path / "m.json")
    assert doc["summary"][0]["psnr_db_vs_fp"] == pytest.approx(31.0) and "command" not in doc
    assert all("psnr_vs_fp" not in e for r in doc["rows"] for e in r["evals"])


def test_every_branch_is_a_valid_config(table):
    base = table.base_config(table.parse_args(["--quick"]))
    for variant, bits, changes in table.BRANCH_RUNS.values():
        cfg = dataclasses.replace(base, seed=3, **changes)
        assert cfg.bits[-1] == bits and cfg.steps == base.steps, variant
    assert table.BRANCHES[0] == "pq" and set(table.BRANCH_RUNS) == set(table.BRANCHES[1:])


def test_skip_ptq_needs_a_fixed_sample_count(table):
    with pytest.raises(SystemExit):
        table.parse_args(["--skip-ptq"])
    assert table.parse_args(["--skip-ptq", "--n-samples", "100", "--branches", "w8a8"]).branches == ["w8a8"]


def test_lr_sweep_quick_trains_scores_and_picks(tmp_path, capsys):
    sweep = load_benchmark("pqcad_lr_sweep")
    out = tmp_path / "sweep.json"
    assert sweep.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    labels = [r["label"] for r in doc["rows"]]
    assert labels == ["FP", "PTQ maxabs", "lr 1e-05", "lr 0.001"]
    trained = [r for r in doc["rows"] if r["lr"]]
    assert all(math.isfinite(r["eps_mse_heldout"]) and math.isfinite(r["psnr_db_vs_fp"]) for r in trained)
    assert doc["pick_lr"] == min(trained, key=lambda r: r["eps_mse_heldout"])["lr"]
    assert doc["rows"][0]["eps_mse_heldout"] < 1e-6  # FP against its own targets: the metric is wired right
    assert "pick (lowest held-out eps-MSE)" in capsys.readouterr().out


def test_each_noise_seed_is_scored_against_fp_from_the_same_noise(table, tmp_path):
    args = ["--quick", "--skip-ptq", "--n-samples", "16", "--noise-seeds", "0", "1", "--work", str(tmp_path)]
    bench = table.Bench(table.parse_args([*args, "--out", str(tmp_path / "t.json")]))
    bench.calib()
    bench.add("FP", "fp32", None)
    bench.add("FP again", "fp32", None)  # the same model from the same noise: identical to its reference
    fp, again = bench.rows
    assert [(e["steps"], e["noise_seed"]) for e in fp["evals"]] == [(10, 0), (10, 1), (4, 0), (4, 1)]
    assert fp["evals"][0]["fd"] != fp["evals"][1]["fd"]  # two noise seeds are two samples
    assert all(e["rel_l2_vs_fp"] == 0.0 for e in again["evals"])
    summary = {(s["variant"], s["steps"]): s for s in table.aggregate_rows(bench.rows)}
    assert summary["FP", 10]["n_runs"] == 2 and summary["FP", 10]["fd_spread"] > 0


def test_switch_branches_train_the_recipes_they_name(table, tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "t.json"
    argv = ["--quick", "--skip-ptq", "--n-samples", "16", "--eval-steps", "4", "--switch-signal", "probe"]
    argv += ["--branches", "fixed_switch", "pq_c0.1", "--work", str(work), "--out", str(out)]
    assert table.main(argv) == 0
    doc = json.loads(out.read_text())
    assert [r["variant"] for r in doc["rows"]] == ["FP", "PQ+CAD switch at cap", "PQ+CAD lambda_c 0.1"]
    fixed = torch.load(work / "fixed_switch_s0_train.pt", weights_only=True)["config"]
    branch = torch.load(work / "pq_c0.1_s0_train.pt", weights_only=True)["config"]
    assert fixed["eps"] == 0.0 and fixed["switch_signal"] == "probe" and branch["lambda_c"] == 0.1
    switches = [h for h in doc["rows"][1]["history"] if h["event"] == "switch"]
    assert [(h["step"], h["reason"]) for h in switches] == [(4, "cap")]  # eps 0: the rule never fires
    saved = torch.load(work / "pq_c0.1_s0_train.pt", weights_only=True)
    assert doc["rows"][2]["probe_curve"] == saved["probe_curve"]  # each row carries its run's switch curves
    assert doc["rows"][2]["switch_trace"] == saved["switch"]["trace"]
    assert "switch: PQ+CAD switch at cap seed 0: step 4 (cap)" in capsys.readouterr().out


def test_from_scratch_branches_alone_do_not_train_pq(table, tmp_path):
    """A process given only qat / fixed_switch (a split GPU run) trains neither pq nor its stage 1."""
    work, out = tmp_path / "work", tmp_path / "t.json"
    argv = ["--quick", "--skip-ptq", "--n-samples", "16", "--eval-steps", "4", "--branches", "qat"]
    assert table.main([*argv, "--work", str(work), "--out", str(out)]) == 0
    assert [r["variant"] for r in json.loads(out.read_text())["rows"]] == ["FP", "fixed-bit QAT"]
    assert (work / "qat_s0.pt").exists() and not list(work.glob("pq_s0*"))


def test_pq_with_eps_zero_is_labelled_as_the_switch_at_cap(table, tmp_path):
    """eps 0 makes pq the fixed_switch recipe; its row must merge with fixed_switch rows, not adaptive PQ+CAD ones."""
    work, out = tmp_path / "work", tmp_path / "t.json"
    argv = ["--quick", "--skip-ptq", "--n-samples", "16", "--eval-steps", "4", "--eps", "0"]
    argv += ["--branches", "pq"]
    assert table.main([*argv, "--work", str(work), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["FP", "PQ+CAD switch at cap"]
    assert [h["reason"] for h in rows[1]["history"] if h["event"] == "switch"] == ["cap"]


def test_bad_switch_probe_is_refused_at_parse_time(table, capsys):
    with pytest.raises(SystemExit):
        table.parse_args(["--switch-probe", "0"])
    assert "--switch-probe must be >= 1 (got 0)" in capsys.readouterr().err


def test_merge_refuses_files_that_are_not_tables_with_the_file_named(table, tmp_path):
    listing, other = tmp_path / "list.json", tmp_path / "other.json"
    listing.write_text("[]")
    other.write_text('{"rows": "none"}')
    for path, said in [
        (tmp_path / "missing.json", "cannot read .*missing.json as JSON"),
        (listing, "list.json holds a JSON list, not the --out JSON of a pqcad_table.py run"),
        (other, "other.json has no table rows or sample count"),
    ]:
        with pytest.raises(SystemExit, match=said):
            table.main(["--merge", str(path), "--out", str(tmp_path / "m.json")])
    assert not (tmp_path / "m.json").exists()


def test_out_is_checked_before_any_training(table, tmp_path, capsys):
    """A missing folder is created at parse time; a path under a file, or a merge input as --out, is refused."""
    table.parse_args(["--quick", "--out", str(tmp_path / "new" / "t.json")])
    assert (tmp_path / "new").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit):
        table.parse_args(["--quick", "--out", str(blocker / "t.json")])
    assert "is a file, not a folder" in capsys.readouterr().err
    run = tmp_path / "run.json"
    run.write_text("{}")
    with pytest.raises(SystemExit):
        table.parse_args(["--merge", str(run), "--out", str(run)])
    assert "also an input of this command" in capsys.readouterr().err
