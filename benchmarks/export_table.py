"""Export table: time, size, Q/DQ and INT4 counts, ORT parity and TensorRT/ORT audit per model and form,
plus ORT CPU speed of the fmnist W8A8 exports (each target form) against the FP32 export.

Runs on CPU (about 10 min without sd15; sd15-unet adds ~10-20 min and ~12 GB RAM):
    python benchmarks/export_table.py --skip sd15-unet
    python benchmarks/export_table.py --skip fmnist-ddpm cifar10-ddpm --tag sd15
Models are PTQ-calibrated (max-abs) on random sampler-like inputs; fmnist uses the shipped teacher when present.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from pqcad_deploy.export.pipeline import ExportOptions, Loaded, export, random_model
from pqcad_deploy.export.spec import export_spec_for
from pqcad_deploy.zoo import TEACHER_PATH, load_model

log = logging.getLogger("export_table")


def ptq(loaded: Loaded, target: str, bits: int, n_batches: int, batch: int) -> Loaded:
    from pqcad_deploy.quant import QuantConfig, calibrate, quantize_model

    cfg = QuantConfig(target=target, weight_bits=bits)
    quantize_model(loaded.model, cfg)
    es = export_spec_for(loaded.spec)

    def loop(m):
        for s in range(n_batches):
            f = es.sampler_inputs(batch, seed=100 + s)
            extra = (
                {"encoder_hidden_states": f["encoder_hidden_states"]} if "encoder_hidden_states" in f else {}
            )
            with torch.no_grad():
                m(f["sample"], f["timestep"], **extra)

    calibrate(loaded.model, loop)
    return Loaded(loaded.model, loaded.spec, cfg, {}, loaded.source + f", PTQ W{bits}A8 {target}")


def base_model(name: str) -> Loaded:
    if name == "fmnist-ddpm" and TEACHER_PATH.is_file():
        m, spec = load_model(TEACHER_PATH)
        return Loaded(m, spec, source=str(TEACHER_PATH.name))
    return random_model(name)


def ort_speed(path: Path, espec, batch: int, warmup: int = 5, runs: int = 30) -> dict:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {k: v.numpy() for k, v in espec.sampler_inputs(batch, seed=7).items()}
    for _ in range(warmup):
        sess.run(None, feed)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return {
        "median_ms": statistics.median(ts),
        "p10_ms": ts[len(ts) // 10],
        "p90_ms": ts[(9 * len(ts)) // 10],
    }


def row(label: str, rep: dict) -> dict:
    a = rep.get("audit", {}).get("counts", {})
    p = rep.get("parity", {})
    return {
        "label": label,
        "export_s": rep.get("export_s"),
        "check_s": rep.get("check_s"),
        "MB": round(rep["file_bytes"] / 2**20, 2),
        "nodes": rep["counts"]["nodes"],
        "Q": rep["counts"]["QuantizeLinear"],
        "DQ": rep["counts"]["DequantizeLinear"],
        "int8_w": rep["counts"]["int8_weight_initializers"],
        "int4_w": rep["counts"]["int4_weight_initializers"],
        "rel_l2": p.get("rel_l2"),
        "tol": p.get("tol_rel_l2"),
        "fused_rel_l2": (p.get("ort_enable_all") or {}).get("rel_l2"),
        "audit": f"{a.get('int8', 0)} int8 / {a.get('int4', 0)} int4 / {a.get('float_blocked', 0)} blocked",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--skip", nargs="*", default=[], help="model names to skip, e.g. sd15-unet")
    ap.add_argument("--calib-batches", type=int, default=4)
    ap.add_argument("--tag", default="", help="suffix of the JSON file name, e.g. sd15")
    ap.add_argument("--keep", help="folder to keep the ONNX files in (default: a temp folder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    work = Path(args.keep or tempfile.mkdtemp(prefix="export_table_"))
    work.mkdir(parents=True, exist_ok=True)
    rows, speed, files = [], [], {}

    def run(label, loaded, **opts):
        path = work / f"{label}.onnx"
        rep = export(loaded, path, ExportOptions(**opts))
        files[label] = path
        rows.append(row(label, rep))
        log.info("%s", rows[-1])
        return rep

    fmnist = "fmnist-ddpm" not in args.skip
    if fmnist:
        run("fmnist_fp32", base_model("fmnist-ddpm"))
        run("fmnist_fp16", base_model("fmnist-ddpm"), precision="fp16")
        for target in ("tensorrt", "onnxruntime"):
            for bits in (8, 4):
                q = ptq(base_model("fmnist-ddpm"), target, bits, args.calib_batches, 8)
                run(f"fmnist_w{bits}a8_{target}", q)
    if "cifar10-ddpm" not in args.skip:
        run("cifar10_w8a8_tensorrt", ptq(random_model("cifar10-ddpm"), "tensorrt", 8, args.calib_batches, 4))
    if "sd15-unet" not in args.skip:
        q = ptq(random_model("sd15-unet"), "tensorrt", 8, 2, 1)
        run("sd15_w8a8_tensorrt_fp16", q, precision="fp16", parity_samples=1)
        del q
    es = export_spec_for(base_model("fmnist-ddpm").spec)
    for label in ("fmnist_fp32", "fmnist_w8a8_tensorrt", "fmnist_w8a8_onnxruntime") if fmnist else ():
        for b in (1, 8):
            speed.append({"label": label, "batch": b, **ort_speed(files[label], es, b)})
    for s in speed:
        base = next(x for x in speed if x["label"] == "fmnist_fp32" and x["batch"] == s["batch"])
        s["speedup_vs_fp32"] = round(base["median_ms"] / s["median_ms"], 3)

    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    print("\nORT CPU (ORT_ENABLE_ALL, intra_op 2): label | batch | median ms | p10 | p90 | speed-up vs FP32")
    for s in speed:
        print(f"{s['label']} | {s['batch']} | {s['median_ms']:.2f} | {s['p10_ms']:.2f} | {s['p90_ms']:.2f} | "
              f"{s['speedup_vs_fp32']}x")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "numpy": np.__version__},
        "command": " ".join([sys.executable, *sys.argv]),
        "exports": rows,
        "ort_cpu_speed": speed,
    }  # fmt: skip
    name = f"export_table{'_' + args.tag if args.tag else ''}.json"
    (out / name).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out / name}; models in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
