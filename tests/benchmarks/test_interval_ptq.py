"""benchmarks/interval_ptq.py: every row is calibrated and scored (tiny models), the text-to-image path scores
prompt sets against a shared FP image cache, and --merge joins processes' JSON files."""

from __future__ import annotations

import json

import pytest

from tests._utils import load_benchmark


@pytest.fixture(scope="module")
def ip():
    return load_benchmark("interval_ptq")


def test_quick_run_writes_every_row(ip, tmp_path, capsys):
    out = tmp_path / "ip.json"
    assert ip.main(["--quick", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["k"], r["progressive"]) for r in rows] == [(1, False), (3, False), (3, True), (2, True)]
    assert rows[0]["intervals"] is None and rows[1]["intervals"]["k"] == 3
    assert rows[3]["intervals"]["relaxed"] == [2] and rows[3]["points"][2] == 0  # the relaxed interval
    for r in rows:  # two noise seeds, finite errors, every metric
        seen = r["sets"]["seen"]
        assert len(seen["runs"]) == 2 and 0 < seen["rel_l2"] < 10 and seen["fd_to_fp"] >= 0
    assert "k3p" in capsys.readouterr().out


def test_text_to_image_rows_share_an_fp_cache_and_merge(ip, tmp_path, tiny_t2i_cache, capsys):
    common = ["--teacher", "tiny-t2i", "--embeddings", str(tiny_t2i_cache), "--steps", "6", "--trajectories", "2",
              "--n", "4", "--held-out", "4", "--batch-size", "4", "--method", "maxabs", "--bits", "w8a8",
              "--fp-cache", str(tmp_path / "fp.safetensors")]  # fmt: skip
    assert ip.main([*common, "--rows", "fp", "k1", "--out", str(tmp_path / "a.json")]) == 0
    assert (tmp_path / "fp.safetensors").exists()
    assert ip.main([*common, "--rows", "k2p+r0.34", "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text())["rows"] for f in ("a.json", "b.json"))
    assert [r["label"] for r in a] == ["FP (two noise seeds)", "k1"] and b[0]["relax"]["fraction"] == 0.34
    for r in a + b:
        assert set(r["sets"]) == {"seen", "held_out_templates"}
        assert 0 <= r["sets"]["seen"]["class_accuracy"] <= 1 and r["sets"]["seen"]["fd_to_fp"] >= 0
    # other settings refuse the cache instead of scoring against the wrong images
    with pytest.raises(Exception, match="other settings"):
        ip.main([*common[:-2], "--fp-cache", str(tmp_path / "fp.safetensors"), "--n", "5", "--rows", "k1"])
    capsys.readouterr()
    assert (
        ip.main(
            ["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "m.json")]
        )
        == 0
    )
    assert "k2p+r0.34" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "m.json").read_text())["rows"]) == 3
