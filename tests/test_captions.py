"""The compositional Fashion-MNIST split: palette, captions, held-out pairs and templates, the shipped record."""

import json
import math

import pytest
import torch

from pqcad_deploy import captions as cap
from pqcad_deploy.data import CLASSES
from pqcad_deploy.errors import UsageError


def test_palette_is_saturated_untintable_and_well_spread():
    assert len(cap.PALETTE) == 8
    for c in cap.PALETTE:
        assert max(c.rgb) == 255 and min(c.rgb) <= 64, c
        assert 1 <= len(c.synonyms) <= 2, c
    hues = sorted(cap.palette_hues().tolist())
    gaps = [b - a for a, b in zip(hues, hues[1:], strict=False)] + [360 - hues[-1] + hues[0]]
    assert min(gaps) >= 35, gaps
    words = [w for c in cap.PALETTE for w in c.words]
    assert len(words) == len(set(words))


def test_class_words_cover_every_class_with_synonyms():
    assert len(cap.CLASS_WORDS) == len(CLASSES)
    assert all(2 <= len(words) <= 3 for words in cap.CLASS_WORDS)
    words = [w for ws in cap.CLASS_WORDS for w in ws]
    assert len(words) == len(set(words))


def test_held_out_pairs_use_each_colour_and_class_at_most_once():
    colours = [c for c, _ in cap.HELD_OUT_PAIRS]
    classes = [k for _, k in cap.HELD_OUT_PAIRS]
    assert len(cap.HELD_OUT_PAIRS) == 8
    assert len(set(colours)) == len(colours) and len(set(classes)) == len(classes)
    assert not set(cap.HELD_OUT_PAIRS) & set(cap.TRAIN_PAIRS)
    assert len(cap.TRAIN_PAIRS) + len(cap.HELD_OUT_PAIRS) == 80
    assert not set(cap.TRAIN_TEMPLATES) & set(cap.HELD_OUT_TEMPLATES)


def test_shipped_split_file_equals_the_code():
    shipped = json.loads(cap.SPLIT_PATH.read_text())
    generated = json.loads(json.dumps(cap.split_spec()))
    assert shipped == generated, (
        "assets/t2i_split.json is stale: regenerate it with `python -m pqcad_deploy.captions`"
    )
    assert shipped["caption_dropout"] == 0.1


def test_caption_table_is_small_unique_and_starts_with_the_empty_prompt():
    index = cap.caption_index()
    assert index.captions[0] == "" and len(set(index.captions)) == len(index)
    assert len(index) <= 2500  # 16 x 384 fp16 states per caption must stay small enough to carry to a GPU
    assert "a red sneaker" in index.captions and "an orange ankle boot" in index.captions
    assert "a orange ankle boot" not in index.captions
    assert index.ids(["", "a red sneaker"]).tolist() == [0, index.captions.index("a red sneaker")]
    with pytest.raises(UsageError, match="'a plaid sneaker'"):
        index.ids(["a plaid sneaker"])


def test_training_caption_ids_never_reach_held_out_pairs_or_templates():
    index = cap.caption_index()
    train = {
        int(i) for c, k in cap.TRAIN_PAIRS for i in index.train_ids[c, k, : index.train_counts[c, k]].tolist()
    }
    forbidden = {
        index.ids([s]).item()
        for c, k in cap.HELD_OUT_PAIRS
        for s in cap.pair_captions(c, k, cap.TRAIN_TEMPLATES)
    }
    forbidden |= {
        index.ids([s]).item()
        for c, k in cap.ALL_PAIRS
        for s in cap.pair_captions(c, k, cap.HELD_OUT_TEMPLATES)
    }
    assert train and not train & forbidden and 0 not in train
    assert all(index.train_counts[c, k] == 0 for c, k in cap.HELD_OUT_PAIRS)


def test_sampled_caption_ids_match_their_labels_and_drop_to_empty():
    index = cap.caption_index()
    classes = torch.arange(10).repeat(2000)
    colours = cap.train_colours(classes, seed=3)
    ids = index.sample_train_ids(colours, classes, torch.Generator().manual_seed(0))
    again = index.sample_train_ids(colours, classes, torch.Generator().manual_seed(0))
    assert torch.equal(ids, again) and ids.dtype == torch.long and ids.device == classes.device
    dropped = (ids == 0).double().mean().item()
    assert abs(dropped - 0.1) < 4 * math.sqrt(0.1 * 0.9 / len(ids))
    owner = {s: (c, k) for c, k in cap.ALL_PAIRS for s in cap.pair_captions(c, k, cap.TRAIN_TEMPLATES)}
    for i in torch.nonzero(ids).flatten()[:500].tolist():
        assert owner[index.captions[ids[i]]] == (colours[i].item(), classes[i].item())
    assert (index.sample_train_ids(colours, classes, torch.Generator(), dropout=0.0) != 0).all()


def test_sampling_a_held_out_pair_is_refused_with_the_pair_named():
    c, k = cap.HELD_OUT_PAIRS[0]
    with pytest.raises(UsageError, match=f"{cap.PALETTE[c].name}, {CLASSES[k]}"):
        cap.caption_index().sample_train_ids(torch.tensor([c]), torch.tensor([k]), torch.Generator())


def test_colour_assignment_is_deterministic_and_keeps_held_out_pairs_out_of_training():
    classes = torch.arange(10).repeat(800)
    train = cap.train_colours(classes, seed=0)
    assert torch.equal(train, cap.train_colours(classes, seed=0))
    assert not torch.equal(train, cap.train_colours(classes, seed=1))
    pairs = set(zip(train.tolist(), classes.tolist(), strict=True))
    assert pairs == set(cap.TRAIN_PAIRS)  # every allowed pair used, no held-out one
    test = set(zip(cap.eval_colours(classes).tolist(), classes.tolist(), strict=True))
    assert test == set(cap.ALL_PAIRS)


def test_tint_keeps_black_black_and_grey_in_the_brightest_channel():
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
    images[:, :3] = 0
    colours = torch.arange(16) % 8
    rgb = cap.tinted_model_input(images, colours)
    assert rgb.shape == (16, 3, 32, 32) and rgb.dtype == torch.float32
    assert rgb.min() >= -1 and rgb.max() <= 1
    assert (rgb[:, :, :5] == -1).all()  # padding and black rows stay black in every channel
    grey = torch.rand(64, 1, 8, 8) * 2 - 1
    tinted = cap.tint(grey, torch.arange(64) % 8)
    assert torch.equal(tinted.amax(dim=1, keepdim=True), grey)
    full = cap.tint(torch.ones(8, 1, 1, 1), torch.arange(8))  # full intensity is the palette colour itself
    expected = torch.tensor([c.rgb for c in cap.PALETTE], dtype=torch.float32) / 127.5 - 1
    assert torch.allclose(full[:, :, 0, 0], expected, atol=1e-6)


def test_evaluation_prompts_are_balanced_deterministic_and_from_their_set():
    index = cap.caption_index()
    for name, (pairs, templates) in cap.EVAL_SETS.items():
        n = 3 * len(pairs) + 5
        prompts = cap.evaluation_prompts(name, n, seed=0)
        again = cap.evaluation_prompts(name, n, seed=0)
        assert prompts.prompts == again.prompts and torch.equal(prompts.colours, again.colours)
        assert prompts.prompts != cap.evaluation_prompts(name, n, seed=1).prompts
        counts = torch.bincount(prompts.colours * 10 + prompts.classes, minlength=80)[
            [c * 10 + k for c, k in pairs]
        ]
        assert counts.max() - counts.min() <= 1 and len(prompts) == n
        for s, c, k in zip(prompts.prompts, prompts.colours.tolist(), prompts.classes.tolist(), strict=True):
            assert s in cap.pair_captions(c, k, templates)
        assert len(prompts.caption_ids()) == n and (prompts.caption_ids() > 0).all()
        assert set(cap.eval_set(name).prompts) <= set(index.captions)
    with pytest.raises(UsageError, match="unknown evaluation set"):
        cap.evaluation_prompts("unseen", 4)
