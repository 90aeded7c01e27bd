"""``pqcad-eval``: FD-fmnist and classifier inception score of a checkpoint (sampled here) or an image folder,
and fidelity (PSNR, rel-L2) to a reference checkpoint sampled from the same noise.

    pqcad-eval --checkpoint student.pt --reference pqcad_deploy/assets/fmnist_ddpm.safetensors --num-samples 10000
    pqcad-eval --checkpoint t2i_student.pt --reference fmnist-t2i --prompt-set held_out_pairs

Text-to-image models are sampled on an evaluation prompt set (seen prompts, held-out (colour, class) pairs or
held-out templates) with classifier-free guidance and scored on prompt fidelity (class and colour accuracy),
FD-fmnist of the grey images, and with --reference FD and PSNR to the reference's images for the same prompts.

FD on a few hundred samples is noisy (it moves by several percent between noise seeds even at 10k): the default
is 10,000 on a GPU and 500 on a CPU (about 2 minutes per 500 images at 50 steps on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..captions import EVAL_SETS, EvalPrompts, evaluation_prompts
from ..conditioning import PromptEncoder, generate_for_prompts
from ..denoiser import TorchDenoiser
from ..errors import UsageError
from ..io import atomic_json_save
from ..loading import default_steps, open_model
from ..metrics import fidelity, sample_quality
from ..prompt_metrics import prompt_quality
from ..sampling import make_scheduler, sample_many
from .common import (
    add_device,
    add_json,
    add_text_args,
    add_verbose,
    check_output_path,
    int_range,
    make_parser,
    nonneg_int,
    positive_int,
    resolve_device,
    run_cli,
    setup_logging,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def load_image_folder(folder: str | Path) -> torch.Tensor:
    """Grayscale PNG/JPEG files (28x28 or 32x32) -> [N, 1, 32, 32] in [-1, 1]."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--images {folder} is not a folder.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"No .png/.jpg images in {folder}.")
    out = []
    for f in files:
        try:
            a = np.asarray(Image.open(f).convert("L"), dtype=np.float32)
        except (OSError, UnidentifiedImageError) as e:
            raise UsageError(f"Cannot read image {f}: {e}") from e
        if a.shape == (28, 28):
            a = np.pad(a, 2)
        if a.shape != (32, 32):
            raise UsageError(
                f"{f} is {a.shape[1]}x{a.shape[0]}; expected 28x28 or 32x32 Fashion-MNIST-like images."
            )
        out.append(torch.from_numpy(a / 127.5 - 1.0))
    return torch.stack(out).unsqueeze(1)


def generate(
    source: str, n: int, steps: int | None, args: argparse.Namespace, device: torch.device
) -> tuple[torch.Tensor, int, EvalPrompts | None]:
    """``n`` images of ``source`` with the shared sampler (batch i uses noise seed ``seed + i``); text-to-image
    models get one evaluation prompt per image, which is returned with its labels."""
    bundle = open_model(source)
    steps = default_steps(bundle.meta, steps)
    den = TorchDenoiser(bundle.model.to(device))
    if bundle.spec.text_conditioned:
        ev = evaluation_prompts(args.prompt_set, n, seed=0)
        states = PromptEncoder.open(bundle.spec, args.embeddings, args.text_encoder, device)
        images = generate_for_prompts(
            den,
            bundle.spec,
            ev.prompts,
            states,
            steps,
            args.guidance_scale,
            args.seed,
            device,
            args.batch_size,
        )
        return images, steps, ev
    sched = lambda: make_scheduler("ddim", **bundle.spec.scheduler)  # noqa: E731
    images = sample_many(den, sched, n, bundle.spec.sample_shape, steps, args.batch_size, args.seed, device)
    return images, steps, None


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("pqcad-eval", __doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="FP .safetensors, student .pt or zoo name to sample from")
    src.add_argument("--images", help="folder of generated 28x28 or 32x32 grayscale images")
    p.add_argument("--reference", help="checkpoint sampled from the same noise for fidelity (PSNR, rel-L2)")
    p.add_argument(
        "--num-samples",
        type=int_range(2, 1_000_000),
        default=None,
        help="images to generate (default: 10000 on a GPU, 500 on a CPU)",
    )
    p.add_argument(
        "--steps", type=positive_int, default=None, help="DDIM steps (default: the checkpoint's, else 50)"
    )
    p.add_argument("--reference-steps", type=positive_int, default=None, help="DDIM steps of --reference")
    p.add_argument("--batch-size", type=positive_int, default=500, help="images sampled at once")
    p.add_argument("--seed", type=nonneg_int, default=0, help="noise seed of the first batch")
    p.add_argument("--prompt-set", choices=sorted(EVAL_SETS), default="seen", help="text-to-image prompts")
    add_text_args(p)
    add_device(p)
    add_json(p, "the metrics")
    add_verbose(p)
    return p


def run(args: argparse.Namespace) -> int:
    if args.json:
        check_output_path(args.json, inputs=[args.checkpoint, args.reference], what="--json")
    if args.reference and args.images:
        raise UsageError("--reference needs --checkpoint (both are sampled from the same noise).")
    device = resolve_device(args.device)
    n = args.num_samples or (10000 if device.type == "cuda" else 500)
    ev = None
    if args.images:
        images, result = load_image_folder(args.images), {"source": args.images}
    else:
        images, steps, ev = generate(args.checkpoint, n, args.steps, args, device)
        result = {"source": args.checkpoint, "steps": steps, "seed": args.seed}
    result["n"] = len(images)
    ref = None
    if args.reference:
        ref, ref_steps, ref_ev = generate(args.reference, n, args.reference_steps, args, device)
        if (ev is None) != (ref_ev is None):
            raise UsageError(
                "--reference must be of the same kind as --checkpoint (both text-to-image or neither)."
            )
        result["reference"] = {"source": args.reference, "steps": ref_steps}
        result.update({f"fidelity_{k}": v for k, v in fidelity(images, ref).items()})
    if ev is not None:
        result.update({"prompt_set": ev.set_name, "guidance_scale": args.guidance_scale})
        result.update(prompt_quality(images, ev.colours, ev.classes, ref, device))
    else:
        result.update(sample_quality(images, device))
    for k, v in result.items():
        print(f"{k:>18}: {v:.4f}" if isinstance(v, float) else f"{k:>18}: {v}")
    if args.json:
        atomic_json_save(result, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_cli("pqcad-eval", run, args)


if __name__ == "__main__":
    sys.exit(main())
