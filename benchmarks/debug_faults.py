"""Does ``pqcad-debug`` find a known fault? One layer of a QDQ file is given a 50x wrong scale (weight or
activation quantizer, ``export.fault.scale_quantizer``) and the debugger must rank that layer first, on files from
three tools: our W8A8 export (library PTQ, TensorRT form), ONNX Runtime's ``quantize_static`` and NVIDIA Model
Optimizer (``modelopt.torch.quantization``, ``INT8_DEFAULT_CFG``, max calibration, exported through the same
TorchScript exporter; needs ``pip install nvidia-modelopt``, skipped with the reason otherwise). Every tool
calibrates on the same sampler-like feeds (``denoiser.sampler_feed``: unit-variance latents, timesteps across the
schedule), the distribution the debugger feeds too; a random-weight model's own trajectories are no calibration set.

    python benchmarks/debug_faults.py                                 # shipped teacher, 2-core CPU, about 5 minutes
    python benchmarks/debug_faults.py --model tiny-unet --quick       # smoke run
    python benchmarks/debug_faults.py --model tiny-unet --sources modelopt \\
        --save-modelopt tests/data/modelopt_tiny_unet_int8.onnx   # the tests' modelopt file (seeded random weights)
Writes benchmarks/results/debug_faults[_<model>].json.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx
import torch

from pqcad_deploy import quant
from pqcad_deploy.cli.common import refuse_bad_outputs
from pqcad_deploy.denoiser import UNetWrapper
from pqcad_deploy.export import ExportOptions, export, ort_quantize_static
from pqcad_deploy.export.fault import scale_quantizer
from pqcad_deploy.export.layer_debug import DEBUG_TIMESTEPS, debug_onnx, final_error
from pqcad_deploy.export.onnx_export import torch_to_onnx
from pqcad_deploy.export.spec import ExportSpec, export_spec_for
from pqcad_deploy.io import atomic_json_save
from pqcad_deploy.loading import ModelBundle, open_model
from pqcad_deploy.timing import environment_info

log = logging.getLogger("debug_faults")
RESULTS = Path(__file__).resolve().parent / "results"
SOURCES = ("pqcad", "quantize_static", "modelopt")
# (layer, quantizer) given the wrong scale: a decoder conv2's weights and a decoder conv1's input range. A fault in
# a resnet's conv1 *weights* is mostly undone by the GroupNorm after it (on the shipped teacher the final error
# moves by 2 %), so it would not make that layer the worst; the "x healthy" column shows each fault's real effect.
CASES = (
    ("/unet/up_blocks.0/resnets.0/conv2/Conv", "weight"),
    ("/unet/up_blocks.1/resnets.1/conv1/Conv", "act"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fmnist-ddpm", help="zoo name (shipped weights, else seeded random)")
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    p.add_argument("--timesteps", type=int, nargs="+", default=list(DEBUG_TIMESTEPS))
    p.add_argument("--batch", type=int, default=2, help="debugger feed batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, help="keep the ONNX files here (default: a temporary folder)")
    p.add_argument("--save-modelopt", type=Path, help="also copy the healthy modelopt file here")
    p.add_argument("--out", type=Path, help="JSON (default results/debug_faults[_<model>].json)")
    p.add_argument("--calib-batches", type=int, default=8, help="sampler-like feeds of 8 for every tool")
    p.add_argument("--quick", action="store_true", help="two timesteps, batch 1, two calibration feeds")
    args = p.parse_args(argv)
    refuse_bad_outputs(p, {"--out": args.out})
    if args.quick:
        args.timesteps, args.batch, args.calib_batches = [999, 100], 1, 2
    if args.save_modelopt and "modelopt" not in args.sources:
        p.error("--save-modelopt needs modelopt in --sources")
    return args


def sampler_feeds(espec: ExportSpec, n: int) -> list[dict[str, torch.Tensor]]:
    """The ``n`` sampler-like feeds of 8 every tool calibrates on."""
    return [espec.sampler_inputs(8, seed=seed) for seed in range(n)]


def calib_loop(espec: ExportSpec, n: int):
    """forward_loop(UNetWrapper) over :func:`sampler_feeds`, for our PTQ and for modelopt alike."""

    @torch.no_grad()
    def loop(wrapper: torch.nn.Module) -> None:
        for f in sampler_feeds(espec, n):
            wrapper(*[f[name] for name in espec.input_names])

    return loop


def make_pqcad(fp: ModelBundle, espec: ExportSpec, n: int, out: Path) -> Path:
    """Our W8A8 TensorRT form: the library quantizer placement, max-abs calibration."""
    cfg = quant.QuantConfig(target="tensorrt", calib_method="maxabs")
    model = quant.quantize_model(copy.deepcopy(fp.model).eval(), cfg)
    quant.calibrate(model, lambda m: calib_loop(espec, n)(UNetWrapper(m)), method=cfg.calib_method)
    export(
        ModelBundle(model, fp.spec, cfg, source=f"PTQ max-abs of {fp.source}"),
        out,
        ExportOptions(check=False),
    )
    return out


def make_modelopt(fp: ModelBundle, espec: ExportSpec, n: int, out: Path) -> Path:
    import modelopt.torch.quantization as mtq  # optional: pip install nvidia-modelopt

    wrapper = UNetWrapper(copy.deepcopy(fp.model)).eval()
    mtq.quantize(wrapper, mtq.INT8_DEFAULT_CFG, forward_loop=calib_loop(espec, n))
    with torch.no_grad():
        torch_to_onnx(wrapper, espec, out, 17, "fp32")
    model = onnx.load(out)
    model.doc_string = (
        f"nvidia-modelopt {importlib.metadata.version('nvidia-modelopt')} INT8_DEFAULT_CFG, max calib"
    )
    onnx.save(model, out)
    return out


def run_source(
    name: str, qdq: Path, fp_onnx: Path, work: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    kw = {"timesteps": args.timesteps, "batch": args.batch, "threads": args.threads, "max_exclude": 1}
    # what each fault adds to
    healthy = final_error(qdq, fp_onnx, args.timesteps, args.batch, threads=args.threads)
    for layer, which in CASES:
        broken = work / f"{name}_{which}_broken.onnx"
        scale_quantizer(qdq, broken, layer, which)
        t0 = time.perf_counter()
        rep = debug_onnx(broken, fp_onnx, **kw)
        names = [r["name"] for r in rep["layers"]]
        rows.append(
            {
                "source": name,
                "broken": f"{layer} ({which} scale x50)",
                "rank": names.index(layer) + 1 if layer in names else None,
                "top": names[0],
                "error_removed_top": rep["layers"][0]["error_removed"],
                "final_rel_l2": rep["final_rel_l2"],
                "healthy_rel_l2": healthy,
                "x_healthy": rep["final_rel_l2"] / healthy,
                "layers": len(names),
                "match": sorted({(r["match"] or "unmatched").split(" ")[0] for r in rep["layers"]}),
                "debug_s": round(time.perf_counter() - t0, 1),
            }
        )
        log.info("%s %s: rank %s", name, rows[-1]["broken"], rows[-1]["rank"])
    return rows


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    fp = open_model(args.model, random_weights=args.model.startswith("tiny"))
    tmp = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(tmp.name) if tmp else args.work
    work.mkdir(parents=True, exist_ok=True)
    espec = export_spec_for(fp.spec)
    fp_onnx = work / "fp32.onnx"
    export(fp, fp_onnx, ExportOptions(check=False))
    rows, skipped = [], {}
    for name in args.sources:
        qdq = work / f"{name}.onnx"
        try:
            if name == "pqcad":
                make_pqcad(fp, espec, args.calib_batches, qdq)
            elif name == "quantize_static":
                feeds = [
                    {k: v.numpy() for k, v in f.items()} for f in sampler_feeds(espec, args.calib_batches)
                ]
                ort_quantize_static(fp_onnx, qdq, feeds)
            else:
                make_modelopt(fp, espec, args.calib_batches, qdq)
        except ImportError as e:
            skipped[name] = f"{type(e).__name__}: {e}"
            log.warning("skipping %s: %s", name, skipped[name])
            continue
        if name == "modelopt" and args.save_modelopt:
            shutil.copyfile(qdq, args.save_modelopt)
            print(f"wrote {args.save_modelopt}")
        rows += run_source(name, qdq, fp_onnx, work, args)
    print(
        f"\npqcad-debug on broken files, model {args.model}, timesteps {args.timesteps}, batch {args.batch}"
    )
    print(
        f"{'source':<16} {'broken layer':<62} {'rank':>4} {'top removed':>11} {'rel-L2':>7} {'x healthy':>9} {'s':>6}"
    )
    for r in rows:
        print(
            f"{r['source']:<16} {r['broken']:<62} {r['rank'] or '-':>4} {r['error_removed_top']:>10.1%} "
            f"{r['final_rel_l2']:>7.4f} {r['x_healthy']:>9.2f} {r['debug_s']:>6.1f}"
        )
    # torch / onnx / onnxruntime versions; modelopt is not one of the project's packages
    env = environment_info()
    try:
        env["versions"]["nvidia-modelopt"] = importlib.metadata.version("nvidia-modelopt")
    except importlib.metadata.PackageNotFoundError:
        pass
    out = args.out or RESULTS / f"debug_faults{'' if args.model == 'fmnist-ddpm' else '_' + args.model}.json"
    doc = {
        "rows": rows,
        "skipped": skipped,
        "environment": env,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    atomic_json_save(doc, out)
    print(f"\nJSON: {out}")
    if tmp:
        tmp.cleanup()
    return 0 if rows and all(r["rank"] == 1 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
