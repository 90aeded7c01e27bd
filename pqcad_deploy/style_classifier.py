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
from torch import nn

from .classifier import conv_block, load_weights_into
from .io import save_safetensors_pair
from .styles import STYLE_CLASSES

log = logging.getLogger(__name__)
STYLE_CLASSIFIER_PATH = Path(__file__).parent / "assets" / "fmnist_style_classifier.safetensors"
N_GARMENTS = 10


class StyleClassifier(nn.Module):
    """Input: grey [B, 1, 32, 32] in [-1, 1]; output (style logits [B, 4], garment logits [B, 10])."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.blocks = nn.ModuleList(
            [conv_block(1, width), conv_block(width, 2 * width), conv_block(2 * width, 4 * width)]
        )
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

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(style logits, garment logits, each block's feature map) from one pass."""
        maps = self.feature_maps(x)
        f = self.embed(maps[-1])
        return self.style_head(f), self.garment_head(f), maps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, g, _ = self.forward_all(x)
        return s, g


def save_style_classifier(model: StyleClassifier, path: str | os.PathLike, info: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_safetensors_pair(path, tensors, {**info, "style_classes": list(STYLE_CLASSES)})


def load_style_classifier(
    path: str | os.PathLike = STYLE_CLASSIFIER_PATH, device: str | torch.device = "cpu"
) -> StyleClassifier:
    return load_weights_into(StyleClassifier(), path, device, "Style classifier", "`pqcad-train style-classifier`",
                             f"the StyleClassifier architecture ({len(STYLE_CLASSES)} styles)")  # fmt: skip
