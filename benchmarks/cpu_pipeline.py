"""CPU end-to-end pipeline benchmark (issue 5 targets): fmnist, 50 DDIM steps, batch 1 and 8, one table.

Rows: torch FP32 eager; ORT FP32 (our FP32 export); ORT INT8 from our W8A8 export for both targets
(``tensorrt``: input-only Q/DQ; ``onnxruntime``: DQ->op->Q units with uint8 activations, which ORT fuses);
ORT ``quantize_static`` (QDQ, per-channel, U8S8, Conv/MatMul/Gemm only) on the FP32 export, calibrated on the
same inputs. Quality: PSNR / rel-L2 of the final images against torch FP32 from the same noise, and
FD-fmnist with ``--quality-samples N``. Targets checked at the end (against torch FP32 and ORT FP32).

Run on the 2-core CPU box (about 10-15 minutes; nothing else running):
    python benchmarks/cpu_pipeline.py --threads 2
    python benchmarks/cpu_pipeline.py --student-ort student_ort.pt --student-trt student.pt --quality-samples 1000
Writes benchmarks/results/cpu_pipeline_<UTC date>.json and the ONNX files under --work (default runs/cpu_pipeline).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.runtime.bench import BenchConfig, format_table, parse_engine, run_bench
from pqcad_deploy.sampling import make_scheduler, sample
from pqcad_deploy.zoo import TEACHER_PATH, build_model, get_spec, load_model

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("cpu_pipeline")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("runs/cpu_pipeline"), help="folder for ONNX files")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--calib-batches", type=int, default=8, help="calibration batches of 8 (from FP DDIM trajectories)"
    )
    p.add_argument("--student-trt", type=Path, help="trained student (.pt) for the tensorrt-target row")
    p.add_argument("--student-ort", type=Path, help="trained student (.pt) for the onnxruntime-target row")
    p.add_argument("--quality-samples", type=int, default=0, help="images per engine for FD-fmnist")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def calibration_inputs(model, spec, n_batches: int, steps: int) -> list[dict[str, torch.Tensor]]:
    """(x_t, t) pairs spread over FP DDIM trajectories: timestep-aware calibration data."""
    batches: list[dict[str, torch.Tensor]] = []
    from pqcad_deploy.denoiser import TorchDenoiser

    every = max(1, steps // n_batches)

    def grab(i, t, x, eps, x_next):
        if i % every == 0 and len(batches) < n_batches:
            batches.append({"sample": x.clone(), "timestep": t.clone()})

    sample(
        TorchDenoiser(model),
        make_scheduler("ddim", **spec.scheduler),
        (8, *spec.sample_shape),
        steps=steps,
        seed=123,
        callback=grab,
    )
    return batches


def ptq_student(model, target: str, calib: list[dict[str, torch.Tensor]]):
    """Max-abs W8A8 PTQ with the project's quantizers (a stand-in when no trained student is given)."""
    from pqcad_deploy.denoiser import UNetWrapper
    from pqcad_deploy.quant import QuantConfig, calibrate, quantize_model

    qcfg = QuantConfig(target=target)
    m = quantize_model(copy.deepcopy(model).eval(), qcfg)
    w = UNetWrapper(m)

    def loop(_):
        with torch.no_grad():
            for b in calib:
                w(b["sample"], b["timestep"])

    calibrate(m, loop, method="maxabs")
    return m, qcfg


def export_onnx(model, spec, path: Path, qcfg=None) -> dict:
    from pqcad_deploy.export.pipeline import ExportOptions, Loaded, export

    return export(Loaded(model, spec, qcfg, source=str(path.name)), path, ExportOptions(strict_audit=False))


def ort_quantize_static(fp32: Path, out: Path, calib: list[dict[str, torch.Tensor]]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{k: v.numpy() for k, v in b.items()} for b in calib])

        def get_next(self):
            return next(self.it, None)

    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # symbolic inference fails on the UNet
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
    )


def check_targets(rows: list[dict], batch: int) -> list[str]:
    by = {r["label"]: r for r in rows if not r["error"]}
    int8 = by.get("ort-int8-ortq")
    out = []
    if not int8:
        return ["ort-int8-ortq missing: targets not checked"]

    def sx(b):
        return by[b]["e2e_ms"]["median"] / int8["e2e_ms"]["median"] if b in by else float("nan")

    need = 2.5 if batch == 1 else 2.0
    out.append(f"b{batch}: INT8 (ORT target) vs torch FP32 {sx('torch-fp32'):.2f}x (target >= {need}x)")
    out.append(f"b{batch}: INT8 (ORT target) vs ORT FP32 {sx('ort-fp32'):.2f}x (target >= 1.5x)")
    out.append(
        f"b{batch}: INT8 (ORT target) vs ORT quantize_static {sx('ort-ptq-u8s8'):.2f}x (target >= 1.0x)"
    )
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    spec = get_spec("fmnist-ddpm")
    if TEACHER_PATH.is_file():
        model, spec = load_model(TEACHER_PATH)
        weights = "shipped teacher"
    else:
        model, weights = build_model(spec, seed=0).eval(), "random (seed 0): quality columns are meaningless"
    log.info("weights: %s", weights)
    calib = calibration_inputs(model, spec, args.calib_batches, args.steps)
    files = {"fp32": args.work / "fmnist_fp32.onnx", "ptq": args.work / "fmnist_ptq_u8s8.onnx"}
    reports = {"fp32": export_onnx(model, spec, files["fp32"])}
    for target, student in (("tensorrt", args.student_trt), ("onnxruntime", args.student_ort)):
        key = "int8_trtq" if target == "tensorrt" else "int8_ortq"
        files[key] = args.work / f"fmnist_{key}.onnx"
        if student is not None:
            from pqcad_deploy.student import load_student

            qm, _, qcfg, _ = load_student(student)
        else:
            qm, qcfg = ptq_student(model, target, calib)
        reports[key] = export_onnx(qm, spec, files[key], qcfg)
    ort_quantize_static(files["fp32"], files["ptq"], calib)
    engines = [
        "torch-fp32=torch:fp32",
        f"ort-fp32=ort:{files['fp32']}",
        f"ort-int8-trtq=ort:{files['int8_trtq']}",
        f"ort-int8-ortq=ort:{files['int8_ortq']}",
        f"ort-ptq-u8s8=ort:{files['ptq']}",
    ]
    try:
        from pqcad_deploy import metrics
    except ImportError:
        metrics = None
        log.warning("pqcad_deploy.metrics not available: quality columns skipped")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"cpu_pipeline_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "cpu_pipeline", "weights": weights, "exports": reports, "runs": {}, "targets": []}
    for batch in args.batches:
        cfg = BenchConfig(
            steps=args.steps, batch=batch, repeats=args.repeats, quality_samples=args.quality_samples
        )
        res = run_bench(
            [parse_engine(e) for e in engines],
            model,
            spec,
            cfg,
            threads=args.threads,
            baselines=["torch-fp32", "ort-fp32"],
            metrics=metrics,
        )
        res.pop("_images")
        print(format_table(res))
        result["targets"] += check_targets(res["rows"], batch)
        result["runs"][f"b{batch}"] = res
        atomic_json_save(result, out)
    print("\n".join(result["targets"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
