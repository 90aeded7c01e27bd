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
from ..loading import ModelBundle, default_steps, open_model
from ..metrics import fidelity, sample_quality
from ..prompt_metrics import prompt_quality
from ..sampling import check_steps, make_scheduler, sample_many
from .common import (
    add_device,
    add_json,
    add_text_args,
    add_verbose,
    batch_int,
    check_output_path,
    int_range,
    make_parser,
    resolve_device,
    run_cli,
    seed_int,
    setup_logging,
    steps_int,
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
    bundle: ModelBundle, n: int, steps: int, args: argparse.Namespace, device: torch.device
) -> tuple[torch.Tensor, int, EvalPrompts | None]:
    """``n`` images of an opened model with the shared sampler (batch i uses noise seed ``seed + i``); text-to-image
    models get one evaluation prompt per image, which is returned with its labels."""
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
        "--steps", type=steps_int, default=None, help="DDIM steps (default: the checkpoint's, else 50)"
    )
    p.add_argument("--reference-steps", type=steps_int, default=None, help="DDIM steps of --reference")
    p.add_argument("--batch-size", type=batch_int, default=500, help="images sampled at once")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed of the first batch")
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
    if args.reference_steps and not args.reference:
        raise UsageError("--reference-steps applies to --reference only; drop it or give --reference.")
    if args.images and args.steps:
        raise UsageError(
            "--steps applies to --checkpoint (images are read from --images as they are); drop it."
        )
    device = resolve_device(args.device)
    n = args.num_samples or (10000 if device.type == "cuda" else 500)
    # Both models are opened and their step counts checked before any sampling.
    model = open_model(args.checkpoint) if args.checkpoint else None
    reference = open_model(args.reference) if args.reference else None
    if model is not None:
        steps = check_steps(default_steps(model.meta, args.steps), model.spec.scheduler)
    if reference is not None:
        ref_steps = check_steps(
            default_steps(reference.meta, args.reference_steps), reference.spec.scheduler, "--reference-steps"
        )
        if model.spec.text_conditioned != reference.spec.text_conditioned:
            raise UsageError(
                "--reference must be of the same kind as --checkpoint (both text-to-image or neither)."
            )
    ev = None
    if args.images:
        images, result = load_image_folder(args.images), {"source": args.images}
    else:
        images, steps, ev = generate(model, n, steps, args, device)
        result = {"source": args.checkpoint, "steps": steps, "seed": args.seed}
    result["n"] = len(images)
    ref = None
    if reference is not None:
        ref, ref_steps, _ = generate(reference, n, ref_steps, args, device)
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
