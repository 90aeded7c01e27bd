"""``pqcad-demo``: the whole pipeline on the embedded defaults, on a CPU box, in a few minutes.

shipped FP teacher + shipped PQCAD student (W8A8, weights and step sizes trained; FP at 100 DDIM steps, the
student at 50) -> ONNX exports with explicit Q/DQ (checked: ONNX checker, ORT parity, TensorRT audit) -> ONNX
Runtime engines (``pqcad-build --backend onnxruntime``) -> the shared sampler on every engine from the same noise
-> one latency / quality table, a JSON record and a PNG grid (one row of samples per engine).

Two INT8 forms of the student are exported: the TensorRT form exactly as trained (what ``trtexec --stronglyTyped``
builds) and the ONNX Runtime form, the shipped student moved to ORT's DQ->op->Q placement and trained there
(``assets/fmnist_pqcad_w8a8_ort``; another ``--student`` is retargeted here without training), which is the CPU
INT8 fast path that the table samples; ``--include-trt-form`` samples the TensorRT form on ORT too (unfused there).

Then the text-to-image pipeline on the shipped conditional teacher (``demo_t2i``): prompt -> text encoder engine ->
UNet engine with classifier-free guidance -> image, FP32 and INT8, with the encoder time shown apart.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .. import metrics
from ..calibset import collect_calibset
from ..denoiser import TorchDenoiser
from ..errors import UsageError
from ..images import save_grid
from ..io import atomic_json_save
from ..loading import ModelBundle, open_model
from ..quant import QuantConfig, get_quant_config
from ..runtime.bench import BenchConfig, format_table, parse_engine, run_bench
from ..sampling import check_steps
from ..text import TextEncoderError, default_encoder_dir
from ..train.ptq import retarget
from ..zoo import ASSETS, T2I_TEACHER_PATH, TEACHER_PATH
from .common import (
    add_text_args,
    add_verbose,
    batch_int,
    check_output_path,
    count_int,
    make_parser,
    run_cli,
    setup_logging,
    steps_int,
    threads_int,
)
from .demo_steps import build_ort, export_checked
from .demo_t2i import run_t2i

STUDENT_PATH = ASSETS / "fmnist_pqcad_w8a8.safetensors"
# The same student moved to the ONNX Runtime placement and trained there (pqcad-train pqcad --init-student,
# benchmarks/RESULTS.md "Train what you deploy"): the CPU INT8 row; the TensorRT form exports STUDENT_PATH.
ORT_STUDENT_PATH = ASSETS / "fmnist_pqcad_w8a8_ort.safetensors"
# The shipped student runs at half the FP steps: at DDIM 50 its FD-fmnist is +3.3 % against FP at 100 (10k samples,
# benchmarks/RESULTS.md, "PQCAD"), so halving the steps costs little quality and halves the latency.
SHIPPED_STUDENT_STEPS = 50


def _retargeted(student: ModelBundle, teacher: ModelBundle, quick: bool) -> ModelBundle:
    """A student without an ORT-trained twin: its weights in the ORT placement, recalibrated on a small FP set
    (what `pqcad-train pqcad --init-student STUDENT --target onnxruntime --steps 0 --ptq-method mse` writes)."""
    calib = collect_calibset(
        TorchDenoiser(teacher.model),
        teacher.spec,
        n_trajectories=8 if quick else 32,
        steps=10 if quick else 50,
        n_points=3 if quick else 10,
        seed=4321,
        progress=False,
    )
    model, _ = retarget(
        student.model, teacher.spec, QuantConfig(target="onnxruntime", calib_method="mse"), calib
    )
    return ModelBundle(model, teacher.spec, get_quant_config(model), {}, "PQCAD weights, ORT placement")


def plan_steps(
    trained_steps: int, calib_steps: int | None, fp_steps: int | None, student_steps: int | None
) -> tuple[int, int, bool]:
    """(FP steps, student steps, halved): a step-halved student replaces FP at twice its trained count."""
    halved = bool(calib_steps) and 2 * trained_steps == int(calib_steps)
    fp = fp_steps or (2 * trained_steps if halved else trained_steps)
    student = student_steps or (max(1, fp // 2) if halved else fp)
    if fp < 1 or student < 1:
        raise UsageError(f"step counts must be >= 1 (FP {fp}, student {student})")
    return fp, student, halved


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("pqcad-demo", __doc__)
    p.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="work folder (ONNX, engines, table, grid)"
    )
    p.add_argument("--student", default=str(STUDENT_PATH), help="PQCAD student checkpoint")
    p.add_argument("--teacher", default=str(TEACHER_PATH), help="FP teacher (.safetensors + .json)")
    p.add_argument(
        "--fp-steps",
        type=steps_int,
        default=None,
        help="FP baseline DDIM steps (default: 2x a halved student's)",
    )
    p.add_argument(
        "--student-steps",
        type=steps_int,
        default=None,
        help=f"student DDIM steps (default: {SHIPPED_STUDENT_STEPS} for the shipped student; half the FP steps for a "
        "step-halved student, else the FP steps)",
    )
    p.add_argument(
        "--ort-student",
        default=None,
        help="student trained in the onnxruntime placement for the CPU INT8 row (default: the shipped one with the "
        "shipped --student; for another --student, that student retargeted here without training)",
    )
    p.add_argument("--batch-size", type=batch_int, default=8, help="images per sampler run")
    p.add_argument("--repeats", type=count_int, default=2, help="timed runs per engine")
    p.add_argument(
        "--threads", type=threads_int, default=2, help="intra-op threads for torch and ONNX Runtime"
    )
    p.add_argument(
        "--include-trt-form",
        action="store_true",
        help="also sample the TensorRT-form export on ORT (unfused there, and ORT's fused S8S8 kernels saturate on "
        "full-range weights: not a picture of what TensorRT computes)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 4 FP steps, batch 2, 1 repeat")
    p.add_argument(
        "--t2i",
        choices=["auto", "on", "off"],
        default="auto",
        help="also run the text-to-image pipeline on the shipped conditional teacher (auto: when it and the text "
        "encoder are installed)",
    )
    p.add_argument("--prompt", action="append", default=None, help="text-to-image prompt (repeatable)")
    add_text_args(p)
    add_verbose(p)
    return p


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    check_output_path(
        args.out / "demo.json", inputs=[args.student, args.teacher, args.ort_student], what="--out"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = open_model(args.teacher)
    student = open_model(args.student)
    sampling = student.meta.get("sampling") or {}
    trained_steps = int(sampling.get("steps") or 50)
    shipped = Path(args.student).resolve() == STUDENT_PATH.resolve()
    fp_steps, student_steps, halved = plan_steps(
        trained_steps,
        sampling.get("calib_steps"),
        args.fp_steps,
        args.student_steps or (SHIPPED_STUDENT_STEPS if shipped else None),
    )
    check_steps(fp_steps, teacher.spec.scheduler, "--fp-steps")
    check_steps(student_steps, teacher.spec.scheduler, "--student-steps")
    batch, repeats = args.batch_size, args.repeats
    if args.quick:
        fp_steps, student_steps, batch, repeats = 4, 2 if student_steps < fp_steps else 4, 2, 1
    qc = student.qcfg
    print(
        f"[1/4] student {Path(args.student).name}: {qc.target} form, W{qc.weight_bits}A{qc.act_bits}, "
        f"{'step-halved: ' + str(student_steps) if halved else str(student_steps)} steps vs FP {fp_steps}"
    )
    ort_path = args.ort_student or (ORT_STUDENT_PATH if shipped and ORT_STUDENT_PATH.is_file() else None)
    if ort_path is not None:
        ort_student = open_model(ort_path)
        if ort_student.qcfg is None or ort_student.qcfg.target != "onnxruntime":
            raise UsageError(
                f"--ort-student {ort_path} is not a student of the onnxruntime placement; train one with "
                "pqcad-train pqcad --init-student STUDENT --target onnxruntime."
            )
        print(f"      ONNX Runtime form: {Path(ort_path).name} (trained in the ORT placement)")
    else:
        ort_student = _retargeted(student, teacher, args.quick)
        print(
            f"      ONNX Runtime form: retargeted here (calibration set + PTQ {time.perf_counter() - t0:.0f} s)"
        )
    print("[2/4] exporting ONNX with explicit Q/DQ (checker, ORT parity, TensorRT audit on each)")
    onnx = {
        "teacher_fp32": args.out / "teacher_fp32.onnx",
        "student_trt_form": args.out / "student_int8_trt.onnx",
        "student_ort_form": args.out / "student_int8_ort.onnx",
    }
    sources = {"teacher_fp32": teacher, "student_trt_form": student, "student_ort_form": ort_student}
    reports = {k: export_checked(sources[k], onnx[k], 2 if args.quick else 8) for k in onnx}
    for name, r in reports.items():
        a = (r.get("audit") or {}).get("counts") or {}
        par = r.get("parity") or {}
        print(
            f"      {name}: {r.get('file_bytes', 0) / 1e6:.1f} MB, Q/DQ {r.get('counts')}, ORT parity rel-L2 "
            f"{par.get('rel_l2', float('nan')):.2e}, TensorRT audit {a}"
        )
    print(f"      exports done: {time.perf_counter() - t0:.0f} s")
    print("[3/4] building ONNX Runtime engines (what pqcad-build --backend onnxruntime does)")
    engines = {k: build_ort(v, args.threads) for k, v in onnx.items()}
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
        specs, teacher.model, teacher.spec, cfg, threads=args.threads, baselines=["ort-fp32"], metrics=metrics
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
        "ort_form": str(ort_path) if ort_path is not None else "retargeted at demo time (no training)",
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
    failed = any(r["error"] for r in result["rows"])
    if _want_t2i(args.t2i):
        print()
        t2i = run_t2i(args, args.out, t0)
        failed = failed or any(r["error"] for r in t2i["rows"])
        print(f"JSON: {args.out / 't2i.json'}   total {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


def _want_t2i(choice: str) -> bool:
    """on: always (a missing teacher or encoder is then an error); auto: when both are installed."""
    if choice != "auto":
        return choice == "on"
    try:
        default_encoder_dir()
    except TextEncoderError:
        print("(text-to-image part skipped: the text encoder wheel is not installed; see README)")
        return False
    if not T2I_TEACHER_PATH.is_file():
        print(f"(text-to-image part skipped: {T2I_TEACHER_PATH.name} is not shipped in this install)")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, quiet_default=True)
    return run_cli("pqcad-demo", run, args)


if __name__ == "__main__":
    sys.exit(main())
