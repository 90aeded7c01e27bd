"""End-to-end sampler benchmark over several engines in one process.

Every engine runs the same sampler (``pqcad_deploy.sampling.sample``: same scheduler, steps, seed, batch,
hence the same initial noise), so the rows differ only in the denoiser. Per engine: warm-up loops, then
``repeats`` untimed loops (end-to-end) and one loop with per-step timing (CUDA events on GPU). Quality:
fidelity to the FP reference images from the same noise, and FD-fmnist over ``quality_samples`` images.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy.errors import UsageError
from pqcad_deploy.interval_manifest import is_manifest, read_manifest
from pqcad_deploy.sampling import make_scheduler, sample, sample_many
from pqcad_deploy.timing import environment_info, environment_line, summarize
from pqcad_deploy.zoo import ModelSpec

from .audit import audit_onnx_ops
from .backends.base import Runner, RunnerError

log = logging.getLogger(__name__)

KINDS = ("torch", "ort", "trt")


@dataclass(frozen=True)
class EngineSpec:
    """``[label=]kind:target[+graph]``: ``torch:fp16+graph``, ``ort:unet_int8.onnx``, ``trt:unet.plan``."""

    kind: str
    target: str
    label: str
    cuda_graph: bool = False
    steps: int | None = None  # per-engine step count (a step-halved student runs half the FP steps)


def parse_engine(text: str) -> EngineSpec:
    """``[label=]kind:target[+graph][@steps]``."""
    label, sep, rest = text.partition("=")
    if not sep:
        label, rest = "", text
    steps = None
    if "@" in rest:
        rest, _, steps_text = rest.rpartition("@")
        if not steps_text.isdigit() or int(steps_text) < 1:
            raise UsageError(
                f"--engine {text!r}: '@{steps_text}' must be a positive step count, e.g. ort:x.onnx@25."
            )
        steps = int(steps_text)
    kind, sep, target = rest.partition(":")
    kind = {"onnxruntime": "ort", "tensorrt": "trt"}.get(kind.lower(), kind.lower())
    if not sep or kind not in KINDS or not target:
        raise UsageError(
            f"--engine {text!r}: expected [label=]kind:target with kind in {KINDS}, e.g. torch:fp32, "
            "torch:fp16+graph, ort:unet_int8.onnx, ort:unet.ort.json, trt:unet.plan."
        )
    graph = target.endswith("+graph")
    target = target[: -len("+graph")] if graph else target
    if kind == "torch" and target.lower() not in ("fp32", "fp16", "bf16"):
        raise UsageError(f"--engine {text!r}: torch precision must be fp32, fp16 or bf16.")
    if kind == "ort" and graph:
        raise UsageError(f"--engine {text!r}: CUDA graphs are available for torch and trt engines only.")
    return EngineSpec(
        kind=kind,
        target=target,
        label=label or f"{kind}:{target}{'+graph' if graph else ''}{f'@{steps}' if steps else ''}",
        cuda_graph=graph,
        steps=steps,
    )


def is_fp_baseline(spec: EngineSpec) -> bool:
    """Auto baselines: torch FP32/FP16 eager and ORT models without any quantization."""
    if spec.kind == "torch":
        return spec.target.lower() in ("fp32", "fp16") and not spec.cuda_graph
    if spec.kind == "ort":
        path = Path(spec.target)
        if path.suffix == ".json":
            return False  # optimized engines: judge by their source model via --baseline if needed
        try:
            a = audit_onnx_ops(path)
        except Exception:  # unreadable here; the runner reports it properly
            return False
        return a["quantize_linear"] == 0 and a["dequantize_linear"] == 0 and not a["integer_ops"]
    return False


def make_runner(spec: EngineSpec, model: torch.nn.Module | None, device: str, threads: int | None) -> Runner:
    if spec.kind == "torch":
        if model is None:
            raise UsageError(f"{spec.label}: torch engines need --model or --checkpoint.")
        from .backends.torch_backend import TorchRunner

        return TorchRunner(model, spec.target, device=device, cuda_graph=spec.cuda_graph, name=spec.label)
    providers = "cuda" if device.startswith("cuda") else "cpu"
    if is_manifest(spec.target):  # a timestep-aware student: one engine per interval (ONNX, ORT or TensorRT)
        from .backends.interval_backend import IntervalRunner

        return IntervalRunner.from_manifest(
            spec.target, threads=threads, name=spec.label, providers=providers
        )
    if spec.kind == "ort":
        from .backends.ort_backend import OrtRunner

        if spec.target.endswith(".json"):
            return OrtRunner.from_engine(spec.target, name=spec.label)
        return OrtRunner(spec.target, providers=providers, intra_op_threads=threads, name=spec.label)
    from .backends.trt_backend import TrtRunner

    return TrtRunner(spec.target, cuda_graph=spec.cuda_graph, name=spec.label)


@dataclass
class BenchConfig:
    steps: int = 50
    batch: int = 1
    seed: int = 0
    repeats: int = 5
    warmup: int = 1
    quality_samples: int = 0
    quality_batch: int = 250
    scheduler: str = "ddim"
    guidance_scale: float = (
        1.0  # classifier-free guidance of text-to-image models (1: one UNet call per step)
    )


@dataclass
class EngineResult:
    label: str
    kind: str
    describe: dict[str, Any]
    steps: int
    e2e_ms: dict[str, float]
    step_ms: dict[str, float]
    e2e_ms_per_image: float
    sampler_overhead: float
    speedups: dict[str, float] = field(default_factory=dict)
    fidelity: dict[str, float] | None = None
    fd_fmnist: float | None = None
    error: str | None = None
    images: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("images")
        return d


def bench_engine(
    runner: Runner,
    spec: ModelSpec,
    cfg: BenchConfig,
    cond: torch.Tensor | None,
    steps: int | None = None,
    uncond: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Time one active runner with the shared sampler; returns timings and the per-step-timed images."""
    device = runner.device
    shape = (cfg.batch, *spec.sample_shape)
    sched = lambda: make_scheduler(cfg.scheduler, **spec.scheduler)  # noqa: E731
    den = runner.denoiser()
    c = cond.to(device) if cond is not None else None
    guidance = {"uncond": uncond, "guidance_scale": cfg.guidance_scale} if uncond is not None else {}
    run = lambda timed=False: sample(  # noqa: E731
        den, sched(), shape, steps=steps or cfg.steps, seed=cfg.seed, device=device, cond=c, time_steps=timed,
        **guidance,
    )  # fmt: skip
    for _ in range(cfg.warmup):
        run()
    e2e = [run().total_ms for _ in range(cfg.repeats)]
    timed = run(True)
    return {
        "e2e_ms": summarize(e2e),
        "step_ms": summarize(timed.step_ms),
        "sampler_overhead": (timed.total_ms - timed.unet_ms) / timed.total_ms if timed.total_ms else math.nan,
        "images": timed.images.float().cpu(),
    }


def _quality_images(
    runner: Runner, spec: ModelSpec, cfg: BenchConfig, steps: int | None = None
) -> torch.Tensor:
    factory = lambda: make_scheduler(cfg.scheduler, **spec.scheduler)  # noqa: E731
    return sample_many(
        runner.denoiser(),
        factory,
        cfg.quality_samples,
        spec.sample_shape,
        steps or cfg.steps,
        batch_size=cfg.quality_batch,
        seed=cfg.seed + 1000,
        device=runner.device,
        progress=False,
    )


def check_engines(engines: list[EngineSpec], spec: ModelSpec, baselines: list[str] | None = None) -> None:
    """What can be checked before any engine runs: every ``--baseline`` is an engine label, and ONNX Runtime
    targets exist and are readable (engine JSON validated, ONNX parsed without its weights) with the sampler's
    inputs. Raises with the engine's file named. (A TensorRT plan that fails stays a row error.)"""
    from pqcad_deploy.denoiser import COND, SAMPLE, TIMESTEP

    labels = [e.label for e in engines]
    for b in baselines or []:
        if b not in labels:
            raise UsageError(f"--baseline {b!r} is not one of the engine labels {labels}.")
    feed = {SAMPLE, TIMESTEP} | ({COND} if spec.cond_shape else set())
    for e in (e for e in engines if e.kind == "ort"):  # TensorRT plans can only be checked by TensorRT
        path = Path(e.target)
        what = "ORT engine" if path.suffix == ".json" else "ONNX model"
        if path.is_dir():
            raise RunnerError(f"--engine {e.label}: {what} {path} is a directory, not a file.")
        if not path.is_file():
            raise RunnerError(f"--engine {e.label}: {what} {path} does not exist.")
        if is_manifest(path):
            _, files, doc = read_manifest(path)  # present and unchanged; interval 0's inputs stand for all
            if doc.get("backend") == "tensorrt":
                raise RunnerError(
                    f"--engine {e.label}: {e.target} holds TensorRT engines; use trt:{e.target}."
                )
            path = files[0]
        if path.suffix == ".json":  # an ORT engine: its optimized model
            from .backends.ort_backend import read_engine_json

            path = path.parent / read_engine_json(path)["model"]
        inputs = _onnx_inputs(path, e.target)
        if set(inputs) != feed:
            raise RunnerError(
                f"--engine {e.label}: {path} takes inputs {sorted(inputs)}, but the sampler of {spec.name} feeds "
                f"{sorted(feed)}; export this model (pqcad-export) or pick the matching --checkpoint."
            )


def _onnx_inputs(path: Path, target: str) -> list[str]:
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise RunnerError(f"{target}: {path} is not a readable ONNX model ({type(e).__name__}: {e}).") from e
    inits = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits]


def run_bench(
    engines: list[EngineSpec],
    model: torch.nn.Module | None,
    spec: ModelSpec,
    cfg: BenchConfig,
    device: str = "cpu",
    threads: int | None = None,
    baselines: list[str] | None = None,
    metrics: Any = None,
    on_row: Callable[[EngineResult], None] | None = None,
    conditioning: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Benchmark every engine; returns ``{"environment", "config", "rows", "baselines"}``.

    ``metrics`` is the ``pqcad_deploy.metrics`` module (``fidelity``, ``fd_fmnist``) or None to skip quality.
    ``conditioning`` holds a text-to-image model's prompt states (``cond`` [B, L, D], ``uncond`` [1, L, D],
    ``prompts``) and optionally the text encoder's timing (``encoder``); other conditional models get random states.
    """
    check_engines(engines, spec, baselines)
    uncond = None
    if conditioning is not None:
        cond, uncond = conditioning["cond"], conditioning.get("uncond")
    elif spec.cond_shape:
        cond = torch.randn(cfg.batch, *spec.cond_shape, generator=torch.Generator().manual_seed(cfg.seed + 7))
    else:
        cond = None
    rows: list[EngineResult] = []
    for e in engines:
        log.info("benchmarking %s", e.label)
        try:
            runner = make_runner(e, model, device, threads)
            if hasattr(runner, "sampler_warnings"):  # a timestep-aware student's engines
                sched = make_scheduler(cfg.scheduler, **spec.scheduler)
                sched.set_timesteps(e.steps or cfg.steps)
                for w in runner.sampler_warnings(sched.timesteps.tolist()):
                    log.warning("%s", w)
            with runner:
                r = bench_engine(runner, spec, cfg, cond, e.steps, uncond)
                fd = None
                if (
                    metrics is not None
                    and cfg.quality_samples
                    and spec.name.startswith("fmnist")
                    and not spec.cond_shape
                ):
                    fd = float(metrics.fd_fmnist(_quality_images(runner, spec, cfg, e.steps)))
                describe = runner.describe()
            row = EngineResult(
                label=e.label,
                kind=e.kind,
                describe=describe,
                steps=e.steps or cfg.steps,
                e2e_ms=r["e2e_ms"],
                step_ms=r["step_ms"],
                e2e_ms_per_image=r["e2e_ms"]["median"] / cfg.batch,
                sampler_overhead=r["sampler_overhead"],
                fd_fmnist=fd,
                images=r["images"],
            )
        except Exception as ex:  # one broken engine must not hide the others; the row shows the error
            log.error("%s failed: %s", e.label, ex, exc_info=log.isEnabledFor(logging.DEBUG))
            nan = summarize([])
            row = EngineResult(
                label=e.label,
                kind=e.kind,
                describe={},
                steps=e.steps or cfg.steps,
                e2e_ms=nan,
                step_ms=nan,
                e2e_ms_per_image=math.nan,
                sampler_overhead=math.nan,
                error=f"{type(ex).__name__}: {ex}",
            )
        rows.append(row)
        if on_row is not None:
            on_row(row)
    base_labels = [e.label for e in engines if is_fp_baseline(e)] + list(baselines or [])
    base_labels = [b for i, b in enumerate(base_labels) if b not in base_labels[:i]]
    by_label = {r.label: r for r in rows}
    for b in base_labels:
        if b not in by_label:
            raise UsageError(f"--baseline {b!r} is not one of the engine labels {list(by_label)}.")
    ref = next((by_label[b] for b in base_labels if by_label[b].images is not None), None)
    for r in rows:
        for b in base_labels:
            bm = by_label[b].e2e_ms["median"]
            if r.error is None and not math.isnan(bm):
                r.speedups[b] = bm / r.e2e_ms["median"]
        if metrics is not None and ref is not None and r.images is not None:
            r.fidelity = {k: float(v) for k, v in metrics.fidelity(r.images, ref.images).items()}
    extra = {}
    if conditioning is not None:
        extra = {"prompts": conditioning.get("prompts"), "text_encoder": conditioning.get("encoder")}
    return {
        **extra,
        "environment": environment_info(),
        "config": {**asdict(cfg), "model": spec.name, "device": device, "threads": threads},
        "fidelity_reference": ref.label if ref else None,
        "baselines": base_labels,
        "rows": [r.to_dict() for r in rows],
        "_images": {r.label: r.images for r in rows if r.images is not None},
    }


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def format_table(result: dict[str, Any]) -> str:
    """One table: per-step median/p90, end-to-end per image, speed-up per baseline, quality columns."""
    cfg, rows, bases = result["config"], result["rows"], result["baselines"]
    head = [
        environment_line(result["environment"]),
        f"model {cfg['model']}, {cfg['scheduler']} {cfg['steps']} steps, batch {cfg['batch']}, seed {cfg['seed']}, "
        f"device {cfg['device']}, repeats {cfg['repeats']} (+{cfg['warmup']} warm-up)",
    ]
    width = max([len(r["label"]) for r in rows] + [6]) + 2
    cols = f"{'engine':<{width}}{'steps':>6}{'step med':>10}{'p90':>9}{'e2e ms':>10}{'ms/img':>9}{'ovh%':>6}"
    cols += "".join(f"{'x ' + b:>{max(10, len(b) + 4)}}" for b in bases)
    enc = result.get("text_encoder") or {}
    enc_ms = (enc.get("ms") or {}).get("median")
    if enc_ms is not None:
        cols += f"{'p2i ms':>10}"
    cols += f"{'PSNR':>8}{'relL2':>8}{'FD':>8}"
    lines = [*head, cols, "-" * len(cols)]
    for r in rows:
        if r["error"]:
            lines.append(f"{r['label']:<{width}}ERROR {r['error']}")
            continue
        fid = r["fidelity"] or {}
        line = (
            f"{r['label']:<{width}}{r.get('steps', cfg['steps']):>6}{r['step_ms']['median']:>10.3f}{r['step_ms']['p90']:>9.3f}"
            f"{r['e2e_ms']['median']:>10.1f}{r['e2e_ms_per_image']:>9.1f}{100 * r['sampler_overhead']:>6.1f}"
        )
        line += "".join(f"{_f(r['speedups'].get(b), '.2f'):>{max(10, len(b) + 4)}}" for b in bases)
        if enc_ms is not None:
            line += f"{enc_ms + r['e2e_ms']['median']:>10.1f}"
        line += f"{_f(fid.get('psnr_db', fid.get('psnr')), '.1f'):>8}{_f(fid.get('rel_l2'), '.4f'):>8}{_f(r['fd_fmnist'], '.2f'):>8}"
        lines.append(line)
    if enc_ms is not None:
        lines.append(
            f"text encoder {enc.get('name')}: {enc_ms:.1f} ms median per batch of {cfg['batch']} prompts (tokenizer + "
            f"encoder); p2i = prompt to image = encoder + sampler end to end; guidance {cfg.get('guidance_scale')}."
        )
    if result.get("fidelity_reference") and any(r["fidelity"] for r in rows):
        lines.append(f"PSNR / rel-L2: final images vs {result['fidelity_reference']} from the same noise.")
    return "\n".join(lines)
