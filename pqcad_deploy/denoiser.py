"""The one call signature every backend is adapted to: ``denoiser(x, t, cond) -> eps``."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


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
