"""Prompt-fidelity metrics: exact untint, hue voting, and agreement with the classifier on real tinted test images."""

import colorsys

import pytest
import torch

from pqcad_deploy import prompt_metrics as pm
from pqcad_deploy.captions import PALETTE, eval_colours, palette_hues, tint, tinted_model_input
from pqcad_deploy.data import load_fashion_mnist
from pqcad_deploy.metrics import gaussian_stats

N_REAL = 2000  # enough for a 1-point check; on all 10k: colour 100 %, class 93.74 % tinted and grey alike


def solid(hue_degrees: float, value: float = 1.0, size: int = 8) -> torch.Tensor:
    """One [3, size, size] image of a fully saturated colour, in [-1, 1]."""
    rgb = colorsys.hsv_to_rgb((hue_degrees % 360) / 360, 1.0, value)
    return (torch.tensor(rgb).view(3, 1, 1) * 2 - 1).expand(3, size, size).clone()


@pytest.fixture(scope="module")
def real():
    test = load_fashion_mnist("test")
    images, labels = test.images[:N_REAL], test.labels[:N_REAL]
    colours = eval_colours(test.labels)[:N_REAL]
    return test.as_model_input()[:N_REAL], tinted_model_input(images, colours), colours, labels


def test_untint_is_the_exact_inverse_of_tint(real):
    grey = torch.rand(200, 1, 16, 16) * 2 - 1
    assert torch.equal(pm.untint(tint(grey, torch.arange(200) % 8)), grey)
    real_grey, real_rgb, _, _ = real
    assert torch.equal(pm.untint(real_rgb), real_grey)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        pm.untint(real_grey)


def test_palette_tints_are_predicted_exactly_and_near_hues_snap_to_them():
    full = tint(torch.ones(8, 1, 4, 4), torch.arange(8))
    assert pm.predict_colours(full).tolist() == list(range(8))
    hues = palette_hues().tolist()
    shifted = torch.stack([solid(h + d) for h in hues for d in (-15, 15)])
    assert pm.predict_colours(shifted).tolist() == [i for i in range(8) for _ in (0, 1)]


def test_dominant_hue_is_a_circular_brightness_weighted_vote():
    wrap = torch.cat([solid(350)[:, :4], solid(10)[:, 4:]], dim=1)  # arithmetic mean would say 180 (cyan)
    assert pm.predict_colours(wrap[None]).item() == 0
    mostly_blue = solid(225)
    mostly_blue[:, :2] = solid(120)[:, :2]  # a quarter of the pixels green
    assert pm.predict_colours(mostly_blue[None]).item() == 5
    bright_red_dim_cyan = torch.cat([solid(355, 1.0)[:, :4], solid(180, 0.3)[:, 4:]], dim=1)
    assert pm.predict_colours(bright_red_dim_cyan[None]).item() == 0  # brighter pixels outvote dimmer ones
    dark = solid(180, value=0.05)  # below the garment threshold: no vote
    grey = torch.zeros(3, 8, 8)  # no chroma: no vote
    assert pm.predict_colours(torch.stack([dark, grey])).tolist() == [pm.NO_COLOUR, pm.NO_COLOUR]
    assert pm.colour_accuracy(torch.stack([grey, solid(120)]), torch.tensor([3, 3])) == 0.5


def test_real_tinted_test_images_score_like_the_grey_classifier(real):
    real_grey, real_rgb, colours, labels = real
    assert pm.colour_accuracy(real_rgb, colours) >= 0.99
    grey_rgb = real_grey.expand(-1, 3, -1, -1)  # untinted copy: the classifier's own accuracy on grey
    grey_accuracy = pm.class_accuracy(grey_rgb, labels)
    assert grey_accuracy > 0.85
    assert abs(pm.class_accuracy(real_rgb, labels) - grey_accuracy) <= 0.01
    assert pm.predict_colours(grey_rgb[:50]).eq(pm.NO_COLOUR).all()  # grey garments have no colour


def test_prompt_fidelity_reports_every_number_from_one_classifier_pass(real, monkeypatch):
    _, real_rgb, colours, labels = real
    rgb, colours, labels = real_rgb[:400], colours[:400], labels[:400]
    wrong_colours = (colours + 1) % len(PALETTE)
    own_stats = gaussian_stats(pm.classifier_outputs(pm.untint(rgb))[0])
    monkeypatch.setattr(pm, "reference_stats", lambda split: own_stats)  # the 10k test-set pass is slow here
    calls = []
    original = pm.classifier_outputs
    monkeypatch.setattr(pm, "classifier_outputs", lambda *a, **k: calls.append(1) or original(*a, **k))
    names = ["seen"] * 300 + ["held_out_pairs"] * 100
    both = torch.cat([colours[:300], wrong_colours[300:]])
    result = pm.prompt_fidelity(rgb, both, labels, set_names=names, fd=True)
    assert len(calls) == 1
    assert result["n"] == 400 and list(result["per_set"]) == ["seen", "held_out_pairs"]
    seen, held = result["per_set"]["seen"], result["per_set"]["held_out_pairs"]
    assert seen["colour_accuracy"] == 1.0 and held["colour_accuracy"] == 0.0 and held["joint_accuracy"] == 0.0
    assert result["colour_accuracy"] == pytest.approx(0.75)
    assert seen["joint_accuracy"] == seen["class_accuracy"] > 0.85
    assert result["fd_fmnist_grey"] == pytest.approx(0.0, abs=1e-3)  # against its own statistics
    with pytest.raises(ValueError, match="one label per image"):
        pm.prompt_fidelity(rgb, colours[:10], labels)
