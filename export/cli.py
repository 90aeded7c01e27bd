"""``pqcad-export``: checkpoint -> ONNX with explicit quantization, checked on every export.

pqcad-export --checkpoint student.pt --onnx unet.onnx
pqcad-export --checkpoint teacher.safetensors --onnx unet_fp32.onnx          # FP baseline
pqcad-export --model sd15-unet --random-weights --precision fp16 --onnx sd15.onnx
pqcad-export --check-only unet.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pqcad_deploy.io import CheckpointError
from pqcad_deploy.loading import open_model

from .checks import CheckError
from .onnx_export import ExportError
from .pipeline import ExportOptions, check_only, export, report_path
from .report import audit_table, full_report

log = logging.getLogger("pqcad-export")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pqcad-export", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", help="student .pt (quantized) or FP teacher .safetensors (+ .json sidecar)"
    )
    src.add_argument("--model", help="zoo model name (with --random-weights), e.g. cifar10-ddpm, sd15-unet")
    src.add_argument(
        "--check-only", metavar="ONNX", help="check an existing ONNX file (checker, audit, ORT run)"
    )
    p.add_argument("--random-weights", action="store_true", help="with --model: seeded random weights")
    p.add_argument("--onnx", help="output path (written only after all checks pass)")
    p.add_argument("--target", choices=["tensorrt", "onnxruntime"], help="default: the checkpoint's target")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="float parts of the graph")
    p.add_argument("--opset", type=int, help="default 17; 19 for FP16 Q/DQ; 21 for INT4 weights")
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript", help="torch.onnx")
    p.add_argument("--batch", type=int, default=1, help="batch of the traced/static graph")
    dyn = p.add_mutually_exclusive_group()
    dyn.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true", default=True)
    dyn.add_argument("--static-batch", dest="dynamic_batch", action="store_false")
    ext = p.add_mutually_exclusive_group()
    ext.add_argument("--external-data", dest="external_data", action="store_true", default=None,
                     help="weights in <onnx>.data (automatic above 2 GB)")  # fmt: skip
    ext.add_argument("--no-external-data", dest="external_data", action="store_false")
    p.add_argument(
        "--check", action=argparse.BooleanOptionalAction, default=True, help="run checks (default on)"
    )
    p.add_argument("--parity-samples", type=int, default=8)
    p.add_argument("--allow-float-layers", action="store_true",
                   help="do not fail when the audit finds quantized layers that would run in float")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging; full per-layer audit table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.check_only:
            rep = check_only(args.check_only, args.target or "tensorrt")
            print(json.dumps(rep, indent=2) if args.json else audit_table(rep["audit"], not args.verbose))
            return 0 if rep["audit"]["counts"]["float_blocked"] == 0 else 1
        if not args.onnx:
            raise ExportError("--onnx PATH is required (where to write the model).")
        if args.model and not args.random_weights:
            raise ExportError(
                "--model needs --random-weights (zoo models have no shipped weights except the teacher)."
            )
        loaded = (
            open_model(args.checkpoint) if args.checkpoint else open_model(args.model, random_weights=True)
        )
        opts = ExportOptions(
            target=args.target,
            precision=args.precision,
            opset=args.opset,
            batch=args.batch,
            dynamic_batch=args.dynamic_batch,
            external_data=args.external_data,
            check=args.check,
            parity_samples=args.parity_samples,
            strict_audit=not args.allow_float_layers,
            exporter=args.exporter,
        )
        rep = export(loaded, args.onnx, opts)
        print(json.dumps(rep, indent=2) if args.json else full_report(rep, args.verbose))
        print(f"\nwrote {args.onnx} and {report_path(Path(args.onnx))}")
    except (ExportError, CheckError, CheckpointError, ValueError) as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
