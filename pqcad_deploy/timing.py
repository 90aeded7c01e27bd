"""The one device timer, latency statistics, and the machine/version header every benchmark JSON carries."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.util
import os
import platform
import socket
import sys
import time
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


class DeviceTimer:
    """Wall-clock on CPU; CUDA events on GPU, so the timings are device time, not launch time."""

    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"

    def start(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, mark: Any) -> float:
        """Milliseconds since ``mark``; synchronises the device."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return float(mark.elapsed_time(end))
        return (time.perf_counter() - mark) * 1e3


def time_calls(fn: Callable[[], Any], n: int, device: torch.device | str) -> float:
    """Mean milliseconds per call of ``fn`` over ``n`` back-to-back calls, with no synchronisation between calls:
    the pipelined cost a sampler pays per call."""
    timer = DeviceTimer(device)
    if timer.cuda:
        torch.cuda.synchronize(device)
    mark = timer.start()
    for _ in range(n):
        fn()
    return timer.stop(mark) / n


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
