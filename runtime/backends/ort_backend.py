"""ONNX Runtime runner: CPU EP everywhere; CUDA and TensorRT EPs when onnxruntime-gpu provides them.

On GPU the runner uses IO binding, so torch CUDA tensors go in and come out without host round trips. An
"ORT engine" (written by ``pqcad-build --backend onnxruntime``) is a JSON file naming an optimized model and
the session settings it was built with; :meth:`OrtRunner.from_engine` reopens it with the same settings.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pqcad_deploy.denoiser import OUTPUT_NAME, SAMPLE
from pqcad_deploy.errors import UsageError

from .base import MissingBackendError, Runner, RunnerError, require

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}
OPT_LEVELS["all"] = "ORT_ENABLE_ALL"
# Where ORT's quantized convolutions run on the CPU: NHWC (ORT's default: its NhwcTransformer, with layout
# Transposes around the float ops between them) or NCHW (that transformer off: no Transposes, slower QLinearConv
# kernels; RESULTS "Per-op profile" has both on the 2-core Xeon). Value: the transformers the layout turns off.
LAYOUTS = {"nhwc": [], "nchw": ["NhwcTransformer"]}
ENGINE_FORMAT = "pqcad-ort-engine"
ENGINE_VERSION = 1
MAX_THREADS = 1024

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
_TORCH = {np.float32: torch.float32, np.float16: torch.float16, np.float64: torch.float64}
_TORCH.update({np.int64: torch.int64, np.int32: torch.int32})


def resolve_providers(providers: list[str] | str | None, available: list[str]) -> list[str]:
    """Map short names (cpu, cuda, tensorrt) to EP names, check they exist, always end with the CPU EP."""
    if providers is None:
        providers = ["cpu"]
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    out = []
    for p in providers:
        name = PROVIDERS.get(p.lower(), p)
        if name not in available:
            hint = (
                "pip install onnxruntime-gpu" if name != "CPUExecutionProvider" else "pip install onnxruntime"
            )
            raise MissingBackendError(
                f"ONNX Runtime has no {name} here (available: {', '.join(available)}); install it with: {hint}"
            )
        if name not in out:
            out.append(name)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


def session_settings(
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = 1,
    optimization: str = "all",
    providers: list[str] | str | None = None,
    disabled_optimizers: list[str] | None = None,
) -> dict[str, Any]:
    """The JSON-able session settings an ORT engine records (validated here, applied in ``activate``).
    ``disabled_optimizers``: ORT graph transformers to skip (e.g. ``NhwcTransformer``, see LAYOUTS); they stay off
    when the engine is reopened, or ORT would apply them again to the saved model."""
    if optimization not in OPT_LEVELS:
        raise UsageError(
            f"Unknown ORT optimization level {optimization!r}; choose one of {sorted(OPT_LEVELS)}."
        )
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    return {
        "intra_op_num_threads": intra_op_threads,
        "inter_op_num_threads": inter_op_threads,
        "graph_optimization_level": optimization,
        "providers": list(providers or ["cpu"]),
        "disabled_optimizers": sorted(disabled_optimizers or []),
    }


def read_engine_json(path: Path) -> dict[str, Any]:
    """An ORT engine file, validated (format, version, field types) before anything is opened."""
    if path.is_dir():
        raise RunnerError(f"ORT engine file {path} is a directory, not a file.")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunnerError(f"Cannot read ORT engine file {path}: {e}.") from e
    if not isinstance(meta, dict) or meta.get("format") != ENGINE_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise RunnerError(f"{path} is not an ORT engine file (format {got!r}, want {ENGINE_FORMAT!r}).")
    if meta.get("version") != ENGINE_VERSION:
        raise RunnerError(
            f"{path} is ORT engine version {meta.get('version')!r}; this code reads {ENGINE_VERSION}. Rebuild it "
            "with pqcad-build --backend onnxruntime."
        )
    session, model = meta.get("session"), meta.get("model")
    if not isinstance(session, dict) or not isinstance(model, str) or Path(model).name != model:
        raise RunnerError(f"{path}: 'session' must be an object and 'model' a file name beside it.")
    if not (path.parent / model).is_file():
        raise RunnerError(f"{path} names the optimized model {model}, which is missing; rebuild the engine.")
    for key in ("intra_op_num_threads", "inter_op_num_threads"):
        threads = session.get(key)
        if threads is not None and (
            not isinstance(threads, int) or isinstance(threads, bool) or not 0 <= threads <= MAX_THREADS
        ):
            raise RunnerError(f"{path}: {key} must be an integer in [0, {MAX_THREADS}], got {threads!r:.40}.")
    level = session.get("graph_optimization_level", "all")
    if level not in OPT_LEVELS:
        raise RunnerError(
            f"{path}: graph_optimization_level must be one of {sorted(OPT_LEVELS)}, got {level!r:.40}."
        )
    disabled = session.get("disabled_optimizers", [])
    if not (isinstance(disabled, list) and all(isinstance(d, str) for d in disabled)):
        raise RunnerError(f"{path}: 'disabled_optimizers' must be a list of names, got {disabled!r:.60}.")
    providers = session.get("providers", ["cpu"])
    if not (isinstance(providers, list) and providers and all(isinstance(p, str) for p in providers)):
        raise RunnerError(f"{path}: 'providers' must be a non-empty list of names, got {providers!r:.60}.")
    unknown = [p for p in providers if p.lower() not in PROVIDERS and p not in PROVIDERS.values()]
    if unknown:
        raise RunnerError(f"{path}: unknown execution providers {unknown}; known: {sorted(PROVIDERS)}.")
    return meta


class OrtRunner(Runner):
    """``onnxruntime.InferenceSession`` behind the runner interface."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: list[str] | str | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = 1,
        optimization: str = "all",
        optimized_model_filepath: str | os.PathLike | None = None,
        io_binding: bool | None = None,
        provider_options: dict[str, dict[str, Any]] | None = None,
        session_config_entries: dict[str, str] | None = None,
        log_severity: int | None = None,
        name: str | None = None,
        profile_prefix: str | os.PathLike | None = None,
        shared_arena: bool = False,
        fold_weight_dq: bool = False,
        disabled_optimizers: list[str] | None = None,
    ):
        """``profile_prefix``: turn on ORT's profiler (per-node timings); :meth:`end_profiling` writes the JSON.
        ``shared_arena``: on the CPU, allocate activations from one process-wide arena (ORT's environment
        allocator) instead of a per-session one, so sessions that run one after the other (the per-interval
        engines of a timestep-aware student) do not each keep their own peak of activation memory.
        ``fold_weight_dq``: for weight-only graphs (a relaxed interval: INT8 weights, float activations): ORT's QDQ
        handling is turned off, so its constant folding turns every weight DequantizeLinear into a float weight
        once instead of dequantizing on every call (there are no activation Q/DQ pairs to fuse)."""
        super().__init__()
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise RunnerError(f"ONNX model {self.model_path} does not exist; export one with pqcad-export.")
        self.settings = session_settings(
            intra_op_threads, inter_op_threads, optimization, providers, disabled_optimizers
        )
        self.optimized_model_filepath = optimized_model_filepath
        self.io_binding = io_binding
        self.provider_options = provider_options or {}
        self.session_config_entries = dict(session_config_entries or {})
        self.log_severity = log_severity
        self.name = name or f"ort:{self.model_path.name}"
        self.profile_prefix = profile_prefix
        self.shared_arena = shared_arena
        self.fold_weight_dq = fold_weight_dq
        self.session = None
        self._inputs: dict[str, Any] = {}

    @classmethod
    def from_engine(cls, engine_json: str | os.PathLike, **overrides: Any) -> OrtRunner:
        """Reopen an ORT engine written by ``pqcad-build --backend onnxruntime``."""
        path = Path(engine_json)
        meta = read_engine_json(path)
        s = meta["session"]
        kwargs = dict(
            providers=s.get("providers"),
            intra_op_threads=s.get("intra_op_num_threads"),
            inter_op_threads=s.get("inter_op_num_threads"),
            # The saved model is already optimized for this machine; re-running the optimizers is harmless.
            optimization=s.get("graph_optimization_level", "all"),
            disabled_optimizers=s.get("disabled_optimizers"),
            name=f"ort:{path.name}",
        )
        kwargs.update(overrides)
        return cls(path.parent / meta["model"], **kwargs)

    # -- lifecycle -----------------------------------------------------------------------------------
    def activate(self) -> None:
        ort = require("onnxruntime")
        so = ort.SessionOptions()
        s = self.settings
        if s["intra_op_num_threads"]:
            so.intra_op_num_threads = int(s["intra_op_num_threads"])
        if s["inter_op_num_threads"]:
            so.inter_op_num_threads = int(s["inter_op_num_threads"])
        so.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, OPT_LEVELS[s["graph_optimization_level"]]
        )
        if self.optimized_model_filepath:
            so.optimized_model_filepath = str(self.optimized_model_filepath)
        for key, value in self.session_config_entries.items():
            so.add_session_config_entry(key, value)
        if self.fold_weight_dq:
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        if self.log_severity is not None:
            so.log_severity_level = self.log_severity
        if self.profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = str(self.profile_prefix)
        providers = resolve_providers(s["providers"], ort.get_available_providers())
        if self.shared_arena and providers[0] == "CPUExecutionProvider":
            register_shared_cpu_arena(ort)
            so.add_session_config_entry("session.use_env_allocators", "1")
        opts = [self.provider_options.get(p, {}) for p in providers]
        extra = {"disabled_optimizers": s["disabled_optimizers"]} if s["disabled_optimizers"] else {}
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=so, providers=providers, provider_options=opts, **extra
            )
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types, all with a message
            raise RunnerError(
                f"ONNX Runtime cannot load {self.model_path}: {str(e).strip().splitlines()[0]}"
            ) from e
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = tuple(self._inputs)
        self._outputs = [o.name for o in self.session.get_outputs()]
        on_gpu = providers[0] != "CPUExecutionProvider"
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        if self.io_binding is None:
            self.io_binding = on_gpu
        log.info("%s: providers %s, inputs %s", self.name, providers, list(self._inputs))

    def deactivate(self) -> None:
        self.session = None

    def end_profiling(self) -> Path:
        """Stop ORT's profiler and return its JSON trace (needs ``profile_prefix`` and an active session)."""
        if self.session is None or self.profile_prefix is None:
            raise RunnerError(f"{self.name}: profiling needs profile_prefix and an active session.")
        return Path(self.session.end_profiling())

    # -- inference -----------------------------------------------------------------------------------
    def _np_dtype(self, name: str):
        t = self._inputs[name].type
        if t not in _ORT_TO_NUMPY:
            raise TypeError(f"Input {name} has unsupported type {t}.")
        return _ORT_TO_NUMPY[t]

    def _infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.io_binding and self.device.type == "cuda":
            return self._infer_bound(feed)
        arrays = {n: v.detach().cpu().numpy().astype(self._np_dtype(n), copy=False) for n, v in feed.items()}
        try:
            outs = self.session.run(self._outputs, arrays)
        except Exception as e:  # onnxruntime's Fail/InvalidArgument/RuntimeException types
            raise RunnerError(
                f"ONNX Runtime failed to run {self.model_path}: {str(e).strip().splitlines()[0]}"
            ) from e
        return {
            n: torch.from_numpy(np.ascontiguousarray(o)) for n, o in zip(self._outputs, outs, strict=True)
        }

    def _infer_bound(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """IO binding with torch CUDA buffers; ``out_sample`` is preallocated with the sample's shape."""
        binding = self.session.io_binding()
        dev_id = self.device.index or 0
        keep = []  # the bound tensors must outlive the run
        for n, v in feed.items():
            np_dt = self._np_dtype(n)
            v = v.to(device=self.device, dtype=_TORCH[np_dt]).contiguous()
            keep.append(v)
            binding.bind_input(n, "cuda", dev_id, np_dt, tuple(v.shape), v.data_ptr())
        outs: dict[str, torch.Tensor] = {}
        for o in self.session.get_outputs():
            if o.name == OUTPUT_NAME and o.type in ("tensor(float)", "tensor(float16)"):
                np_dt = _ORT_TO_NUMPY[o.type]
                buf = torch.empty(feed[SAMPLE].shape, dtype=_TORCH[np_dt], device=self.device)
                binding.bind_output(o.name, "cuda", dev_id, np_dt, tuple(buf.shape), buf.data_ptr())
                outs[o.name] = buf
            else:
                binding.bind_output(o.name, "cpu")
        torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch must be ready
        self.session.run_with_iobinding(binding)
        for o, val in zip(self.session.get_outputs(), binding.get_outputs(), strict=True):
            if o.name not in outs:
                outs[o.name] = torch.from_numpy(val.numpy())
        return outs

    def describe(self) -> dict[str, Any]:
        d = {**super().describe(), "backend": "onnxruntime", "model": str(self.model_path), **self.settings}
        if self.session is not None:
            d["providers_active"] = self.session.get_providers()
        return d


@functools.cache
def register_shared_cpu_arena(ort: Any) -> None:
    """Register one CPU arena allocator with ORT's environment, once per process (the environment is
    process-wide); sessions opt in with the session config entry ``session.use_env_allocators``."""
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
