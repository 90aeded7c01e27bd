"""``pqcad-build --onnx unet.manifest.json``: one engine per interval of a timestep-aware student, then an engine
manifest that binds them (same intervals, precision per interval, SHA-256 of every engine).

Every interval file is built with the same flags through the one build path (``build_cli.build``); the engines are
``<name>.i<k>.plan`` (TensorRT) or ``<name>.i<k>.ort.json`` (ONNX Runtime) beside ``--saveEngine
<name>.manifest.json``, which is written last: it exists only when every engine does. TensorRT gets K engines, not
one refittable engine whose Q/DQ scales are swapped between intervals: whether the scales of a QDQ network are
refittable at all is not documented for TensorRT 10, ``REFIT_IDENTICAL`` (the only refit mode documented to keep the
non-refittable engine's kernels) forbids changing any weight, and a refit would sit inside every sampling loop
(K - 1 refits per image). The cost is K copies of the INT8 weights in device memory (docs/timestep-aware.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from pqcad_deploy.cli.common import check_output_path
from pqcad_deploy.errors import UsageError
from pqcad_deploy.interval_manifest import MANIFEST_SUFFIX, read_manifest, write_engine_manifest

log = logging.getLogger(__name__)


def engine_paths(save_manifest: Path, k: int, backend: str) -> list[Path]:
    stem = save_manifest.name[: -len(MANIFEST_SUFFIX)]
    suffix = ".ort.json" if backend == "onnxruntime" else ".plan"
    return [save_manifest.with_name(f"{stem}.i{j}{suffix}") for j in range(k)]


def build_manifest(args: argparse.Namespace) -> dict[str, Any]:
    """Build every interval engine of the ONNX manifest ``args.onnx``; returns the engine manifest."""
    from .build_cli import build, check_profile, time_runner
    from .build_config import plan_from_args

    save = Path(args.saveEngine)
    if not save.name.endswith(MANIFEST_SUFFIX) or save.name == MANIFEST_SUFFIX:
        raise UsageError(
            f"--onnx {args.onnx} is an interval manifest: --saveEngine must name the engine manifest to write "
            f"(NAME{MANIFEST_SUFFIX}); the per-interval engines are written beside it."
        )
    schedule, files, doc = read_manifest(args.onnx)
    if "backend" in doc:
        raise UsageError(f"--onnx {args.onnx} is already an engine manifest (built for {doc['backend']}).")
    engines = engine_paths(save, schedule.k, args.backend)
    for out in (save, *engines):
        check_output_path(out, inputs=[Path(args.onnx), *files], what="--saveEngine")
    reports = []
    for k, (onnx_file, engine) in enumerate(zip(files, engines, strict=True)):
        ns = argparse.Namespace(**{**vars(args), "onnx": str(onnx_file), "saveEngine": str(engine)})
        if args.exportLayerInfo:
            info = Path(args.exportLayerInfo)
            ns.exportLayerInfo = str(info.with_name(f"{info.stem}.i{k}{info.suffix or '.json'}"))
        # a relaxed interval's weight-only graph: ORT folds its weight DQ into float weights
        relaxed = doc["entries"][k].get("activations") == "float"
        plan = dataclasses.replace(plan_from_args(ns), ort_fold_weight_dq=relaxed)
        check_profile(plan)
        report, runner, shapes = build(plan, verbose=args.verbose)
        if not plan.skip_inference and shapes is not None:
            report["inference_ms"] = time_runner(runner, shapes, args.warmUp, args.iterations)
        reports.append(report)
        log.info("interval %d: %s -> %s", k, onnx_file.name, engine.name)
    manifest = write_engine_manifest(doc, engines, args.backend, save)
    return {"manifest": manifest, "reports": reports, "engines": [str(e) for e in engines]}
