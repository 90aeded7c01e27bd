"""The style classifier behind style fidelity: which testbed style (or none) a garment is drawn in, and which
garment it is, from its grey (untinted) pixels.

Trained by ``pqcad-train style-classifier`` on the renderings of :mod:`styles` over the Fashion-MNIST training
split and shipped with its test accuracy. The garment head exists because the FD-fmnist classifier never saw a
styled garment: class accuracy of styled images is read from this network's second head instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .io import CheckpointError, save_safetensors_pair
from .styles import STYLE_CLASSES

log = logging.getLogger(__name__)
STYLE_CLASSIFIER_PATH = Path(__file__).parent / "assets" / "fmnist_style_classifier.safetensors"
N_GARMENTS = 10


class StyleClassifier(nn.Module):
    """Input: grey [B, 1, 32, 32] in [-1, 1]; output (style logits [B, 4], garment logits [B, 10])."""

    def __init__(self, width: int = 16):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.blocks = nn.ModuleList([block(1, width), block(width, 2 * width), block(2 * width, 4 * width)])
        self.embed = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * width * 16, 64), nn.ReLU(inplace=True)
        )
        self.style_head = nn.Linear(64, len(STYLE_CLASSES))
        self.garment_head = nn.Linear(64, N_GARMENTS)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's output: what the Gram-matrix style distance compares."""
        maps = []
        for b in self.blocks:
            x = b(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.embed(self.feature_maps(x)[-1])
        return self.style_head(f), self.garment_head(f)


def save_style_classifier(model: StyleClassifier, path: str | os.PathLike, info: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_safetensors_pair(path, tensors, {**info, "style_classes": list(STYLE_CLASSES)})


def load_style_classifier(
    path: str | os.PathLike = STYLE_CLASSIFIER_PATH, device: str | torch.device = "cpu"
) -> StyleClassifier:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Style classifier {path} not found; it ships with the package (train one with "
            "`pqcad-train style-classifier`)."
        )
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"Cannot read style classifier weights {path}: {e}") from e
    model = StyleClassifier()
    expected = model.state_dict()
    if set(expected) != set(tensors) or any(expected[k].shape != tensors[k].shape for k in expected):
        raise CheckpointError(
            f"{path} does not match the StyleClassifier architecture ({len(STYLE_CLASSES)} styles)."
        )
    model.load_state_dict(tensors)
    return model.to(device).eval()
