"""CPU end-to-end pipeline benchmark: fmnist, 50 DDIM steps, batch 1 and 8, one table per batch.

Rows: torch FP32 eager; ORT FP32 (our FP32 export); ORT INT8 from our W8A8 export for both targets
(``tensorrt``: input-only Q/DQ; ``onnxruntime``: DQ->op->Q units with uint8 activations, which ORT fuses); and
ONNX Runtime's own ``quantize_static`` on the FP32 export (``export.ort_quantize_static``), the stock-tool bar.
The W8A8 forms are trained students when given, else the library PTQ (``train.ptq.ptq_student``, max-abs); that
PTQ and quantize_static calibrate on the same calibration set. Quality: PSNR / rel-L2 of the final images against
torch FP32 from the same noise, and FD-fmnist with ``--quality-samples N``. The INT8 ORT-target form is checked
against SPEEDUP_GOALS at the end.

Run on a 2-core CPU with nothing else running (about 10-15 minutes):
    python benchmarks/cpu_pipeline.py --threads 2
    python benchmarks/cpu_pipeline.py --student-ort student_ort.pt --student-trt student.pt --quality-samples 1000
    python benchmarks/cpu_pipeline.py --quick            # smoke run: tiny random model, 4 steps, batch 1
Writes benchmarks/results/cpu_pipeline_<UTC time>.json and the ONNX files under --work (default runs/cpu_pipeline).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy import metrics
from pqcad_deploy.cli.common import add_calib_args, calib_collect_kwargs, refuse_bad_outputs
from pqcad_deploy.export import ExportOptions, export, ort_quantize_static
from pqcad_deploy.export.ort_static import calib_feeds
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import ModelBundle, open_model
from pqcad_deploy.quant import QuantConfig
from pqcad_deploy.runtime.bench import BenchConfig, format_table, parse_engine, run_bench
from pqcad_deploy.train.calib import load_or_collect_calib
from pqcad_deploy.train.ptq import ptq_student

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("cpu_pipeline")

# The CPU deployment goals for the INT8 form built for ONNX Runtime (engine label "ort-int8-ortq"): the minimum
# end-to-end speed-up over each baseline, at batch 1 and at larger batches. Matching ORT's own quantize_static
# (1.0x) is the floor: below it, the stock tool would deploy faster. Against ORT FP32 at batch 8, issue 18 raised
# issue 5's 1.5x to 1.9x.
SPEEDUP_GOALS = {"torch-fp32": (2.5, 2.0), "ort-fp32": (1.5, 1.9), "ort-ptq-u8s8": (1.0, 1.0)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default="fmnist-ddpm", help="zoo name (shipped weights if any) or FP checkpoint"
    )
    p.add_argument("--work", type=Path, default=Path("runs/cpu_pipeline"), help="ONNX files, calibration set")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--student-trt", type=Path, help="trained student for the tensorrt-target row")
    p.add_argument("--student-ort", type=Path, help="trained student for the onnxruntime-target row")
    p.add_argument("--quality-samples", type=int, default=0, help="images per engine for FD-fmnist")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny random model, 4 steps, batch 1")
    add_calib_args(p)
    p.set_defaults(calib_trajectories=8, calib_steps=50, calib_points=8, calib_batch_size=8)
    args = p.parse_args(argv)
    refuse_bad_outputs(p, {"--out": args.out})
    if args.quick:
        args.model, args.batches, args.steps, args.repeats, args.quality_samples = "tiny-unet", [1], 4, 1, 0
        args.calib_trajectories, args.calib_steps, args.calib_points = 2, 4, 2
        args.work = args.work.with_name(args.work.name + "_quick")
        args.out = args.out or RESULTS / "cpu_pipeline_quick.json"
    return args


def check_speedups(rows: list[dict[str, Any]], batch: int) -> list[str]:
    """One line per SPEEDUP_GOALS baseline: measured speed-up of the INT8 ORT-target form, the goal, met or not."""
    by = {r["label"]: r for r in rows if not r["error"]}
    int8 = by.get("ort-int8-ortq")
    if not int8:
        return [f"b{batch}: ort-int8-ortq missing: speed-up goals not checked"]
    out = []
    for base, (goal_b1, goal_bn) in SPEEDUP_GOALS.items():
        goal = goal_b1 if batch == 1 else goal_bn
        x = by[base]["e2e_ms"]["median"] / int8["e2e_ms"]["median"] if base in by else float("nan")
        out.append(
            f"b{batch}: INT8 (ORT target) vs {base} {x:.2f}x (goal >= {goal}x: {'met' if x >= goal else 'MISSED'})"
        )
    return out


def int8_forms(args: argparse.Namespace, fp: ModelBundle, calib: Any) -> dict[str, ModelBundle]:
    """The W8A8 model per target: the given trained student, else the library PTQ on the calibration set."""
    forms = {}
    for key, target, student in (
        ("int8_trtq", "tensorrt", args.student_trt),
        ("int8_ortq", "onnxruntime", args.student_ort),
    ):
        if student is not None:
            forms[key] = open_model(student)
        else:
            qcfg = QuantConfig(target=target, calib_method="maxabs")
            model, _ = ptq_student(fp.model, qcfg, calib, "cpu")
            forms[key] = ModelBundle(model, fp.spec, qcfg, source=f"PTQ max-abs ({target}) of {fp.source}")
    return forms


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    fp = open_model(args.model)
    log.info("weights: %s", fp.source)
    calib_path = args.calib or args.work / f"calib_{fp.spec.name}.safetensors"
    calib = load_or_collect_calib(calib_path, fp.model, fp.spec, "cpu", calib_collect_kwargs(args))
    name = fp.spec.name.split("-")[0]
    files = {k: args.work / f"{name}_{k}.onnx" for k in ("fp32", "int8_trtq", "int8_ortq", "ptq_u8s8")}
    opts = ExportOptions(strict_audit=False)
    reports = {"fp32": export(fp, files["fp32"], opts)}
    for key, bundle in int8_forms(args, fp, calib).items():
        reports[key] = export(bundle, files[key], opts)
    ort_quantize_static(files["fp32"], files["ptq_u8s8"], calib_feeds(calib, batch_size=8))
    engines = [
        "torch-fp32=torch:fp32",
        f"ort-fp32=ort:{files['fp32']}",
        f"ort-int8-trtq=ort:{files['int8_trtq']}",
        f"ort-int8-ortq=ort:{files['int8_ortq']}",
        f"ort-ptq-u8s8=ort:{files['ptq_u8s8']}",
    ]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"cpu_pipeline_{stamp}.json"
    result = {
        "benchmark": "cpu_pipeline",
        "weights": fp.source,
        "exports": reports,
        "runs": {},
        "speedup_goals": [],
    }
    for batch in args.batches:
        cfg = BenchConfig(
            steps=args.steps, batch=batch, repeats=args.repeats, quality_samples=args.quality_samples
        )
        res = run_bench(
            [parse_engine(e) for e in engines],
            fp.model,
            fp.spec,
            cfg,
            threads=args.threads,
            baselines=["torch-fp32", "ort-fp32"],
            metrics=metrics,
        )
        res.pop("_images")
        print(format_table(res))
        result["speedup_goals"] += check_speedups(res["rows"], batch)
        result["runs"][f"b{batch}"] = res
        atomic_json_save(result, out)
    print("\n".join(result["speedup_goals"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
