"""``pqcad-train style`` (StyleForge) and ``pqcad-train style-images`` on the tiny text-to-image model: Single- and
Multi-StyleForge and the StyleRef-only baseline on the FP model, the scale-only route on its student, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from pqcad_deploy.errors import UsageError
from pqcad_deploy.loading import open_model
from pqcad_deploy.patch import load_patch
from pqcad_deploy.styles import STYLE_CLASSES
from pqcad_deploy.train.cli import main as train_main
from pqcad_deploy.train.style_data import MIN_IMAGES, SUBSETS, aux_set, check_tokens, load_style
from pqcad_deploy.zoo import get_spec


def sidecar(path):
    """The JSON sidecar of a model file (FP weights keep their training record there)."""
    return json.loads(path.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def style_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("style") / "halftone"
    assert train_main(["style-images", "--style", "halftone", "--out", str(d), "--count", "12"]) == 0
    return d


@pytest.fixture
def style(t2i, style_dir):
    """``style(out, *extra, model=None)``: a 3-step ``pqcad-train style`` run; its exit code."""

    def run(out, *extra, model=None, images=None):
        folders = [a for f in images or [style_dir] for a in ("--images", str(f))]
        argv = ["style", "--model", str(model or t2i["teacher"]), *folders, "--out", str(out), "--steps", "3",
                "--batch-size", "2", "--aux-images", "4", "--text-encoder", str(t2i["bert"]), "--device", "cpu",
                *extra]  # fmt: skip
        return train_main(argv)

    return run


def test_style_images_writes_the_two_subsets_with_caption_sidecars(style_dir):
    upper, other = sorted((style_dir / "upper").glob("*.png")), sorted((style_dir / "other").glob("*.png"))
    assert len(upper) + len(other) == 12 and upper and other
    sub = load_style(style_dir, "sks", get_spec("fmnist-t2i"))
    assert len(sub.images) == 12 and sub.augmented
    words = {p.with_suffix(".txt").read_text().split()[-1] for p in upper}
    assert words <= {"t-shirt", "pullover", "dress", "coat", "shirt"}
    assert all(p.startswith("a ") and p.endswith(" in sks style") for p in sub.prompts)
    assert len(SUBSETS["upper"]) + len(SUBSETS["other"]) == 10


def test_single_styleforge_fine_tunes_the_fp_model_and_records_the_sets(t2i, style, tmp_path):
    out = tmp_path / "styled.safetensors"
    assert style(out) == 0
    assert (tmp_path / "styled_grid.png").is_file()
    bundle = open_model(out)
    record = sidecar(out)["style"]
    assert record["style"] == {"tokens": ["sks"], "multi": False, "aux_images": 4}
    assert [s["images"] for s in record["sets"]] == [12, 4]  # StyleRef, Aux
    assert record["trainable_parameters"] == sum(p.numel() for p in bundle.model.parameters())
    before = open_model(t2i["teacher"]).model.state_dict()
    assert any(not torch.equal(v, before[k]) for k, v in bundle.model.state_dict().items())


def test_multi_styleforge_binds_one_token_per_folder_and_the_baseline_drops_aux(style, style_dir, tmp_path):
    out = tmp_path / "multi.safetensors"
    folders = [style_dir / "upper", style_dir / "other"]
    assert style(out, "--token", "sks", "--token", "zwx", images=folders) == 0
    record = sidecar(out)["style"]
    assert record["style"]["multi"] and record["style"]["tokens"] == ["sks", "zwx"]
    assert style(tmp_path / "ref.safetensors", "--aux-images", "0") == 0
    assert [s["images"] for s in sidecar(tmp_path / "ref.safetensors")["style"]["sets"]] == [12]
    assert style(tmp_path / "prior.safetensors", "--prior-images", "3") == 0  # + the model's own Aux images
    assert [s["images"] for s in sidecar(tmp_path / "prior.safetensors")["style"]["sets"]] == [12, 4, 3]


def test_a_quantized_student_takes_the_scale_only_route_as_a_patch(t2i, style, tmp_path):
    out = tmp_path / "style_patch.safetensors"
    assert style(out, "--method", "peqa", model=t2i["student"]) == 0
    patch = load_patch(out)
    assert (
        patch.meta["method"] == "peqa"
        and patch.num_parameters == patch.meta["training"]["trainable_parameters"]
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--token", "sks", "--token", "zwx"], "2 --token"),
        (["--method", "peqa"], "tunes the scales of a quantized student"),
        (["--caption", "a {subject} in style"], "must contain {token}"),
        (["--caption", "a {subject} in {token} {colour} style"], "only {subject} and {token}"),
        (["--aux-images", "0", "--prior-images", "2"], "give --aux-images > 0 and --aux-weight > 0"),
    ],
)
def test_bad_style_arguments_are_refused_before_any_work(style, tmp_path, capsys, extra, message):
    out = tmp_path / "x.safetensors"
    assert style(out, *extra) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_fp_method_on_a_student_is_refused(t2i, style, tmp_path, capsys):
    assert style(tmp_path / "x.safetensors", model=t2i["student"]) == 2
    assert "fine-tunes an FP model" in capsys.readouterr().err


def test_too_few_unreadable_and_mixed_size_style_images(tmp_path, caplog):
    spec = get_spec("tiny-t2i")
    folder = tmp_path / "few"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(MIN_IMAGES - 1):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"s{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING), pytest.raises(UsageError, match="a style needs at least"):
        load_style(folder, "sks", spec)
    assert "broken.png" in caplog.text
    Image.fromarray(rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)).save(folder / "big.png")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ref = load_style(folder, "sks", spec)
    assert ref.images.shape == (MIN_IMAGES, 3, 16, 16) and "resized 1 of" in caplog.text
    assert ref.prompts[0] == "a picture in sks style"  # no caption sidecar


def test_tokens_must_differ_and_a_common_word_is_warned(caplog):
    with pytest.raises(UsageError, match="different tokens"):
        check_tokens(["sks", "sks"])
    with caplog.at_level(logging.WARNING):
        check_tokens(["red"])
    assert "common word" in caplog.text


def test_aux_images_are_plain_captioned_garments_at_the_models_size():
    aux = aux_set(12, 0.5, get_spec("tiny-t2i"))
    assert aux.images.shape == (12, 3, 16, 16) and aux.weight == 0.5 and not aux.augmented
    assert all(" style" not in p for p in aux.prompts)
    with pytest.raises(UsageError, match="--aux-images 0"):
        aux_set(2, 1.0, get_spec("tiny-unet"))


def test_style_classifier_training_records_clean_and_damaged_accuracy(tmp_path):
    out = tmp_path / "sc.safetensors"
    args = ["style-classifier", "--out", str(out), "--train-images", "512", "--test-images", "200", "--epochs", "1",
            "--batch-size", "128", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert train_main(args) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    for key in ("style_accuracy", "damaged_style_accuracy", "garment_accuracy", "damaged_garment_accuracy"):
        assert 0.0 <= info[key] <= 1.0, key
    assert set(info["damaged_style_accuracy_per_style"]) == set(STYLE_CLASSES)
    assert info["train_images"] == 512 and info["test_images"] == 200
