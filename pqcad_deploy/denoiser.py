"""The one call signature every backend is adapted to (``denoiser(x, t, cond) -> eps``), and the graph I/O names
and sampler-like random feed that exporter, engines and runners share."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

SAMPLE, TIMESTEP, COND = "sample", "timestep", "encoder_hidden_states"
OUTPUT_NAME = "out_sample"
FLOAT_INPUTS = (SAMPLE, COND)


def input_names_for(conditional: bool) -> tuple[str, ...]:
    """The graph's inputs, in the order the UNet takes them."""
    return (SAMPLE, TIMESTEP, COND) if conditional else (SAMPLE, TIMESTEP)


def sampler_feed(
    shapes: dict[str, tuple[int, ...]], seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The one random feed: what a sampler sends. Unit-variance latents and encoder states; timesteps spread over
    the whole schedule (DDIM visits all of [0, 999]), so every quantizer sees its whole range."""
    g = torch.Generator().manual_seed(seed)
    feed = {}
    for name, shape in shapes.items():
        if name == TIMESTEP:
            n = int(shape[0]) if shape else 1
            feed[name] = (
                torch.linspace(999, 0, n).round().to(torch.int64)
                if n > 1
                else torch.randint(0, 1000, (1,), generator=g)
            )
        else:
            feed[name] = torch.randn(*shape, generator=g).to(dtype)
    return feed


class Denoiser(Protocol):
    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor: ...


class UNetWrapper(nn.Module):
    """Plain-tensor front for diffusers UNets: named inputs (sample, timestep[, encoder_hidden_states]) and a
    tensor output, which is what ONNX export, engines and CUDA graphs need (no dataclass outputs)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self.conditional = (
            hasattr(unet.config, "cross_attention_dim") and unet.config.cross_attention_dim is not None
        )

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.conditional:
            return self.unet(
                sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False
            )[0]
        return self.unet(sample, timestep, return_dict=False)[0]


class TorchDenoiser:
    """Calls a (possibly quantized) torch UNet under inference_mode, casting inputs to its dtype."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None):
        self.model = model if isinstance(model, UNetWrapper) else UNetWrapper(model)
        self.dtype = dtype or next(self.model.parameters()).dtype

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        c = cond.to(self.dtype) if cond is not None else None
        return self.model(x.to(self.dtype), t, c).to(x.dtype)
