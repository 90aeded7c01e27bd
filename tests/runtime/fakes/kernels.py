"""What the fake engines compute: fixed numpy functions of their inputs, so that a test can predict every output
and check that the code under test handed the engine the right buffers."""

from __future__ import annotations

import numpy as np


def unet_eps(sample: np.ndarray, timestep: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
    """eps = 0.5 x + t / 1000 (+ the mean of the row's token states): each input visibly moves the output."""
    eps = 0.5 * sample.astype(np.float32) + timestep.astype(np.float32).reshape(-1, 1, 1, 1) / 1000.0
    if cond is not None:
        eps = eps + cond.astype(np.float32).mean(axis=(1, 2)).reshape(-1, 1, 1, 1)
    return eps.astype(np.float32)


def text_states(input_ids: np.ndarray, attention_mask: np.ndarray, dim: int) -> np.ndarray:
    """Token states [B, L, dim]: a fixed embedding of each id, zero where the attention mask is 0."""
    table = np.sin(0.37 * (np.arange(4096)[:, None] + 1) * (np.arange(dim)[None, :] + 1)).astype(np.float32)
    return table[input_ids % len(table)] * attention_mask[..., None].astype(np.float32)


KERNELS = {"unet": unet_eps, "text": text_states}
