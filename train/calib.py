"""``pqcad-train calib``: sample the FP calibration set once and save it for PTQ and PQCAD to reuse."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from pqcad_deploy.calibset import collect_calibset, random_conditioning
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.zoo import TEACHER_PATH, load_model

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> Path:
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, spec = load_model(args.teacher)
    cond_fn = None
    if spec.cond_shape:
        log.warning(
            "%s is conditional: calibrating on random encoder states (no text encoder here)", spec.name
        )
        cond_fn = random_conditioning(spec.cond_shape, args.seed + 7)
    cs = collect_calibset(
        TorchDenoiser(model.to(dev)),
        spec,
        n_trajectories=args.trajectories,
        steps=args.steps,
        n_points=args.points,
        seed=args.seed,
        device=dev,
        batch_size=args.batch_size,
        cond_fn=cond_fn,
    )
    out = cs.save(args.out)
    log.info("wrote %s (%d points)", out, len(cs))
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calib",
        help="sample the FP calibration set (x_t, t, eps_FP, one/two-step FP targets)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--teacher", default=str(TEACHER_PATH), help="FP teacher weights (.safetensors + .json sidecar)"
    )
    p.add_argument("--out", default="runs/calib.safetensors")
    p.add_argument("--trajectories", type=int, default=256, help="number of FP sampling trajectories")
    p.add_argument(
        "--steps", type=int, default=100, help="DDIM steps of each trajectory (the deployment sampler)"
    )
    p.add_argument("--points", type=int, default=20, help="evenly spaced steps kept per trajectory")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default=None)
    p.set_defaults(func=run)
