"""Style fidelity and prompt fidelity of styled garments (issue 16's metrics), from the shipped style classifier.

- style fidelity: the fraction of images the style classifier assigns to the target style;
- Gram distance: relative Frobenius distance between the mean Gram matrices of the classifier's feature maps on
  the images and on the StyleRef set (Gatys-style texture statistics; 0 = the same texture statistics);
- class accuracy from the classifier's garment head (the FD-fmnist classifier never saw a styled garment), colour
  accuracy from the dominant hue (:mod:`prompt_metrics`), and FD-fmnist of the grey images (expected to rise with
  style: a styled garment is not a Fashion-MNIST garment).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .metrics import (
    classifier_input,
    classifier_outputs,
    fd_between,
    frechet_distance,
    gaussian_stats,
    reference_stats,
)
from .prompt_metrics import predict_colours
from .style_classifier import STYLE_CLASSIFIER_PATH, load_style_classifier
from .styles import STYLE_CLASSES, check_style

_BATCH = 1000


@lru_cache(maxsize=4)
def _net(device: str):
    return load_style_classifier(STYLE_CLASSIFIER_PATH, device)


@torch.inference_mode()
def _classify(
    images: torch.Tensor, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One pass of the style classifier: (predicted style [N], predicted garment [N], per feature map the mean over
    images of its Gram matrix, channels x channels normalized by the number of positions)."""
    net = _net(str(device))
    styles, garments, sums = [], [], []
    for i in range(0, len(images), _BATCH):
        s, g, maps = net.forward_all(
            classifier_input(images[i : i + _BATCH]).to(device, torch.float32).clamp(-1, 1)
        )
        styles.append(s.argmax(1).cpu())
        garments.append(g.argmax(1).cpu())
        for j, f in enumerate(maps):
            f = f.flatten(2).double()
            gram = (f @ f.transpose(1, 2)).sum(0) / f.shape[-1]
            if j == len(sums):
                sums.append(gram)
            else:
                sums[j] += gram
    return torch.cat(styles), torch.cat(garments), [x.cpu() / len(images) for x in sums]


def style_outputs(
    images: torch.Tensor, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted style index [N], predicted garment class [N]) of images in [-1, 1] (RGB garments untinted)."""
    styles, garments, _ = _classify(images, device)
    return styles, garments


def mean_grams(images: torch.Tensor, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Per feature map of the style classifier, the mean over images of its Gram matrix."""
    return _classify(images, device)[2]


def _relative_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x - y).norm() / y.norm().clamp_min(1e-12) for x, y in zip(a, b, strict=True)) / len(a))


def gram_distance(
    images: torch.Tensor, references: torch.Tensor, device: str | torch.device = "cpu"
) -> float:
    """Mean over feature maps of ||G(images) - G(references)||_F / ||G(references)||_F."""
    return _relative_distance(mean_grams(images, device), mean_grams(references, device))


def style_scores(
    images: torch.Tensor,
    style: str,
    references: torch.Tensor,
    colour_labels: torch.Tensor,
    class_labels: torch.Tensor,
    fp_images: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    held_out: torch.Tensor | None = None,
) -> dict[str, float]:
    """Everything the style table reports for one image set (labels: what each image's prompt asked for);
    ``fp_images`` (the FP styled model's images for the same prompts and noise) adds FD to FP, and a ``held_out``
    mask the class and colour accuracy of those images alone (the teacher's held-out pairs)."""
    target = STYLE_CLASSES.index(check_style(style))
    if not len(images) == len(colour_labels) == len(class_labels):
        raise ValueError(
            f"{len(images)} images, {len(colour_labels)} colour and {len(class_labels)} class labels"
        )
    styles, garments, grams = _classify(images, device)
    class_ok = garments == class_labels.cpu()
    colour_ok = predict_colours(images) == colour_labels.cpu()
    out = {
        "n": len(images),
        "style_fidelity": float((styles == target).double().mean()),
        "gram_distance": _relative_distance(grams, mean_grams(references, device)),
        "class_accuracy": float(class_ok.double().mean()),
        "colour_accuracy": float(colour_ok.double().mean()),
        "joint_accuracy": float((class_ok & colour_ok).double().mean()),
    }
    if held_out is not None:
        out["class_held_out"] = float(class_ok[held_out].double().mean())
        out["colour_held_out"] = float(colour_ok[held_out].double().mean())
    if len(images) > 1:
        feats, _ = classifier_outputs(images, device)
        out["fd_fmnist_grey"] = frechet_distance(*gaussian_stats(feats), *reference_stats("test"))
    if fp_images is not None:
        out["fd_to_fp"] = fd_between(images, fp_images, device)
    return out
