"""Corrupt, truncated and hostile files of every kind the commands read: checkpoints (.pt, safetensors + sidecar),
calibration sets, ONNX models, ORT engines and the Fashion-MNIST folder. Each is refused before any work with one
line that names the file, and nothing on disk changes (no pickled code runs: it would create ``PWNED``)."""

from __future__ import annotations

import pytest
import torch

from . import hostile as h
from .harness import Case, run_case

SAMPLE_ST = [
    "pqcad-sample",
    "--checkpoint {d}/student_st.safetensors --out {d}/g.png --num-samples 2 --steps 2 --device cpu".split(),
]


def export_case(id, setup, name="student.pt", names=None):
    argv = ["--checkpoint", f"{{d}}/{name}", "--onnx", "{d}/u.onnx"]
    return Case(id, "pqcad-export", argv, names or [name], setup)


def sample_case(id, setup, name="student.pt"):
    argv = ["--checkpoint", f"{{d}}/{name}", "--out", "{d}/g.png", "--num-samples", "2", "--steps", "2"]
    return Case(id, "pqcad-sample", [*argv, "--device", "cpu"], [name], setup)


CHECKPOINTS = [
    # .pt files
    export_case("pt-empty", h.raw("student.pt", b"")),
    export_case("pt-random-bytes", h.raw("student.pt", bytes(range(256)) * 64)),
    export_case("pt-truncated", h.truncated("student", "student.pt")),
    export_case(
        "pt-pickled-code", h.torch_obj("student.pt", lambda: {"format": "pqcad-student", "x": h.Evil()})
    ),
    export_case("pt-list", h.torch_obj("student.pt", lambda: [1, 2, 3])),
    export_case(
        "pt-foreign-format", h.torch_obj("student.pt", lambda: {"format": "other", "state_dict": {}})
    ),
    export_case(
        "pt-meta-not-json",
        h.torch_obj("student.pt", lambda: {"format": "pqcad-student", "meta": "{x", "state_dict": {}}),
    ),
    export_case("pt-meta-list", h.student_meta(lambda m: [m])),
    export_case("pt-meta-null-model", h.student_meta(h.meta_set("model", None))),
    export_case("pt-meta-shape-strings", h.student_meta(h.meta_set("model.sample_shape", ["a", "b", "c"]))),
    export_case("pt-meta-cls-hostile", h.student_meta(h.meta_set("model.cls", "os.system"))),
    export_case("pt-meta-config-unknown-kw", h.student_meta(h.meta_set("model.config.evil", 1))),
    export_case(
        "pt-meta-scheduler-types", h.student_meta(h.meta_set("model.scheduler", {"num_train_timesteps": "x"}))
    ),
    export_case("pt-meta-quant-null", h.student_meta(h.meta_set("quant", None))),
    export_case("pt-meta-quant-list", h.student_meta(h.meta_set("quant", [8, 8]))),
    export_case("pt-meta-bits-string", h.student_meta(h.meta_set("quant.weight_bits", "8"))),
    export_case("pt-meta-quant-unknown-key", h.student_meta(h.meta_set("quant.evil", True))),
    export_case("pt-meta-version-string", h.student_meta(h.meta_set("format_version", "1"))),
    export_case(
        "pt-meta-huge-declared", h.student_meta(h.meta_set("model.config.block_out_channels", [2048, 2048]))
    ),
    export_case(
        "pt-meta-absurd-declared", h.student_meta(h.meta_set("model.config.block_out_channels", [8192, 8192]))
    ),
    export_case("pt-state-not-tensors", h.student_tensors(lambda sd: sd.update({"conv_in.weight": "x"}))),
    export_case("pt-state-nan", h.student_tensors(lambda sd: sd["conv_in.weight"].fill_(float("nan")))),
    export_case("pt-state-missing-key", h.student_tensors(lambda sd: sd.pop("conv_in.weight"))),
    export_case(
        "pt-bits-edited",
        h.student_tensors(
            lambda sd: [v.fill_(4) for k, v in sd.items() if k.endswith("weight_quantizer.num_bits")]
        ),
    ),
    sample_case("pt-meta-sampling-steps-string", h.student_meta(h.meta_set("sampling", {"steps": "fifty"}))),
    sample_case("pt-meta-sampling-steps-negative", h.student_meta(h.meta_set("sampling", {"steps": -3}))),
    sample_case("pt-meta-sampling-list", h.student_meta(h.meta_set("sampling", [50]))),
    sample_case("pt-meta-history-dict", h.student_meta(h.meta_set("history", {"a": 1}))),
    # safetensors + JSON sidecar: FP models and students
    export_case("st-bad-header-size", h.raw("m.safetensors", b"\xff" * 8 + b"{}"), "m.safetensors"),
    export_case(
        "st-header-not-json", h.raw("m.safetensors", (8).to_bytes(8, "little") + b"not json"), "m.safetensors"
    ),
    export_case("st-truncated", h.truncated("teacher", "teacher.safetensors"), "teacher.safetensors"),
    export_case("st-sidecar-missing", h.sidecar("teacher", None), "teacher.safetensors", ["teacher.json"]),
    export_case(
        "st-sidecar-invalid-json",
        h.sidecar("teacher", None, "{not json"),
        "teacher.safetensors",
        ["teacher.json"],
    ),
    export_case(
        "st-sidecar-list", h.sidecar("teacher", lambda m: [m]), "teacher.safetensors", ["teacher.json"]
    ),
    export_case(
        "st-sidecar-null", h.sidecar("teacher", None, "null"), "teacher.safetensors", ["teacher.json"]
    ),
    export_case(
        "st-sidecar-model-null",
        h.sidecar("teacher", h.meta_set("model", None)),
        "teacher.safetensors",
        ["teacher.json"],
    ),
    export_case(
        "st-sidecar-name-int",
        h.sidecar("teacher", h.meta_set("model.name", 3)),
        "teacher.safetensors",
        ["teacher.json"],
    ),
    export_case(
        "st-sidecar-huge-declared",
        h.sidecar("teacher", h.meta_set("model.config.block_out_channels", [8192, 8192])),
        "teacher.safetensors",
        ["teacher.json"],
    ),
    export_case(
        "st-sidecar-scheduler-types",
        h.sidecar("teacher", h.meta_set("model.scheduler", {"beta_schedule": 7})),
        "teacher.safetensors",
        ["teacher.json"],
    ),
    export_case("st-torn-pair", h.torn_pair("teacher"), "teacher.safetensors"),
    export_case(
        "st-student-quant-list",
        h.sidecar("student_st", h.meta_set("quant", [])),
        "student_st.safetensors",
        ["student_st.json"],
    ),
    export_case("st-student-torn-pair", h.torn_pair("student_st"), "student_st.safetensors"),
    Case(
        "st-student-sampling-float-steps",
        *SAMPLE_ST,
        ["student_st.json"],
        h.sidecar("student_st", h.meta_set("sampling", {"steps": 1e9})),
    ),
    # every command opens models the same way: one representative each
    Case(
        "sample-dir-checkpoint",
        "pqcad-sample",
        ["--checkpoint", "{d}/ck.pt", "--out", "{d}/g.png"],
        ["ck.pt", "directory"],
        h.folder("ck.pt"),
    ),
    Case(
        "bench-garbage-checkpoint",
        "pqcad-bench",
        ["--checkpoint", "{d}/student.pt", "--engine", "torch:fp32", "--device", "cpu"],
        ["student.pt"],
        h.raw("student.pt", b"junk"),
    ),
    Case(
        "eval-garbage-reference",
        "pqcad-eval",
        "--checkpoint {teacher} --reference {d}/r.pt --num-samples 2 --steps 1 --device cpu".split(),
        ["r.pt"],
        h.raw("r.pt", b"junk"),
    ),
    Case(
        "ptq-teacher-truncated",
        "pqcad-train",
        ["ptq", "--teacher", "{d}/teacher.safetensors", "--calib", "{calib}", "--out", "{d}/s.pt"],
        ["teacher.safetensors"],
        h.truncated("teacher", "teacher.safetensors"),
    ),
    Case(
        "pqcad-resume-garbage",
        "pqcad-train",
        "pqcad --teacher {teacher} --calib {calib} --out {d}/s.pt --resume {d}/r.pt --steps 2 --device cpu".split(),
        ["r.pt"],
        h.raw("r.pt", b"junk"),
    ),
    Case(
        "pqcad-resume-pickled-code",
        "pqcad-train",
        "pqcad --teacher {teacher} --calib {calib} --out {d}/s.pt --resume {d}/r.pt --steps 2 --device cpu".split(),
        ["r.pt"],
        h.torch_obj("r.pt", lambda: {"format": "pqcad-train-state/1", "x": h.Evil()}),
    ),
    Case(
        "pqcad-resume-wrong-types",
        "pqcad-train",
        "pqcad --teacher {teacher} --calib {calib} --out {d}/s.pt --resume {d}/r.pt --steps 2 --device cpu".split(),
        ["r.pt"],
        h.torch_obj("r.pt", lambda: {"format": "pqcad-train-state/1", "config": [], "stage": "one"}),
    ),
    Case(
        "teacher-resume-wrong-types",
        "pqcad-train",
        "teacher --model tiny-unet --data-dir {data} --out {d}/t --steps 2 --resume {d}/r.pt --device cpu".split(),
        ["r.pt"],
        h.torch_obj("r.pt", lambda: {"format": "pqcad-teacher-train/1", "model": {}, "ema": {}, "step": "x"}),
    ),
]


def ptq_case(id, setup, names=("calib.safetensors",), name="calib.safetensors"):
    argv = [
        "ptq",
        "--teacher",
        "{teacher}",
        "--calib",
        f"{{d}}/{name}",
        "--out",
        "{d}/s.pt",
        "--device",
        "cpu",
    ]
    return Case(id, "pqcad-train", argv, list(names), setup)


def _calib_side(patch, raw_text=None):
    return h.sidecar("calib", patch, raw_text)


CALIB = [
    ptq_case("calib-random-bytes", h.raw("calib.safetensors", b"\x00" * 64)),
    ptq_case("calib-truncated", h.truncated("calib", "calib.safetensors")),
    ptq_case("calib-is-dir", h.folder("calib.safetensors"), ["calib.safetensors", "directory"]),
    ptq_case(
        "calib-not-a-calib-set",
        lambda d, art: art.copy("teacher", d) and (d / "teacher.safetensors").rename(d / "calib.safetensors"),
    ),
    ptq_case("calib-sidecar-invalid-json", _calib_side(None, "{oops"), ["calib.json"]),
    ptq_case("calib-sidecar-list", _calib_side(lambda m: [m]), ["calib.json"]),
    ptq_case("calib-sidecar-null", _calib_side(None, "null"), ["calib.json"]),
    ptq_case("calib-sidecar-steps-string", _calib_side(h.meta_set("steps", "ten")), ["calib.json", "steps"]),
    ptq_case("calib-sidecar-steps-negative", _calib_side(h.meta_set("steps", -4)), ["calib.json", "steps"]),
    ptq_case("calib-sidecar-model-int", _calib_side(h.meta_set("model", 5)), ["calib.json", "model"]),
    ptq_case("calib-sidecar-guidance-string", _calib_side(h.meta_set("guidance_scale", "x")), ["calib.json"]),
    ptq_case("calib-sidecar-missing", _calib_side(None), ["calib.json"]),
    ptq_case("calib-torn-pair", h.torn_pair("calib")),
    ptq_case("calib-nan-targets", h.calib_tensors(lambda t: t["eps_fp"].fill_(float("nan")))),
    ptq_case("calib-length-mismatch", h.calib_tensors(lambda t: t.update(t=t["t"][:-3]))),
    ptq_case("calib-timestep-out-of-range", h.calib_tensors(lambda t: t["t"].fill_(5000))),
    ptq_case("calib-wrong-rank", h.calib_tensors(lambda t: t.update(x_t=t["x_t"][:, 0]))),
    ptq_case("calib-int-images", h.calib_tensors(lambda t: t.update(x_t=t["x_t"].to(torch.int32)))),
    Case(
        "pqcad-calib-nan-targets",
        "pqcad-train",
        "pqcad --teacher {teacher} --calib {d}/calib.safetensors --out {d}/s.pt --steps 4 --batch-size 2 --device cpu".split(),
        ["calib.safetensors"],
        h.calib_tensors(lambda t: t["x_next2"].fill_(float("inf"))),
    ),
]

BUILD = ["--backend", "onnxruntime", "--saveEngine", "{d}/e.ort.json", "--iterations", "1", "--warmUp", "0"]


def build_case(id, setup, name="m.onnx", names=None):
    return Case(id, "pqcad-build", ["--onnx", f"{{d}}/{name}", *BUILD], names or [name], setup)


ONNX = [
    build_case("onnx-empty", h.raw("m.onnx", b"")),
    build_case("onnx-random-bytes", h.raw("m.onnx", bytes(range(256)) * 16)),
    build_case("onnx-truncated", h.truncated("onnx", "m.onnx", companions=False)),
    build_case("onnx-dir", h.folder("m.onnx"), names=["m.onnx", "directory"]),
    build_case("onnx-missing-external-data", h.onnx_missing_external_data("m.onnx")),
    Case(
        "check-only-truncated",
        "pqcad-export",
        ["--check-only", "{d}/m.onnx"],
        ["m.onnx"],
        h.truncated("onnx", "m.onnx", companions=False),
    ),
    Case(
        "check-only-dir",
        "pqcad-export",
        ["--check-only", "{d}/m.onnx"],
        ["m.onnx", "directory"],
        h.folder("m.onnx"),
    ),
    Case(
        "bench-onnx-random-bytes",
        "pqcad-bench",
        "--checkpoint {teacher} --engine ort:{d}/m.onnx --steps 1 --repeats 1 --warmup 0 --device cpu".split(),
        ["m.onnx"],
        h.raw("m.onnx", b"\x01\x02junk" * 30),
    ),
    Case(
        "bench-onnx-not-a-unet",
        "pqcad-bench",
        "--checkpoint {teacher} --engine ort:{d}/m.onnx --steps 1 --repeats 1 --warmup 0 --device cpu".split(),
        ["m.onnx"],
        h.tiny_add_onnx("m.onnx"),
    ),
]


def engine_case(id, setup, names=("e.ort.json",)):
    argv = "--checkpoint {teacher} --engine ort:{d}/e.ort.json --steps 1 --repeats 1 --warmup 0 --device cpu".split()
    return Case(id, "pqcad-bench", argv, list(names), setup)


ENGINES = [
    engine_case("engine-invalid-json", h.engine_json(raw_text="{")),
    engine_case("engine-list", h.engine_json(raw_text="[]")),
    engine_case("engine-null", h.engine_json(raw_text="null")),
    engine_case("engine-foreign-format", h.engine_json(h.meta_set("format", "trt"))),
    engine_case("engine-version-string", h.engine_json(h.meta_set("version", "1"))),
    engine_case("engine-model-missing", h.engine_json(h.meta_set("model", "gone.opt.onnx"))),
    engine_case("engine-model-traversal", h.engine_json(h.meta_set("model", "../../etc/passwd"))),
    engine_case("engine-model-null", h.engine_json(h.meta_set("model", None))),
    engine_case("engine-session-null", h.engine_json(h.meta_set("session", None))),
    engine_case("engine-threads-string", h.engine_json(h.meta_set("session.intra_op_num_threads", "two"))),
    engine_case("engine-threads-huge", h.engine_json(h.meta_set("session.intra_op_num_threads", 10**12))),
    engine_case(
        "engine-inter-threads-negative", h.engine_json(h.meta_set("session.inter_op_num_threads", -2))
    ),
    engine_case("engine-providers-string", h.engine_json(h.meta_set("session.providers", 5))),
    engine_case("engine-providers-unknown", h.engine_json(h.meta_set("session.providers", ["warp"]))),
    engine_case(
        "engine-opt-level-unknown", h.engine_json(h.meta_set("session.graph_optimization_level", "max"))
    ),
    engine_case("engine-garbage-model", h.engine_garbage_model()),
]


def data_case(id, mutate, names=("data",)):
    argv = "teacher --model tiny-unet --data-dir {d}/data --out {d}/t --steps 2 --batch-size 2 --device cpu".split()
    return Case(id, "pqcad-train", argv, list(names), h.fmnist(mutate) if mutate else None)


DATA = [
    data_case("data-dir-missing", None, ["--data-dir", "data"]),
    Case(
        "data-dir-is-file",
        "pqcad-train",
        "teacher --model tiny-unet --data-dir {d}/data --out {d}/t --steps 2 --device cpu".split(),
        ["--data-dir", "data"],
        h.raw("data", b"x"),
    ),
    data_case("data-corrupt-gzip", h.corrupt_gzip, ["train-images-idx3-ubyte.gz"]),
    data_case("data-truncated-gzip", h.truncated_gzip, ["train-images-idx3-ubyte.gz"]),
    data_case("data-labels-out-of-range", h.labels_out_of_range, ["train-labels-idx1-ubyte", "200"]),
    data_case("data-wrong-magic", h.wrong_magic, ["train-labels-idx1-ubyte"]),
    Case(
        "classifier-labels-out-of-range",
        "pqcad-train",
        ["classifier", "--data-dir", "{d}/data", "--out", "{d}/c.safetensors", "--device", "cpu"],
        ["train-labels-idx1-ubyte"],
        h.fmnist(h.labels_out_of_range),
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CHECKPOINTS + CALIB + ONNX + ENGINES + DATA])
def test_hostile_file_is_refused(server, art, case, tmp_path):
    r = run_case(server, art, case, tmp_path)
    if case.id.startswith(("pt-meta-huge", "pt-meta-absurd", "st-sidecar-huge")):
        grown_mb = (r.maxrss_kb - server.rss_kb) / 1024
        assert grown_mb < 400, f"{case.id}: the child grew by {grown_mb:.0f} MB before refusing the file"
