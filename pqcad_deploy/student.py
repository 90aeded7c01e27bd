"""Student checkpoints: a quantized UNet's tensors plus the JSON metadata needed to rebuild it exactly.

``student.pt`` is ``{"format", "format_version", "meta" (JSON string), "state_dict"}``, readable with
``torch.load(weights_only=True)``; ``*.safetensors`` + ``*.json`` sidecar holds the same content. ``meta``:
format version, model spec, QuantConfig, ``history`` (calibration/training log) and ``sampling``
(``{"scheduler": "ddim", "steps": N}``; N is the step count a step-halved student was trained for, None when
any step count is fine).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .denoiser import UNetWrapper
from .errors import UsageError
from .io import (
    CheckpointError,
    atomic_torch_save,
    check_pair,
    load_safetensors,
    read_json_sidecar,
    safe_torch_load,
    save_safetensors_pair,
)
from .quant import QuantConfig, QuantConfigError, get_quant_config, iter_quantizers, quantize_model
from .quant.control import UncalibratedError, check_calibrated
from .quant.intervals import (
    IntervalError,
    IntervalSchedule,
    add_intervals,
    add_weight_sets,
    get_intervals,
    has_weight_sets,
)
from .zoo import ModelSpec, build_model, check_state_dict, sidecar_path, spec_from_meta

log = logging.getLogger(__name__)

STUDENT_FORMAT = "pqcad-student"
STUDENT_FORMAT_VERSION = 1
DEFAULT_SAMPLING = {"scheduler": "ddim", "steps": None}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.unet if isinstance(model, UNetWrapper) else model


def _is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def save_student(
    path: str | os.PathLike,
    model: nn.Module,
    spec: ModelSpec,
    qcfg: QuantConfig | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write atomically; ``.safetensors`` paths get a JSON sidecar, anything else is a torch tensor dict.

    The recorded QuantConfig is the one applied to the model (``qcfg``, if given, must equal it). Refuses
    uncalibrated quantizers and metadata that is not JSON-serialisable.
    """
    path = Path(path)
    unet = _unwrap(model)
    applied = get_quant_config(unet)
    if applied is None:
        raise CheckpointError("Model is not quantized (no QuantConfig); call quantize_model first.")
    if qcfg is not None and qcfg != applied:
        raise CheckpointError(
            f"Refusing to save {path}: the QuantConfig passed ({qcfg.to_dict()}) is not the one the model's "
            f"quantizers follow ({applied.to_dict()}); omit it to record the applied one."
        )
    qcfg = applied
    try:
        check_calibrated(unet)
    except UncalibratedError as e:
        raise CheckpointError(f"Refusing to save {path}: {e}") from e
    meta = dict(meta or {})
    full_meta = {
        **meta,
        "format": STUDENT_FORMAT,
        "format_version": STUDENT_FORMAT_VERSION,
        "model": spec.to_dict(),
        "quant": qcfg.to_dict(),
        "history": meta.get("history", []),
        "sampling": meta.get("sampling", DEFAULT_SAMPLING),
    }
    schedule = get_intervals(unet)
    full_meta.pop("intervals", None)
    full_meta.pop("interval_weights", None)
    if schedule is not None:
        full_meta["intervals"] = schedule.to_dict()
        if has_weight_sets(unet):
            full_meta["interval_weights"] = True
    try:
        meta_json = json.dumps(full_meta, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"Student metadata is not JSON-serialisable ({e}); pass plain values.") from e
    # clone: shared q/k/v quantizers appear under several keys; safetensors refuses shared storage.
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in unet.state_dict().items()}
    if _is_safetensors(path):
        save_safetensors_pair(path, tensors, json.loads(meta_json), {"format": STUDENT_FORMAT})
    else:
        atomic_torch_save({"format": STUDENT_FORMAT, "meta": meta_json, "state_dict": tensors}, path)
    log.info("saved student %s (%s, W%d)", path, qcfg.target, qcfg.weight_bits)
    return path


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], str, dict[str, str] | None]:
    """(metadata, tensors, the file the metadata came from, the safetensors header metadata or None)."""
    if _is_safetensors(path):
        side = sidecar_path(path)
        meta = read_json_sidecar(side, str(path), "the model and quant config")
        tensors, header = load_safetensors(path, "student weights")
        return meta, tensors, str(side), header
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != STUDENT_FORMAT:
        raise CheckpointError(
            f"{path} is not a student checkpoint (no format={STUDENT_FORMAT!r}); for a float teacher use "
            "zoo.load_model."
        )
    try:
        meta = json.loads(obj["meta"])
        tensors = obj["state_dict"]
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is missing or has malformed 'meta'/'state_dict' ({e}).") from e
    if not isinstance(meta, dict) or not isinstance(tensors, dict):
        raise CheckpointError(f"{path}: 'meta' must be a JSON object and 'state_dict' a dict of tensors.")
    bad = [k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: 'state_dict' holds non-tensor entries, e.g. {bad[0]!r:.60}.")
    return meta, tensors, str(path), None


MAX_SAMPLING_STEPS = 100_000


def _check_meta(meta: dict[str, Any], source: str) -> None:
    """The student metadata schema beyond the model spec and QuantConfig (checked by their own readers)."""
    if meta.get("format_version") != STUDENT_FORMAT_VERSION:
        raise CheckpointError(
            f"{source} has student format version {meta.get('format_version')!r}; this code reads version "
            f"{STUDENT_FORMAT_VERSION}. Re-export it with the matching pqcad-deploy release."
        )
    for key, what in (("model", "the model spec"), ("quant", "the QuantConfig")):
        if key not in meta:
            raise CheckpointError(f"{source} metadata lacks {key!r} ({what}); it cannot be rebuilt.")
        if not isinstance(meta[key], dict):
            raise CheckpointError(
                f"{source}: metadata {key!r} ({what}) must be an object, got {meta[key]!r:.60}."
            )
    history = meta.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise CheckpointError(f"{source}: metadata 'history' must be a list of objects, got {history!r:.60}.")
    sampling = meta.get("sampling", DEFAULT_SAMPLING)
    if not isinstance(sampling, dict):
        raise CheckpointError(f"{source}: metadata 'sampling' must be an object, got {sampling!r:.60}.")
    for key in ("steps", "calib_steps"):
        v = sampling.get(key)
        if v is not None and not (
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SAMPLING_STEPS
        ):
            raise CheckpointError(
                f"{source}: metadata sampling.{key} must be null or an integer in [1, {MAX_SAMPLING_STEPS}], "
                f"got {v!r:.40}."
            )
    if not isinstance(sampling.get("scheduler", "ddim"), str):
        raise CheckpointError(f"{source}: metadata sampling.scheduler must be a string.")


def _read_intervals(meta: dict[str, Any], source: str) -> IntervalSchedule | None:
    """Per-interval activation ranges (timestep-aware students); absent in single-set students and older files."""
    if meta.get("intervals") is None:
        return None
    if not isinstance(meta["intervals"], dict):
        raise CheckpointError(
            f"{source}: metadata 'intervals' must be an object, got {meta['intervals']!r:.60}."
        )
    try:
        return IntervalSchedule.from_dict(meta["intervals"])
    except IntervalError as e:
        raise CheckpointError(f"{source}: {e}") from e


def _with_intervals(model: nn.Module, schedule: IntervalSchedule | None, weight_sets: bool) -> nn.Module:
    if schedule is not None:
        add_intervals(model, schedule)
        if weight_sets:
            add_weight_sets(model)
    return model


def _check_quantizer_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Quantizer state must be usable and agree with the stored QuantConfig, which is the one source of truth for
    bit-widths: the model is rebuilt from it, so a file whose ``num_bits`` disagree is refused, not obeyed."""
    for name, q in iter_quantizers(model):
        cal, amax, bits = (tensors.get(f"{name}.{k}") for k in ("calibrated", "amax", "num_bits"))
        if cal is None or amax is None or bits is None:
            continue  # reported as missing keys by check_state_dict
        if cal.numel() != 1 or bits.numel() != 1:
            raise CheckpointError(
                f"{source}: quantizer {name} has malformed state (calibrated/num_bits not scalars)."
            )
        if not bool(cal):
            raise CheckpointError(f"{source}: quantizer {name} is uncalibrated; the checkpoint is unusable.")
        sets = tensors.get(f"{name}.interval_amax")
        for a in (amax,) if sets is None else (amax, sets):
            if not a.is_floating_point() or not torch.isfinite(a).all() or (a <= 0).any():
                raise CheckpointError(f"{source}: quantizer {name} has non-finite or non-positive scales.")
        if int(bits) != q.bits:
            raise CheckpointError(
                f"{source}: quantizer {name} stores num_bits={int(bits)} but the checkpoint's QuantConfig builds it "
                f"at {q.bits}; the file was edited or written by a broken tool."
            )


def load_student(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec, QuantConfig, dict[str, Any]]:
    """Rebuild model + quantizers from the stored configs, verify every tensor against a meta-device copy (no
    allocation before the checks pass), then load (eval mode)."""
    path = Path(path)
    meta, tensors, source, header = _read(path)
    _check_meta(meta, source)
    spec, probe = spec_from_meta(meta["model"], source)
    try:
        qcfg = QuantConfig.from_dict(meta["quant"])
    except QuantConfigError as e:
        raise CheckpointError(f"{source}: {e}") from e
    schedule = _read_intervals(meta, source)
    weight_sets = meta.get("interval_weights", False)
    if not isinstance(weight_sets, bool) or (weight_sets and schedule is None):
        raise CheckpointError(f"{source}: metadata 'interval_weights' must be true or false, and true only with "
                              "'intervals'.")  # fmt: skip
    probe = _with_intervals(quantize_model(probe, qcfg), schedule, weight_sets)
    check_state_dict(probe, tensors, source=str(path))
    _check_quantizer_tensors(probe, tensors, str(path))
    if header is not None:
        check_pair(path, header, Path(source), meta)
    model = _with_intervals(quantize_model(build_model(spec, seed=None), qcfg), schedule, weight_sets)
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    meta.setdefault("history", [])
    meta.setdefault("sampling", dict(DEFAULT_SAMPLING))
    return model, spec, qcfg, meta


def float_copy(student: nn.Module, spec: ModelSpec) -> nn.Module:
    """The float model of ``spec`` holding a student's trained weights, without any quantizer (eval mode): the
    start of a retarget, and the FP reference that measures a student's quantization error alone."""
    fp = build_model(spec, seed=None)
    keys = fp.state_dict().keys()
    weights = {k: v for k, v in student.state_dict().items() if k in keys}
    missing = sorted(set(keys) - set(weights))
    if missing:
        raise UsageError(
            f"the student lacks {len(missing)} weights of {spec.name} (first: {missing[0]}); "
            "give a student of the same model."
        )
    fp.load_state_dict(weights, strict=True)
    return fp.eval()
