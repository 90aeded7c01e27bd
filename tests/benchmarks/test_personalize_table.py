"""The personalization table runs end to end on a tiny text-to-image model and writes rows a reader can use."""

from __future__ import annotations

import dataclasses
import json

from pqcad_deploy.text import load_embedding_cache
from pqcad_deploy.text import main as text_main
from pqcad_deploy.train.cli import main as train_main
from pqcad_deploy.zoo import build_model, get_spec, save_weights
from tests._utils import load_benchmark


def test_personalize_table_on_a_tiny_model(tmp_path, tiny_t2i_cache, tiny_bert_dir, fake_fmnist, monkeypatch):
    monkeypatch.setenv("PQCAD_FMNIST_DIR", str(fake_fmnist))
    spec = get_spec("tiny-t2i")
    spec = dataclasses.replace(
        spec, text={**spec.text, "fingerprint": load_embedding_cache(tiny_t2i_cache).fingerprint}
    )
    teacher = save_weights(build_model(spec, seed=0), spec, tmp_path / "teacher.safetensors")
    student = tmp_path / "student.pt"
    calib = [
        "--calib-trajectories",
        "2",
        "--calib-steps",
        "4",
        "--calib-points",
        "2",
        "--calib-batch-size",
        "2",
    ]
    argv = ["ptq", "--teacher", str(teacher), "--out", str(student), *calib, "--ptq-method", "maxabs"]
    assert train_main([*argv, "--embeddings", str(tiny_t2i_cache), "--device", "cpu"]) == 0
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
