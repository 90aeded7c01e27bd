"""The testbed's styles (deterministic renderings), the shipped style classifier, and the style metrics."""

from __future__ import annotations

import json

import pytest
import torch

from pqcad_deploy.captions import tint
from pqcad_deploy.data import load_fashion_mnist
from pqcad_deploy.errors import UsageError
from pqcad_deploy.io import CheckpointError
from pqcad_deploy.style_classifier import STYLE_CLASSIFIER_PATH, load_style_classifier
from pqcad_deploy.style_metrics import gram_distance, style_outputs, style_scores
from pqcad_deploy.styles import STRIPE_DIM, STYLE_CLASSES, STYLES, render


@pytest.fixture(scope="module")
def garments():
    """200 test-set garments (grey, model range) with their classes, and a colour each."""
    test = load_fashion_mnist("test")
    return test.as_model_input()[:200], test.labels[:200], torch.arange(200) % 8


def test_renderings_are_deterministic_and_keep_range_and_shape(garments):
    grey = garments[0][:16]
    for style in STYLE_CLASSES:
        a, b = render(grey, style), render(grey.clone(), style)
        assert torch.equal(a, b) and a.shape == grey.shape
        assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(render(grey, "plain"), grey)


def test_each_rendering_does_what_its_name_says():
    flat = torch.full((1, 1, 32, 32), 1.0)  # a white square filling the image
    black = torch.full((1, 1, 32, 32), -1.0)
    assert torch.all(render(flat, "outline") == -1)  # no intensity change: no edge
    for style in STYLES:
        assert torch.all(render(black, style) == -1)  # nothing stays nothing
    stripes = render(flat, "stripes").add(1).div(2)[0, 0, :, 0]
    assert torch.allclose(stripes[:4], torch.tensor([1.0, 1.0, STRIPE_DIM, STRIPE_DIM]))
    dots = render(flat, "halftone").add(1).div(2)[0, 0]
    assert dots[1:3, 1:3].eq(1).all() and dots.mean() < 1  # a full dot per cell, gaps between cells


def test_unknown_style_is_refused():
    with pytest.raises(UsageError, match="unknown style 'sepia'"):
        render(torch.zeros(1, 1, 32, 32), "sepia")


def test_shipped_classifier_recognizes_every_style_and_records_its_accuracy(garments):
    info = json.loads(STYLE_CLASSIFIER_PATH.with_suffix(".json").read_text())
    assert info["style_classes"] == list(STYLE_CLASSES) and info["style_accuracy"] >= 0.95
    grey, labels, colours = garments
    for k, style in enumerate(STYLE_CLASSES):
        styles, classes = style_outputs(tint(render(grey, style), colours))
        assert (styles == k).double().mean() >= 0.95, style
        assert (classes == labels).double().mean() >= 0.6, style


def test_shipped_classifier_survives_the_damage_of_sampled_images(garments):
    """Sampled garments carry speckle noise on the background; the first shipped classifier (trained on clean
    renderings) called most such stripes "plain" or "outline" and mislabelled their garments."""
    from pqcad_deploy.train.style_classifier import degrade

    info = json.loads(STYLE_CLASSIFIER_PATH.with_suffix(".json").read_text())
    assert info["damaged_style_accuracy"] >= 0.95 and info["damaged_garment_accuracy"] >= 0.8
    grey, labels, colours = garments
    g = torch.Generator().manual_seed(0)
    for k, style in enumerate(STYLE_CLASSES):
        damaged = degrade(render(grey, style), g, share=1.0)
        assert not torch.equal(damaged, render(grey, style))
        styles, classes = style_outputs(tint(damaged, colours))
        assert (styles == k).double().mean() >= 0.9, style
        assert (classes == labels).double().mean() >= 0.6, style


def test_degrade_leaves_the_undamaged_share_alone(garments):
    from pqcad_deploy.train.style_classifier import degrade

    x = garments[0][:64]
    g = torch.Generator().manual_seed(0)
    assert torch.equal(degrade(x, g, share=0.0), x)
    y = degrade(x, g, share=0.5)
    changed = (y != x).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 64 and y.min() >= -1 and y.max() <= 1


def test_a_mismatched_classifier_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad))
    with pytest.raises(CheckpointError, match="does not match the StyleClassifier"):
        load_style_classifier(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_style_classifier(tmp_path / "missing.safetensors")


def test_style_scores_separate_the_target_style_from_others(garments):
    grey, labels, colours = garments
    refs = tint(render(grey[100:116], "outline"), colours[100:116])
    outline = tint(render(grey[:100], "outline"), colours[:100])
    plain = tint(grey[:100], colours[:100])
    good = style_scores(outline, "outline", refs, colours[:100], labels[:100])
    other = style_scores(plain, "outline", refs, colours[:100], labels[:100])
    assert good["style_fidelity"] >= 0.95 and other["style_fidelity"] <= 0.05
    assert good["gram_distance"] < other["gram_distance"]
    assert good["colour_accuracy"] == 1.0 and good["class_accuracy"] >= 0.6
    assert gram_distance(refs, refs) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="colour and"):
        style_scores(outline, "outline", refs, colours[:10], labels[:100])
