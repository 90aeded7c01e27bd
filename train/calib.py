"""``pqcad-train calib``: sample the FP calibration set once and save it for PTQ and PQCAD to reuse.

:func:`load_or_collect_calib` is the one way every stage (calib, ptq, pqcad, the benchmarks) gets a calibration
set: load a saved one (refused when it was collected for another model), or collect it from the FP teacher with
the deployment sampler and save it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pqcad_deploy.calibset import CalibSet, collect_calibset, random_conditioning
from pqcad_deploy.cli.common import (
    add_calib_args,
    add_device,
    add_subcommand,
    add_text_args,
    calib_collect_kwargs,
    check_output_path,
    resolve_device,
)
from pqcad_deploy.conditioning import PromptEncoder, check_cache
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.errors import UsageError
from pqcad_deploy.io import CheckpointError
from pqcad_deploy.loading import open_model
from pqcad_deploy.sampling import check_steps
from pqcad_deploy.text import read_prompt_file
from pqcad_deploy.zoo import TEACHER_PATH, ModelSpec

log = logging.getLogger(__name__)


def load_or_collect_calib(
    path: str | Path | None,
    teacher: nn.Module,
    spec: ModelSpec,
    device: torch.device | str,
    collect: dict[str, int],
    progress: bool = True,
    prompts: PromptEncoder | None = None,
    guidance_scale: float = 1.0,
) -> CalibSet:
    """Load the calibration set at ``path``; without one, collect it with the FP teacher (and save it there).

    Text-to-image models calibrate on real prompt states (``prompts``, training captions of seen pairs) along the
    guided trajectories the deployed sampler follows; other conditional models on random states."""
    if path is not None and Path(path).exists():
        cs = CalibSet.load(path)
        made_for = cs.meta.get("model")
        if (made_for and made_for != spec.name) or tuple(cs.x_t.shape[1:]) != tuple(spec.sample_shape):
            raise CheckpointError(
                f"Calibration set {path} was collected for {made_for} {tuple(cs.x_t.shape[1:])}, not for the "
                f"teacher {spec.name} {tuple(spec.sample_shape)}; collect one for this teacher (pqcad-train calib)."
            )
        n_train = spec.scheduler.get("num_train_timesteps", 1000)
        if int(cs.t.max()) >= n_train:
            raise CheckpointError(
                f"Calibration set {path} holds timestep {int(cs.t.max())}, beyond the teacher's {n_train} training "
                "timesteps; collect one for this teacher (pqcad-train calib)."
            )
        return cs
    if path is not None:  # collected now and saved there: check the location before the work
        check_output_path(path, what="--calib")
        if Path(path).suffix != ".safetensors":
            raise UsageError(f"--calib {path}: a calibration set is saved as .safetensors (+ .json sidecar).")
    check_steps(collect["steps"], spec.scheduler, "--calib-steps")
    cond_fn, uncond = None, None
    if spec.text_conditioned:
        if prompts is None:
            raise UsageError(f"{spec.name} is text-conditioned: calibration needs prompts (--embeddings).")
        cond_fn, uncond = prompts.calibration_cond_fn(collect["seed"] + 7), prompts.uncond()
    elif spec.cond_shape:
        log.warning(
            "%s is conditional without a text encoder: calibrating on random states (N(0, 1))", spec.name
        )
        cond_fn = random_conditioning(spec.cond_shape, collect["seed"] + 7)
    log.info("collecting a calibration set (%s)", collect)
    cs = collect_calibset(
        TorchDenoiser(teacher.to(device)),
        spec,
        device=device,
        cond_fn=cond_fn,
        progress=progress,
        uncond=uncond,
        guidance_scale=guidance_scale if uncond is not None else 1.0,
        **collect,
    )
    if path is not None:
        cs.save(path)
        log.info("saved calibration set to %s (%d points)", path, len(cs))
    return cs


def open_prompts(spec: ModelSpec, args: argparse.Namespace, device: torch.device) -> PromptEncoder | None:
    """The prompt states a text-to-image teacher calibrates on (None for other models)."""
    if not spec.text_conditioned:
        if getattr(args, "calib_prompts", None):
            raise UsageError(f"--calib-prompts: {spec.name} is not a text-to-image model.")
        return None
    prompts = PromptEncoder.open(spec, args.embeddings, args.text_encoder, device)
    if getattr(args, "calib_prompts", None):
        prompts.calibration_prompts = read_prompt_file(args.calib_prompts, "--calib-prompts")
        check_cache(prompts, prompts.calibration_prompts, args.embeddings, "the --calib-prompts")
        log.info("calibrating on %d prompts from %s", len(prompts.calibration_prompts), args.calib_prompts)
    return prompts


def run(args: argparse.Namespace) -> Path:
    if args.out.exists() and not args.overwrite:
        raise CheckpointError(f"{args.out} exists; pass --overwrite to replace it or choose another --out.")
    if args.out.suffix != ".safetensors":
        raise UsageError(f"--out {args.out}: a calibration set is saved as .safetensors (+ .json sidecar).")
    check_output_path(args.out, inputs=[args.teacher, args.embeddings])
    bundle = open_model(args.teacher)
    dev = resolve_device(args.device)
    prompts = open_prompts(bundle.spec, args, dev)
    collect = calib_collect_kwargs(args)
    cs = load_or_collect_calib(
        None, bundle.model, bundle.spec, dev, collect, True, prompts, args.guidance_scale
    )
    cs.save(args.out)
    print(f"wrote {args.out}: {len(cs)} points ({cs.meta.get('n_trajectories')} trajectories)")
    return args.out


def register(sub: Any) -> None:
    p = add_subcommand(
        sub, "calib", "sample the FP calibration set (x_t, t, eps_FP, one/two-step FP targets)", __doc__
    )
    p.add_argument(
        "--teacher", default=str(TEACHER_PATH), help="FP teacher (.safetensors + .json) or zoo name"
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/calib.safetensors"), help="calibration set to write"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_calib_args(p, with_path=False)
    add_text_args(p)
    add_device(p)
    p.set_defaults(func=run)
