"""Prompt fidelity of tinted-garment images: does an image show the class and the colour its prompt asked for?

Class: the shipped Fashion-MNIST classifier (the one behind FD-fmnist) on the garment untinted to grey; untinting
is max over channels, the exact inverse of ``captions.tint``. Colour: the garment's dominant hue matched to the
nearest palette hue. Both are deterministic functions of the pixels; neither is a CLIP score.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from .captions import hue_degrees, palette_hues
from .metrics import classifier_outputs, fidelity, frechet_distance, gaussian_stats, reference_stats, untint

log = logging.getLogger(__name__)

# A pixel is garment when its brightest channel is above this (in [0, 1]); below it the hue is mostly noise.
GARMENT_THRESHOLD = 0.1
NO_COLOUR = -1  # predicted for an image without a coloured garment pixel: never equal to a label
_CHUNK = 1024  # images per step of the hue computation, to bound memory on 10k-sample evaluations


def dominant_hue(
    images: torch.Tensor, threshold: float = GARMENT_THRESHOLD
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hue in degrees [N] float64, has_colour [N] bool) of RGB images in [-1, 1].

    The circular mean of the hues of garment pixels (brightest channel above ``threshold``), each weighted by its
    chroma (brightness x saturation): bright pixels vote more, and grey pixels, whose hue is undefined, not at all.
    """
    hues, valid = [], []
    for i in range(0, len(images), _CHUNK):
        rgb = images[i : i + _CHUNK].detach().to("cpu", torch.float64).clamp(-1, 1).add(1).div(2)
        r, g, b = rgb.unbind(1)
        value = torch.maximum(torch.maximum(r, g), b)
        chroma = value - torch.minimum(torch.minimum(r, g), b)
        weight = torch.where(value > threshold, chroma, torch.zeros_like(chroma)).flatten(1)
        angle = torch.deg2rad(hue_degrees(r, g, b)).flatten(1)
        x, y = (weight * angle.cos()).sum(1), (weight * angle.sin()).sum(1)
        hues.append(torch.rad2deg(torch.atan2(y, x)).remainder(360.0))
        valid.append(x.hypot(y) > 1e-9)
    return torch.cat(hues), torch.cat(valid)


def predict_colours(images: torch.Tensor, threshold: float = GARMENT_THRESHOLD) -> torch.Tensor:
    """int64 [N] palette index of each image's dominant hue (nearest on the circle), NO_COLOUR when it has none."""
    hue, valid = dominant_hue(images, threshold)
    gap = (hue[:, None] - palette_hues()[None, :]).remainder(360.0)
    distance = torch.minimum(gap, 360.0 - gap)
    return torch.where(valid, distance.argmin(dim=1), torch.full_like(valid, NO_COLOUR, dtype=torch.long))


def colour_accuracy(images: torch.Tensor, colour_labels: torch.Tensor) -> float:
    return _mean_equal(predict_colours(images), colour_labels)


def predict_classes(images: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """int64 [N] class of each untinted garment by the shipped classifier."""
    _, probs = classifier_outputs(untint(images), device)
    return torch.from_numpy(probs.argmax(axis=1))


def class_accuracy(
    images: torch.Tensor, class_labels: torch.Tensor, device: str | torch.device = "cpu"
) -> float:
    return _mean_equal(predict_classes(images, device), class_labels)


def prompt_fidelity(
    images: torch.Tensor,
    colour_labels: torch.Tensor,
    class_labels: torch.Tensor,
    set_names: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    fd: bool = False,
) -> dict:
    """Class, colour and joint (both right) accuracy, overall and per evaluation set when each image's
    ``set_names`` entry is given; ``fd`` adds FD-fmnist of the grey images from the same classifier pass."""
    n = len(images)
    if not (len(colour_labels) == len(class_labels) == n) or (set_names is not None and len(set_names) != n):
        raise ValueError(
            f"prompt_fidelity needs one label per image: {n} images, {len(colour_labels)} colour labels, "
            f"{len(class_labels)} class labels{'' if set_names is None else f', {len(set_names)} set names'}"
        )
    feats, class_ok, colour_ok = _score(images, colour_labels, class_labels, device)  # one classifier pass
    result: dict = {"n": n, **_accuracies(class_ok, colour_ok)}
    if set_names is not None:
        names = np.asarray(set_names)
        result["per_set"] = {}
        for name in dict.fromkeys(set_names):  # first-appearance order
            mask = torch.from_numpy(names == name)
            result["per_set"][name] = {"n": int(mask.sum()), **_accuracies(class_ok[mask], colour_ok[mask])}
    if fd:
        if n < 2:
            raise ValueError(
                "FD-fmnist needs at least 2 images (a covariance); use thousands for a stable number."
            )
        result["fd_fmnist_grey"] = frechet_distance(*gaussian_stats(feats), *reference_stats("test"))
    return result


def prompt_quality(
    images: torch.Tensor,
    colour_labels: torch.Tensor,
    class_labels: torch.Tensor,
    reference: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """Everything the text-to-image tables report for one image set: class / colour / joint accuracy, FD-fmnist of
    the grey images against the test set, and with ``reference`` (the FP model's images for the same prompts and
    noise) FD to FP and PSNR to FP (PCR's fidelity-to-full-precision idea). One classifier pass per image set."""
    feats, class_ok, colour_ok = _score(images, colour_labels, class_labels, device)
    stats = gaussian_stats(feats)
    out = {"n": len(images), **_accuracies(class_ok, colour_ok)}
    out["fd_fmnist_grey"] = frechet_distance(*stats, *reference_stats("test"))
    if reference is not None:
        ref_feats, _ = classifier_outputs(untint(reference), device)
        out["fd_to_fp"] = frechet_distance(*stats, *gaussian_stats(ref_feats))
        out["psnr_to_fp"] = fidelity(images, reference)["psnr_db"]
    return out


def _score(
    images: torch.Tensor, colour_labels: torch.Tensor, class_labels: torch.Tensor, device: str | torch.device
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(classifier features, class right?, colour right?) per image, from one classifier pass."""
    feats, probs = classifier_outputs(untint(images), device)
    class_ok = torch.from_numpy(probs.argmax(axis=1)) == class_labels.cpu()
    return feats, class_ok, predict_colours(images) == colour_labels.cpu()


def _accuracies(class_ok: torch.Tensor, colour_ok: torch.Tensor) -> dict[str, float]:
    return {
        "class_accuracy": float(class_ok.double().mean()),
        "colour_accuracy": float(colour_ok.double().mean()),
        "joint_accuracy": float((class_ok & colour_ok).double().mean()),
    }


def _mean_equal(pred: torch.Tensor, labels: torch.Tensor) -> float:
    if pred.shape != labels.shape:
        raise ValueError(f"{pred.shape[0]} images but {labels.shape[0]} labels")
    return float((pred == labels.cpu()).double().mean())


def subject_fidelity(
    images: torch.Tensor, references: torch.Tensor, device: str | torch.device = "cpu"
) -> float:
    """Mean cosine similarity between generated images and a subject's reference images in the shipped classifier's
    feature space (untinted): the testbed's stand-in for DINO / CLIP-I subject fidelity, over all pairs."""
    a, _ = classifier_outputs(untint(images), device)
    b, _ = classifier_outputs(untint(references), device)
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return float((a @ b.T).mean())
