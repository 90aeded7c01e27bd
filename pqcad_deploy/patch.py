"""Personalization patches: the weight scales of a scale-only fine-tuned student, and the layout they belong to.

A patch is a small safetensors file (per quantized layer, keyed by its weight's name: ``<weight>.amax``, the
student's trained range) with a JSON sidecar (format, method, training record, each layer's integer grid ``qmax``,
each layer's codes digest and a fingerprint of the layout: every layer's name, code shape and integer codes). The
dequantization scale a graph holds is ``amax / qmax`` in float32, computed exactly as the fake-quant forward does. ``pqcad-patch`` rewrites only the scale initializers of an exported QDQ graph from it; the fingerprint
refuses a patch for another model or another quantization of it before anything is written.

An S2 patch (one scale set per timestep interval, the quantized-personalization paper's S2) holds ``[K, C]`` ranges
per layer and its interval schedule; applied to a graph it gives the per-interval file set and manifest of a
timestep-aware student (every file the same codes, interval k's scales).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import CheckpointError, check_pair, load_safetensors, read_json_sidecar, save_safetensors_pair
from .quant.intervals import IntervalError, IntervalSchedule

PATCH_FORMAT = "pqcad-scale-patch"
PATCH_VERSION = 2  # 2: optional per-interval scale sets ("intervals"); version 1 files still load
AMAX = ".amax"
AMAX_EPS = 1e-8  # as quant.quantizer


class PatchError(CheckpointError):
    """A patch that does not fit the model or graph it is applied to, or a damaged patch file."""


def codes_digest(codes: np.ndarray) -> str:
    """Short SHA-256 of one layer's codes (as int8) and shape: how a graph's code initializer is matched to a layer,
    whatever name the exporter gave it."""
    c = np.ascontiguousarray(np.asarray(codes).astype(np.int8))
    return hashlib.sha256(f"{list(c.shape)};".encode() + c.tobytes()).hexdigest()[:16]


def layout_fingerprint(codes: dict[str, np.ndarray]) -> str:
    """SHA-256 over every layer's name, shape and integer codes (as int8), in name order."""
    h = hashlib.sha256()
    for name in sorted(codes):
        c = np.ascontiguousarray(np.asarray(codes[name]).astype(np.int8))
        h.update(f"{name}:{list(c.shape)};".encode())
        h.update(c.tobytes())
    return h.hexdigest()


@dataclass
class ScalePatch:
    amax: dict[str, torch.Tensor]  # weight name -> the student's trained range, one per output channel
    qmax: dict[
        str, int
    ]  # weight name -> top of its integer grid (127, 63 for 7-bit ORT weights, 7 for 4-bit)
    fingerprint: str
    meta: dict[str, Any] = field(default_factory=dict)
    intervals: IntervalSchedule | None = None  # S2: amax holds one row per interval, [K, C]

    def __post_init__(self) -> None:
        bad = [k for k, v in self.amax.items() if not (torch.isfinite(v).all() and (v > 0).all())]
        if bad:
            raise PatchError(
                f"non-finite or non-positive ranges in {bad[:3]} (a diverged training run or a damaged patch); "
                "nothing was written."
            )
        if self.intervals is not None:
            wrong = [k for k, v in self.amax.items() if v.dim() != 2 or v.shape[0] != self.intervals.k]
            if wrong:
                raise PatchError(
                    f"the ranges of {wrong[:3]} are not one row per interval (K = {self.intervals.k}); the patch is "
                    "damaged."
                )

    @property
    def k(self) -> int:
        """Scale sets in the patch (1 unless S2)."""
        return 1 if self.intervals is None else self.intervals.k

    def scale_set(self, k: int) -> dict[str, torch.Tensor]:
        """The dequantization scales of interval ``k`` (the only set of a single-set patch, k = 0)."""
        if not 0 <= k < self.k:
            raise PatchError(f"the patch holds {self.k} scale set(s); there is no set {k}.")
        return {n: v[k] if self.intervals is not None else v for n, v in self.scales.items()}

    @property
    def scales(self) -> dict[str, torch.Tensor]:
        """float32 dequantization scales, ``amax / qmax`` as ``TensorQuantizer.scale`` computes them."""
        return {k: v.float().clamp_min(AMAX_EPS) / self.qmax[k] for k, v in self.amax.items()}

    @property
    def num_parameters(self) -> int:
        return sum(int(v.numel()) for v in self.amax.values())

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".safetensors":
            raise PatchError(f"{path}: a patch is written as .safetensors (with a .json sidecar).")
        tensors = {f"{k}{AMAX}": v.detach().float().cpu().contiguous() for k, v in self.amax.items()}
        side = {**self.meta, "format": PATCH_FORMAT, "format_version": PATCH_VERSION,
                "fingerprint": self.fingerprint, "layers": sorted(self.amax), "qmax": self.qmax}  # fmt: skip
        if self.intervals is not None:
            side["intervals"] = self.intervals.to_dict()
        return save_safetensors_pair(path, tensors, side, {"format": PATCH_FORMAT})


def load_patch(path: str | Path) -> ScalePatch:
    """Read and check a patch: format, version, pair, every layer's scale and amax present, finite and positive."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise PatchError(
            f"{path}: not a patch (expected the .safetensors file written by pqcad-train personalize)."
        )
    tensors, header = load_safetensors(path, "patch")
    side_path = path.with_suffix(".json")
    meta = read_json_sidecar(side_path, str(path), holds="the patch's layout fingerprint")
    if header.get("format") != PATCH_FORMAT or meta.get("format") != PATCH_FORMAT:
        raise PatchError(f"{path} is not a {PATCH_FORMAT} file (format {meta.get('format')!r}).")
    if meta.get("format_version") not in (1, PATCH_VERSION):
        raise PatchError(
            f"{path} has patch format version {meta.get('format_version')!r}; this version reads 1 to "
            f"{PATCH_VERSION}. Write the patch again with this version of pqcad-train personalize."
        )
    check_pair(path, header, side_path, meta)
    layers, qmax = meta.get("layers"), meta.get("qmax")
    if not isinstance(layers, list) or not layers or not isinstance(meta.get("fingerprint"), str):
        raise PatchError(f"{side_path} lists no layers or no fingerprint; the sidecar is damaged.")
    if not isinstance(qmax, dict) or any(not isinstance(qmax.get(n), int) or qmax[n] < 1 for n in layers):
        raise PatchError(f"{side_path} lacks the integer grid (qmax) of some layers; the sidecar is damaged.")
    amax = {}
    for name in layers:
        a = tensors.get(f"{name}{AMAX}")
        if a is None:
            raise PatchError(f"{path}: layer {name} has no amax tensor; the patch is damaged.")
        amax[name] = a
    extra = set(tensors) - {f"{n}{AMAX}" for n in layers}
    if extra:
        raise PatchError(f"{path} holds tensors its sidecar does not list ({sorted(extra)[:3]}...).")
    intervals = None
    if meta.get("intervals") is not None:
        try:
            intervals = IntervalSchedule.from_dict(meta["intervals"])
        except (IntervalError, AttributeError) as e:
            raise PatchError(f"{side_path}: bad 'intervals' record ({e}); the sidecar is damaged.") from None
    info = {
        k: v
        for k, v in meta.items()
        if k not in ("format", "format_version", "fingerprint", "layers", "qmax", "intervals")
    }
    try:
        return ScalePatch(amax, {n: qmax[n] for n in layers}, meta["fingerprint"], info, intervals)
    except PatchError as e:
        raise PatchError(f"{path}: {e}") from None


def student_patch(model: torch.nn.Module, meta: dict[str, Any] | None = None) -> ScalePatch:
    """The patch of a (scale-tuned) student: every quantized layer's range and integer grid, its codes' digests and
    the layout fingerprint (ranges that are not finite and positive are refused before anything is written)."""
    from .quant.intervals import get_intervals, has_weight_sets
    from .quant.quantizer import qrange
    from .quant.scale_tuning import weight_codes, weight_layers

    sets = has_weight_sets(model)
    amax, qmax, codes = {}, {}, {}
    for name, layer in weight_layers(model).items():
        key, q = f"{name}.weight", layer.weight_quantizer
        amax[key] = (q.interval_amax if sets else q.amax).detach().cpu()
        qmax[key] = qrange(q.bits)[1]
        codes[key] = weight_codes(layer).cpu().numpy()
    digests = {k: codes_digest(v) for k, v in codes.items()}
    return ScalePatch(amax, qmax, layout_fingerprint(codes), {**(meta or {}), "code_digests": digests},
                      get_intervals(model) if sets else None)  # fmt: skip


@torch.no_grad()
def apply_to_student(model: torch.nn.Module, patch: ScalePatch, source: str = "patch") -> None:
    """Turn the base student a patch was trained from into the personalized one (fingerprint checked first; an S2
    patch installs its intervals and weight scale sets)."""
    from .quant.intervals import add_intervals, add_weight_sets, get_intervals, has_weight_sets
    from .quant.scale_tuning import weight_codes, weight_layers

    layers = {f"{n}.weight": m for n, m in weight_layers(model).items()}
    if sorted(layers) != sorted(patch.amax):
        raise PatchError(
            f"{source} holds other layers than this student ({len(patch.amax)} vs {len(layers)})."
        )
    codes = {
        k: weight_codes(m) for k, m in layers.items()
    }  # the base's codes: the personalized model keeps them
    found = layout_fingerprint({k: c.cpu().numpy() for k, c in codes.items()})
    if found != patch.fingerprint:
        raise PatchError(
            f"{source} was trained on another student: the integer codes differ (fingerprint {patch.fingerprint[:12]} "
            f"vs this student's {found[:12]}). Apply it to the student it was trained from."
        )
    own = get_intervals(model)
    if patch.intervals is not None:
        if own is not None and own.starts != patch.intervals.starts:
            raise PatchError(
                f"{source} has intervals starting at {list(patch.intervals.starts)}, this student "
                f"{list(own.starts)}; apply it to the student it was trained from."
            )
        if has_weight_sets(model):
            raise PatchError(
                f"this student already holds weight scale sets; apply {source} to its base student."
            )
        if own is None:
            add_intervals(model, patch.intervals)
        add_weight_sets(model)
        # the weight becomes codes x the base scale; each interval gets its scales
        for k, m in layers.items():
            q = m.weight_quantizer
            m.weight.copy_((codes[k] * q.channel_scale(codes[k].dim())).to(m.weight.dtype))
            q.interval_amax.copy_(patch.amax[k].to(q.interval_amax))
        return
    for k, m in layers.items():  # new ranges; the weight becomes codes x new scale
        q = m.weight_quantizer
        q.amax.copy_(patch.amax[k].to(q.amax))
        m.weight.copy_((codes[k] * q.channel_scale(codes[k].dim())).to(m.weight.dtype))
