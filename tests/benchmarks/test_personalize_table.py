"""The personalization table runs end to end on a tiny text-to-image model and writes rows a reader can use."""

from __future__ import annotations

import json

from pqcad_deploy.text import main as text_main
from tests._utils import load_benchmark


def test_personalize_table_on_a_tiny_model(tmp_path, t2i, tiny_bert_dir, fake_fmnist, monkeypatch):
    monkeypatch.setenv("PQCAD_FMNIST_DIR", str(fake_fmnist))
    teacher, student = t2i["teacher"], t2i["student"]
    bench = load_benchmark("personalize_table")
    out = tmp_path / "table.json"
    args = ["--teacher", str(teacher), "--student", str(student), "--subjects", "Bag:red:0", "--steps", "2",
            "--n", "1", "--noise-seeds", "0", "1", "--fd-n", "3", "--sample-steps", "4", "--prior-images", "2", "--device", "cpu", "--out", str(out)]  # fmt: skip
    prompts = tmp_path / "prompts.txt"  # the GPU route: a cache of exactly the run's prompts, no encoder
    assert bench.main([*args, "--write-prompts", str(prompts)]) == 0
    cache = tmp_path / "prompts.safetensors"
    assert text_main([str(cache), "--prompts", str(prompts), "--text-encoder", str(tiny_bert_dir), "--max-length",
                      "16", "--device", "cpu"]) == 0  # fmt: skip
    assert bench.main([*args, "--embeddings", str(cache)]) == 0
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {*bench.ROWS, "mcsu-exact"}
    for r in rows.values():
        assert -1.0 <= r["subject_fidelity"] <= 1.0 and 0.0 <= r["colour_accuracy"] <= 1.0
        assert len(r["per_seed"]) == 2 and r["class_fd"] >= 0 and r["subject_fidelity_spread"] >= 0
    assert 0 < rows["peqa"]["trainable_parameters"] < rows["fp"]["trainable_parameters"]
    assert rows["s2k2"]["trainable_parameters"] == 2 * rows["peqa"]["trainable_parameters"]
    assert rows["s2k4"]["patch_kb"] > rows["s2k2"]["patch_kb"] > rows["peqa"]["patch_kb"] > 0
    assert (tmp_path / "table" / "bag_student_peqa.png").is_file() and 0 <= rows["mcsu"]["codes_changed"] <= 1
    merged = tmp_path / "merged.json"
    assert bench.main(["--merge", str(out), str(out), "--out", str(merged)]) == 0
    assert len(json.loads(merged.read_text())["rows"]) == 2 * len(rows)
