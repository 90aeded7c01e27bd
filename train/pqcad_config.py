"""``PQCADConfig``: every PQCAD knob in one frozen, versioned dataclass (stored in checkpoints and student meta)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from pqcad_deploy.errors import PQCADError
from pqcad_deploy.quant.config import QuantConfig, QuantConfigError, parse_bits

SWITCH_SIGNALS = ("train", "probe")  # what the momentum rule watches (PQCADConfig.switch_signal)

CONFIG_VERSION = 1


class PQCADConfigError(PQCADError, ValueError):
    """A PQCAD setting is out of range or inconsistent; the message names the setting, ``keys`` the fields."""

    def __init__(self, message: str, keys: tuple[str, ...] = ()):
        super().__init__(message)
        self.keys = keys


# Knobs a run may change when it resumes or branches from another run's checkpoint (loss and budget only).
BRANCHABLE = frozenset(
    {
        "steps",
        "stage2_reinit",
        "lambda_d",
        "lambda_c",
        "teacher_kind",
        "halve_steps",
        "lr",
        "lr_quant",
        "save_every",
        "bits",
        "int4_block_size",
    }
)


@dataclass(frozen=True)
class PQCADConfig:
    """Progressive quantization (stage 1 at ``bits[0]``, momentum switch, stage 2 at ``bits[1]``) + CAD loss.

    ``schedule="fixed"`` trains straight at ``bits[-1]`` for the whole budget (the fixed-bit QAT baseline);
    ``steps=0`` gives the PTQ baseline of ``ptq_method``.
    """

    bits: tuple[str, ...] = ("w8a8", "w4a8")
    schedule: str = "progressive"  # "progressive" | "fixed"
    target: str = "tensorrt"  # quantization target: what the fake-quant graph reproduces
    ptq_method: str = "mse"  # PTQ initialisation of stage 1: maxabs | percentile | mse
    percentile: float = 99.99  # for ptq_method "percentile"
    int4_block_size: int | None = None  # Linear weights at <= 4 bits: blocks along in_features
    quantize_conv_in: bool = False
    quantize_conv_out: bool = False
    weight_reduce_range: bool | None = None  # None: on for onnxruntime (7-bit weight grid), off for tensorrt
    steps: int = 2000  # total optimizer steps, both stages
    stage1_cap: int = 1000  # switch at this stage-1 step at the latest
    batch_size: int = 128  # global (split across DDP ranks)
    lr: float = 1e-5  # weights
    lr_quant: float = 1e-4  # quantizer step sizes (their own param group)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    beta: float = 0.9  # momentum of the loss decrease
    eps: float = 5e-3  # plateau when |m| < eps * L_0 ...
    patience: int = 5  # ... for this many consecutive checks
    check_every: int = 20  # steps between checks of the transition rule
    smoothing: float = 0.95  # EMA of the per-step loss fed to the rule (batch losses vary a lot with t)
    # what the rule watches: "train" (the smoothed per-step training loss) or "probe" (the eps-error against the FP
    # teacher on switch_probe fixed calibration points held out of training, evaluated at every check)
    switch_signal: str = "train"
    switch_probe: int = 256
    stage2_reinit: str = "auto"  # low-bit weight step sizes: "mse", "rescale", or "auto" (lower probe loss)
    lambda_d: float = 1.0  # CAD: weight of ||student - teacher||^2
    lambda_c: float = 1.0  # CAD: weight of ||student - FP target||^2
    teacher_kind: str = "quant"  # stage-2 teacher: "quant" (frozen stage-1 model) or "fp"
    halve_steps: bool = False  # final stage learns two teacher DDIM steps in one
    seed: int = 0
    bf16: bool = False  # autocast on GPU (fake-quant rounding is then in bf16: off by default)
    save_every: int = 200
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.bits, str) or not isinstance(self.bits, (list, tuple)):
            raise PQCADConfigError(f"bits must be a list of bit-widths, got {self.bits!r:.40}.", ("bits",))
        object.__setattr__(self, "bits", tuple(self.bits))
        self._check_types()
        if not self.bits or len(self.bits) > 2:
            raise PQCADConfigError(
                f"bits takes one or two bit-widths (w8a8 or w8a8:w4a8), got {self.bits}.", ("bits",)
            )
        try:
            parsed = [parse_bits(b) for b in self.bits]
        except QuantConfigError as e:
            raise PQCADConfigError(str(e), ("bits",)) from e
        if self.schedule not in ("progressive", "fixed"):
            raise PQCADConfigError(
                f"schedule must be 'progressive' or 'fixed', got {self.schedule!r}.", ("schedule",)
            )
        if self.schedule == "progressive" and len(parsed) == 2 and parsed[0][1] != parsed[1][1]:
            raise PQCADConfigError(
                f"progressive schedule {self.bits} changes activation bits; only weight bits can change "
                "between stages (set_weight_bits). Use e.g. w8a8:w4a8.",
                ("bits",),
            )
        if self.switch_signal not in SWITCH_SIGNALS or self.switch_probe < 1:
            raise PQCADConfigError(
                f"switch_signal must be 'train' or 'probe' and switch_probe >= 1, got {self.switch_signal!r} / "
                f"{self.switch_probe}.",
                ("switch_signal", "switch_probe"),
            )
        if self.stage2_reinit not in ("mse", "rescale", "auto"):
            raise PQCADConfigError(
                f"stage2_reinit must be 'mse', 'rescale' or 'auto', got {self.stage2_reinit!r}.",
                ("stage2_reinit",),
            )
        if self.teacher_kind not in ("quant", "fp"):
            raise PQCADConfigError(
                f"teacher_kind must be 'quant' or 'fp', got {self.teacher_kind!r}.", ("teacher_kind",)
            )
        if self.schedule == "progressive" and len(parsed) == 2 and parsed[1][0] > parsed[0][0]:
            raise PQCADConfigError(
                f"progressive schedule {self.bits} raises the weight bits; stage 2 must not have more bits than "
                "stage 1 (e.g. w8a8:w4a8).",
                ("bits",),
            )
        if self.steps < 0 or self.stage1_cap < 1 or self.batch_size < 1:
            raise PQCADConfigError(
                "need steps >= 0, stage1_cap >= 1 and batch_size >= 1.", ("steps", "stage1_cap", "batch_size")
            )
        if not (self.lr >= 0 and self.lr_quant >= 0 and self.lr + self.lr_quant > 0):
            raise PQCADConfigError(
                f"learning rates must be >= 0 and not both 0 (lr {self.lr}, lr_quant {self.lr_quant}).",
                ("lr", "lr_quant"),
            )
        if self.check_every < 1 or self.patience < 1 or self.save_every < 1:
            raise PQCADConfigError(
                "check_every, patience and save_every must be >= 1.",
                ("check_every", "patience", "save_every"),
            )
        if not (0 <= self.beta < 1 and 0 <= self.smoothing < 1 and self.eps >= 0 and self.grad_clip >= 0):
            raise PQCADConfigError(
                "need 0 <= beta < 1, 0 <= smoothing < 1, eps >= 0 and grad_clip >= 0.",
                ("beta", "smoothing", "eps", "grad_clip"),
            )
        self.quant_config(parsed[-1])  # every quantization knob is checked here, before any work
        if self.lambda_d < 0 or self.lambda_c < 0 or self.lambda_d + self.lambda_c == 0:
            raise PQCADConfigError(
                "CAD weights lambda_d, lambda_c must be >= 0 and not both 0.", ("lambda_d", "lambda_c")
            )
        if self.version != CONFIG_VERSION:
            raise PQCADConfigError(
                f"PQCADConfig version {self.version} is not supported (this code: {CONFIG_VERSION})."
            )

    def _check_types(self) -> None:
        """Each field has the type of its default (ints may stand for floats; None where the default is None)."""
        for f in dataclasses.fields(self):
            if f.name in ("bits", "weight_reduce_range", "int4_block_size"):
                continue  # checked by their own rules (bit grammar, QuantConfig)
            v, default = getattr(self, f.name), f.default
            kinds = (int, float) if isinstance(default, float) else (type(default),)
            if isinstance(v, bool) != isinstance(default, bool) or not isinstance(v, kinds):
                raise PQCADConfigError(
                    f"{f.name} must be of type {type(default).__name__}, got {v!r:.40}.", (f.name,)
                )
            if isinstance(v, float) and not math.isfinite(v):
                raise PQCADConfigError(f"{f.name} must be finite, got {v}.", (f.name,))

    @property
    def stage_bits(self) -> list[tuple[int, int]]:
        """Bit-widths of the stages this run trains: two for progressive, one for fixed."""
        parsed = [parse_bits(b) for b in self.bits]
        if self.schedule == "fixed" or len(parsed) == 1:
            return [parsed[-1]]
        return parsed

    def quant_config(self, bits: tuple[int, int]) -> QuantConfig:
        """The QuantConfig a stage at ``bits`` applies (and the student records)."""
        return QuantConfig(
            target=self.target,
            weight_bits=bits[0],
            act_bits=bits[1],
            calib_method=self.ptq_method,
            percentile=self.percentile,
            int4_block_size=self.int4_block_size,
            quantize_conv_in=self.quantize_conv_in,
            quantize_conv_out=self.quantize_conv_out,
            weight_reduce_range=self.weight_reduce_range,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["bits"] = list(self.bits)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PQCADConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise PQCADConfigError(
                f"Unknown PQCAD config keys {sorted(unknown)}; written by a newer version?"
            )
        return cls(**d)

    def replace(self, **kw: Any) -> PQCADConfig:
        return dataclasses.replace(self, **kw)
