"""``TensorQuantizer``: symmetric fake quantization whose eval forward is exactly what TensorRT/ORT compute.

Scale = amax / (2^(b-1) - 1), zero-point 0, codes clamped to [-2^(b-1), 2^(b-1) - 1], rounding of
``x * (1/scale)`` half-to-even: this is ``torch.fake_quantize_per_{tensor,channel}_affine``, which the
TorchScript exporter turns into QuantizeLinear/DequantizeLinear. ``amax`` is a parameter (LSQ learns it
through ``scale``) whose shape is fixed at construction, so checkpoints reload in one pass.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from ..errors import PQCADError

log = logging.getLogger(__name__)

AMAX_EPS = 1e-8


class QuantizerStateError(PQCADError, RuntimeError):
    """A quantizer is used in a way its state does not allow (e.g. exporting it uncalibrated)."""


def qrange(bits: int) -> tuple[int, int]:
    """Signed symmetric integer grid for ``bits``."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


class TensorQuantizer(nn.Module):
    """Fake-quantizes a tensor per-tensor (``axis=None``), per-channel (``axis=0``) or per-block.

    ``block_size`` (weights of Linear layers only) splits dim 1 into blocks: amax has shape [C, D1/block].
    ``uint8_export`` makes the export-mode forward emit the uint8/zero-point-128 form (ORT), same values.
    ``learnable``: in training mode with grad enabled, amax gets an LSQ gradient (straight-through estimator).
    """

    def __init__(
        self,
        num_bits: int = 8,
        axis: int | None = None,
        channels: int | None = None,
        block_size: int | None = None,
        block_dim: int | None = None,
        uint8_export: bool = False,
        learnable: bool = True,
        kind: str = "act",
    ):
        super().__init__()
        if axis not in (None, 0):
            raise ValueError(f"axis must be None (per-tensor) or 0 (per-channel), got {axis!r}.")
        if axis == 0 and not channels:
            raise ValueError("A per-channel quantizer needs channels=<size of dim 0>.")
        if block_size is not None:
            if axis != 0 or not block_dim or block_dim % block_size:
                raise ValueError(
                    f"Block quantization needs axis=0 and block_dim ({block_dim}) divisible by "
                    f"block_size ({block_size})."
                )
        self.axis = axis
        self.block_size = block_size
        self.uint8_export = uint8_export
        self.kind = kind
        if axis is None:
            shape: tuple[int, ...] = ()
        elif block_size is None:
            shape = (channels,)
        else:
            shape = (channels, block_dim // block_size)
        self.amax = nn.Parameter(torch.ones(shape), requires_grad=learnable)
        self.register_buffer("num_bits", torch.tensor(num_bits, dtype=torch.int64))
        self.register_buffer("calibrated", torch.tensor(False))
        self._bits = int(num_bits)
        self.enabled = True
        self._collector: Any = None  # set by calibrate(): forward observes and passes x through
        self._export_scale: torch.Tensor | None = None  # set by export_mode(): constant qparams
        self.intervals: Any = None  # quant.intervals.IntervalState when the model holds per-interval ranges

    # ---- state -------------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self._bits

    @property
    def is_calibrated(self) -> bool:
        return bool(self.calibrated)

    def set_num_bits(self, bits: int) -> None:
        """Change the bit-width in place (same module, same amax parameter object)."""
        if not 2 <= int(bits) <= 8:
            raise ValueError(f"num_bits must be in 2..8, got {bits!r}.")
        self.num_bits.fill_(int(bits))
        self._bits = int(bits)

    @torch.no_grad()
    def set_amax(self, amax: torch.Tensor) -> None:
        """Load calibrated ranges (in place, keeps the parameter object) and mark calibrated."""
        amax = torch.as_tensor(amax, dtype=self.amax.dtype, device=self.amax.device)
        if amax.shape != self.amax.shape:
            raise ValueError(f"amax shape {tuple(amax.shape)} != quantizer shape {tuple(self.amax.shape)}.")
        if not torch.isfinite(amax).all():
            raise ValueError("amax holds non-finite values; calibration data contained inf/nan.")
        self.amax.copy_(amax.clamp_min(AMAX_EPS))
        self.calibrated.fill_(True)

    def scale(self) -> torch.Tensor:
        return self.amax.float().clamp_min(AMAX_EPS) / qrange(self._bits)[1]

    def channel_scale(self, ndim: int) -> torch.Tensor:
        """``scale()`` shaped to broadcast over a tensor of ``ndim`` dims (per-channel scales along dim 0)."""
        s = self.scale()
        return s.reshape((-1,) + (1,) * (ndim - 1)) if self.axis == 0 else s

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._bits = int(self.num_bits)

    def extra_repr(self) -> str:
        gran = "per_tensor" if self.axis is None else "per_channel"
        if self.block_size:
            gran = f"block{self.block_size}"
        return f"{self.kind}, bits={self._bits}, {gran}, calibrated={self.is_calibrated}"

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._collector is not None:
            self._collector.observe(x.detach())
            return x
        if not self.enabled:
            return x
        if x.dtype != torch.float32:
            return self._fake_quant(x.float()).to(x.dtype)
        return self._fake_quant(x)

    @torch.no_grad()
    def codes_of(self, w: torch.Tensor) -> torch.Tensor:
        """The integer codes (as float) this weight quantizer gives ``w``: the frozen ones of scale-only
        fine-tuning, else ``rint(w * (1/scale))`` clamped, as the fake quant and the exporter round."""
        frozen = self._buffers.get("codes")
        if frozen is not None:
            return frozen
        qmin, qmax = qrange(self._bits)
        return torch.clamp(torch.round(w.float() * (1.0 / self.channel_scale(w.dim()))), qmin, qmax)

    def _fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        qmin, qmax = qrange(self._bits)
        codes = self._buffers.get("codes")
        sets = self._buffers.get("interval_amax") if self.kind == "weight" else None
        if sets is not None and self.intervals is not None and self.intervals.index is not None:
            return self._weight_of_interval(x, sets, qmax)
        # scale-only fine-tuning (quant.scale_tuning): the codes are frozen, x is ignored
        if codes is not None:
            if self._export_scale is not None:
                raise QuantizerStateError(
                    "a weight quantizer still holds frozen codes; call quant.scale_tuning.materialize() first."
                )
            w = codes * self.channel_scale(codes.dim())
            ins = self._buffers.get("in_scale")  # MCSU: a scale per input channel too
            return w if ins is None else w * ins.reshape(1, -1, *([1] * (codes.dim() - 2)))
        if self._export_scale is not None:
            return self._export_forward(x, self._export_scale.to(x.device), qmin, qmax)
        learn = self.training and self.amax.requires_grad and torch.is_grad_enabled()
        if self.intervals is not None and self.intervals.index is not None:
            if learn:
                raise QuantizerStateError(
                    "training a student with per-interval activation ranges is not supported; per-interval ranges "
                    "come from PTQ of the FP teacher (pqcad-train ptq --intervals K)."
                )
            return self._per_interval(x, self.intervals.index, qmin, qmax)
        scale = self.scale()
        if not learn:
            scale = scale.detach()  # eval: plain fake quant (no amax gradient; x still gets the STE)
        if self.block_size is not None:
            return self._block(x, scale, qmin, qmax, learn)
        if self.axis is None:
            if learn:
                g = 1.0 / math.sqrt(x.numel() * qmax)
                zp = torch.zeros(1, device=x.device)
                return torch._fake_quantize_learnable_per_tensor_affine(
                    x, scale.reshape(1), zp, qmin, qmax, g
                )
            zp = torch.zeros((), dtype=torch.int32, device=x.device)
            return torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
        return self._per_channel(x, scale, qmin, qmax, learn)

    def _weight_of_interval(self, w: torch.Tensor, sets: torch.Tensor, qmax: int) -> torch.Tensor:
        """Weight scale sets (quant.intervals.add_weight_sets): the shared codes times the call's interval's scale
        (differentiable in that scale set: the personalization methods train it)."""
        k = self.intervals.weight_interval
        if k is None:
            raise QuantizerStateError(
                "this call mixes timesteps of several intervals, but the weights hold one scale set per interval; "
                "run one interval per call (the sampler does)."
            )
        codes = self.codes_of(w)
        scale = sets[k].to(w.device).float().clamp_min(AMAX_EPS) / qmax
        return codes * scale.reshape((-1,) + (1,) * (w.dim() - 1))

    def _per_interval(self, x: torch.Tensor, index: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
        """Each sample with its own interval's range: a per-channel fake quant along the batch dimension. Batches
        that grew inside the model (heads folded into the batch) repeat each sample's index."""
        n = x.shape[0]
        if index.numel() != n:
            if n % index.numel():
                raise QuantizerStateError(
                    f"per-interval quantizer got a batch of {n} for {index.numel()} timesteps; the batch must "
                    "lead every quantized tensor."
                )
            index = index.repeat_interleave(n // index.numel())
        index = index.to(x.device)
        amax = self.interval_amax.to(x.device)[index]
        scale = amax.float().clamp_min(AMAX_EPS) / qmax
        zp = torch.zeros(n, dtype=torch.int32, device=x.device)
        y = torch.fake_quantize_per_channel_affine(x, scale, zp, 0, qmin, qmax)
        if self.intervals.schedule.relaxed:  # relaxed intervals: activations stay float
            keep = self.intervals.relaxed_mask[index]  # on the model's device (the timestep hook moved it)
            y = torch.where(keep.reshape(n, *([1] * (x.dim() - 1))), x, y)
        return y

    def _per_channel(
        self, x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, learn: bool
    ) -> torch.Tensor:
        if learn:
            g = 1.0 / math.sqrt(x[0].numel() * qmax)
            zp = torch.zeros(scale.shape, device=x.device)
            return torch._fake_quantize_learnable_per_channel_affine(x, scale, zp, 0, qmin, qmax, g)
        zp = torch.zeros(scale.shape, dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_channel_affine(x, scale, zp, 0, qmin, qmax)

    def _block(self, x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, learn: bool) -> torch.Tensor:
        # [C, D] -> [C * D/B, B]: each block becomes one "channel" of a per-channel fake quant.
        c, d = x.shape[0], x.shape[1]
        xb = x.reshape(c * (d // self.block_size), self.block_size)
        y = self._per_channel(xb, scale.reshape(-1), qmin, qmax, learn)
        return y.reshape(x.shape)

    def _export_forward(self, x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
        """Only 8-bit ranges export; lower bit-widths go through the INT8 range after clamping to their
        own grid, which gives bit-identical codes (with scale = amax / 7 the INT8 grid holds exactly the 4-bit codes)."""
        if self._bits < 8:
            s = scale if self.block_size is None else scale.reshape(-1)
            if self.axis is not None:
                shape = (-1,) + (1,) * (x.dim() - 1)
                if self.block_size is not None:
                    shape = (-1, 1)
                    x_shape = x.shape
                    x = x.reshape(-1, self.block_size)
                x = torch.maximum(torch.minimum(x, s.reshape(shape) * qmax), s.reshape(shape) * qmin)
                if self.block_size is not None:
                    x = x.reshape(x_shape)
            else:
                x = torch.clamp(x, float(s) * qmin, float(s) * qmax)
            qmin, qmax = -128, 127
        if self.axis is None:
            if self.uint8_export:
                zp = torch.tensor(128, dtype=torch.int32, device=x.device)
                return torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)
            zp = torch.tensor(0, dtype=torch.int32, device=x.device)
            return torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
        if self.block_size is not None:
            return self._block(x, scale, qmin, qmax, learn=False)
        return self._per_channel(x, scale, qmin, qmax, learn=False)
