"""Export table: time, size, Q/DQ and INT4 counts, ORT parity and TensorRT/ORT audit per model and form, plus ORT
CPU speed of the fmnist W8A8 exports (each target form) against the FP32 export.

Every quantized form is the library PTQ (``train.ptq.ptq_student``, max-abs) on a small calibration set collected
from the model itself: the shipped teacher for fmnist, seeded random weights for cifar10 and sd15 (their rows
measure the graph, not quality). ORT speed is per-call latency of an ``OrtRunner`` CPU session (ORT_ENABLE_ALL,
2 intra-op threads), summarised by ``timing.summarize``.

Runs on CPU (about 10 min without sd15; sd15-unet adds ~10-20 min and ~12 GB RAM):
    python benchmarks/export_table.py --skip sd15-unet
    python benchmarks/export_table.py --skip fmnist-ddpm cifar10-ddpm --tag sd15
    python benchmarks/export_table.py --quick          # smoke run: tiny-unet in fmnist's place, tiny-unet-cond
Writes benchmarks/results/export_table[_<tag>].json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from pqcad_deploy.export import ExportOptions, export
from pqcad_deploy.export.spec import ExportSpec, export_spec_for
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import ModelBundle, open_model
from pqcad_deploy.quant import QuantConfig
from pqcad_deploy.runtime.backends.ort_backend import OrtRunner
from pqcad_deploy.timing import environment_info, environment_line, summarize
from pqcad_deploy.train.calib import load_or_collect_calib
from pqcad_deploy.train.ptq import ptq_student

log = logging.getLogger("export_table")
RESULTS = Path(__file__).resolve().parent / "results"
# Calibration set per model: (trajectories, DDIM steps, points per trajectory). Small on purpose: the export is
# what is measured here, and sd15's UNet costs seconds per CPU call.
CALIB = {"fmnist-ddpm": (8, 20, 4), "cifar10-ddpm": (4, 20, 4), "sd15-unet": (1, 4, 2)}
QUICK_CALIB = (2, 4, 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    p.add_argument("--skip", nargs="*", default=[], help="model names to skip, e.g. sd15-unet")
    p.add_argument("--tag", default="", help="suffix of the JSON file name, e.g. sd15")
    p.add_argument("--keep", type=Path, help="folder to keep the ONNX files in (default: a temp folder)")
    p.add_argument("--speed-runs", type=int, default=30, help="timed ORT calls per file and batch")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny models, no sd15, few timed calls")
    args = p.parse_args(argv)
    args.main, args.second = "fmnist-ddpm", "cifar10-ddpm"
    if args.quick:
        args.main, args.second, args.speed_runs = "tiny-unet", "tiny-unet-cond", 3
        args.skip = [*args.skip, "sd15-unet"]
        args.tag = args.tag or "quick"
    return args


def short(name: str) -> str:
    """Label prefix of a zoo model: fmnist-ddpm -> fmnist, tiny-unet-cond -> tiny_unet_cond."""
    return name.removesuffix("-ddpm").replace("-", "_")


def ptq(fp: ModelBundle, target: str, bits: int) -> ModelBundle:
    """The library PTQ (max-abs) of ``fp`` on a calibration set collected from ``fp`` itself."""
    trajectories, steps, points = CALIB.get(fp.spec.name, QUICK_CALIB)
    collect = dict(
        n_trajectories=trajectories, steps=steps, n_points=points, seed=1234, batch_size=trajectories
    )
    calib = load_or_collect_calib(None, fp.model, fp.spec, "cpu", collect, progress=False)
    qcfg = QuantConfig(target=target, weight_bits=bits, calib_method="maxabs")
    model, _ = ptq_student(fp.model, qcfg, calib, "cpu")
    return ModelBundle(model, fp.spec, qcfg, source=f"{fp.source}, PTQ W{bits}A8 {target}")


def ort_speed(path: Path, espec: ExportSpec, batch: int, runs: int, warmup: int = 5) -> dict[str, float]:
    """Latency statistics (ms) of one ORT CPU session call at ``batch``, after ``warmup`` untimed calls."""
    feed = espec.sampler_inputs(batch, seed=7)
    with OrtRunner(
        path, providers="cpu", intra_op_threads=2, inter_op_threads=1, optimization="all"
    ) as runner:
        for _ in range(warmup):
            runner.infer(feed)
        ms = []
        for _ in range(runs):
            runner.infer(feed)
            ms.append(runner.last_inference_ms)
    return summarize(ms)


def row(label: str, rep: dict[str, Any]) -> dict[str, Any]:
    a = rep.get("audit", {}).get("counts", {})
    p = rep.get("parity", {})
    c = rep["counts"]
    return {
        "label": label,
        "export_s": rep.get("export_s"),
        "check_s": rep.get("check_s"),
        "MB": round(rep["file_bytes"] / 2**20, 2),
        "nodes": c["nodes"],
        "Q": c["QuantizeLinear"],
        "DQ": c["DequantizeLinear"],
        "int8_w": c["int8_weight_initializers"],
        "int4_w": c["int4_weight_initializers"],
        "rel_l2": p.get("rel_l2"),
        "tol": p.get("tol_rel_l2"),
        "fused_rel_l2": (p.get("ort_enable_all") or {}).get("rel_l2"),
        "audit": f"{a.get('int8', 0)} int8 / {a.get('int4', 0)} int4 / {a.get('float_blocked', 0)} blocked",
    }


def print_tables(result: dict[str, Any]) -> None:
    rows, speed = result["exports"], result["ort_cpu_speed"]
    print(environment_line(result["environment"]))
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    print("\nORT CPU (ORT_ENABLE_ALL, intra_op 2): label | batch | median ms | p10 | p90 | speed-up vs FP32")
    for s in speed:
        ms = s["ms"]
        print(
            f"{s['label']} | {s['batch']} | {ms['median']:.2f} | {ms['p10']:.2f} | {ms['p90']:.2f} | "
            f"{s['speedup_vs_fp32']}x"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    work = args.keep or Path(tempfile.mkdtemp(prefix="export_table_"))
    work.mkdir(parents=True, exist_ok=True)
    rows, speed, files = [], [], {}

    def run(label: str, bundle: ModelBundle, **opts: Any) -> None:
        files[label] = work / f"{label}.onnx"
        rows.append(row(label, export(bundle, files[label], ExportOptions(**opts))))
        log.info("%s", rows[-1])

    main_name = short(args.main)
    if args.main not in args.skip:
        fp = open_model(args.main)
        run(f"{main_name}_fp32", fp)
        run(
            f"{main_name}_fp16", open_model(args.main), precision="fp16"
        )  # export casts the model it is given
        for target in ("tensorrt", "onnxruntime"):
            for bits in (8, 4):
                run(f"{main_name}_w{bits}a8_{target}", ptq(fp, target, bits))
        espec = export_spec_for(fp.spec)
        for label in (f"{main_name}_{form}" for form in ("fp32", "w8a8_tensorrt", "w8a8_onnxruntime")):
            for b in (1, 8):
                speed.append(
                    {"label": label, "batch": b, "ms": ort_speed(files[label], espec, b, args.speed_runs)}
                )
        for s in speed:
            base = next(x for x in speed if x["label"] == f"{main_name}_fp32" and x["batch"] == s["batch"])
            s["speedup_vs_fp32"] = round(base["ms"]["median"] / s["ms"]["median"], 3)
    if args.second not in args.skip:
        run(f"{short(args.second)}_w8a8_tensorrt", ptq(open_model(args.second), "tensorrt", 8))
    if "sd15-unet" not in args.skip:
        q = ptq(open_model("sd15-unet"), "tensorrt", 8)
        run("sd15_w8a8_tensorrt_fp16", q, precision="fp16", parity_samples=1)
        del q
    result = {"environment": environment_info(), "exports": rows, "ort_cpu_speed": speed}
    print_tables(result)
    out = atomic_json_save(result, args.out / f"export_table{'_' + args.tag if args.tag else ''}.json")
    print(f"\nwrote {out}; models in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
