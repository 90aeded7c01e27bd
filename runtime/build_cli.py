"""``pqcad-build``: trtexec-style engine builds for TensorRT, and the same flow for ONNX Runtime.

    pqcad-build --onnx unet.onnx --saveEngine unet.plan --stronglyTyped \\
        --minShapes sample:1x1x32x32,timestep:1 --optShapes sample:8x1x32x32,timestep:8 \\
        --maxShapes sample:16x1x32x32,timestep:16 --timingCacheFile tc.bin --exportLayerInfo layers.json
    pqcad-build --backend onnxruntime --onnx unet_int8.onnx --saveEngine unet_int8.ort.json --ortThreads 2

Unless --skipInference is given, the engine is loaded back and timed on random inputs at the opt shapes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from .audit import LayerAuditReport, format_onnx_audit
from .backends.base import MissingBackendError, Runner
from .build_config import BuildConfigError, BuildPlan, ShapeMap, format_shapes, plan_from_args
from .timing import summarize, time_calls

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pqcad-build",
        description="Build a TensorRT engine (or an ONNX Runtime optimized model) from an ONNX file; "
        "flags follow trtexec.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--onnx", required=True, help="input ONNX model")
    p.add_argument("--saveEngine", required=True, help="engine to write (.plan; ORT: the engine .json)")
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
    p.add_argument("--iterations", type=int, default=20, help="timed inferences after the build")
    p.add_argument("--ortThreads", type=int, help="ONNX Runtime intra-op threads (default: ORT's choice)")
    p.add_argument("--ortOptimization", default="all", choices=["disable", "basic", "extended", "all"])
    p.add_argument("--ortProviders", default="cpu", help="comma list: cpu, cuda, tensorrt")
    p.add_argument("--verbose", action="store_true", help="verbose builder log")
    return p


def random_feed(shapes: ShapeMap, seed: int = 0) -> dict[str, torch.Tensor]:
    """Sampler-like random inputs: N(0,1) floats, timesteps in [0, 1000)."""
    g = torch.Generator().manual_seed(seed)
    return {
        n: torch.randint(0, 1000, s, generator=g) if n == "timestep" else torch.randn(s, generator=g)
        for n, s in shapes.items()
    }


def onnx_input_shapes(path: Path, batch: int = 1) -> ShapeMap:
    """Static input shapes of an ONNX file, with symbolic dimensions set to ``batch``."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return {
        i.name: tuple(d.dim_value if d.dim_value > 0 else batch for d in i.type.tensor_type.shape.dim)
        for i in m.graph.input
        if i.name not in inits
    }


def time_runner(runner: Runner, feed: dict[str, torch.Tensor], iterations: int) -> dict[str, float]:
    with runner:
        for _ in range(3):
            runner.infer(feed)
        per_call = [time_calls(lambda: runner.infer(feed), 1, runner.device) for _ in range(iterations)]
    return summarize(per_call)


def run_build(plan: BuildPlan, iterations: int = 20, verbose: bool = False) -> dict:
    for note in plan.notes:
        print(f"note: {note}")
    if plan.backend == "onnxruntime":
        from .backends.ort_backend import OrtRunner
        from .ort_builder import build_ort_engine

        report = build_ort_engine(plan)
        print(f"wrote {plan.save_engine} (optimized model {report['model']}, {report['build_s']} s)")
        print(f"source:    {format_onnx_audit(report['audit']['source'])}")
        print(f"optimized: {format_onnx_audit(report['audit']['optimized'])}")
        shapes = plan.profile.opt if plan.profile else onnx_input_shapes(plan.onnx)
        make_runner = lambda: OrtRunner.from_engine(plan.save_engine)  # noqa: E731
    else:
        from .backends.trt_backend import TrtRunner
        from .trt_builder import build_engine

        report = build_engine(plan, verbose=verbose)
        print(
            f"wrote {plan.save_engine} ({report['size_mb']} MB, TensorRT {report['tensorrt']}, {report['build_s']} s)"
        )
        if "audit" in report:
            rep = LayerAuditReport(**report["audit"])
            print(f"fusion audit ({plan.export_layer_info}):\n{rep.summary()}")
        shapes = plan.profile.opt if plan.profile else None
        make_runner = lambda: TrtRunner(plan.save_engine)  # noqa: E731
    if not plan.skip_inference:
        if shapes is None:
            print("skipping inference: give --optShapes to time a TensorRT engine")
        else:
            stats = time_runner(make_runner(), random_feed(shapes), iterations)
            report["inference_ms"] = stats
            print(
                f"inference at {format_shapes(shapes)}: median {stats['median']:.3f} ms, "
                f"p90 {stats['p90']:.3f} ms over {stats['n']} runs"
            )
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        plan = plan_from_args(args)
        report = run_build(plan, iterations=args.iterations, verbose=args.verbose)
    except (BuildConfigError, MissingBackendError, FileNotFoundError) as e:
        print(f"pqcad-build: error: {e}", file=sys.stderr)
        return 2
    if args.verbose:
        print(json.dumps(plan.to_dict(), indent=1))
    return 0 if report else 1


if __name__ == "__main__":
    sys.exit(main())
