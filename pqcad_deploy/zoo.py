"""Named UNet configs built from diffusers classes (no hub access) and the shipped teacher.

``fmnist-ddpm`` is the model the project trains and ships; ``cifar10-ddpm`` and ``sd15-unet`` reproduce
published architectures with random weights for speed measurements (latency does not depend on values).
The ``tiny-*`` configs exist for tests.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from .errors import UsageError
from .io import CheckpointError, check_pair, load_safetensors, read_json_sidecar, save_safetensors_pair

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
TEACHER_PATH = ASSETS / "fmnist_ddpm.safetensors"
# Refuse configs whose weights would not fit anywhere before allocating them (a hostile or corrupt sidecar could
# otherwise ask for tens of GB); SD-1.5's UNet is 0.86 G parameters.
MAX_PARAMETERS = 4_000_000_000


@dataclass(frozen=True)
class ModelSpec:
    """What a sampler/exporter needs to know about a network besides its weights."""

    name: str
    cls: str  # "UNet2DModel" | "UNet2DConditionModel"
    config: dict[str, Any]
    sample_shape: tuple[int, int, int]  # C, H, W of one latent
    cond_shape: tuple[int, ...] | None = None  # encoder_hidden_states per sample, e.g. (77, 768)
    notes: str = ""
    scheduler: dict[str, Any] = field(
        default_factory=lambda: {"num_train_timesteps": 1000, "beta_schedule": "linear"}
    )
    # Text-conditioned models: the encoder their cross-attention was trained on ({"fingerprint", "max_length",
    # "hidden_size"}); prompts must be encoded by that encoder (an embedding cache or engine of another is refused).
    text: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "cls": self.cls,
            "config": self.config,
            "sample_shape": list(self.sample_shape),
            "cond_shape": list(self.cond_shape) if self.cond_shape else None,
            "scheduler": self.scheduler,
        }
        if self.text is not None:
            d["text"] = dict(self.text)
        return d

    @property
    def text_conditioned(self) -> bool:
        return self.text is not None

    def same_network(self, other: ModelSpec) -> bool:
        """Same class and config: one's weights load into the other (configs compared as stored, lists == tuples)."""
        return self.cls == other.cls and json.dumps(self.config, sort_keys=True) == json.dumps(
            other.config, sort_keys=True
        )

    @classmethod
    def from_dict(cls, d: Any) -> ModelSpec:
        """Validate a stored spec field by field (types and sizes), so a damaged file is named, not half-built."""
        if not isinstance(d, dict):
            raise CheckpointError(f"Model spec must be a JSON object, got {type(d).__name__}.")
        unknown = sorted(set(d) - _SPEC_KEYS)
        if unknown:
            raise CheckpointError(f"Model spec has unknown keys {unknown}; allowed: {sorted(_SPEC_KEYS)}.")
        missing = sorted(k for k in ("name", "cls", "config", "sample_shape") if k not in d)
        if missing:
            raise CheckpointError(
                f"Model spec lacks {missing}; expected keys name, cls, config, sample_shape."
            )
        for key, kind in (("name", str), ("cls", str), ("config", dict)):
            if not isinstance(d[key], kind):
                raise CheckpointError(f"Model spec {key!r} must be a {kind.__name__}, got {d[key]!r:.60}.")
        scheduler = d.get("scheduler") or {"num_train_timesteps": 1000, "beta_schedule": "linear"}
        _check_scheduler(scheduler)
        cond = d.get("cond_shape")
        text = d.get("text")
        if text is not None and not (
            isinstance(text, dict)
            and isinstance(text.get("max_length"), int)
            and isinstance(text.get("hidden_size"), int)
            and isinstance(text.get("fingerprint", ""), (str, type(None)))
        ):
            raise CheckpointError(
                f"Model spec 'text' must hold max_length, hidden_size (and a fingerprint), got {text!r:.80}."
            )
        return cls(
            name=d["name"],
            cls=d["cls"],
            config=dict(d["config"]),
            sample_shape=_dims("sample_shape", d["sample_shape"], 3),
            cond_shape=_dims("cond_shape", cond, 2) if cond else None,
            scheduler=dict(scheduler),
            text=dict(text) if text is not None else None,
        )


_SPEC_KEYS = {"name", "cls", "config", "sample_shape", "cond_shape", "scheduler", "text"}
_MAX_DIM = 1 << 16
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_SCHEDULER_KEYS = {
    "num_train_timesteps",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "clip_sample",
    "prediction_type",
}


def _check_scheduler(sched: Any) -> None:
    """The noise schedule a spec stores: known keys with the types and ranges diffusers needs."""
    if not isinstance(sched, dict):
        raise CheckpointError(f"Model spec 'scheduler' must be an object, got {sched!r:.60}.")
    unknown = sorted(set(sched) - _SCHEDULER_KEYS)
    n = sched.get("num_train_timesteps", 1000)
    betas = [sched[k] for k in ("beta_start", "beta_end") if k in sched]
    problem = (
        f"unknown keys {unknown}"
        if unknown
        else "num_train_timesteps must be an integer in [2, 100000]"
        if not (isinstance(n, int) and not isinstance(n, bool) and 2 <= n <= 100_000)
        else f"beta_schedule must be one of {list(_BETA_SCHEDULES)}"
        if sched.get("beta_schedule", "linear") not in _BETA_SCHEDULES
        else "beta_start/beta_end must be numbers in (0, 1)"
        if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in betas)
        else None
    )
    if problem:
        raise CheckpointError(f"Model spec 'scheduler' is invalid: {problem} (got {sched!r:.100}).")


def _dims(key: str, value: Any, n: int) -> tuple[int, ...]:
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == n
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= _MAX_DIM for v in value)
    )
    if not ok:
        raise CheckpointError(
            f"Model spec {key!r} must be {n} positive integers <= {_MAX_DIM}, got {value!r:.60}."
        )
    return tuple(value)


_FMNIST = dict(
    sample_size=32,
    in_channels=1,
    out_channels=1,
    layers_per_block=2,
    block_out_channels=(64, 128, 128),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=32,
    norm_num_groups=32,
)
# google/ddpm-cifar10-32 (Ho et al. 2020), 35.7M parameters.
_CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
    norm_num_groups=32,
)
# runwayml/stable-diffusion-v1-5 unet/config.json, 860M parameters.
_SD15 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    norm_eps=1e-5,
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
)
# The text-to-image testbed: colour-tinted, captioned Fashion-MNIST in pixel space (3x32x32, no VAE),
# cross-attention on the 16 x 384 token states of all-MiniLM-L6-v2 at 8x8 and in the mid block (colour and
# garment are global properties; 16x16 attention would double the CPU cost for little gain), 11.5M parameters.
_FMNIST_T2I = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(64, 128, 160),
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    cross_attention_dim=384,
    attention_head_dim=5,  # diffusers' legacy name: the number of heads (32 channels each)
    norm_num_groups=32,
)
_TINY = dict(
    sample_size=16,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(32, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=16,
    norm_num_groups=8,
)
_TINY_COND = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)

MODEL_SPECS: dict[str, ModelSpec] = {
    "fmnist-ddpm": ModelSpec(
        "fmnist-ddpm", "UNet2DModel", _FMNIST, (1, 32, 32), notes="shipped, trained by pqcad-train teacher"
    ),
    "cifar10-ddpm": ModelSpec(
        "cifar10-ddpm", "UNet2DModel", _CIFAR10, (3, 32, 32), notes="DDPM CIFAR-10 arch, random weights"
    ),
    "sd15-unet": ModelSpec(
        "sd15-unet",
        "UNet2DConditionModel",
        _SD15,
        (4, 64, 64),
        cond_shape=(77, 768),
        notes="SD 1.5 UNet arch, random weights",
        scheduler={
            "num_train_timesteps": 1000,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
        },
    ),
    "fmnist-t2i": ModelSpec(
        "fmnist-t2i",
        "UNet2DConditionModel",
        _FMNIST_T2I,
        (3, 32, 32),
        cond_shape=(16, 384),
        notes="shipped text-to-image testbed, trained by pqcad-train teacher --model fmnist-t2i",
        text={"max_length": 16, "hidden_size": 384},
    ),
    "tiny-unet": ModelSpec("tiny-unet", "UNet2DModel", _TINY, (1, 16, 16), notes="tests"),
    "tiny-unet-cond": ModelSpec(
        "tiny-unet-cond", "UNet2DConditionModel", _TINY_COND, (4, 16, 16), cond_shape=(8, 32), notes="tests"
    ),
    "tiny-t2i": ModelSpec(
        "tiny-t2i",
        "UNet2DConditionModel",
        {**_TINY_COND, "in_channels": 3, "out_channels": 3},
        (3, 16, 16),
        cond_shape=(16, 32),
        notes="tests: a text-conditioned model on a tiny encoder (16 tokens x 32 dims)",
        text={"max_length": 16, "hidden_size": 32},
    ),
}

# Zoo entries whose trained weights ship with the package (``loading.open_model`` opens them by name).
T2I_TEACHER_PATH = ASSETS / "fmnist_t2i.safetensors"
SHIPPED_WEIGHTS: dict[str, Path] = {"fmnist-ddpm": TEACHER_PATH, "fmnist-t2i": T2I_TEACHER_PATH}

_CLASSES = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}


def get_spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise UsageError(f"Unknown model {name!r}; choose one of {sorted(MODEL_SPECS)}.")
    return MODEL_SPECS[name]


def meta_model(spec: ModelSpec | str) -> torch.nn.Module:
    """The model built on the meta device (shapes, no memory); refuses configs diffusers rejects or that declare
    more than ``MAX_PARAMETERS`` parameters, so a bad sidecar fails with a message instead of an allocation."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if spec.cls not in _CLASSES:
        raise CheckpointError(f"Unsupported model class {spec.cls!r}; supported: {sorted(_CLASSES)}.")
    try:
        with torch.device("meta"):
            probe = _CLASSES[spec.cls](**spec.config)
    except Exception as e:  # diffusers raises ValueError/TypeError/AssertionError for inconsistent configs
        raise CheckpointError(f"Model config of {spec.name!r} is invalid for {spec.cls}: {e}") from e
    n = count_parameters(probe)
    if n > MAX_PARAMETERS:
        raise CheckpointError(
            f"Model config of {spec.name!r} declares {n / 1e9:.1f} G parameters (limit {MAX_PARAMETERS / 1e9:.0f} G); "
            "the file is corrupt or not a UNet this toolkit handles."
        )
    return probe


def build_model(spec: ModelSpec | str, seed: int | None = 0) -> torch.nn.Module:
    """Instantiate the diffusers class from the config; weights are random (seeded) until loaded."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    meta_model(spec)
    if seed is not None:
        torch.manual_seed(seed)
    return _CLASSES[spec.cls](**spec.config)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(
    model: torch.nn.Module,
    spec: ModelSpec,
    path: str | os.PathLike,
    extra: dict | None = None,
    half: bool = False,
) -> Path:
    """safetensors weights + ``<path>.json`` sidecar with the model spec (and anything in ``extra``). ``half``
    stores float weights in float16 (a shipped teacher at half the size; they load back into a float32 model)."""
    path = Path(path)
    dtype = torch.float16 if half else None
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    return save_safetensors_pair(
        path, tensors, {"model": spec.to_dict(), **(extra or {})}, {"model": spec.name}
    )


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_suffix(".json")


def load_spec_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    return read_json_sidecar(sidecar_path(path), str(path))


def spec_from_meta(d: Any, source: str) -> tuple[ModelSpec, torch.nn.Module]:
    """A stored spec validated field by field and built on the meta device (size bound included); errors name
    ``source``, the file the spec was read from. Returns (spec, meta-device model)."""
    try:
        spec = ModelSpec.from_dict(d)
        return spec, meta_model(spec)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from e


def load_model(path: str | os.PathLike = TEACHER_PATH) -> tuple[torch.nn.Module, ModelSpec]:
    """Load an FP model from safetensors + JSON sidecar; refuse missing/extra keys, shape mismatches and a torn
    pair before anything is allocated."""
    path = Path(path)
    side = sidecar_path(path)
    meta = load_spec_sidecar(path)
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"Sidecar {side} has no 'model' entry (the model spec).")
    spec, probe = spec_from_meta(meta["model"], f"sidecar {side}")
    tensors, header = load_safetensors(path, "model weights")
    check_state_dict(probe, tensors, source=str(path))
    check_pair(path, header, side, meta)
    model = build_model(spec, seed=None)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model, spec


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse before loading anything, so a mismatched file is never half-loaded."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{source} does not match the model config: {len(missing)} missing keys {missing[:3]}, "
            f"{len(extra)} unexpected keys {extra[:3]}."
        )
    bad = [
        (k, tuple(getattr(tensors[k], "shape", ())), tuple(v.shape))
        for k, v in expected.items()
        if not isinstance(tensors[k], torch.Tensor) or tensors[k].shape != v.shape
    ]
    if bad:
        k, got, want = bad[0]
        raise CheckpointError(
            f"{source}: {len(bad)} tensors have the wrong shape, e.g. {k}: file {got}, config {want}."
        )
    nonfinite = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise CheckpointError(
            f"{source}: non-finite values in {len(nonfinite)} tensors, e.g. {nonfinite[0]}."
        )


def example_inputs(
    spec: ModelSpec, batch: int = 1, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Sampler-like inputs (``denoiser.sampler_feed``) with the names the exporter and engines use."""
    from .denoiser import COND, SAMPLE, TIMESTEP, sampler_feed

    shapes = {SAMPLE: (batch, *spec.sample_shape), TIMESTEP: (batch,)}
    if spec.cond_shape:
        shapes[COND] = (batch, *spec.cond_shape)
    return {k: v.to(device) for k, v in sampler_feed(shapes).items()}
