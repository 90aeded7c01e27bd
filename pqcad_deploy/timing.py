"""Latency statistics and the machine/version header every benchmark JSON carries."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.util
import os
import platform
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

_VERSIONED = (
    "torch",
    "diffusers",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "pqcad-deploy",
)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median and spread (p10/p90, min/max) of a list of milliseconds; empty lists give NaNs."""
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        nan = float("nan")
        return {"n": 0, "median": nan, "p10": nan, "p90": nan, "mean": nan, "min": nan, "max": nan}
    return {
        "n": int(a.size),
        "median": float(np.median(a)),
        "p10": float(np.percentile(a, 10)),
        "p90": float(np.percentile(a, 90)),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def time_calls(fn: Callable[[], Any], n: int, device: torch.device) -> float:
    """Mean milliseconds per call of ``fn`` over ``n`` back-to-back calls (CUDA events on GPU).

    No synchronisation between calls, so this is the pipelined cost the sampler pays per call.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / n
    import time

    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) * 1e3 / n


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_info() -> dict[str, Any]:
    """Date, machine, accelerator, versions and the command line, for the top of every result file."""
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {d: v for d in _VERSIONED if (v := _version(d)) is not None},
        "tensorrt_importable": importlib.util.find_spec("tensorrt") is not None,
    }
    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        p = torch.cuda.get_device_properties(i)
        info["gpu"] = {
            "name": p.name,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}",
            "count": torch.cuda.device_count(),
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
        info["torch_flags"] = {
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
    return info


def environment_line(info: dict[str, Any]) -> str:
    """One-line header for printed tables."""
    dev = info["gpu"]["name"] if "gpu" in info else f"{info['cpu']} ({info['cpu_count']} cores)"
    vers = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return f"{info['date_utc']}  {info['host']}  {dev}  |  {vers}"
