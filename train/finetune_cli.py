"""What ``pqcad-train personalize`` and ``pqcad-train style`` share: the tuning options, the checks before any work
(model kind against method, output paths, the embedding cache against the run's prompts) and how the result is
written (a scale patch, a student, or FP weights)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pqcad_deploy.cli.common import (
    add_device,
    add_text_args,
    batch_int,
    check_output_path,
    int_range,
    positive_float,
    seed_int,
)
from pqcad_deploy.conditioning import PromptEncoder, generate_for_prompts
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.errors import UsageError
from pqcad_deploy.images import save_grid
from pqcad_deploy.patch import student_patch
from pqcad_deploy.student import save_student
from pqcad_deploy.zoo import save_weights

from .finetune import METHODS, PATCH_METHODS, SAMPLE_STEPS, SCALE_METHODS

log = logging.getLogger(__name__)


def add_tune_args(
    p: argparse.ArgumentParser,
    steps: int = 400,
    method: str = "peqa",
    batch_size: int = 4,
    lr_help: str = "default: 1e-3 for scales (in log space: a relative step), 1e-5 for fp",
) -> None:
    p.add_argument("--method", choices=METHODS, default=method)
    p.add_argument("--steps", type=int_range(1), default=steps)
    p.add_argument("--lr", type=positive_float, default=None, help=lr_help)
    p.add_argument(
        "--batch-size", type=batch_int, default=batch_size, help="images per step from each training set"
    )
    p.add_argument(
        "--timesteps", default=None, metavar="LO:HI", help="train on timesteps in [LO, HI) (s1: required)"
    )
    p.add_argument(
        "--intervals",
        type=int_range(2, 64),
        default=None,
        metavar="K",
        help="s2: scale sets, one per timestep interval (default 2, or the student's own intervals)",
    )
    p.add_argument(
        "--save-student", type=Path, default=None, help="also write the tuned student (peqa, s1, s2)"
    )
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_text_args(p)
    add_device(p)


def parse_timesteps(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 2 or not all(v.strip().isdigit() for v in parts):
        raise UsageError(f"--timesteps {text!r}: write LO:HI, e.g. 0:500.")
    return int(parts[0]), int(parts[1])


def check_run(args: argparse.Namespace, bundle: Any, what: str) -> Path:
    """Refuse a method the model cannot take and unusable outputs, before any work; returns ``--out``. ``what``
    names what the run binds a token to (for the message about unconditional models)."""
    if not bundle.spec.text_conditioned:
        raise UsageError(f"{args.model} is not text-conditioned; {what} binds a prompt token.")
    if args.method in SCALE_METHODS and not bundle.quantized:
        raise UsageError(f"--method {args.method} tunes the scales of a quantized student; {args.model} is FP. "
                         "Quantize it first (pqcad-train ptq), or use --method fp for the FP model.")  # fmt: skip
    if args.method == "fp" and bundle.quantized:
        raise UsageError(
            "--method fp fine-tunes an FP model; give the FP teacher, or --method peqa for a student."
        )
    if args.out.suffix != ".safetensors":
        kind = "a scale patch" if args.method in PATCH_METHODS else "the tuned model"
        raise UsageError(f"--out {args.out}: {kind} is written as .safetensors (with a .json sidecar).")
    out = check_output_path(args.out, [args.model])
    if args.save_student:
        if args.method not in PATCH_METHODS:
            raise UsageError(f"--save-student: --method {args.method} writes the model itself to --out.")
        check_output_path(args.save_student, [args.model], "--save-student", outputs=[out])
    return out


def showcase(
    model: Any, spec: Any, prompts: PromptEncoder, cfg: Any, device: Any, path: Path, per_prompt: int = 4
) -> Path:
    """A grid of ``cfg.showcase_prompts()``: one row per prompt, ``per_prompt`` noise seeds each (the same noise for
    every model)."""
    texts = [p for p in cfg.showcase_prompts() for _ in range(per_prompt)]
    imgs = generate_for_prompts(TorchDenoiser(model.eval()), spec, texts, prompts, SAMPLE_STEPS, cfg.guidance_scale,
                                seed=1000, device=device, progress=False)  # fmt: skip
    return Path(save_grid(imgs, path, nrow=per_prompt))


def save_result(
    bundle: Any, method: str, record: dict, out: Path, save_student_to: Path | None, key: str
) -> None:
    """The tuned model as ``method`` ships it: a scale patch (peqa, s1, s2; and the student on request), a student
    with new codes (mcsu), or FP weights (fp). ``key`` names the history entry ("personalize", "style")."""
    spec = bundle.spec
    meta = {**bundle.meta, "history": [*bundle.meta.get("history", []), {key: record}]}
    if method in PATCH_METHODS:
        patch = student_patch(bundle.model, {"method": method, "training": record})  # checks the scales
        if save_student_to:
            save_student(save_student_to, bundle.model, spec, meta=meta)
        patch.save(out)
        log.info("wrote patch %s: %d scale values (%d layers)", out, patch.num_parameters, len(patch.scales))
    elif method in SCALE_METHODS:
        save_student(out, bundle.model, spec, meta=meta)
        log.info("wrote student %s; folding the input-channel scales changed %.2f %% of the integer codes", out,
                 100 * record["codes_changed"])  # fmt: skip
    else:
        save_weights(bundle.model, spec, out, extra={key: record})
