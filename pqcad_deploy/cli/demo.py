"""``pqcad-demo``: the whole pipeline on the embedded default, on a CPU box, in a few minutes.

shipped FP teacher + shipped PQCAD student (W8A8, weights and step sizes trained; FP at 100 DDIM steps, the
student at 50) -> ONNX exports with explicit Q/DQ (checked: ONNX checker, ORT parity, TensorRT audit) -> ONNX
Runtime engines (``pqcad-build --backend onnxruntime``) -> the shared sampler on every engine from the same noise
-> one latency / quality table, a JSON record and a PNG grid (one row of samples per engine).

Two INT8 forms of the student are run: the TensorRT form exactly as trained (what ``trtexec --stronglyTyped``
builds; ORT executes it unfused), and the ONNX Runtime form (same trained weights, re-placed for ORT's
DQ->op->Q fusion and PTQ-calibrated on FP trajectories), which is the CPU INT8 fast path.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from ..calibset import collect_calibset
from ..denoiser import TorchDenoiser
from ..images import save_grid
from ..io import atomic_json_save
from ..zoo import ASSETS, TEACHER_PATH, build_model, load_model

log = logging.getLogger("pqcad-demo")
STUDENT_PATH = ASSETS / "fmnist_pqcad_w8a8.pt"
# The shipped student runs at half the FP steps: at DDIM 50 its FD-fmnist is +3.3 % against FP at 100 (10k samples,
# benchmarks/RESULTS.md, "PQCAD"), so halving the steps costs little quality and halves the latency.
SHIPPED_STUDENT_STEPS = 50


def retarget_for_onnxruntime(student: torch.nn.Module, spec, calib, method: str = "mse"):
    """Keep the student's trained weights, rebuild the quantizers in the ORT placement and calibrate them."""
    from ..quant import QuantConfig
    from ..train.ptq import ptq_student

    fp = build_model(spec, seed=None)
    fp_keys = fp.state_dict()
    fp.load_state_dict({k: v for k, v in student.state_dict().items() if k in fp_keys}, strict=True)
    model, _ = ptq_student(fp.eval(), QuantConfig(target="onnxruntime"), calib, method)
    return model


def plan_steps(
    trained_steps: int, calib_steps: int | None, fp_steps: int | None, student_steps: int | None
) -> tuple[int, int, bool]:
    """(FP steps, student steps, halved): a step-halved student replaces FP at twice its trained count."""
    halved = bool(calib_steps) and 2 * trained_steps == int(calib_steps)
    fp = fp_steps or (2 * trained_steps if halved else trained_steps)
    student = student_steps or (max(1, fp // 2) if halved else fp)
    if fp < 1 or student < 1:
        raise SystemExit(f"step counts must be >= 1 (FP {fp}, student {student})")
    return fp, student, halved


def _export(loaded, path: Path, quick: bool) -> dict:
    from ..export.pipeline import ExportOptions, export

    return export(loaded, path, ExportOptions(parity_samples=2 if quick else 8))


def _build_ort(onnx_path: Path, threads: int) -> Path:
    from ..runtime.build_cli import main as build_main

    engine = onnx_path.with_suffix(".ort.json")
    args = [
        "--onnx",
        str(onnx_path),
        "--saveEngine",
        str(engine),
        "--backend",
        "onnxruntime",
        "--skipInference",
    ]
    args += ["--ortThreads", str(threads)] if threads else []
    if build_main(args) != 0:
        raise RuntimeError(f"pqcad-build failed for {onnx_path}")
    return engine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pqcad-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="work folder (ONNX, engines, table, grid)"
    )
    p.add_argument("--student", type=Path, default=STUDENT_PATH, help="PQCAD student checkpoint")
    p.add_argument("--teacher", type=Path, default=TEACHER_PATH, help="FP teacher (.safetensors + .json)")
    p.add_argument(
        "--fp-steps", type=int, default=None, help="FP baseline DDIM steps (default: 2x a halved student's)"
    )
    p.add_argument(
        "--student-steps",
        type=int,
        default=None,
        help=f"student DDIM steps (default: {SHIPPED_STUDENT_STEPS} for the shipped student; half the FP steps for a "
        "step-halved student, else the FP steps)",
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and ONNX Runtime")
    p.add_argument(
        "--include-trt-form",
        action="store_true",
        help="also sample the TensorRT-form export on ORT (unfused there, and ORT's fused S8S8 kernels saturate on "
        "full-range weights: not a picture of what TensorRT computes)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 4 FP steps, batch 2, 1 repeat")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from .. import metrics
    from ..export.pipeline import Loaded, load_checkpoint
    from ..runtime.bench import BenchConfig, format_table, parse_engine, run_bench

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    teacher, spec = load_model(args.teacher)
    student = load_checkpoint(args.student)
    sampling = (student.meta or {}).get("sampling", {})
    trained_steps = int(sampling.get("steps") or 50)
    shipped = args.student.resolve() == STUDENT_PATH.resolve()
    fp_steps, student_steps, halved = plan_steps(
        trained_steps,
        sampling.get("calib_steps"),
        args.fp_steps,
        args.student_steps or (SHIPPED_STUDENT_STEPS if shipped else None),
    )
    batch, repeats = args.batch, args.repeats
    if args.quick:
        fp_steps, student_steps, batch, repeats = 4, 2 if student_steps < fp_steps else 4, 2, 1
    print(
        f"[1/4] student {args.student.name}: {student.qcfg.target} form, W{student.qcfg.weight_bits}A{student.qcfg.act_bits}, "
        f"{'step-halved: ' + str(student_steps) if halved else str(student_steps)} steps vs FP {fp_steps}"
    )

    calib = collect_calibset(
        TorchDenoiser(teacher),
        spec,
        n_trajectories=8 if args.quick else 32,
        steps=10 if args.quick else 50,
        n_points=3 if args.quick else 10,
        seed=4321,
        progress=False,
    )
    ort_student = retarget_for_onnxruntime(student.model, spec, calib)

    print(f"      calibration set + ORT placement: {time.perf_counter() - t0:.0f} s")
    print("[2/4] exporting ONNX with explicit Q/DQ (checker, ORT parity, TensorRT audit on each)")
    onnx = {
        "teacher_fp32": args.out / "teacher_fp32.onnx",
        "student_trt_form": args.out / "student_int8_trt.onnx",
        "student_ort_form": args.out / "student_int8_ort.onnx",
    }
    reports = {
        "teacher_fp32": _export(
            Loaded(teacher, spec, source=str(args.teacher)), onnx["teacher_fp32"], args.quick
        ),
        "student_trt_form": _export(student, onnx["student_trt_form"], args.quick),
        "student_ort_form": _export(
            Loaded(ort_student, spec, _qcfg(ort_student), {}, "PQCAD weights, ORT placement"),
            onnx["student_ort_form"],
            args.quick,
        ),
    }
    for name, r in reports.items():
        a = (r.get("audit") or {}).get("counts") or {}
        par = r.get("parity") or {}
        print(
            f"      {name}: {r.get('file_bytes', 0) / 1e6:.1f} MB, Q/DQ {r.get('counts')}, ORT parity rel-L2 "
            f"{par.get('rel_l2', float('nan')):.2e}, TensorRT audit {a}"
        )
    print(f"      exports done: {time.perf_counter() - t0:.0f} s")
    print("[3/4] building ONNX Runtime engines (pqcad-build --backend onnxruntime)")
    engines = {k: _build_ort(v, args.threads) for k, v in onnx.items()}

    print(
        f"[4/4] sampling on every engine: batch {batch}, same noise; FP at {fp_steps} steps, student at {student_steps}"
    )
    specs = [
        parse_engine(f"torch-fp32=torch:fp32@{fp_steps}"),
        parse_engine(f"ort-fp32=ort:{engines['teacher_fp32']}@{fp_steps}"),
        parse_engine(f"ort-int8-pqcad=ort:{engines['student_ort_form']}@{student_steps}"),
    ]
    if args.include_trt_form:
        specs.append(parse_engine(f"ort-int8-trt-form=ort:{engines['student_trt_form']}@{student_steps}"))
    cfg = BenchConfig(steps=fp_steps, batch=batch, repeats=repeats, warmup=1)
    result = run_bench(
        specs, teacher, spec, cfg, threads=args.threads, baselines=["ort-fp32"], metrics=metrics
    )
    images = result.pop("_images")
    result["exports"] = {
        k: {
            "file_bytes": r.get("file_bytes"),
            "counts": r.get("counts"),
            "parity": r.get("parity"),
            "audit_counts": (r.get("audit") or {}).get("counts"),
        }
        for k, r in reports.items()
    }
    result["student"] = {
        "path": str(args.student),
        "trained_steps": trained_steps,
        "halved": halved,
        "steps": student_steps,
        "fp_steps": fp_steps,
    }
    grid = args.out / "demo_grid.png"
    save_grid(torch.cat([images[s.label] for s in specs if s.label in images]), grid, nrow=batch)
    atomic_json_save(result, args.out / "demo.json")
    print()
    print(format_table(result))
    print(f"rows of {grid}: " + ", ".join(s.label for s in specs))
    print(f"JSON: {args.out / 'demo.json'}   total {time.perf_counter() - t0:.0f} s")
    if any(r["error"] for r in result["rows"]):
        return 1
    return 0


def _qcfg(model):
    from ..quant import get_quant_config

    return get_quant_config(model)


if __name__ == "__main__":
    sys.exit(main())
