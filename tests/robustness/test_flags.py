"""Numbers and flag combinations taken on trust: zero, negative, NaN, inf and overflowing values for every count,
rate and scale; bits going up; flags that do not apply in a mode; unknown zoo names; CUDA on a CPU-only machine.
Each is refused before any work with one line that names the flag (argparse's own usage error counts)."""

from __future__ import annotations

import pytest
import torch

from .harness import Case, run_case

HUGE = "99999999999999999999999"  # overflows every C integer type

SAMPLE = "--checkpoint {teacher} --out {d}/g.png --num-samples 2 --steps 2 --device cpu".split()
EVAL = ["--checkpoint", "{teacher}", "--num-samples", "2", "--steps", "1", "--device", "cpu"]
EXPORT = ["--checkpoint", "{teacher}", "--onnx", "{d}/u.onnx"]
BUILD = ["--onnx", "{onnx}", "--saveEngine", "{d}/e.ort.json", "--backend", "onnxruntime"]
BENCH = "--checkpoint {teacher} --engine torch:fp32 --steps 1 --repeats 1 --device cpu".split()
PTQ = ["ptq", "--teacher", "{teacher}", "--calib", "{calib}", "--out", "{d}/s.pt", "--device", "cpu"]
PQCAD = (
    "pqcad --teacher {teacher} --calib {calib} --out {d}/s.pt --steps 2 --batch-size 2 --device cpu".split()
)
TEACHER = (
    "teacher --model tiny-unet --data-dir {data} --out {d}/t --steps 2 --batch-size 2 --device cpu".split()
)
CALIB = ["calib", "--teacher", "{teacher}", "--out", "{d}/c.safetensors", "--device", "cpu"]
DEMO = ["--out", "{d}/demo", "--quick"]


def bad(prog: str, base: list[str], flag: str, value: str, names: list[str] | None = None) -> Case:
    """``base`` with ``flag value`` appended (argparse keeps the last value of a repeated flag)."""
    cid = f"{prog.removeprefix('pqcad-')}{'-' + base[0] if prog == 'pqcad-train' else ''}{flag}={value[:12]}"
    return Case(cid, prog, [*base, flag, value], names or [flag])


NUMBERS = [
    # pqcad-sample
    *(bad("pqcad-sample", SAMPLE, "--steps", v) for v in ("0", "-3", HUGE, "nan", "2.5")),
    *(bad("pqcad-sample", SAMPLE, "--num-samples", v) for v in ("0", HUGE)),
    *(bad("pqcad-sample", SAMPLE, "--seed", v) for v in ("-1", HUGE)),
    *(bad("pqcad-sample", SAMPLE, "--guidance-scale", v) for v in ("nan", "inf", "-1", "1e999")),
    bad(
        "pqcad-sample", SAMPLE, "--steps", "5000", ["--steps", "5000", "1000"]
    ),  # beyond the training timesteps
    # pqcad-eval
    *(bad("pqcad-eval", EVAL, "--num-samples", v) for v in ("1", HUGE)),
    *(bad("pqcad-eval", EVAL, "--batch-size", v) for v in ("0", HUGE)),
    bad("pqcad-eval", EVAL, "--seed", HUGE),
    bad("pqcad-eval", [*EVAL, "--reference", "{teacher}"], "--reference-steps", "0"),
    # pqcad-export
    *(bad("pqcad-export", EXPORT, "--opset", v) for v in ("0", "99", "-17")),
    *(bad("pqcad-export", EXPORT, "--batch-size", v) for v in ("0", HUGE)),
    bad("pqcad-export", EXPORT, "--parity-samples", "0"),
    # pqcad-build
    *(bad("pqcad-build", BUILD, "--iterations", v) for v in ("-5", "0", HUGE)),
    *(bad("pqcad-build", BUILD, "--warmUp", v) for v in ("-1", HUGE)),
    *(bad("pqcad-build", BUILD, "--ortThreads", v) for v in ("-3", "0", HUGE)),
    bad("pqcad-build", BUILD, "--builderOptimizationLevel", "9"),
    bad("pqcad-build", BUILD, "--minShapes", "sample:0x1x16x16"),
    bad("pqcad-build", BUILD, "--optShapes", "sample:2x3x16x16,timestep:2", ["--optShapes", "network"]),
    # pqcad-bench
    *(bad("pqcad-bench", BENCH, "--repeats", v) for v in ("0", HUGE)),
    *(bad("pqcad-bench", BENCH, "--steps", v) for v in ("0", HUGE)),
    *(bad("pqcad-bench", BENCH, "--batch-size", v) for v in ("0", "-1")),
    *(bad("pqcad-bench", BENCH, "--threads", v) for v in ("0", HUGE)),
    bad("pqcad-bench", BENCH, "--warmup", HUGE),
    bad("pqcad-bench", BENCH, "--seed", "-1"),
    bad("pqcad-bench", BENCH, "--num-samples", "-1"),
    bad("pqcad-bench", BENCH, "--engine", "torch:fp64", ["--engine", "fp64"]),
    bad("pqcad-bench", BENCH, "--engine", "ort:{onnx}@0", ["--engine", "@0"]),
    bad("pqcad-bench", BENCH, "--engine", "ort:{onnx}@5000", ["--engine", "5000"]),
    bad("pqcad-bench", BENCH, "--baseline", "nope", ["--baseline", "nope"]),
    # pqcad-train pqcad / ptq / calib / teacher
    *(
        bad("pqcad-train", PQCAD, "--bits", v, ["--bits"])
        for v in ("w4a8:w8a8", "w9a8", "garbage", "w8a8:w4a8:w2a8")
    ),
    *(bad("pqcad-train", PQCAD, "--lr", v) for v in ("-1", "nan", "inf")),
    bad("pqcad-train", [*PQCAD, "--lr", "0"], "--lr-quant", "0", ["--lr", "--lr-quant"]),
    *(bad("pqcad-train", PQCAD, "--steps", v) for v in ("-1", HUGE)),
    *(bad("pqcad-train", PQCAD, "--batch-size", v) for v in ("0", HUGE)),
    bad("pqcad-train", PQCAD, "--beta", "1.5"),
    bad("pqcad-train", PQCAD, "--save-every", "0"),
    bad("pqcad-train", PQCAD, "--seed", HUGE),
    bad("pqcad-train", PQCAD, "--calib-steps", "1"),
    bad("pqcad-train", PQCAD, "--calib-trajectories", "0"),
    bad("pqcad-train", PTQ, "--bits", "w8a4", ["--bits"]),
    bad("pqcad-train", PTQ, "--percentile", "nan"),
    bad("pqcad-train", CALIB, "--calib-steps", "5000", ["--calib-steps", "5000"]),
    bad("pqcad-train", CALIB, "--guidance-scale", "inf"),
    *(bad("pqcad-train", TEACHER, "--lr", v) for v in ("0", "-1")),
    bad("pqcad-train", TEACHER, "--steps", "0"),
    bad("pqcad-train", TEACHER, "--batch-size", HUGE),
    bad("pqcad-train", TEACHER, "--ema-decay", "2"),
    bad("pqcad-train", TEACHER, "--time-limit", "nan"),
    bad(
        "pqcad-train",
        ["classifier", "--data-dir", "{data}", "--out", "{d}/c.safetensors", "--device", "cpu"],
        "--batch-size",
        "256",
        ["--batch-size", "256"],
    ),  # fmt: skip  (more than the 64 training images)
    # pqcad-demo (the CLI contract holds for it too)
    bad("pqcad-demo", DEMO, "--batch-size", "0"),
    bad("pqcad-demo", DEMO, "--repeats", "-1"),
]

MODES = [
    Case(
        "export-check-only-with-onnx",
        "pqcad-export",
        ["--check-only", "{onnx}", "--onnx", "{d}/x.onnx"],
        ["--onnx"],
    ),
    Case(
        "export-check-only-with-opset",
        "pqcad-export",
        ["--check-only", "{onnx}", "--opset", "17"],
        ["--opset"],
    ),
    Case("export-text-int8-without-encoder", "pqcad-export", [*EXPORT, "--text-int8"], ["--text-int8"]),
    Case(
        "export-random-weights-with-file", "pqcad-export", [*EXPORT, "--random-weights"], ["--random-weights"]
    ),
    Case("bench-random-weights-with-file", "pqcad-bench", [*BENCH, "--random-weights"], ["--random-weights"]),
    Case(
        "teacher-embeddings-unconditional",
        "pqcad-train",
        [*TEACHER, "--embeddings", "{calib}"],
        ["--embeddings"],
    ),
    Case(
        "eval-reference-with-images",
        "pqcad-eval",
        ["--images", "{d}", "--reference", "{teacher}"],
        ["--reference"],
    ),
    Case(
        "eval-reference-steps-alone", "pqcad-eval", [*EVAL, "--reference-steps", "5"], ["--reference-steps"]
    ),
    Case("eval-steps-with-images", "pqcad-eval", ["--images", "{d}", "--steps", "5"], ["--steps"]),
    Case("sample-prompt-unconditional", "pqcad-sample", [*SAMPLE, "--prompt", "a red dress"], ["--prompt"]),
    Case("bench-duplicate-labels", "pqcad-bench", [*BENCH, "--engine", "torch:fp32"], ["labels"]),
    Case(
        "pqcad-teacher-is-student",
        "pqcad-train",
        ["pqcad", "--teacher", "{student}", "--calib", "{calib}", "--out", "{d}/s.pt", "--device", "cpu"],
        ["--teacher"],
    ),
]

ZOO_AND_DEVICE = [
    Case(
        "sample-unknown-zoo",
        "pqcad-sample",
        ["--checkpoint", "tiny-unett", "--out", "{d}/g.png"],
        ["tiny-unett", "tiny-unet"],
    ),
    Case("export-unknown-zoo", "pqcad-export", ["--checkpoint", "sd15", "--onnx", "{d}/u.onnx"], ["sd15"]),
    Case("bench-unknown-zoo", "pqcad-bench", ["--checkpoint", "nope", "--engine", "torch:fp32"], ["nope"]),
    Case(
        "ptq-unknown-zoo", "pqcad-train", ["ptq", "--teacher", "nope-net", "--out", "{d}/s.pt"], ["nope-net"]
    ),
    Case(
        "teacher-unknown-zoo",
        "pqcad-train",
        ["teacher", "--model", "nope-net", "--out", "{d}/t"],
        ["nope-net"],
    ),
    Case("eval-unknown-zoo", "pqcad-eval", ["--checkpoint", "nope-net", "--num-samples", "2"], ["nope-net"]),
    *(
        Case(
            f"{prog.removeprefix('pqcad-')}-{argv[0] if prog == 'pqcad-train' else ''}-device-{dev}",
            prog,
            [*argv, "--device", dev],
            ["--device", dev],
        )
        for prog, argv in (
            ("pqcad-sample", SAMPLE),
            ("pqcad-eval", EVAL),
            ("pqcad-bench", BENCH),
            ("pqcad-train", PQCAD),
            ("pqcad-train", TEACHER),
            ("pqcad-train", CALIB),
        )
        for dev in (("cuda",) if not torch.cuda.is_available() else ()) + ("tpu",)
    ),
    Case(
        "sample-device-garbage", "pqcad-sample", [*SAMPLE, "--device", "cuda:abc"], ["--device", "cuda:abc"]
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in NUMBERS + MODES + ZOO_AND_DEVICE])
def test_bad_flag_is_refused(server, art, case, tmp_path):
    run_case(server, art, case, tmp_path)
