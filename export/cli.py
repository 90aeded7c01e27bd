"""``pqcad-export``: checkpoint -> ONNX with explicit quantization, checked on every export.

    pqcad-export --checkpoint student.pt --onnx unet.onnx
    pqcad-export --checkpoint teacher.safetensors --onnx unet_fp32.onnx          # FP baseline
    pqcad-export --checkpoint sd15-unet --random-weights --precision fp16 --onnx sd15.onnx
    pqcad-export --text-encoder --onnx text_encoder.onnx --text-int8             # the T2I text encoder
    pqcad-export --checkpoint student.pt --float-weights --onnx student_fp.onnx  # pqcad-debug's FP reference
    pqcad-export --check-only unet.onnx
    pqcad-export --check-only unet_int8.onnx --target onnxruntime --ort-optimized   # rules vs ORT's own fusions

Every file is written in a temporary folder beside the destination and moved into place only after the ONNX
checker, ONNX Runtime parity against torch and (for UNets) the TensorRT explicit-quantization audit passed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pqcad_deploy.cli.common import (
    add_verbose,
    check_output_path,
    int_range,
    make_parser,
    run_cli,
    setup_logging,
)
from pqcad_deploy.errors import UsageError
from pqcad_deploy.loading import ModelBundle, open_model
from pqcad_deploy.quant.intervals import get_intervals
from pqcad_deploy.student import float_copy

from .audit import format_ort_cross_check, ort_cross_check
from .pipeline import ExportOptions, check_only, export, report_path
from .report import audit_table, full_report

# Flags that only mean something for a UNet export from a checkpoint (refused elsewhere instead of ignored).
_UNET_ONLY = {
    "target": "--target",
    "opset": "--opset",
    "exporter": "--exporter",
    "batch_size": "--batch-size",
    "external_data": "--external-data",
    "allow_float_layers": "--allow-float-layers",
    "random_weights": "--random-weights",
    "float_weights": "--float-weights",
}
_DEFAULTS = {
    "exporter": "torchscript",
    "batch_size": 1,
    "allow_float_layers": False,
    "random_weights": False,
    "float_weights": False,
}


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    p = make_parser("pqcad-export", doc[0].strip("`"), "\n\n".join(doc[1:]))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", help="student (.pt / .safetensors) or FP model (.safetensors + .json), or a zoo name"
    )
    src.add_argument(
        "--text-encoder",
        nargs="?",
        const="",
        metavar="FOLDER",
        help="export the text encoder (default: the installed all-MiniLM-L6-v2) instead of a UNet",
    )
    src.add_argument(
        "--check-only", metavar="ONNX", help="check an existing ONNX file (checker, audit, ORT run)"
    )
    p.add_argument("--random-weights", action="store_true", help="with a zoo name: seeded random weights")
    p.add_argument(
        "--float-weights",
        action="store_true",
        help="export a student's trained weights without Q/DQ: the FP reference that makes pqcad-debug measure "
        "quantization error alone",
    )
    p.add_argument("--onnx", help="output path (written only after all checks pass)")
    p.add_argument("--target", choices=["tensorrt", "onnxruntime"], help="default: the checkpoint's target")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="float parts of the graph")
    p.add_argument(
        "--opset", type=int_range(13, 21), help="default 17; 19 for FP16 Q/DQ; 21 for INT4 weights"
    )
    p.add_argument(
        "--exporter", choices=["torchscript", "dynamo"], default="torchscript", help="torch.onnx exporter"
    )
    p.add_argument(
        "--batch-size", type=int_range(1, 4096), default=1, help="batch of the traced (static) graph"
    )
    dyn = p.add_mutually_exclusive_group()
    dyn.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true", default=True)
    dyn.add_argument("--static-batch", dest="dynamic_batch", action="store_false")
    ext = p.add_mutually_exclusive_group()
    ext.add_argument("--external-data", dest="external_data", action="store_true", default=None,
                     help="weights in <onnx>.data (automatic above 2 GB)")  # fmt: skip
    ext.add_argument("--no-external-data", dest="external_data", action="store_false")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True, help="run the checks")
    p.add_argument(
        "--parity-samples", type=int_range(1, 1024), default=8, help="inputs of the ORT parity check"
    )
    p.add_argument("--allow-float-layers", action="store_true",
                   help="do not fail when the audit finds quantized layers that would run in float")  # fmt: skip
    p.add_argument(
        "--text-int8",
        action="store_true",
        help="with --text-encoder: also write <onnx stem>_int8.onnx (ONNX Runtime dynamic INT8 MatMuls), kept "
        "only when its embeddings match FP32",
    )
    p.add_argument(
        "--ort-optimized",
        action="store_true",
        help="with --check-only --target onnxruntime: also let ORT optimize the file and compare what it fused "
        "with the audit's rules",
    )
    p.add_argument("--print-json", action="store_true", help="print the report as JSON instead of tables")
    add_verbose(p)
    return p


def _refuse_unused(args: argparse.Namespace, mode: str, allowed: set[str]) -> None:
    used = [
        flag
        for attr, flag in _UNET_ONLY.items()
        if attr not in allowed and getattr(args, attr) not in (None, _DEFAULTS.get(attr))
    ]
    if used:
        raise UsageError(
            f"{', '.join(used)} {'does' if len(used) == 1 else 'do'} not apply to {mode}; drop it."
        )


def run(args: argparse.Namespace) -> int:
    if args.check_only:
        _refuse_unused(args, "--check-only", {"target"})
        if args.onnx:
            raise UsageError("--check-only checks the file it names and writes nothing; drop --onnx.")
        rep = check_only(args.check_only, args.target or "tensorrt")
        if args.ort_optimized:
            if rep["audit"]["target"] != "onnxruntime":
                raise UsageError("--ort-optimized checks the onnxruntime audit; add --target onnxruntime.")
            rep["ort_optimized"] = ort_cross_check(args.check_only, rep["audit"])
        print(json.dumps(rep, indent=2) if args.print_json else audit_table(rep["audit"], not args.verbose))
        if args.ort_optimized and not args.print_json:
            print(format_ort_cross_check(rep["ort_optimized"]))
        bad = rep["audit"]["counts"]["float_blocked"] + len(rep.get("ort_optimized", {}).get("disagree", []))
        return 0 if bad == 0 else 1
    if args.ort_optimized:
        raise UsageError("--ort-optimized applies to --check-only; drop it.")
    if not args.onnx:
        raise UsageError("--onnx PATH is required (where to write the model).")
    if args.text_encoder is not None:
        _refuse_unused(args, "--text-encoder", set())
        from .text_encoder import export_text_encoder

        check_output_path(args.onnx, inputs=[args.text_encoder or None], what="--onnx")
        rep = export_text_encoder(
            args.text_encoder or None,
            args.onnx,
            args.precision,
            args.text_int8,
            args.check,
            args.parity_samples,
        )
        print(json.dumps(rep, indent=2) if args.print_json else _text_summary(rep))
        return 0
    if args.text_int8:
        raise UsageError("--text-int8 applies to --text-encoder exports only.")
    check_output_path(args.onnx, inputs=[args.checkpoint], what="--onnx")
    bundle = open_model(args.checkpoint, random_weights=True if args.random_weights else None)
    if args.float_weights:
        if not bundle.quantized:
            raise UsageError(
                f"--float-weights strips a student's quantizers; {args.checkpoint} is already float."
            )
        bundle = ModelBundle(
            float_copy(bundle.model, bundle.spec), bundle.spec, None, bundle.meta, bundle.source
        )
    opts = ExportOptions(
        target=args.target,
        precision=args.precision,
        opset=args.opset,
        batch=args.batch_size,
        dynamic_batch=args.dynamic_batch,
        external_data=args.external_data,
        check=args.check,
        parity_samples=args.parity_samples,
        strict_audit=not args.allow_float_layers,
        exporter=args.exporter,
    )
    if get_intervals(bundle.model) is not None:
        return _export_intervals(bundle, args, opts)
    rep = export(bundle, args.onnx, opts)
    print(json.dumps(rep, indent=2) if args.print_json else full_report(rep, args.verbose))
    print(f"\nwrote {args.onnx} and {report_path(Path(args.onnx))}")
    return 0


def _export_intervals(bundle: ModelBundle, args: argparse.Namespace, opts: ExportOptions) -> int:
    """A timestep-aware (K-set) student: one ONNX per interval and the manifest that binds them."""
    from .intervals import export_intervals

    rep = export_intervals(bundle, args.onnx, opts)
    if args.print_json:
        print(json.dumps(rep, indent=2))
    else:
        for r, e in zip(rep["reports"], rep["entries"], strict=True):
            print(
                f"\n== interval {e['interval']}: {e['onnx']} ({e['precision']}, {e['activations']} activations)"
            )
            print(full_report(r, args.verbose))
            if e["activations"] == "float":
                print(
                    "(relaxed interval: its activations stay float by design, the audit's 'float' layers included)"
                )
    files = ", ".join(e["onnx"] for e in rep["entries"])
    print(f"\nwrote {len(rep['entries'])} interval files ({files}) and the manifest {rep['manifest']}")
    return 0


def _text_summary(rep: dict) -> str:
    lines = [
        f"text encoder {rep['source']} -> {rep['onnx']} ({rep['file_bytes'] / 1e6:.1f} MB, {rep['precision']})"
    ]
    if rep.get("parity"):
        lines.append(
            f"ORT parity vs torch: rel-L2 {rep['parity']['rel_l2']:.2e} (tolerance {rep['parity']['tol']:.0e})"
        )
    for name, r in (rep.get("variants") or {}).items():
        lines.append(
            f"{name}: {r['file_bytes'] / 1e6:.1f} MB, rel-L2 vs FP32 {r['rel_l2_vs_fp32']:.2e}, "
            f"{r['ms_per_batch']:.1f} ms vs FP32 {rep['ms_per_batch']:.1f} ms per batch of {rep['timing_batch']} "
            f"-> {'kept' if r['kept'] else 'not kept: ' + r['why']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_cli("pqcad-export", run, args)


if __name__ == "__main__":
    sys.exit(main())
