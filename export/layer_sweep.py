"""One-layer-at-a-time sensitivity sweep of a quantized torch student (the fake-quant model, before export).

The reference is the student itself with every quantizer switched off (``TensorQuantizer.enabled``), so the sweep
measures quantization alone, not QAT's weight changes. A layer's contribution is the share of the final squared
error removed when only that layer's quantizers are off, the same measure and report layout as the ONNX debugger
(:mod:`pqcad_deploy.export.layer_debug`). A layer is a ``QuantConv2d``/``QuantLinear`` with its weight, input and
output quantizers, or a standalone residual-skip quantizer; a q/k/v input quantizer is shared, so switching it off
for to_q switches it off for to_k and to_v too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pqcad_deploy.denoiser import UNetWrapper
from pqcad_deploy.quant import QuantConv2d, QuantLinear, TensorQuantizer, check_calibrated, iter_quantizers

from .layer_debug import DEBUG_TIMESTEPS, DebugError, error_removed, greedy_exclude, rel_l2, timestep_feeds

log = logging.getLogger(__name__)


def quant_layers(model: nn.Module) -> dict[str, list[TensorQuantizer]]:
    """Module name -> the quantizers switched off together when that layer is left in float."""
    groups: dict[str, list[TensorQuantizer]] = {}
    for name, m in model.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            qs = (m.weight_quantizer, m.input_quantizer, m.output_quantizer)
            groups[name] = [q for q in qs if q is not None]
    owned = {id(q) for qs in groups.values() for q in qs}
    for name, q in iter_quantizers(model):
        if id(q) not in owned:  # residual skip quantizers (conv_shortcut slot, attention residual)
            groups[name] = [q]
    return groups


@contextlib.contextmanager
def quantizers_disabled(quantizers: Sequence[TensorQuantizer]) -> Iterator[None]:
    """Switch quantizers off (pass-through) for the duration, restoring each one's previous state."""
    before = [q.enabled for q in quantizers]
    try:
        for q in quantizers:
            q.enabled = False
        yield
    finally:
        for q, e in zip(quantizers, before, strict=True):
            q.enabled = e


def sensitivity_sweep(
    model: nn.Module,
    shapes: dict[str, tuple[int, ...]],
    timesteps: Sequence[int] = DEBUG_TIMESTEPS,
    seed: int = 0,
    max_exclude: int = 5,
    target: float | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Rank the student's quantized layers by the share of the final error each one causes (report as in
    :func:`~pqcad_deploy.export.layer_debug.debug_onnx`; the exclude list names modules for ``QuantConfig.exclude``)."""
    groups = quant_layers(model)
    if not groups:
        raise DebugError(
            f"{source or 'the model'} has no quantizers; the torch sweep needs a quantized student."
        )
    check_calibrated(model)
    wrapper = UNetWrapper(model).eval()
    feeds = timestep_feeds(shapes, timesteps, seed)
    modules = dict(model.named_modules())
    everything = [q for qs in groups.values() for q in qs]
    captured: dict[str, list[np.ndarray]] = {}

    def hook(name: str):
        def fn(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            captured.setdefault(name, []).append(out.detach().float().numpy().copy())

        return fn

    @torch.inference_mode()
    def run() -> list[np.ndarray]:
        return [wrapper(**feed).float().numpy() for feed in feeds]

    handles = [modules[n].register_forward_hook(hook(n)) for n in groups]
    try:
        with quantizers_disabled(everything):
            ref = run()
        ref_local, captured = captured, {}
        quant = run()
        q_local = captured
    finally:
        for h in handles:
            h.remove()
    base = rel_l2(quant, ref)
    by_t = {int(t): rel_l2([q], [r]) for t, q, r in zip(timesteps, quant, ref, strict=True)}
    log.info("final rel-L2 %.4g vs the unquantized student; %d layers to sweep", base, len(groups))

    def evaluate(names: list[str]) -> float:
        with quantizers_disabled([q for n in names for q in groups[n]]):
            return rel_l2(run(), ref)

    rows = []
    for name in groups:
        without = evaluate([name])
        rows.append(
            {
                "name": name,
                "module": name,
                "op_type": type(modules[name]).__name__,
                "quantizers": [q.kind for q in groups[name]],
                "local_rel_l2": rel_l2(q_local[name], ref_local[name]) if name in ref_local else None,
                "final_rel_l2_without": without,
                "error_removed": error_removed(base, without),
            }
        )
    rows.sort(key=lambda r: -r["error_removed"])
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    exclude = greedy_exclude([r["name"] for r in rows], evaluate, base, max_exclude, target)
    exclude["modules"] = list(exclude["layers"])
    return {
        "kind": "torch",
        "checkpoint": source,
        "timesteps": [int(t) for t in timesteps],
        "batch_size": int(next(iter(shapes.values()))[0]),
        "seed": seed,
        "final_rel_l2": base,
        "final_rel_l2_by_timestep": by_t,
        "method": "exclude-one: share of the squared final error removed when only this layer's quantizers are off",
        "layers": rows,
        "exclude": exclude,
    }
