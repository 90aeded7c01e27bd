"""``QuantConfig``: the one frozen, versioned description of how a model is quantized.

It is stored in every student checkpoint, so the exporter and runtime rebuild exactly the fake-quant graph that
was calibrated/trained (train what you deploy: the README's quantization-forms table).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import PQCADError

log = logging.getLogger(__name__)

QUANT_CONFIG_VERSION = 1
TARGETS = ("tensorrt", "onnxruntime")
WEIGHT_BITS = (2, 3, 4, 8)
ENGINE_WEIGHT_BITS = (4, 8)
ACT_BITS = (8,)
CALIB_METHODS = ("maxabs", "percentile", "mse")
BLOCK_SIZES = (None, 16, 32, 64, 128, 256)

# Kept in float by default: the timestep/class embedding MLPs and the per-block time projections (modelopt's
# diffusers filter does the same). Norms, SiLU, softmax and the attention BMMs are functional ops or
# non-Conv/Linear modules and are never wrapped.
DEFAULT_EXCLUDE = ("*time_embedding*", "*time_emb_proj*", "*add_embedding*", "*class_embedding*")


class QuantConfigError(PQCADError, ValueError):
    """A QuantConfig value is out of range or a serialized config cannot be read."""


def parse_bits(text: str) -> tuple[int, int]:
    """The one bit-width grammar: ``"w4a8"`` -> (4, 8), checked against the supported widths."""
    s = str(text).strip().lower()
    try:
        if not s.startswith("w") or s.count("a") != 1:
            raise ValueError
        w, a = (int(v) for v in s[1:].split("a"))
    except ValueError:
        raise QuantConfigError(f"Bad bit-width {text!r}; write it as wXaY, e.g. w8a8 or w4a8.") from None
    if w not in WEIGHT_BITS or a not in ACT_BITS:
        raise QuantConfigError(
            f"Bit-width {text!r}: weights must be one of {list(WEIGHT_BITS)} and activations one of {list(ACT_BITS)}."
        )
    return w, a


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize a UNet for one target engine.

    ``weight_bits`` may later be changed in place on the model (``set_weight_bits``) without a new config;
    the checkpoint then records the live bit-width in the quantizers' ``num_bits`` buffers.
    """

    target: str = "tensorrt"
    weight_bits: int = 8
    act_bits: int = 8
    weight_granularity: str = "per_channel"
    act_granularity: str = "per_tensor"
    int4_block_size: int | None = None  # Linear/MatMul weights at <=4 bits: block along in_features
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    quantize_conv_in: bool = False
    quantize_conv_out: bool = False
    calib_method: str = "maxabs"
    percentile: float = 99.99
    weight_reduce_range: bool | None = None  # None: on for onnxruntime, off for tensorrt (see effective bits)
    version: int = QUANT_CONFIG_VERSION

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so the frozen config stays hashable.
        object.__setattr__(self, "include", _as_patterns("include", self.include))
        object.__setattr__(self, "exclude", _as_patterns("exclude", self.exclude))
        if self.version != QUANT_CONFIG_VERSION:
            raise QuantConfigError(
                f"QuantConfig version {self.version!r} is not supported; this code reads version "
                f"{QUANT_CONFIG_VERSION}. Re-create the config or upgrade pqcad-deploy."
            )
        _check_choice("target", self.target, TARGETS)
        _check_choice("weight_bits", self.weight_bits, WEIGHT_BITS)
        _check_choice("act_bits", self.act_bits, ACT_BITS)
        _check_choice("weight_granularity", self.weight_granularity, ("per_channel",))
        _check_choice("act_granularity", self.act_granularity, ("per_tensor",))
        _check_choice("int4_block_size", self.int4_block_size, BLOCK_SIZES)
        _check_choice("calib_method", self.calib_method, CALIB_METHODS)
        if self.weight_reduce_range not in (None, True, False):
            raise QuantConfigError(
                f"weight_reduce_range must be None (auto), True or False, got {self.weight_reduce_range!r}."
            )
        for flag in ("quantize_conv_in", "quantize_conv_out"):
            if not isinstance(getattr(self, flag), bool):
                raise QuantConfigError(f"{flag} must be True or False, got {getattr(self, flag)!r}.")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)):
            raise QuantConfigError(f"percentile must be a number in (50, 100], got {self.percentile!r}.")
        if not (50.0 < float(self.percentile) <= 100.0):
            raise QuantConfigError(f"percentile must be in (50, 100], got {self.percentile!r}.")
        if self.weight_bits not in ENGINE_WEIGHT_BITS:
            log.warning(
                "weight_bits=%d is for research only: no engine (TensorRT, ONNX Runtime) runs %d-bit weights "
                "natively; they export through the INT8 range.",
                self.weight_bits,
                self.weight_bits,
            )

    @property
    def act_uint8(self) -> bool:
        """ORT CPU fuses QLinearConv only with uint8 activations (zero-point 128, same grid as int8)."""
        return self.target == "onnxruntime"

    @property
    def reduce_range(self) -> bool:
        """8-bit weights on the 7-bit grid [-64, 63] (ORT's ``reduce_range``). ORT's fused x86 U8S8 kernels
        (QGemm/QLinearConv) add u8*s8 products in int16 and saturate with full-range weights: measured on a
        tiny UNet, ORT_ENABLE_ALL vs the fake-quant model rel-L2 0.26 with 8-bit weights, 0.05 with 7-bit
        (exact with ORT_DISABLE_ALL either way). TensorRT has no such limit."""
        if self.weight_reduce_range is None:
            return self.target == "onnxruntime"
        return self.weight_reduce_range

    def effective_weight_bits(self, bits: int | None = None) -> int:
        """Grid width the weight quantizers use for nominal ``bits`` (7 for 8 under ``reduce_range``)."""
        bits = self.weight_bits if bits is None else bits
        return 7 if bits == 8 and self.reduce_range else bits

    @property
    def weight_only_linear(self) -> bool:
        """ORT at <= 4-bit weights: Linear layers quantize their weights only, the form ORT fuses into MatMulNBits
        (an INT4 MatMul with a Q/DQ'd activation or an output Q runs in float, dequantizing weights every call)."""
        return self.target == "onnxruntime" and self.weight_bits <= 4

    @property
    def output_quantizers(self) -> bool:
        """ORT needs DQ->op->Q node units, so every quantized op also gets an output quantizer."""
        return self.target == "onnxruntime"

    def selects(self, name: str) -> bool:
        """Whether the Conv2d/Linear called ``name`` is quantized under this config."""
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "conv_in" and not self.quantize_conv_in:
            return False
        if leaf == "conv_out" and not self.quantize_conv_out:
            return False
        if not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)

    def replace(self, **changes: Any) -> QuantConfig:
        d = self.to_dict()
        d.update(changes)
        return QuantConfig.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["include"] = list(self.include)
        d["exclude"] = list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        if not isinstance(d, dict):
            raise QuantConfigError(f"QuantConfig must be read from a dict, got {type(d).__name__}.")
        version = d.get("version", None)
        if version != QUANT_CONFIG_VERSION:
            raise QuantConfigError(
                f"Serialized QuantConfig has version {version!r}; this code reads version "
                f"{QUANT_CONFIG_VERSION}. The checkpoint was written by another pqcad-deploy release."
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise QuantConfigError(
                f"Serialized QuantConfig has unknown keys {unknown}; allowed keys are {sorted(known)}."
            )
        return cls(**d)


def _as_patterns(field_name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        pats = tuple(value)
    except TypeError as e:
        raise QuantConfigError(f"{field_name} must be a list of name wildcards, got {value!r}.") from e
    if not all(isinstance(p, str) and p for p in pats):
        raise QuantConfigError(
            f"{field_name} must hold non-empty strings (fnmatch wildcards), got {value!r}."
        )
    return pats


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if isinstance(value, bool) or value not in allowed:
        raise QuantConfigError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}.")
