"""What the teacher trainer draws each step: images, and encoder states for text-conditioned models.

``FashionMNISTData`` serves grey Fashion-MNIST (the unconditional teacher). ``CaptionedData`` serves the text-to-image
testbed: every training image has one fixed training colour (never a held-out pair), is tinted on the fly, and gets a
random training caption of its (colour, class) per step, dropped to the empty prompt 10 % of the time (classifier-free
guidance); the caption's states come from the embedding cache, so no text encoder runs during training. Both live
on the training device and draw from a caller-seeded generator, which keeps resume exact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pqcad_deploy.captions import caption_index, tint, train_colours
from pqcad_deploy.conditioning import PromptEncoder
from pqcad_deploy.data import load_fashion_mnist, to_model_range
from pqcad_deploy.errors import UsageError
from pqcad_deploy.zoo import ModelSpec


class FashionMNISTData:
    def __init__(self, data_dir: str | None, device: torch.device, hflip: bool):
        self.images = load_fashion_mnist("train", data_dir).as_model_input().to(device)
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = torch.randint(0, len(self.images), (n,), device=self.images.device, generator=g)
        return _flip(self.images[idx], g, self.hflip), None


class CaptionedData:
    def __init__(
        self,
        data_dir: str | None,
        device: torch.device,
        hflip: bool,
        prompts: PromptEncoder,
        colour_seed: int = 0,
    ):
        if prompts.cache is None or prompts.cache.prompts_only:
            raise UsageError(
                "training a text-to-image teacher needs --embeddings with the caption embedding cache (python -m "
                "pqcad_deploy.text OUT), not a cache of a few prompts"
            )
        train = load_fashion_mnist("train", data_dir)
        self.grey = to_model_range(train.images).to(device)
        self.classes = train.labels.to(device)
        self.colours = train_colours(train.labels, seed=colour_seed).to(device)
        self.cache = prompts.cache.to(device)
        self.index = caption_index()
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.grey)

    def batch(self, g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self.grey), (n,), device=self.grey.device, generator=g)
        colours, classes = self.colours[idx], self.classes[idx]
        x0 = _flip(tint(self.grey[idx], colours), g, self.hflip)
        ids = self.index.sample_train_ids(colours, classes, g)
        return x0, self.cache.by_ids(ids).float()


def teacher_data(
    spec: ModelSpec,
    data_dir: str | None,
    device: torch.device,
    hflip: bool,
    embeddings: str | Path | None,
) -> tuple[FashionMNISTData | CaptionedData, PromptEncoder | None]:
    """The data source a zoo model trains on, and for text-to-image models the prompt states it uses."""
    if not spec.text_conditioned:
        if embeddings is not None:
            raise UsageError(f"--embeddings is for text-to-image models; {spec.name} is unconditional.")
        return FashionMNISTData(data_dir, device, hflip), None
    if embeddings is None:
        raise UsageError(
            f"{spec.name} is text-conditioned: give --embeddings (build it with `python -m pqcad_deploy.text "
            "runs/t2i_embeddings.safetensors`)."
        )
    prompts = PromptEncoder.open(spec, embeddings=embeddings)
    return CaptionedData(data_dir, device, hflip, prompts), prompts


def _flip(x: torch.Tensor, g: torch.Generator, on: bool) -> torch.Tensor:
    if not on:
        return x
    flip = torch.rand(len(x), device=x.device, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
