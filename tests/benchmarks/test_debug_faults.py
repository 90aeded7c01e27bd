"""benchmarks/debug_faults.py on tiny-unet: each tool's file, a broken layer per case, ranked first; modelopt is
skipped with the reason where it is not installed (CI), never silently."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests._utils import load_benchmark


@pytest.fixture(scope="module")
def df():
    return load_benchmark("debug_faults")


def test_quick_run_ranks_every_broken_layer_first(df, tmp_path, capsys):
    out = tmp_path / "df.json"
    rc = df.main(["--model", "tiny-unet", "--quick", "--sources", "pqcad", "modelopt", "--out", str(out)])
    doc = json.loads(out.read_text())
    have_modelopt = importlib.util.find_spec("modelopt") is not None
    sources = {"pqcad", "modelopt"} if have_modelopt else {"pqcad"}
    assert {r["source"] for r in doc["rows"]} == sources and len(doc["rows"]) == 2 * len(sources)
    assert ("modelopt" in doc["skipped"]) == (not have_modelopt)
    assert all(r["rank"] == 1 and r["x_healthy"] > 1 for r in doc["rows"]), doc["rows"]
    assert rc == 0 and "pqcad-debug on broken files" in capsys.readouterr().out


def test_without_modelopt_its_rows_are_skipped_with_the_reason(df, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "modelopt" or m.startswith("modelopt.")] + ["modelopt"]:
        monkeypatch.setitem(sys.modules, name, None)  # import modelopt... raises ImportError
    out = tmp_path / "df.json"
    assert df.main(["--model", "tiny-unet", "--quick", "--sources", "modelopt", "--out", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert doc["rows"] == [] and doc["skipped"]["modelopt"].startswith(("ImportError", "ModuleNotFoundError"))


def test_save_modelopt_needs_modelopt_in_sources(df, capsys):
    with pytest.raises(SystemExit) as e:
        df.parse_args(["--sources", "pqcad", "--save-modelopt", "x.onnx"])
    assert e.value.code == 2 and "--save-modelopt needs modelopt" in capsys.readouterr().err
