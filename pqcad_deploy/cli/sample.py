"""``pqcad-sample``: a PNG grid from a teacher or student checkpoint (torch backend, the shared sampler loop).

pqcad-sample --checkpoint student.pt --out grid.png --num-samples 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..conditioning import PromptEncoder, prompts_for
from ..denoiser import TorchDenoiser
from ..errors import UsageError
from ..images import save_grid
from ..io import atomic_json_save
from ..loading import default_steps, open_model
from ..sampling import SCHEDULERS, check_steps, make_scheduler, sample
from ..zoo import TEACHER_PATH
from .common import (
    add_device,
    add_json,
    add_text_args,
    add_verbose,
    check_output_path,
    int_range,
    make_parser,
    resolve_device,
    run_cli,
    seed_int,
    setup_logging,
    steps_int,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("pqcad-sample", __doc__)
    p.add_argument(
        "--checkpoint", default=str(TEACHER_PATH), help="FP .safetensors (+ .json), student .pt, or zoo name"
    )
    p.add_argument("--out", default="samples.png", help="PNG grid to write")
    p.add_argument("--num-samples", type=int_range(1, 4096), default=64, help="images in the grid")
    p.add_argument(
        "--steps", type=steps_int, default=None, help="sampler steps (default: the checkpoint's, else 50)"
    )
    p.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="ddim")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed")
    p.add_argument(
        "--prompt", action="append", default=None, help="text prompt (repeatable; text-to-image models)"
    )
    add_text_args(p)
    add_device(p)
    add_json(p, "the run's settings and timing")
    add_verbose(p)
    return p


def run(args: argparse.Namespace) -> int:
    check_output_path(args.out, inputs=[args.checkpoint])
    if Path(args.out).suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"--out {args.out}: the grid is an image; give a {'/'.join(IMAGE_SUFFIXES)} path.")
    if args.json:
        check_output_path(args.json, inputs=[args.checkpoint], what="--json", outputs=[args.out])
    device = resolve_device(args.device)
    bundle = open_model(args.checkpoint)
    steps = check_steps(default_steps(bundle.meta, args.steps), bundle.spec.scheduler)
    guidance = {}
    prompts = prompts_for(bundle.spec, args.prompt, args.num_samples)
    if prompts is not None:
        encoder = PromptEncoder.open(bundle.spec, args.embeddings, args.text_encoder, device)
        guidance = {
            "cond": encoder.states(prompts),
            "uncond": encoder.uncond(),
            "guidance_scale": args.guidance_scale,
        }
    t0 = time.perf_counter()
    res = sample(
        TorchDenoiser(bundle.model.to(device)),
        make_scheduler(args.scheduler, **bundle.spec.scheduler),
        (args.num_samples, *bundle.spec.sample_shape),
        steps=steps,
        seed=args.seed,
        device=device,
        progress=True,
        **guidance,
    )
    per_prompt = args.num_samples // len(args.prompt) if args.prompt else 0
    save_grid(
        res.images,
        args.out,
        nrow=per_prompt if per_prompt and args.num_samples % len(args.prompt) == 0 else None,
    )
    print(
        f"wrote {args.out}: {args.num_samples} images, {steps} {args.scheduler} steps, "
        f"{res.total_ms / 1e3:.2f} s end to end"
    )
    if args.json:
        atomic_json_save(
            {
                "source": bundle.source,
                "out": str(args.out),
                "num_samples": args.num_samples,
                "steps": steps,
                "scheduler": args.scheduler,
                "seed": args.seed,
                "device": str(device),
                "prompts": prompts,
                "guidance_scale": guidance.get("guidance_scale"),
                "sampler_ms": res.total_ms,
                "wall_s": round(time.perf_counter() - t0, 3),
            },
            args.json,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_cli("pqcad-sample", run, args)


if __name__ == "__main__":
    sys.exit(main())
