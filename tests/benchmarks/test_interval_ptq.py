"""benchmarks/interval_ptq.py --quick: every row is calibrated and scored, with the K = 1 row as the plain student."""

from __future__ import annotations

import json

from tests._utils import load_benchmark


def test_quick_run_writes_every_row(tmp_path, capsys):
    out = tmp_path / "ip.json"
    assert load_benchmark("interval_ptq").main(["--quick", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["k"], r["progressive"]) for r in rows] == [(1, False), (3, False), (3, True)]
    assert rows[0]["intervals"] is None and rows[1]["intervals"]["k"] == 3
    assert all(len(r["runs"]) == 2 and 0 < r["rel_l2"] < 10 for r in rows)  # two noise seeds, finite errors
    assert "K=3 progressive" in capsys.readouterr().out
