"""PTQ baseline table: FD-fmnist and fidelity to FP for W8A8/W4A8 x {maxabs, percentile, mse} x
{tensorrt, onnxruntime} placement, on the shipped teacher with DDIM 50 and 100 steps.

Every row is the library PTQ (``train.ptq.ptq_student``: every point of one calibration set, method =
``QuantConfig.calib_method``), the same estimator as the PQCAD table's PTQ rows. Every model samples from the same
initial noise as the FP teacher (batch i uses seed ``seed + i``), so fidelity (PSNR, rel-L2) measures only the
quantization error. Rows are written to the JSON after each configuration, and ``--resume`` skips rows already
there, so the grid can run in several short chunks.

GPU (H100), full table in four chunks of a few minutes each (one calibration set, collected once and reused):
    python benchmarks/ptq_table.py --bits w8a8 --targets tensorrt --resume
    python benchmarks/ptq_table.py --bits w8a8 --targets onnxruntime --resume
    (then --bits w4a8 with each target)
CPU smoke run:
    python benchmarks/ptq_table.py --quick --methods maxabs --bits w8a8
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy import metrics
from pqcad_deploy.cli.common import add_calib_args, add_device, calib_collect_kwargs, resolve_device
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.io import atomic_json_save, atomic_write
from pqcad_deploy.loading import open_model
from pqcad_deploy.quant import QuantConfig, parse_bits
from pqcad_deploy.quant.config import CALIB_METHODS, TARGETS
from pqcad_deploy.sampling import make_scheduler, sample_many
from pqcad_deploy.timing import DeviceTimer, environment_info
from pqcad_deploy.train.calib import load_or_collect_calib
from pqcad_deploy.train.ptq import ptq_student
from pqcad_deploy.zoo import TEACHER_PATH

log = logging.getLogger("ptq_table")
BITS = ("w8a8", "w4a8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--teacher", default=str(TEACHER_PATH), help="FP teacher (.safetensors + .json) or zoo name"
    )
    p.add_argument("--steps", type=int, nargs="+", default=[50, 100])
    p.add_argument("--n", type=int, default=10000, help="samples per configuration and step count")
    p.add_argument("--batch", type=int, default=2000, help="sampling and PTQ calibration batch")
    p.add_argument("--methods", nargs="+", default=list(CALIB_METHODS), choices=CALIB_METHODS)
    p.add_argument("--bits", nargs="+", default=list(BITS), choices=BITS)
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    p.add_argument("--seed", type=int, default=0, help="evaluation noise seed")
    p.add_argument("--out", default="benchmarks/results/ptq_table", help="path stem for .json and .md")
    p.add_argument("--resume", action="store_true", help="keep rows already in the JSON")
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run (n=32, steps 4 and 8)")
    add_calib_args(p)  # default set: <out stem>_calib.safetensors, collected once and reused
    add_device(p)
    # the sets the recorded table used: collected in batches of 2000 (the noise is seeded per batch) from seed 10000
    p.set_defaults(calib_trajectories=256, calib_points=20, calib_batch_size=2000, calib_seed=10_000)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.batch = min(args.n, 32), [4, 8], 32
        args.calib_trajectories, args.calib_steps, args.calib_points = 8, 10, 5
        args.out = args.out if args.out != p.get_default("out") else "benchmarks/results/ptq_table_quick"
    return args


def _row_key(r: dict[str, Any]) -> tuple:
    return (r["bits"], r["method"], r["target"], r["steps"])


def _markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    device = env.get("gpu", {}).get("name") or env["cpu"]
    lines = [
        "# PTQ baselines",
        "",
        f"{env['date_utc']} on {device}; n={result['n']} samples per row; command: `{env['command']}`",
        "",
        "| bits | method | target | DDIM steps | FD-fmnist | PSNR vs FP (dB) | rel-L2 vs FP | calib s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["fp"]:
        lines.append(f"| FP32 | - | - | {r['steps']} | {r['fd']:.3f} | - | - | - |")
    for r in sorted(result["rows"], key=_row_key):
        lines.append(
            f"| {r['bits']} | {r['method']} | {r['target']} | {r['steps']} | {r['fd']:.3f} | "
            f"{r['psnr_db']:.2f} | {r['rel_l2']:.4f} | {r['calib_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _save(result: dict[str, Any], stem: Path) -> None:
    atomic_json_save(result, stem.with_suffix(".json"))
    text = _markdown(result)
    atomic_write(stem.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text))


@torch.inference_mode()
def _samples(model: torch.nn.Module, spec, args, steps: int, device) -> tuple[torch.Tensor, float]:
    timer = DeviceTimer(device)
    mark = timer.start()
    sched = lambda: make_scheduler("ddim", **spec.scheduler)  # noqa: E731
    imgs = sample_many(
        TorchDenoiser(model),
        sched,
        args.n,
        spec.sample_shape,
        steps,
        args.batch,
        args.seed,
        device,
        progress=False,
    )
    return imgs, timer.stop(mark) / 1e3


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    device = resolve_device(args.device)
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fp = open_model(args.teacher)
    teacher, spec = fp.model.to(device).eval(), fp.spec

    json_path = stem.with_suffix(".json")
    old = json.loads(json_path.read_text()) if args.resume and json_path.is_file() else None
    result = {"environment": environment_info(), "n": args.n, "teacher": fp.source, "fp": [], "rows": []}
    if old and old.get("n") == args.n:
        result["rows"], result["fp"] = old.get("rows", []), old.get("fp", [])
    done = {_row_key(r) for r in result["rows"]}

    calib_path = args.calib or stem.parent / f"{stem.name}_calib.safetensors"
    cs = load_or_collect_calib(calib_path, teacher, spec, device, calib_collect_kwargs(args))
    result["calib"] = {"path": str(calib_path), "points": len(cs), **cs.meta}

    fp_images: dict[int, torch.Tensor] = {}
    for steps in args.steps:
        fp_images[steps], secs = _samples(teacher, spec, args, steps, device)
        if not any(r["steps"] == steps for r in result["fp"]):
            fd = metrics.fd_fmnist(fp_images[steps], device=device)
            result["fp"].append({"steps": steps, "fd": fd, "sample_s": round(secs, 2)})
            log.info("FP32 DDIM%d: FD %.3f (%.1fs)", steps, fd, secs)

    for bits in args.bits:
        wbits, abits = parse_bits(bits)
        for target in args.targets:
            for method in args.methods:
                todo = [s for s in args.steps if (bits, method, target, s) not in done]
                if not todo:
                    continue
                qcfg = QuantConfig(target=target, weight_bits=wbits, act_bits=abits, calib_method=method)
                model, entry = ptq_student(teacher, qcfg, cs, device, batch_size=args.batch)
                for steps in todo:
                    imgs, secs = _samples(model, spec, args, steps, device)
                    row = {
                        "bits": bits,
                        "method": method,
                        "target": target,
                        "steps": steps,
                        "fd": metrics.fd_fmnist(imgs, device=device),
                        **metrics.fidelity(imgs, fp_images[steps]),
                        "calib_s": entry["seconds"],
                        "sample_s": round(secs, 2),
                    }
                    result["rows"].append(row)
                    log.info("%s", row)
                    _save(result, stem)
    _save(result, stem)
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
