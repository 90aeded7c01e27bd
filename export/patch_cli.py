"""``pqcad-patch``: apply a personalization patch to an exported QDQ graph (only its weight scales change).

    pqcad-train personalize --model student.safetensors --images subject/ --out sks.safetensors
    pqcad-patch --onnx unet.onnx --patch sks.safetensors --out unet.sks.onnx
    pqcad-build --onnx unet.sks.onnx --saveEngine unet.sks.ort.json      # then build and run it like any export

The patch's layout fingerprint (layer names, shapes and integer codes) must match the graph's: a patch for another
model or another quantization is refused before anything is written. The INT8 codes of the output are
byte-identical to the input's (checked). ``--verify`` opens the result in ONNX Runtime and runs one call.

An S2 patch (``--method s2``: one scale set per timestep interval), or an interval manifest as ``--onnx`` (a
timestep-aware student's export), gives one graph per interval (``OUT_STEM.i<k>.onnx``) and their interval manifest
(``OUT_STEM.manifest.json``), which pqcad-build and pqcad-bench take like an exported one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pqcad_deploy.cli.common import (
    add_json,
    add_verbose,
    check_output_path,
    make_parser,
    run_cli,
    setup_logging,
)
from pqcad_deploy.io import atomic_json_save, require_file
from pqcad_deploy.patch import load_patch

from .patch_apply import apply_patch


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    p = make_parser("pqcad-patch", doc[0].strip("`"), "\n\n".join(doc[1:]))
    p.add_argument(
        "--onnx",
        type=Path,
        required=True,
        help="the base student's exported QDQ graph (or its interval manifest)",
    )
    p.add_argument("--patch", type=Path, required=True, help="patch .safetensors (pqcad-train personalize)")
    p.add_argument(
        "--out", type=Path, required=True, help="the personalized graph to write (a file set: its .onnx stem)"
    )
    p.add_argument("--verify", action="store_true", help="open the result in ONNX Runtime and run one call")
    add_json(p, "what was patched")
    add_verbose(p)
    return p


def verify(path: Path) -> dict[str, float]:
    """One ONNX Runtime call on zeros of the graph's input shapes (dynamic dims: 1): finite output or an error."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = np.zeros(shape, dtype=np.int64 if "int" in i.type else np.float32)
    out = session.run(None, feeds)[0]
    if not np.isfinite(out).all():
        raise RuntimeError(
            f"{path}: ONNX Runtime produced non-finite outputs; the patch's scales are broken."
        )
    return {"output_abs_mean": float(np.abs(out).mean())}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def run(a: argparse.Namespace) -> int:
        require_file(a.onnx, "ONNX graph")
        out = check_output_path(a.out, [a.onnx, a.patch])
        info = apply_patch(a.onnx, load_patch(a.patch), out)
        files = [Path(f) for f in info.get("files", [info["out"]])]
        if a.verify:
            info["verify"] = [verify(f) for f in files]
        what = f"{len(files)} interval graphs and their manifest " if "files" in info else ""
        print(f"patched {info['layers']} layers ({info['scale_values']} scale values) in {info['seconds']} s -> "
              f"{what}{info['out']}")  # fmt: skip
        if a.json:
            atomic_json_save(info, a.json)
        return 0

    return run_cli("pqcad-patch", run, args)


if __name__ == "__main__":
    sys.exit(main())
