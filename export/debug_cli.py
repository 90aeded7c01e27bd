"""``pqcad-debug``: which quantized layers cause the error, ranked, with a suggested exclude list.

    pqcad-debug --onnx unet_int8.onnx --fp unet_fp32.onnx --json debug.json --png debug.png
    pqcad-debug --onnx ort_quantize_static.onnx --fp unet_fp32.onnx --timesteps 999,600,200,20
    pqcad-debug --checkpoint student.pt --json sweep.json          # torch sweep of a student, before export

ONNX mode runs the FP and the quantized graph on the same sampler-like inputs (ONNX Runtime, CPU), compares every
quantized layer's output with its FP twin (matched by weights, so files written by other tools work), and ranks the
layers by the share of the final error that leaving each one alone in float removes. Checkpoint mode does the same
in torch, switching one layer's quantizers off at a time. Exit status 0; bad input exits 2 with one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pqcad_deploy.cli.common import (
    add_json,
    add_verbose,
    batch_int,
    check_output_path,
    float_range,
    int_range,
    make_parser,
    run_cli,
    seed_int,
    setup_logging,
    threads_int,
)
from pqcad_deploy.errors import UsageError
from pqcad_deploy.io import atomic_json_save

from .layer_debug import DEBUG_TIMESTEPS, debug_onnx, format_table, save_bar_chart

MAX_TIMESTEP = 100_000


def timestep_list(text: str) -> list[int]:
    """``999,500,50`` -> [999, 500, 50] (argparse ``type=``)."""
    parse = int_range(0, MAX_TIMESTEP)
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated timesteps, got {text!r}")
    return [parse(s) for s in items]


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    p = make_parser("pqcad-debug", doc[0].strip("`"), "\n\n".join(doc[1:]))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--onnx", type=Path, help="quantized (QDQ) ONNX model: ours, quantize_static's, modelopt's"
    )
    src.add_argument("--checkpoint", help="quantized student (.pt / .safetensors) for the torch sweep")
    p.add_argument("--fp", type=Path, help="with --onnx (required): the FP ONNX export of the same network")
    p.add_argument(
        "--timesteps", type=timestep_list, default=list(DEBUG_TIMESTEPS), help="comma-separated timesteps"
    )
    p.add_argument("--batch-size", type=batch_int, default=2, help="samples per timestep")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed of the inputs")
    p.add_argument("--threads", type=threads_int, default=2, help="ONNX Runtime / torch CPU threads")
    p.add_argument("--max-exclude", type=int_range(0, 1000), default=5, help="longest suggested exclude list")
    p.add_argument(
        "--target-rel-l2",
        type=float_range(0.0),
        default=None,
        help="stop the exclude list once the final rel-L2 vs FP is at or below this",
    )
    p.add_argument(
        "--fused",
        action="store_true",
        help="--onnx: run ORT's fused INT8 CPU kernels instead of its reference kernels (slower to load)",
    )
    p.add_argument("--top", type=int_range(1, 100_000), default=20, help="rows in the table and the chart")
    add_json(p, "the full ranking")
    p.add_argument("--png", type=Path, metavar="PATH", default=None, help="also draw a bar chart here")
    add_verbose(p)
    return p


def run(args: argparse.Namespace) -> int:
    inputs = [args.onnx, args.fp, args.checkpoint]
    if args.onnx is not None and args.fp is None:
        raise UsageError(
            "--onnx needs --fp FP.onnx, the float export of the same network to compare against."
        )
    if args.checkpoint is not None and (args.fp is not None or args.fused):
        raise UsageError(
            "--fp and --fused apply to --onnx only (the torch sweep compares the student with itself unquantized)."
        )
    if args.json is not None:
        check_output_path(args.json, inputs=inputs, what="--json", outputs=[args.png])
    if args.png is not None:
        check_output_path(args.png, inputs=inputs, what="--png", outputs=[args.json])
    if args.onnx is not None:
        rep = debug_onnx(
            args.onnx, args.fp, args.timesteps, args.batch_size, args.seed, args.threads,
            args.max_exclude, args.target_rel_l2, args.fused,
        )  # fmt: skip
    else:
        rep = _torch_sweep(args)
    print(format_table(rep, args.top))
    if args.json is not None:
        atomic_json_save(rep, args.json)
        print(f"\nwrote {args.json}")
    if args.png is not None:
        save_bar_chart(rep, args.png, args.top)
        print(f"wrote {args.png}")
    return 0


def _torch_sweep(args: argparse.Namespace) -> dict:
    import torch

    from pqcad_deploy.loading import open_model

    from .layer_sweep import sensitivity_sweep
    from .spec import export_spec_for

    bundle = open_model(args.checkpoint)
    if not bundle.quantized:
        raise UsageError(f"{args.checkpoint} is an FP model; the torch sweep needs a quantized student.")
    torch.set_num_threads(args.threads)
    shapes = export_spec_for(bundle.spec).input_shapes(args.batch_size)
    return sensitivity_sweep(
        bundle.model, shapes, args.timesteps, args.seed, args.max_exclude, args.target_rel_l2, bundle.source
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, quiet_default=True)
    return run_cli("pqcad-debug", run, args)


if __name__ == "__main__":
    sys.exit(main())
