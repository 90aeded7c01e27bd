"""The text-to-image half of ``pqcad-demo``: prompt -> tokenizer -> text encoder (ONNX on ONNX Runtime) -> UNet
engine with classifier-free guidance -> image, on the shipped text-conditioned teacher.

The teacher and a W8A8 student (PTQ in the ONNX Runtime placement, calibrated here on guided trajectories of
training prompts encoded by the real encoder) are exported with explicit Q/DQ, built as ORT engines, and sampled from
the same prompts and noise: one table with the encoder time apart from the sampler time, and a PNG grid.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .. import metrics
from ..calibset import collect_calibset
from ..conditioning import PromptEncoder
from ..denoiser import TorchDenoiser
from ..export.text_encoder import export_text_encoder
from ..images import save_grid
from ..io import atomic_json_save
from ..loading import ModelBundle, open_model
from ..quant import QuantConfig, get_quant_config
from ..runtime.bench import BenchConfig, format_table, parse_engine, run_bench
from ..runtime.text_engine import prompt_conditioning
from ..train.ptq import ptq_student
from .demo_steps import build_ort, export_checked

DEFAULT_PROMPTS = ("a red dress", "a photo of a blue sneaker", "a green bag on black", "a yellow ankle boot")
STEPS = 25  # DDIM steps with guidance: two UNet rows per image per step on a 2-core CPU


def run_t2i(args: Any, out: Path, t0: float) -> dict[str, Any]:
    """The prompt-to-image pipeline; returns the bench result (also written as ``t2i.json``)."""
    quick = args.quick
    teacher = open_model("fmnist-t2i", random_weights=False)
    steps, batch, repeats = (4, 2, 1) if quick else (STEPS, args.batch_size, args.repeats)
    prompts = list(args.prompt or DEFAULT_PROMPTS)
    print(f"[t2i 1/4] text encoder -> ONNX (parity-checked), prompts {prompts}")
    text_onnx = out / "text_encoder.onnx"
    export_text_encoder(args.text_encoder, text_onnx, parity_samples=2 if quick else 8)
    encoder = PromptEncoder.open(teacher.spec, text_encoder=args.text_encoder)
    calib = collect_calibset(
        TorchDenoiser(teacher.model),
        teacher.spec,
        n_trajectories=4 if quick else 16,
        steps=6 if quick else STEPS,
        n_points=2 if quick else 8,
        seed=4321,
        batch_size=16,
        cond_fn=encoder.calibration_cond_fn(4321),
        uncond=encoder.uncond(),
        guidance_scale=args.guidance_scale,
        progress=False,
    )
    qcfg = QuantConfig(target="onnxruntime", calib_method="percentile")
    student_model, _ = ptq_student(teacher.model, qcfg, calib)
    student = ModelBundle(
        student_model, teacher.spec, get_quant_config(student_model), {}, "PTQ W8A8, ORT placement"
    )
    print(
        f"[t2i 2/4] calibration on {len(calib)} guided training-prompt points + PTQ: {time.perf_counter() - t0:.0f} s"
    )
    onnx = {"t2i_fp32": out / "t2i_fp32.onnx", "t2i_int8_ort": out / "t2i_int8_ort.onnx"}
    sources = {"t2i_fp32": teacher, "t2i_int8_ort": student}
    reports = {k: export_checked(sources[k], onnx[k], 2 if quick else 4) for k in onnx}
    engines = {k: build_ort(path, args.threads) for k, path in onnx.items()}
    print(f"[t2i 3/4] exports checked and ORT engines built: {time.perf_counter() - t0:.0f} s")
    conditioning = prompt_conditioning(
        teacher.spec,
        prompts,
        batch,
        text_engine=text_onnx,
        text_encoder=args.text_encoder,
        threads=args.threads,
    )
    specs = [
        parse_engine(f"t2i-torch-fp32=torch:fp32@{steps}"),
        parse_engine(f"t2i-ort-fp32=ort:{engines['t2i_fp32']}@{steps}"),
        parse_engine(f"t2i-ort-int8=ort:{engines['t2i_int8_ort']}@{steps}"),
    ]
    print(
        f"[t2i 4/4] prompt to image on every engine: batch {batch}, {steps} DDIM steps, guidance {args.guidance_scale}"
    )
    cfg = BenchConfig(steps=steps, batch=batch, repeats=repeats, warmup=1, guidance_scale=args.guidance_scale)
    result = run_bench(
        specs,
        teacher.model,
        teacher.spec,
        cfg,
        threads=args.threads,
        baselines=["t2i-ort-fp32"],
        metrics=metrics,
        conditioning=conditioning,
    )
    images = result.pop("_images")
    result["exports"] = {
        k: {"counts": r.get("counts"), "parity": r.get("parity")} for k, r in reports.items()
    }
    save_grid(
        torch.cat([images[s.label] for s in specs if s.label in images]), out / "t2i_grid.png", nrow=batch
    )
    atomic_json_save(result, out / "t2i.json")
    print()
    print(format_table(result))
    print(
        f"rows of {out / 't2i_grid.png'}: "
        + ", ".join(s.label for s in specs)
        + f"; prompts: {result['prompts']}"
    )
    return result
