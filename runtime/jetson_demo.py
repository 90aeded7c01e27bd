"""Torch-free DDIM sampling on a TensorRT engine, for Jetson boards (numpy + tensorrt + pycuda + Pillow).

Copy this one file and the engine built on the device (``pqcad-build`` or ``trtexec``) to the board:

    python3 jetson_demo.py --engine unet.plan --steps 50 --batch 4 --out grid.png [--spec fmnist-ddpm.json]

Buffers: pinned host memory (``cuda.pagelocked_empty``) and device memory from pycuda in the *primary*
context (``pycuda.autoprimaryctx``, so it also coexists with other CUDA users in the process). The DDIM math
(eta = 0, "trailing" spacing, the project's scheduler defaults) runs in numpy on the host; on Jetson the CPU
and GPU share DRAM, so the per-step copies are small. This is the project's one second sampler loop, kept
tiny and tested against diffusers' DDIMScheduler.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

# -- DDIM (numpy) ---------------------------------------------------------------------------------------


def alphas_cumprod(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
) -> np.ndarray:
    """Cumulative alpha products as diffusers computes them (float32)."""
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float32)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float32) ** 2
    else:
        raise ValueError(f"beta_schedule {beta_schedule!r} is not supported here (linear, scaled_linear).")
    return np.cumprod(1.0 - betas.astype(np.float32), dtype=np.float32)


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """'trailing' spacing: T-1, ..., ending near 0 (the project's default, sampling.make_scheduler)."""
    if not 0 < steps <= num_train_timesteps:
        raise ValueError(f"steps must be in 1..{num_train_timesteps}, got {steps}.")
    return (np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)) - 1).astype(np.int64)


def ddim_step(x: np.ndarray, eps: np.ndarray, t: int, prev_t: int, ac: np.ndarray) -> np.ndarray:
    """One deterministic DDIM step (eta=0, no clipping, final alpha = alphas_cumprod[0])."""
    a_t = ac[t]
    a_prev = ac[prev_t] if prev_t >= 0 else ac[0]
    x0 = (x - np.sqrt(1.0 - a_t) * eps) / np.sqrt(a_t)
    return (np.sqrt(a_prev) * x0 + np.sqrt(1.0 - a_prev) * eps).astype(np.float32)


def ddim_sample(denoise, x: np.ndarray, steps: int, schedule: dict | None = None, on_step=None) -> np.ndarray:
    """Run ``steps`` DDIM steps from noise ``x``; ``denoise(x, t_batch) -> eps`` (numpy in and out)."""
    sched = {"num_train_timesteps": 1000, "beta_schedule": "linear", **(schedule or {})}
    ac = alphas_cumprod(
        **{
            k: sched[k]
            for k in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")
            if k in sched
        }
    )
    T = sched["num_train_timesteps"]
    for i, t in enumerate(ddim_timesteps(steps, T)):
        eps = denoise(x, np.full((x.shape[0],), t, dtype=np.int64))
        x = ddim_step(x, eps, int(t), int(t) - T // steps, ac)
        if on_step is not None:
            on_step(i, x)
    return x


# -- images ---------------------------------------------------------------------------------------------


def save_grid_png(images: np.ndarray, path: str | Path) -> Path:
    """[B, C, H, W] in about [-1, 1] -> one PNG grid (C = 1 or 3; 4-channel latents show channel 0)."""
    from PIL import Image

    imgs = np.clip((images + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    if imgs.shape[1] not in (1, 3):
        imgs = imgs[:, :1]
    b, c, h, w = imgs.shape
    cols = int(math.ceil(math.sqrt(b)))
    rows = int(math.ceil(b / cols))
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(b):
        r, q = divmod(i, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = imgs[i].transpose(1, 2, 0)
    mode = "L" if c == 1 else "RGB"
    Image.fromarray(grid[..., 0] if c == 1 else grid, mode=mode).save(path)
    return Path(path)


# -- TensorRT + pycuda ----------------------------------------------------------------------------------


class PycudaEngine:
    """A deserialized engine with pinned host + device buffers for one batch size (TRT 8.6 and 10.x API)."""

    def __init__(self, engine_path: str | Path, batch: int):
        try:
            import pycuda.autoprimaryctx  # noqa: F401  (primary context, not autoinit)
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as e:
            raise SystemExit(
                f"{e.name} is missing: on Jetson use the JetPack TensorRT and `pip install pycuda`."
            ) from None
        self.cuda, self.trt = cuda, trt
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise SystemExit(
                f"Could not load {engine_path}: build the engine on this device with this TensorRT."
            )
        self.ctx = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.sample_chw = tuple(self._profile_opt("sample")[1:])
        for n in self.inputs:
            shape = (batch, *self._profile_opt(n)[1:])
            if not self.ctx.set_input_shape(n, shape):
                raise SystemExit(f"Input {n} shape {shape} is outside the engine's profile; rebuild with it.")
        self.buf = {}
        for n in names:
            shape = tuple(self.ctx.get_tensor_shape(n))
            host = cuda.pagelocked_empty(shape, trt.nptype(self.engine.get_tensor_dtype(n)))
            dev = cuda.mem_alloc(max(host.nbytes, 1))
            self.ctx.set_tensor_address(n, int(dev))
            self.buf[n] = (host, dev)

    def _profile_opt(self, name: str) -> tuple[int, ...]:
        shape = tuple(self.engine.get_tensor_shape(name))
        if all(d > 0 for d in shape):
            return shape
        return tuple(self.engine.get_tensor_profile_shape(name, 0)[1])

    def __call__(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        cuda = self.cuda
        feed = {"sample": x, "timestep": t, "encoder_hidden_states": cond}
        for n in self.inputs:
            host, dev = self.buf[n]
            np.copyto(host, feed[n] if feed.get(n) is not None else 0, casting="unsafe")
            cuda.memcpy_htod_async(dev, host, self.stream)
        if not self.ctx.execute_async_v3(stream_handle=self.stream.handle):
            raise RuntimeError("execute_async_v3 failed")
        out = self.outputs[0]
        cuda.memcpy_dtoh_async(self.buf[out][0], self.buf[out][1], self.stream)
        self.stream.synchronize()
        return self.buf[out][0].astype(np.float32)


def _percentile(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a), q)) if a else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Torch-free DDIM sampling on a TensorRT engine (Jetson demo).")
    p.add_argument("--engine", required=True, help="TensorRT plan built on this device")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spec", help="model JSON sidecar (scheduler config); default: linear betas, 1000 steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed sampling runs first")
    p.add_argument("--out", default="jetson_grid.png")
    args = p.parse_args(argv)
    schedule = {}
    if args.spec:
        meta = json.loads(Path(args.spec).read_text())
        schedule = (meta.get("model") or meta).get("scheduler") or {}
    eng = PycudaEngine(args.engine, args.batch)
    shape = (args.batch, *eng.sample_chw)
    noise = np.random.default_rng(args.seed).standard_normal(shape, dtype=np.float32)
    for _ in range(args.warmup):
        ddim_sample(eng, noise.copy(), args.steps, schedule)
    step_ms: list[float] = []

    def timed(x, t):
        t0 = time.perf_counter()
        eps = eng(x, t)
        step_ms.append((time.perf_counter() - t0) * 1e3)
        return eps

    t0 = time.perf_counter()
    images = ddim_sample(timed, noise.copy(), args.steps, schedule)
    total = (time.perf_counter() - t0) * 1e3
    print(f"engine {args.engine}: batch {args.batch}, {args.steps} DDIM steps, sample {shape}")
    print(
        f"per step (UNet + copies): median {np.median(step_ms):.2f} ms, p90 {_percentile(step_ms, 90):.2f} ms"
    )
    print(
        f"end to end: {total:.1f} ms ({total / args.batch:.1f} ms per image); "
        f"host DDIM math {100 * (total - sum(step_ms)) / total:.1f}% of it"
    )
    print(f"wrote {save_grid_png(images, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
