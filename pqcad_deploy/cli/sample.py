"""``pqcad-sample``: sample a PNG grid from a teacher or student checkpoint with the torch backend."""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from ..denoiser import TorchDenoiser
from ..images import save_grid
from ..io import CheckpointError
from ..loading import default_steps, load_checkpoint
from ..sampling import make_scheduler, sample
from ..zoo import TEACHER_PATH


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pqcad-sample", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--checkpoint", default=str(TEACHER_PATH), help="FP .safetensors (+ .json) or student.pt")
    p.add_argument("--out", default="samples.png", help="PNG grid to write")
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: the checkpoint's, else 50)"
    )
    p.add_argument("--scheduler", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model, spec, meta = load_checkpoint(args.checkpoint)
    except CheckpointError as e:
        print(f"pqcad-sample: {e}", file=sys.stderr)
        return 2
    steps = default_steps(meta, args.steps)
    model = model.to(args.device)
    res = sample(
        TorchDenoiser(model),
        make_scheduler(args.scheduler, **spec.scheduler),
        (args.n, *spec.sample_shape),
        steps=steps,
        seed=args.seed,
        device=args.device,
        progress=True,
    )
    save_grid(res.images, args.out)
    print(
        f"wrote {args.out}: {args.n} images, {steps} {args.scheduler} steps, {res.total_ms / 1e3:.2f} s end to end"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
