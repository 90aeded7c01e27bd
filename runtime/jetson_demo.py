"""Torch-free DDIM sampling on TensorRT engines, for Jetson boards (numpy + tensorrt + pycuda + Pillow; the
``tokenizers`` package too when prompting).

Copy this one file, and the engines built on the device (``pqcad-build`` or ``trtexec``), to the board:

    python3 jetson_demo.py --engine unet.plan --steps 50 --batch 4 --out grid.png [--spec fmnist-ddpm.json]
    python3 jetson_demo.py --engine unet_t2i.plan --text-engine text.plan --tokenizer minilm/ \
        --prompt "a red shirt" --prompt "a blue dress" --guidance-scale 3 --steps 25
    python3 jetson_demo.py --engine unet.manifest.json --steps 50   # a timestep-aware student: K engines

A timestep-aware student's engines come with the manifest ``pqcad-build --onnx unet.manifest.json --saveEngine
unet.manifest.json`` writes (copy it with the plans): each step runs the engine of its timestep's interval.

Buffers: pinned host memory (``cuda.pagelocked_empty``) and device memory from pycuda in the *primary*
context (``pycuda.autoprimaryctx``, so it also coexists with other CUDA users in the process). The DDIM math
(eta = 0, "trailing" spacing, the project's scheduler defaults) runs in numpy on the host; on Jetson the CPU
and GPU share DRAM, so the per-step copies are small. This is the project's one second sampler loop, kept
tiny and tested against diffusers' DDIMScheduler.

Prompts are tokenized (padded and truncated to ``--max-length``) and encoded once by the text-encoder engine.
Classifier-free guidance batches the empty prompt's encoding and the prompts' encodings as [uncond; cond]
rows, so the UNet engine runs once per step on twice the batch: eps = eps_u + S * (eps_c - eps_u).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Graph I/O names, as in pqcad_deploy.denoiser and the text-encoder export (this file runs without the package).
SAMPLE, TIMESTEP, COND, OUTPUT_NAME = "sample", "timestep", "encoder_hidden_states", "out_sample"
TEXT_INPUTS, TEXT_OUTPUT = ("input_ids", "attention_mask"), "last_hidden_state"
EMPTY_PROMPT = ""  # the unconditional prompt of classifier-free guidance

Denoise = Callable[[np.ndarray, np.ndarray], np.ndarray]


class DemoError(Exception):
    """A missing package, an unusable engine or inputs that do not fit it; the message says what to do."""


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


def ddim_sample(
    denoise: Denoise, x: np.ndarray, steps: int, schedule: dict | None = None, on_step=None
) -> np.ndarray:
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


def _import_gpu_modules() -> tuple[Any, Any]:
    try:
        import pycuda.autoprimaryctx  # noqa: F401  (the primary context, not autoinit's private one)
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as e:
        raise DemoError(
            f"{e.name} is missing: on Jetson use the JetPack TensorRT and `pip install pycuda`."
        ) from None
    return cuda, trt


class PycudaEngine:
    """A deserialized engine with pinned host and device buffers for one set of input shapes (TRT 8.6 and 10.x).

    Each input's shape is ``shapes[name]`` where given, else ``batch`` followed by the profile's opt dims.
    """

    def __init__(self, engine_path: str | Path, batch: int, shapes: dict[str, tuple[int, ...]] | None = None):
        self.cuda, self.trt = cuda, trt = _import_gpu_modules()
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise DemoError(f"engine {self.path} does not exist; build it on this device (docs/jetson.md).")
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise DemoError(
                f"could not load {self.path}: build the engine on this device with this TensorRT."
            )
        self.ctx = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.input_shapes = {
            n: tuple((shapes or {}).get(n) or (batch, *self.profile(n)[1][1:])) for n in self.inputs
        }
        for n, shape in self.input_shapes.items():
            if not self.ctx.set_input_shape(n, shape):
                low, _, high = self.profile(n)
                raise DemoError(
                    f"{self.path.name}: input {n} shape {shape} is outside the engine's profile {low}..{high}; "
                    "rebuild the engine with that shape in --minShapes/--maxShapes."
                )
        self.buf = {}
        for n in names:
            shape = tuple(self.ctx.get_tensor_shape(n))
            host = cuda.pagelocked_empty(shape, trt.nptype(self.engine.get_tensor_dtype(n)))
            dev = cuda.mem_alloc(max(host.nbytes, 1))
            self.ctx.set_tensor_address(n, int(dev))
            self.buf[n] = (host, dev)

    def profile(self, name: str) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) shapes of an input; all three equal its shape when it is static."""
        shape = tuple(self.engine.get_tensor_shape(name))
        if all(d >= 0 for d in shape):
            return shape, shape, shape
        return tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy ``feed`` in, execute, copy every output back (fresh arrays: the pinned buffers are reused)."""
        cuda = self.cuda
        for n in self.inputs:
            host, dev = self.buf[n]
            if n not in feed or np.shape(feed[n]) != host.shape:
                got = np.shape(feed[n]) if n in feed else "nothing"
                raise DemoError(f"{self.path.name}: input {n} needs shape {host.shape}, got {got}.")
            np.copyto(host, feed[n], casting="unsafe")
            cuda.memcpy_htod_async(dev, host, self.stream)
        if not self.ctx.execute_async_v3(stream_handle=self.stream.handle):
            raise DemoError(f"{self.path.name}: execute_async_v3 failed (see the TensorRT log above).")
        for n in self.outputs:
            cuda.memcpy_dtoh_async(self.buf[n][0], self.buf[n][1], self.stream)
        self.stream.synchronize()
        return {n: self.buf[n][0].copy() for n in self.outputs}


def read_engine_manifest(path: Path) -> tuple[list[Path], list[int]]:
    """(the TensorRT plan of every interval, the interval starts) of a ``pqcad-build`` engine manifest; refuses one
    for another backend, or whose plans are missing or were replaced since it was written (SHA-256). The
    package's reader (``pqcad_deploy.interval_manifest``) imports torch, which this file runs without."""
    try:
        doc = json.loads(path.read_text())
        starts = [int(v) for v in doc["intervals"]["starts"]]
        entries = doc["entries"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DemoError(f"{path} is not a readable interval manifest ({e}).") from e
    if doc.get("backend") != "tensorrt":
        raise DemoError(
            f"{path} is not a TensorRT engine manifest (backend {doc.get('backend')!r}); build the plans on this "
            "device: pqcad-build --onnx unet.manifest.json --saveEngine unet_trt.manifest.json."
        )
    if len(entries) != len(starts) + 1:
        raise DemoError(
            f"{path}: {len(entries)} engines for {len(starts) + 1} intervals; rebuild the engines."
        )
    plans = [path.parent / str(e.get("engine", "")) for e in entries]
    for e, plan in zip(entries, plans, strict=True):
        if not plan.is_file():
            raise DemoError(
                f"{path}: interval {e.get('interval')}'s engine {plan} is missing; copy it with the manifest."
            )
        if hashlib.sha256(plan.read_bytes()).hexdigest() != e.get("sha256"):
            raise DemoError(
                f"{path}: {plan} is not the engine this manifest was written with (SHA-256 differs)."
            )
    return plans, starts


def open_unets(
    engine: str | Path, batch: int, shapes: dict[str, tuple[int, ...]] | None = None
) -> tuple[list[PycudaEngine], list[int]]:
    """The UNet engine (one, no interval starts) or, for an interval manifest, one engine per interval."""
    path = Path(engine)
    if path.name.endswith(".manifest.json"):
        plans, starts = read_engine_manifest(path)
        return [PycudaEngine(p, batch, shapes) for p in plans], starts
    return [PycudaEngine(path, batch, shapes)], []


def unet_denoiser(unets: list[PycudaEngine], starts: list[int], cond: np.ndarray | None) -> Denoise:
    """``(x, t) -> eps`` on the UNet engine of ``t``'s interval (interval j holds the timesteps t with exactly j
    starts >= t); ``cond`` (fixed for the whole loop) feeds its encoder states."""

    def denoise(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        unet = unets[sum(int(t[0]) <= s for s in starts)]  # the sampler's batches share one timestep
        feed = {SAMPLE: x, TIMESTEP: t} | ({COND: cond} if COND in unet.inputs else {})
        return unet.run(feed)[unet.outputs[0]].astype(np.float32)

    return denoise


def guided(denoise: Denoise, scale: float) -> Denoise:
    """Classifier-free guidance with one UNet call per step: ``denoise`` sees every row twice, first against
    the empty prompt's states, then against the prompts' (the [uncond; cond] batching of its conditioning)."""

    def step(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        eps_u, eps_c = np.split(denoise(np.concatenate([x, x]), np.concatenate([t, t])), 2)
        return (eps_u + np.float32(scale) * (eps_c - eps_u)).astype(np.float32)

    return step


# -- prompts ----------------------------------------------------------------------------------------------


def load_tokenizer(folder: str | Path, max_length: int) -> Any:
    """``tokenizers.Tokenizer`` from ``folder/tokenizer.json``, padding and truncating to ``max_length``."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DemoError("--tokenizer needs the tokenizers package: pip3 install tokenizers") from None
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise DemoError(f"--tokenizer {folder}: no tokenizer.json there (copy the text encoder's folder).")
    tok = Tokenizer.from_file(str(path))
    pad_token = (tok.padding or {}).get("pad_token") or "[PAD]"
    pad_id = tok.token_to_id(pad_token)
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=pad_id or 0, pad_token=pad_token)
    return tok


def tokenize(tok: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``input_ids`` and ``attention_mask`` (int64 [B, L]) and, per text, how many tokens truncation cut."""
    encodings = tok.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    cut = [
        sum(
            1
            for o in e.overflowing
            for s, m in zip(o.special_tokens_mask, o.attention_mask, strict=True)
            if m and not s
        )
        for e in encodings
    ]
    return ids, mask, cut


def encode(text_engine: PycudaEngine, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Token states [B, L, D] from the text-encoder engine."""
    if set(text_engine.inputs) != set(TEXT_INPUTS) or TEXT_OUTPUT not in text_engine.outputs:
        raise DemoError(
            f"{text_engine.path.name} has inputs {text_engine.inputs} and outputs {text_engine.outputs}; a text "
            f"encoder engine takes {list(TEXT_INPUTS)} and returns {TEXT_OUTPUT}."
        )
    return text_engine.run({TEXT_INPUTS[0]: ids, TEXT_INPUTS[1]: mask})[TEXT_OUTPUT].astype(np.float32)


# -- the command ------------------------------------------------------------------------------------------


def _percentile(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a), q)) if a else float("nan")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Torch-free DDIM sampling on TensorRT engines (Jetson demo).")
    p.add_argument(
        "--engine", required=True, help="UNet TensorRT plan built on this device, or the engine manifest of a "
        "timestep-aware student (NAME.manifest.json from pqcad-build)",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, help="images per run (default: the number of --prompt, else 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spec", help="model JSON sidecar (scheduler config); default: linear betas, 1000 steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed sampling runs first")
    p.add_argument("--out", default="jetson_grid.png")
    p.add_argument("--prompt", action="append", help="text prompt; repeat it for one per batch row")
    p.add_argument("--tokenizer", help="folder with the text encoder's tokenizer.json")
    p.add_argument("--text-engine", help="text-encoder TensorRT plan (input_ids, attention_mask -> states)")
    p.add_argument("--max-length", type=int, default=16, help="tokens per prompt after padding/truncation")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale S (needs --prompt)")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The prompt of each batch row ([] without --prompt); argparse errors name the flags to fix."""
    prompts = args.prompt or []
    if prompts and not (args.text_engine and args.tokenizer):
        p.error("--prompt needs --text-engine PLAN and --tokenizer DIR to encode it")
    if args.guidance_scale is not None and not prompts:
        p.error("--guidance-scale needs --prompt (guidance moves from the empty prompt towards the prompt)")
    for flag, value in (("--max-length", args.max_length), ("--batch", args.batch), ("--steps", args.steps)):
        if value is not None and value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    args.batch = args.batch or len(prompts) or 4
    if len(prompts) not in (0, 1, args.batch):
        p.error(f"give one --prompt, or one per batch row (--batch {args.batch}); got {len(prompts)}")
    return prompts * args.batch if len(prompts) == 1 else prompts


def encode_prompts(
    args: argparse.Namespace, rows: list[str], cfg: bool
) -> tuple[np.ndarray, dict[str, float]]:
    """The UNet's encoder states for every row ([empty prompt rows; prompt rows] under guidance), timed."""
    t0 = time.perf_counter()
    texts = [EMPTY_PROMPT] * len(rows) + rows if cfg else rows
    ids, mask, cut = tokenize(load_tokenizer(args.tokenizer, args.max_length), texts)
    tokenize_ms = (time.perf_counter() - t0) * 1e3
    for text, n in sorted(set(zip(texts, cut, strict=True))):
        if n:
            print(f"warning: prompt {text!r} was truncated to --max-length {args.max_length}: {n} tokens cut")
    engine = PycudaEngine(args.text_engine, len(texts), {n: ids.shape for n in TEXT_INPUTS})
    for _ in range(args.warmup):
        encode(engine, ids, mask)
    t0 = time.perf_counter()
    states = encode(engine, ids, mask)
    return states, {"tokenize_ms": tokenize_ms, "encoder_ms": (time.perf_counter() - t0) * 1e3}


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    rows = check_args(p, args)
    try:
        return run(args, rows)
    except DemoError as e:
        print(f"jetson_demo: error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, rows: list[str]) -> int:
    schedule = {}
    if args.spec:
        meta = json.loads(Path(args.spec).read_text())
        schedule = (meta.get("model") or meta).get("scheduler") or {}
    cfg = args.guidance_scale is not None
    cond, text_ms = encode_prompts(args, rows, cfg) if rows else (None, None)
    unet_batch = 2 * args.batch if cfg else args.batch
    unets, starts = open_unets(args.engine, unet_batch, {COND: cond.shape} if cond is not None else None)
    eng = unets[0]
    if cond is None and COND in eng.inputs:
        print(f"note: {args.engine} takes {COND} but no --prompt was given: feeding zeros")
        cond = np.zeros(eng.input_shapes[COND], dtype=np.float32)
    if rows and COND not in eng.inputs:
        raise DemoError(f"{args.engine} has no {COND} input (an unconditional UNet); drop --prompt.")
    denoise = unet_denoiser(unets, starts, cond)
    if cfg:
        denoise = guided(denoise, args.guidance_scale)
    shape = (args.batch, *eng.input_shapes[SAMPLE][1:])
    noise = np.random.default_rng(args.seed).standard_normal(shape, dtype=np.float32)
    for _ in range(args.warmup):
        ddim_sample(denoise, noise.copy(), args.steps, schedule)
    step_ms: list[float] = []

    def timed(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        eps = denoise(x, t)
        step_ms.append((time.perf_counter() - t0) * 1e3)
        return eps

    t0 = time.perf_counter()
    images = ddim_sample(timed, noise.copy(), args.steps, schedule)
    total = (time.perf_counter() - t0) * 1e3
    if text_ms is not None:
        print(
            f"text encoder {args.text_engine}: {len(cond)} texts x {cond.shape[1]} tokens, "
            f"{text_ms['encoder_ms']:.2f} ms (tokenizer {text_ms['tokenize_ms']:.2f} ms), once per run"
        )
    rows_note = f" (x2 rows for guidance scale {args.guidance_scale:g})" if cfg else ""
    intervals = f", {len(unets)} interval engines" if starts else ""
    print(
        f"engine {args.engine}{intervals}: batch {args.batch}{rows_note}, {args.steps} DDIM steps, sample {shape}"
    )
    print(
        f"sampler per step (UNet + copies): median {np.median(step_ms):.2f} ms, "
        f"p90 {_percentile(step_ms, 90):.2f} ms"
    )
    print(
        f"sampler end to end: {total:.1f} ms ({total / args.batch:.1f} ms per image); "
        f"host DDIM math {100 * (total - sum(step_ms)) / total:.1f}% of it"
    )
    if text_ms is not None:
        prompt_to_image = total + text_ms["tokenize_ms"] + text_ms["encoder_ms"]
        print(f"prompt to image: {prompt_to_image:.1f} ms (tokenizer + text encoder + sampler)")
    print(f"wrote {save_grid_png(images, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
