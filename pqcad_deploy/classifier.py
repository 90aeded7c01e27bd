"""Small Fashion-MNIST CNN whose penultimate features define FD-fmnist (a Frechet distance in *this*
feature space; never call it FID, which is defined on Inception-v3)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .io import CheckpointError, save_safetensors_pair

log = logging.getLogger(__name__)
CLASSIFIER_PATH = Path(__file__).parent / "assets" / "fmnist_classifier.safetensors"
FEATURE_DIM = 128


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv + BN + ReLU, then 2x2 max pooling: the stage of the project's small classifiers."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FMNISTClassifier(nn.Module):
    """Input: [B, 1, 32, 32] in [-1, 1] (the diffusion model's range and padding)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(1, width), conv_block(width, 2 * width), conv_block(2 * width, 4 * width)
        )
        self.embed = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * width * 16, FEATURE_DIM), nn.ReLU(inplace=True)
        )
        self.head = nn.Linear(FEATURE_DIM, 10)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def save_classifier(model: FMNISTClassifier, path: str | os.PathLike, info: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_safetensors_pair(path, tensors, info)


def load_classifier(
    path: str | os.PathLike = CLASSIFIER_PATH, device: str | torch.device = "cpu"
) -> FMNISTClassifier:
    return load_weights_into(
        FMNISTClassifier(),
        path,
        device,
        "Feature classifier",
        "`pqcad-train classifier`",
        "the FMNISTClassifier architecture",
    )


def load_weights_into(
    model: nn.Module,
    path: str | os.PathLike,
    device: str | torch.device,
    what: str,
    trainer: str,
    matches: str,
) -> nn.Module:
    """``model`` with the safetensors weights at ``path``, in eval mode on ``device``; a missing, unreadable or
    mismatched file (other names or shapes) is refused before anything is loaded."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{what} {path} not found; it ships with the package (train one with {trainer})."
        )
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"Cannot read {what.lower()} weights {path}: {e}") from e
    expected = model.state_dict()
    if set(expected) != set(tensors) or any(expected[k].shape != tensors[k].shape for k in expected):
        raise CheckpointError(f"{path} does not match {matches}.")
    model.load_state_dict(tensors)
    return model.to(device).eval()
