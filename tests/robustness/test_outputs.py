"""Output locations that would destroy an input, cannot be written, or are not files: refused before any work,
with the flag named, and every file that existed before is unchanged."""

from __future__ import annotations

import pytest

from . import hostile as h
from .harness import Case, run_case


def copy(*names: str):
    def setup(d, art):
        for n in names:
            art.copy(n, d)

    return setup


def file_at(name: str):
    return h.raw(name, b"an existing file")


PQ = ["--calib", "{calib}", "--steps", "2", "--batch-size", "2", "--device", "cpu"]
SAMPLE = ["--checkpoint", "{d}/teacher.safetensors", "--num-samples", "2", "--steps", "2", "--device", "cpu"]
EVAL = ["--checkpoint", "{d}/teacher.safetensors", "--num-samples", "2", "--steps", "1", "--device", "cpu"]
BENCH = "--checkpoint {teacher} --engine ort:{d}/teacher.ort.json --steps 1 --repeats 1 --device cpu".split()

OUTPUTS = [
    Case(
        "export-onnx-is-checkpoint",
        "pqcad-export",
        ["--checkpoint", "{d}/teacher.safetensors", "--onnx", "{d}/teacher.safetensors"],
        ["--onnx", "input"],
        copy("teacher"),
    ),
    Case(
        "export-onnx-is-sidecar",
        "pqcad-export",
        ["--checkpoint", "{d}/teacher.safetensors", "--onnx", "{d}/teacher.json"],
        ["--onnx", "teacher.json"],
        copy("teacher"),
    ),
    Case(
        "export-onnx-is-dir",
        "pqcad-export",
        ["--checkpoint", "{teacher}", "--onnx", "{d}/out"],
        ["--onnx", "directory"],
        h.folder("out"),
    ),
    Case(
        "export-onnx-parent-is-file",
        "pqcad-export",
        ["--checkpoint", "{teacher}", "--onnx", "{d}/f/u.onnx"],
        ["--onnx", "f"],
        file_at("f"),
    ),
    Case(
        "build-engine-is-onnx",
        "pqcad-build",
        ["--onnx", "{d}/teacher.onnx", "--saveEngine", "{d}/teacher.onnx", "--backend", "onnxruntime"],
        ["--saveEngine", "input"],
        copy("onnx"),
    ),
    Case(
        "build-engine-is-dir",
        "pqcad-build",
        ["--onnx", "{onnx}", "--saveEngine", "{d}/e", "--backend", "onnxruntime"],
        ["--saveEngine", "directory"],
        h.folder("e"),
    ),
    Case(
        "pqcad-out-is-teacher",
        "pqcad-train",
        ["pqcad", "--teacher", "{d}/teacher.safetensors", "--out", "{d}/teacher.safetensors", *PQ],
        ["--out", "input"],
        copy("teacher"),
    ),
    Case(
        "pqcad-out-is-teacher-sidecar",
        "pqcad-train",
        ["pqcad", "--teacher", "{d}/teacher.safetensors", "--out", "{d}/teacher.json", *PQ],
        ["--out", "teacher.json"],
        copy("teacher"),
    ),
    Case(
        "pqcad-out-is-calib",
        "pqcad-train",
        "pqcad --teacher {teacher} --calib {d}/calib.safetensors --out {d}/calib.safetensors --device cpu".split(),
        ["--out", "input"],
        copy("calib"),
    ),
    Case(
        "pqcad-out-is-resume",
        "pqcad-train",
        ["pqcad", "--teacher", "{teacher}", "--out", "{d}/student.pt", "--resume", "{d}/student.pt", *PQ],
        ["--out", "input"],
        copy("student"),
    ),
    Case(
        "ptq-out-is-calib-sidecar",
        "pqcad-train",
        "ptq --teacher {teacher} --calib {d}/calib.safetensors --out {d}/calib.json --device cpu".split(),
        ["--out", "calib.json"],
        copy("calib"),
    ),
    Case(
        "calib-out-json",
        "pqcad-train",
        ["calib", "--teacher", "{teacher}", "--out", "{d}/c.json", "--device", "cpu"],
        ["--out", "c.json"],
    ),
    Case(
        "calib-out-is-teacher",
        "pqcad-train",
        "calib --teacher {d}/teacher.safetensors --out {d}/teacher.safetensors --overwrite --device cpu".split(),
        ["--out", "input"],
        copy("teacher"),
    ),
    Case(
        "teacher-out-is-file",
        "pqcad-train",
        "teacher --model tiny-unet --data-dir {data} --out {d}/t --steps 2 --device cpu".split(),
        ["--out", "file"],
        file_at("t"),
    ),
    Case(
        "sample-out-is-checkpoint",
        "pqcad-sample",
        [*SAMPLE, "--out", "{d}/teacher.safetensors"],
        ["--out", "input"],
        copy("teacher"),
    ),
    Case(
        "sample-out-is-dir",
        "pqcad-sample",
        [*SAMPLE, "--out", "{d}/g"],
        ["--out", "directory"],
        h.folder("g"),
    ),
    Case(
        "sample-out-not-an-image",
        "pqcad-sample",
        [*SAMPLE, "--out", "{d}/g.txt"],
        ["--out", "g.txt"],
        copy("teacher"),
    ),
    Case(
        "sample-json-is-out",
        "pqcad-sample",
        [*SAMPLE, "--out", "{d}/g.png", "--json", "{d}/g.png"],
        ["--json", "another output"],
        copy("teacher"),
    ),
    Case(
        "eval-json-is-checkpoint",
        "pqcad-eval",
        [*EVAL, "--json", "{d}/teacher.json"],
        ["--json", "teacher.json"],
        copy("teacher"),
    ),
    Case(
        "eval-json-is-dir",
        "pqcad-eval",
        [*EVAL, "--json", "{d}/j"],
        ["--json", "directory"],
        lambda d, art: (copy("teacher")(d, art), (d / "j").mkdir()),
    ),
    Case(
        "bench-json-is-engine",
        "pqcad-bench",
        [*BENCH, "--json", "{d}/teacher.ort.json"],
        ["--json", "input"],
        copy("engine"),
    ),
    Case(
        "bench-grid-is-file",
        "pqcad-bench",
        [*BENCH, "--grid", "{d}/grids"],
        ["--grid", "file"],
        lambda d, art: (copy("engine")(d, art), file_at("grids")(d, art)),
    ),
    Case("demo-out-is-file", "pqcad-demo", ["--out", "{d}/demo", "--quick"], ["--out"], file_at("demo")),
]


@pytest.mark.parametrize("case", [c.param() for c in OUTPUTS])
def test_output_location_is_refused(server, art, case, tmp_path):
    run_case(server, art, case, tmp_path)


UNWRITABLE = [
    Case(
        "export-unwritable",
        "pqcad-export",
        ["--checkpoint", "{teacher}", "--onnx", "{ro}/u.onnx"],
        ["--onnx"],
    ),
    Case(
        "build-unwritable",
        "pqcad-build",
        ["--onnx", "{onnx}", "--saveEngine", "{ro}/e.ort.json", "--backend", "onnxruntime"],
        ["--saveEngine"],
    ),
    Case(
        "pqcad-unwritable",
        "pqcad-train",
        ["pqcad", "--teacher", "{teacher}", "--out", "{ro}/s.pt", *PQ],
        ["--out"],
    ),
    Case(
        "teacher-unwritable",
        "pqcad-train",
        "teacher --model tiny-unet --data-dir {data} --out {ro}/t --steps 2 --device cpu".split(),
        ["--out"],
    ),
    Case(
        "sample-json-unwritable",
        "pqcad-sample",
        ["--checkpoint", "{teacher}", "--out", "{d}/g.png", "--json", "{ro}/r.json", "--device", "cpu"],
        ["--json"],
    ),
    Case(
        "ptq-calib-unwritable",
        "pqcad-train",
        "ptq --teacher {teacher} --calib {ro}/c.safetensors --out {d}/s.pt --device cpu".split(),
        ["--calib"],
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in UNWRITABLE])
def test_unwritable_location_is_refused_before_work(server, art, case, tmp_path, readonly_dir):
    run_case(server, art, case, tmp_path, ro=readonly_dir)
