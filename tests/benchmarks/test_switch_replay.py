"""benchmarks/switch_replay.py on the probe curves recorded on the H100 (tests/data/probe_curves_h100.json): the
replay reproduces the switches the runs made, and the momentum rule fires before the cap on real curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._utils import load_benchmark

CURVES = Path(__file__).resolve().parents[1] / "data" / "probe_curves_h100.json"


@pytest.fixture(scope="module")
def replay():
    return load_benchmark("switch_replay")


def test_replay_reproduces_the_recorded_switches(replay):
    runs = replay.load_curves([CURVES])
    for name in ("pq_s0 (adaptive)", "pq_s1 (adaptive, stopped in stage 2)"):
        curve, recorded = runs[name]
        assert replay.replay(curve, 0.015, 5, 400) == (recorded, "plateau") and recorded < 400


def test_rule_fires_before_the_cap_on_real_curves_only_with_a_looser_eps(replay):
    """The control runs recorded their curve to the cap: eps 0.015 and 0.01 fire on both, the old 5e-3 never does."""
    runs = replay.load_curves([CURVES])
    for name in ("fixed_switch_s0", "fixed_switch_s1 (stopped at 400)"):
        curve, recorded = runs[name]
        assert recorded == 400 and replay.replay(curve, 0.005, 5, 400) == (400, "cap")
        assert all(replay.replay(curve, eps, 5, 400)[1] == "plateau" for eps in (0.01, 0.015))
        assert replay.replay(curve, 0.01, 5, 400)[0] > replay.replay(curve, 0.015, 5, 400)[0]


def test_main_writes_table_png_and_refuses_files_without_curves(replay, tmp_path, capsys):
    png, out = tmp_path / "c.png", tmp_path / "r.json"
    assert replay.main([str(CURVES), "--eps", "0.005", "0.015", "--png", str(png), "--json", str(out)]) == 0
    assert png.stat().st_size > 0 and "260 (plateau)" in capsys.readouterr().out
    assert json.loads(out.read_text())["runs"]["pq_s0 (adaptive)"]["replay"]["0.015"] == [260, "plateau"]
    empty = tmp_path / "e.json"
    empty.write_text(json.dumps({"rows": [{"variant": "FP", "seed": None}]}))
    with pytest.raises(SystemExit, match="no probe curve"):
        replay.main([str(empty)])
    with pytest.raises(SystemExit, match="cannot read .* as JSON"):
        replay.main([str(tmp_path / "missing.json")])


def test_branches_sharing_one_stage_1_are_one_curve(replay, tmp_path):
    """Branches resumed from one end-of-stage-1 checkpoint carry the same probe curve: listed (and drawn) once."""
    curve, switch = [[20, 7e-5], [40, 6.8e-5]], [{"event": "switch", "step": 400, "reason": "cap"}]
    rows = [
        {"variant": v, "seed": 0, "probe_curve": curve, "history": switch} for v in ("PQ alone", "PQ+CAD")
    ]
    rows.append(
        {"variant": "PQ+CAD", "seed": 1, "probe_curve": [[20, 7e-5], [40, 6.9e-5]], "history": switch}
    )
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"rows": rows}))
    assert sorted(replay.load_curves([table])) == ["PQ alone s0 = PQ+CAD s0", "PQ+CAD s1"]


def test_an_output_that_cannot_be_written_is_refused_before_reading(replay, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit):
        replay.main([str(tmp_path / "not-read.json"), "--png", str(blocker / "c.png")])
    assert "--png" in (err := capsys.readouterr().err) and "is a file, not a folder" in err
    with pytest.raises(SystemExit):
        replay.main([str(CURVES), "--png", str(tmp_path / "x"), "--json", str(tmp_path / "x")])
    assert "also written as another output" in capsys.readouterr().err
