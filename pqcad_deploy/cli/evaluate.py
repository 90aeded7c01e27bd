"""``pqcad-eval``: FD-fmnist and classifier inception score from a checkpoint (sampled here) or an image folder,
and fidelity to a reference checkpoint sampled from the same noise."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..denoiser import TorchDenoiser
from ..io import CheckpointError
from ..loading import default_steps, load_checkpoint
from ..metrics import fidelity, sample_quality
from ..sampling import make_scheduler, sample_many


def load_image_folder(folder: str | Path) -> torch.Tensor:
    """Grayscale PNG/JPEG files (28x28 or 32x32) -> [N, 1, 32, 32] in [-1, 1]."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not files:
        raise ValueError(f"No .png/.jpg images in {folder}.")
    out = []
    for f in files:
        a = np.asarray(Image.open(f).convert("L"), dtype=np.float32)
        if a.shape == (28, 28):
            a = np.pad(a, 2)
        if a.shape != (32, 32):
            raise ValueError(
                f"{f} is {a.shape[1]}x{a.shape[0]}; expected 28x28 or 32x32 Fashion-MNIST-like images."
            )
        out.append(torch.from_numpy(a / 127.5 - 1.0))
    return torch.stack(out).unsqueeze(1)


def _generate(
    path: str, n: int, steps: int | None, seed: int, device: str, batch: int
) -> tuple[torch.Tensor, int]:
    model, spec, meta = load_checkpoint(path)
    steps = default_steps(meta, steps)
    sched = lambda: make_scheduler("ddim", **spec.scheduler)  # noqa: E731
    return sample_many(
        TorchDenoiser(model.to(device)), sched, n, spec.sample_shape, steps, batch, seed, device
    ), steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pqcad-eval", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="FP .safetensors or student.pt to sample from")
    src.add_argument("--images", help="folder of generated images")
    p.add_argument(
        "--reference", help="checkpoint to compare against from the same noise (fidelity: PSNR, rel-L2)"
    )
    p.add_argument("--n", type=int, default=10000, help="samples to generate")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the checkpoint's, else 50)")
    p.add_argument("--reference-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the metrics here too")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.images:
            images, result = load_image_folder(args.images), {"source": args.images}
        else:
            images, steps = _generate(
                args.checkpoint, args.n, args.steps, args.seed, args.device, args.batch_size
            )
            result = {"source": args.checkpoint, "steps": steps}
        result["n"] = len(images)
        result.update(sample_quality(images, args.device))
        if args.reference:
            if args.images:
                raise ValueError("--reference needs --checkpoint (both are sampled from the same noise).")
            ref, _ = _generate(
                args.reference, args.n, args.reference_steps, args.seed, args.device, args.batch_size
            )
            result.update({f"fidelity_{k}": v for k, v in fidelity(images, ref).items()})
    except (CheckpointError, ValueError) as e:
        print(f"pqcad-eval: {e}", file=sys.stderr)
        return 2
    for k, v in result.items():
        print(f"{k:>18}: {v:.4f}" if isinstance(v, float) else f"{k:>18}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
