"""``pqcad-build``: trtexec-style engine builds for TensorRT, and the same flow for ONNX Runtime.

    pqcad-build --onnx unet.onnx --saveEngine unet.plan --stronglyTyped \\
        --minShapes sample:1x1x32x32,timestep:1 --optShapes sample:8x1x32x32,timestep:8 \\
        --maxShapes sample:16x1x32x32,timestep:16 --timingCacheFile tc.bin --exportLayerInfo layers.json
    pqcad-build --backend onnxruntime --onnx unet_int8.onnx --saveEngine unet_int8.ort.json --ortThreads 2

Flags follow trtexec's names (camelCase); --ortThreads/--ortOptimization/--ortProviders/--ortLayout are this tool's
own for the ONNX Runtime backend. Unless --skipInference is given, the engine is loaded back and timed on random
inputs at the opt shapes (--warmUp untimed calls first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import onnx

from pqcad_deploy.cli.common import (
    add_verbose,
    check_output_path,
    int_range,
    make_parser,
    run_cli,
    setup_logging,
    threads_int,
)
from pqcad_deploy.denoiser import sampler_feed
from pqcad_deploy.interval_manifest import is_manifest
from pqcad_deploy.timing import summarize, time_calls

from .audit import LayerAuditReport, format_onnx_audit
from .backends.base import Runner
from .backends.ort_backend import LAYOUTS
from .build_config import (
    BuildConfigError,
    BuildPlan,
    ShapeMap,
    check_profile_fits_network,
    format_shapes,
    plan_from_args,
)


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    p = make_parser("pqcad-build", doc[0].strip("`"), "\n\n".join(doc[1:]))
    p.add_argument(
        "--onnx", required=True, help="input ONNX model, or the interval manifest of a timestep-aware student"
    )
    p.add_argument(
        "--saveEngine", required=True, help="engine to write (.plan; ORT: the engine .json; for a manifest: "
        "NAME.manifest.json, with one engine per interval beside it)",
    )  # fmt: skip
    p.add_argument("--backend", default="tensorrt", choices=["tensorrt", "onnxruntime"])
    p.add_argument(
        "--stronglyTyped", action="store_true", help="strongly typed network (default unless --fp16/--int8)"
    )
    p.add_argument("--fp16", action="store_true", help="weakly typed FP16 (TRT 8.6 / JetPack 6.0 path)")
    p.add_argument("--int8", action="store_true", help="weakly typed INT8 for QDQ graphs (TRT 8.6 path)")
    p.add_argument("--minShapes", help="name:dims,... e.g. sample:1x1x32x32,timestep:1")
    p.add_argument("--optShapes", help="name:dims,...")
    p.add_argument("--maxShapes", help="name:dims,...")
    p.add_argument("--timingCacheFile", help="timing cache to load and update")
    p.add_argument("--builderOptimizationLevel", type=int, help="0..5 (TensorRT default 3)")
    p.add_argument("--memPoolSize", help="pool:size,... e.g. workspace:8G (plain numbers are MiB)")
    p.add_argument("--profilingVerbosity", help="layer_names_only | detailed | none")
    p.add_argument("--exportLayerInfo", help="write engine layer info JSON and run the fusion audit")
    p.add_argument("--skipInference", action="store_true", help="build only; do not time the engine")
    p.add_argument(
        "--warmUp", type=int_range(0, 10**6), default=3, help="untimed inferences before timing (calls)"
    )
    p.add_argument(
        "--iterations", type=int_range(1, 10**6), default=20, help="timed inferences after the build"
    )
    p.add_argument(
        "--ortThreads", type=threads_int, help="ONNX Runtime intra-op threads (default: ORT's choice)"
    )
    p.add_argument("--ortOptimization", default="all", choices=["disable", "basic", "extended", "all"])
    p.add_argument("--ortProviders", default="cpu", help="comma list: cpu, cuda, tensorrt")
    p.add_argument(
        "--ortLayout",
        default="nhwc",
        choices=list(LAYOUTS),
        help="where INT8 convolutions run on the CPU: nhwc (ORT's default, layout Transposes around float ops) "
        "or nchw (no Transposes, slower conv kernels; time both on the target, e.g. nchw at batch 1)",
    )
    add_verbose(p)
    return p


def onnx_input_shapes(path: Path, batch: int = 1) -> ShapeMap:
    """Static input shapes of an ONNX file, with symbolic dimensions set to ``batch``."""
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return {
        i.name: tuple(d.dim_value if d.dim_value > 0 else batch for d in i.type.tensor_type.shape.dim)
        for i in m.graph.input
        if i.name not in inits
    }


def check_profile(plan: BuildPlan) -> None:
    """Shape flags against the ONNX inputs, before any build (names, ranks, static dimensions)."""
    if plan.profile is None or not plan.onnx.is_file():
        return
    try:
        inputs = onnx_input_shapes(plan.onnx, batch=-1)
    except Exception as e:  # protobuf DecodeError and friends: say which file
        raise BuildConfigError(
            f"--onnx {plan.onnx} is not a readable ONNX model ({type(e).__name__}: {e})."
        ) from e
    check_profile_fits_network(plan.profile, inputs)


def time_runner(runner: Runner, shapes: ShapeMap, warmup: int, iterations: int) -> dict[str, float]:
    """Per-call latency on the one sampler-like random feed (``denoiser.sampler_feed``)."""
    feed = sampler_feed(shapes)
    with runner:
        for _ in range(warmup):
            runner.infer(feed)
        per_call = [time_calls(lambda: runner.infer(feed), 1, runner.device) for _ in range(iterations)]
    return summarize(per_call)


def build(plan: BuildPlan, verbose: bool = False) -> tuple[dict[str, Any], Runner, ShapeMap | None]:
    """Build the engine; returns (report, a runner for it, the shapes to time it at or None)."""
    if plan.backend == "onnxruntime":
        from .backends.ort_backend import OrtRunner
        from .ort_builder import build_ort_engine

        report = build_ort_engine(plan)
        shapes = plan.profile.opt if plan.profile else onnx_input_shapes(plan.onnx)
        return report, OrtRunner.from_engine(plan.save_engine), shapes
    from .backends.trt_backend import TrtRunner
    from .trt_builder import build_engine

    report = build_engine(plan, verbose=verbose)
    return report, TrtRunner(plan.save_engine), (plan.profile.opt if plan.profile else None)


def run(args: argparse.Namespace) -> int:
    if is_manifest(args.onnx):
        return run_manifest(args)
    plan = plan_from_args(args)
    check_output_path(plan.save_engine, inputs=[plan.onnx], what="--saveEngine")
    check_profile(plan)
    for note in plan.notes:
        print(f"note: {note}")
    report, runner, shapes = build(plan, verbose=args.verbose)
    if plan.backend == "onnxruntime":
        print(f"wrote {plan.save_engine} (optimized model {report['model']}, {report['build_s']} s)")
        print(f"source:    {format_onnx_audit(report['audit']['source'])}")
        print(f"optimized: {format_onnx_audit(report['audit']['optimized'])}")
    else:
        print(
            f"wrote {plan.save_engine} ({report['size_mb']} MB, TensorRT {report['tensorrt']}, {report['build_s']} s)"
        )
        if "audit" in report:
            print(
                f"fusion audit ({plan.export_layer_info}):\n{LayerAuditReport(**report['audit']).summary()}"
            )
    if not plan.skip_inference:
        if shapes is None:
            print("skipping inference: give --optShapes to time a TensorRT engine")
        else:
            stats = time_runner(runner, shapes, args.warmUp, args.iterations)
            print(
                f"inference at {format_shapes(shapes)}: median {stats['median']:.3f} ms, "
                f"p90 {stats['p90']:.3f} ms over {stats['n']} runs"
            )
    if args.verbose:
        print(json.dumps(plan.to_dict(), indent=1))
    return 0


def run_manifest(args: argparse.Namespace) -> int:
    """A timestep-aware student's interval manifest: one engine per interval and the engine manifest."""
    from .build_intervals import build_manifest

    out = build_manifest(args)
    for k, (engine, rep) in enumerate(zip(out["engines"], out["reports"], strict=True)):
        entry = out["manifest"]["entries"][k]
        timing = rep.get("inference_ms")
        timed = f", median {timing['median']:.3f} ms per call" if timing else ""
        print(
            f"interval {k}: {entry['onnx']} -> {Path(engine).name} ({entry['precision']}, {rep['build_s']} s{timed})"
        )
    print(f"wrote {args.saveEngine} ({len(out['engines'])} {args.backend} engines; pqcad-bench --engine "
          f"{'ort' if args.backend == 'onnxruntime' else 'trt'}:{args.saveEngine} switches them by timestep)")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, quiet_default=True)
    return run_cli("pqcad-build", run, args)


if __name__ == "__main__":
    sys.exit(main())
