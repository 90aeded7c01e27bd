"""PTQ baseline table (issue 3): FD-fmnist and fidelity to FP for W8A8/W4A8 x {maxabs, percentile, mse} x
{tensorrt, onnxruntime} placement, on the shipped teacher with DDIM 50 and 100 steps.

Every model samples from the same initial noise as the FP teacher (batch i uses seed ``seed + i``), so
fidelity (PSNR, rel-L2) measures only the quantization error. Rows are written to the JSON after each
configuration, and ``--resume`` skips rows already there, so the grid can run in several <10 min chunks.

GPU (H100), full table in four chunks of a few minutes each (one calibration set, reused):
    python benchmarks/ptq_table.py --bits w8a8 --targets tensorrt --resume
    python benchmarks/ptq_table.py --bits w8a8 --targets onnxruntime --resume \
        --calib benchmarks/results/ptq_table_calib.safetensors
    (same --calib for: --bits w4a8 --targets tensorrt / --bits w4a8 --targets onnxruntime)
CPU smoke run:
    python benchmarks/ptq_table.py --quick --methods maxabs --bits w8a8 --out benchmarks/results/ptq_quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from pqcad_deploy import metrics
from pqcad_deploy.calibset import CalibSet, collect_calibset
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.io import atomic_json_save, atomic_write
from pqcad_deploy.quant import QuantConfig
from pqcad_deploy.sampling import make_scheduler, sample_many
from pqcad_deploy.train.ptq import BITS, ptq_student
from pqcad_deploy.zoo import TEACHER_PATH, build_model, load_model

log = logging.getLogger("ptq_table")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(TEACHER_PATH))
    p.add_argument("--steps", type=int, nargs="+", default=[50, 100])
    p.add_argument("--n", type=int, default=10000, help="samples per configuration and step count")
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--methods", nargs="+", default=["maxabs", "percentile", "mse"])
    p.add_argument("--bits", nargs="+", default=sorted(BITS), choices=sorted(BITS))
    p.add_argument("--targets", nargs="+", default=["tensorrt", "onnxruntime"])
    p.add_argument("--calib", default=None, help="saved calibset; else collected (and saved beside the JSON)")
    p.add_argument("--calib-trajectories", type=int, default=256)
    p.add_argument("--calib-steps", type=int, default=100)
    p.add_argument("--calib-points", type=int, default=20)
    p.add_argument("--calib-batches", type=int, default=None, help="cap on calibration batches (of --batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="benchmarks/results/ptq_table", help="path stem for .json and .md")
    p.add_argument("--resume", action="store_true", help="keep rows already in the JSON")
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run (n=32, steps 4 and 8)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.batch = min(args.n, 32), [4, 8], 32
        args.calib_trajectories, args.calib_steps, args.calib_points = 8, 10, 5
    return args


def _environment(device: torch.device) -> dict:
    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "device": str(device),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return env


def _row_key(r: dict) -> tuple:
    return (r["bits"], r["method"], r["target"], r["steps"])


def _markdown(result: dict) -> str:
    lines = [
        "# PTQ baselines (issue 3)",
        "",
        f"{result['env']['date']} on {result['env'].get('gpu', result['env']['device'])}; "
        f"n={result['n']} samples per row; command: `{result['env']['command']}`",
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


def _save(result: dict, stem: Path) -> None:
    atomic_json_save(result, stem.with_suffix(".json"))
    text = _markdown(result)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    atomic_write(stem.with_suffix(".md"), write)


@torch.inference_mode()
def _samples(model: torch.nn.Module, spec, args, steps: int, device) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    imgs = sample_many(
        TorchDenoiser(model),
        lambda: make_scheduler("ddim", **spec.scheduler),
        args.n,
        spec.sample_shape,
        steps,
        batch_size=args.batch,
        seed=args.seed,
        device=device,
        progress=False,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return imgs, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    teacher, spec = load_model(args.teacher)
    fp_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher = teacher.to(device).eval()

    old = (
        json.loads(stem.with_suffix(".json").read_text())
        if args.resume and stem.with_suffix(".json").is_file()
        else None
    )
    result = {"env": _environment(device), "n": args.n, "teacher": args.teacher, "fp": [], "rows": []}
    if old and old.get("n") == args.n:
        result["rows"], result["fp"] = old.get("rows", []), old.get("fp", [])
    done = {_row_key(r) for r in result["rows"]}

    if args.calib:
        cs = CalibSet.load(args.calib)
    else:
        cs = collect_calibset(
            TorchDenoiser(teacher),
            spec,
            n_trajectories=args.calib_trajectories,
            steps=args.calib_steps,
            n_points=args.calib_points,
            seed=args.seed + 10_000,  # calibration noise differs from the evaluation noise
            device=device,
            batch_size=args.batch,
        )
        cs.save(stem.parent / f"{stem.name}_calib.safetensors")
    result["calib"] = {"points": len(cs), **cs.meta}

    fp_images: dict[int, torch.Tensor] = {}
    for steps in args.steps:
        fp_images[steps], secs = _samples(teacher, spec, args, steps, device)
        if not any(r["steps"] == steps for r in result["fp"]):
            fd = metrics.fd_fmnist(fp_images[steps], device=device)
            result["fp"].append({"steps": steps, "fd": fd, "sample_s": round(secs, 2)})
            log.info("FP32 DDIM%d: FD %.3f (%.1fs)", steps, fd, secs)

    for bits in args.bits:
        wbits, abits = BITS[bits]
        for target in args.targets:
            for method in args.methods:
                todo = [s for s in args.steps if (bits, method, target, s) not in done]
                if not todo:
                    continue
                model = build_model(spec, seed=None)
                model.load_state_dict(fp_state)
                cfg = QuantConfig(target=target, weight_bits=wbits, act_bits=abits, calib_method=method)
                model, entry = ptq_student(model, cfg, cs, method, args.batch, args.calib_batches, device)
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
