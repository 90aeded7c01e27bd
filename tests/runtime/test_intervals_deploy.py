"""Per-interval deployment: pqcad-export of a K-set student (one ONNX per interval + manifest), the manifest checks,
and the runner that switches ONNX Runtime session by timestep (shared weights, split mixed feeds), via pqcad-bench."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from pqcad_deploy.denoiser import SAMPLE, TIMESTEP
from pqcad_deploy.export.cli import main as export_main
from pqcad_deploy.interval_manifest import read_manifest
from pqcad_deploy.io import CheckpointError
from pqcad_deploy.quant import QuantConfig
from pqcad_deploy.runtime.backends.interval_backend import IntervalRunner
from pqcad_deploy.runtime.backends.ort_backend import OrtRunner
from pqcad_deploy.runtime.bench_cli import main as bench_main
from pqcad_deploy.sampling import make_scheduler
from pqcad_deploy.student import save_student
from pqcad_deploy.train.ptq_intervals import interval_ptq
from pqcad_deploy.zoo import build_model, get_spec

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("intervals")
    spec = get_spec("tiny-unet")
    fp = build_model(spec, seed=0).eval()
    qcfg = QuantConfig(weight_bits=8, act_bits=8, calib_method="maxabs")
    model, entry = interval_ptq(fp, spec, qcfg, 3, steps=6, n_trajectories=4, batch_size=2, progress=False)
    ckpt = save_student(d / "k3.safetensors", model, spec, meta={"history": [entry]})
    assert export_main(["--checkpoint", str(ckpt), "--onnx", str(d / "unet.onnx"), "--batch-size", "2"]) == 0
    return d, model, spec


def test_export_writes_one_verified_file_per_interval_and_a_manifest(exported):
    d, model, _ = exported
    schedule, files, doc = read_manifest(d / "unet.manifest.json")
    assert schedule.k == 3 and [f.name for f in files] == ["unet.i0.onnx", "unet.i1.onnx", "unet.i2.onnx"]
    assert not (d / "unet.onnx").exists()  # no single file that would pretend to be the student
    assert doc["intervals"]["starts"] == list(schedule.starts) and doc["entries"][1]["precision"] == "w8a8"
    for k in range(3):  # each file passed the export's own ORT parity check against its interval's copy
        rep = json.loads((d / f"unet.i{k}.report.json").read_text())
        assert rep["parity"]["passed"] and rep["parity"]["samples"] > 0
    with pytest.raises(CheckpointError, match="does not exist"):
        read_manifest(d / "nope.manifest.json")


def test_runner_picks_the_engine_of_each_timestep_and_splits_mixed_feeds(exported):
    d, model, spec = exported
    schedule, files, _ = read_manifest(d / "unet.manifest.json")
    x = torch.randn(2, *spec.sample_shape, generator=torch.Generator().manual_seed(3))
    t_of = {0: 900, 1: 500, 2: 20}
    assert [int(schedule.index_of(torch.tensor(t))) for t in t_of.values()] == [0, 1, 2]
    with IntervalRunner.from_manifest(d / "unet.manifest.json", threads=1) as runner:
        # the three sessions draw activations from ORT's one environment arena (not one arena each)
        opts = [r.session.get_session_options() for r in runner.runners]
        assert all(o.get_session_config_entry("session.use_env_allocators") == "1" for o in opts)
        assert runner.describe()["shared_arena"]
        outs = {}
        for k, t in t_of.items():
            feed = {SAMPLE: x, TIMESTEP: torch.tensor([t, t])}
            with OrtRunner(files[k], intra_op_threads=1) as alone:
                expect = next(iter(alone.infer(feed).values()))
            outs[k] = next(iter(runner.infer(feed).values()))
            assert torch.equal(outs[k], expect)  # the interval's own engine, shared arena or not
        mixed = next(iter(runner.infer({SAMPLE: x, TIMESTEP: torch.tensor([900, 20])}).values()))
        with OrtRunner(files[2], intra_op_threads=1) as last:
            row1 = next(
                iter(
                    last.infer({SAMPLE: x[1:].repeat(2, 1, 1, 1), TIMESTEP: torch.tensor([20, 20])}).values()
                )
            )
        with OrtRunner(files[0], intra_op_threads=1) as first:
            row0 = next(
                iter(
                    first.infer(
                        {SAMPLE: x[:1].repeat(2, 1, 1, 1), TIMESTEP: torch.tensor([900, 900])}
                    ).values()
                )
            )
        torch.testing.assert_close(mixed[0], row0[0]) and torch.testing.assert_close(mixed[1], row1[0])
        assert runner.describe()["calls_per_interval"] == [2, 1, 2]


def test_replaced_or_missing_interval_files_are_refused(exported, tmp_path):
    d, _, _ = exported
    for f in d.glob("unet.*"):
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(tmp_path / "unet.i0.onnx", tmp_path / "unet.i1.onnx")  # a file from another interval
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        read_manifest(tmp_path / "unet.manifest.json")
    (tmp_path / "unet.i2.onnx").unlink()
    doc = json.loads((tmp_path / "unet.manifest.json").read_text())
    doc["entries"] = doc["entries"][:2]
    (tmp_path / "unet.manifest.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="intervals 0..2 in order"):
        read_manifest(tmp_path / "unet.manifest.json")


def test_bench_accepts_a_manifest_wherever_it_accepts_an_engine(exported, tmp_path, capsys):
    d, _, _ = exported
    out = tmp_path / "bench.json"
    argv = ["--checkpoint", str(d / "k3.safetensors"), "--engine", "torch-kset=torch:fp32",
            "--engine", "kset=ort:" + str(d / "unet.manifest.json"),
            "--engine", "i0=ort:" + str(d / "unet.i0.onnx"), "--steps", "6", "--batch-size", "2", "--repeats", "1",
            "--warmup", "0", "--threads", "1", "--json", str(out)]  # fmt: skip
    assert bench_main(argv) == 0
    rows = {r["label"]: r for r in json.loads(out.read_text())["rows"]}
    # 2 steps per interval, in the timed run and in the run whose images are scored
    assert rows["kset"]["error"] is None and rows["kset"]["describe"]["calls_per_interval"] == [4, 4, 4]
    # scored against the torch K-set student from the same noise; interval 0's engine alone is another model
    assert rows["kset"]["fidelity"]["rel_l2"] != rows["i0"]["fidelity"]["rel_l2"]


def test_single_set_tools_refuse_a_k_set_student_or_manifest(exported, tmp_path, capsys):
    from pqcad_deploy.runtime.build_cli import main as build_main
    from pqcad_deploy.train.cli import main as train_main

    d, _, _ = exported
    argv = ["--onnx", str(d / "unet.manifest.json"), "--saveEngine", str(tmp_path / "e.ort.json"),
            "--backend", "onnxruntime"]  # fmt: skip
    assert build_main(argv) == 2  # a manifest builds K engines and an engine manifest, not one engine
    assert "must name the engine manifest" in capsys.readouterr().err and not list(tmp_path.iterdir())
    out = tmp_path / "s.pt"
    argv = ["pqcad", "--teacher", "tiny-unet", "--init-student", str(d / "k3.safetensors"), "--bits", "w8a8",
            "--schedule", "fixed", "--steps", "1", "--calib-trajectories", "2", "--calib-steps", "4", "--out", str(out)]  # fmt: skip
    assert train_main(argv) == 2
    assert "holds per-interval activation ranges" in capsys.readouterr().err and not out.exists()


def test_a_relaxed_interval_exports_as_a_weight_only_file(tmp_path, capsys):
    import onnx

    spec = get_spec("tiny-unet")
    fp = build_model(spec, seed=0).eval()
    qcfg = QuantConfig(weight_bits=8, act_bits=8, calib_method="maxabs")
    model, entry = interval_ptq(fp, spec, qcfg, 1, steps=10, n_trajectories=2, batch_size=2, relax=(0.2, "x0"),
                                progress=False)  # fmt: skip
    ckpt = save_student(tmp_path / "r.safetensors", model, spec, meta={"history": [entry]})
    assert (
        export_main(["--checkpoint", str(ckpt), "--onnx", str(tmp_path / "unet.onnx"), "--batch-size", "2"])
        == 0
    )
    assert "relaxed interval" in capsys.readouterr().out
    _, files, doc = read_manifest(tmp_path / "unet.manifest.json")
    assert doc["intervals"]["relaxed"] == [1]
    assert [(e["precision"], e["activations"]) for e in doc["entries"]] == [("w8a8", "int"), ("w8", "float")]
    ops = [[n.op_type for n in onnx.load(str(f)).graph.node] for f in files]
    assert ops[0].count("QuantizeLinear") > 0 and ops[1].count("QuantizeLinear") == 0  # activations float
    assert ops[1].count("DequantizeLinear") == ops[0].count("DequantizeLinear") - ops[0].count(
        "QuantizeLinear"
    )
    assert json.loads((tmp_path / "unet.i1.report.json").read_text())["parity"]["passed"]
    # run: ORT folds the relaxed file's weight DQ into float weights once (not on every call), same numbers
    x = torch.randn(2, *spec.sample_shape, generator=torch.Generator().manual_seed(1))
    feed = {SAMPLE: x, TIMESTEP: torch.tensor([10, 10])}  # the last steps: the relaxed interval
    with IntervalRunner.from_manifest(tmp_path / "unet.manifest.json", threads=1) as runner:
        assert [r.fold_weight_dq for r in runner.runners] == [False, True]
        got = next(iter(runner.infer(feed).values()))
    with OrtRunner(files[1], intra_op_threads=1, optimization="disable") as plain:
        ref = next(iter(plain.infer(feed).values()))
    assert float((got - ref).norm() / ref.norm()) < 1e-5
    # build: the relaxed engine's optimized model holds float weights (no DequantizeLinear left)
    from pqcad_deploy.runtime.build_cli import main as build_main

    out = tmp_path / "eng" / "unet.manifest.json"
    argv = ["--onnx", str(tmp_path / "unet.manifest.json"), "--saveEngine", str(out), "--backend", "onnxruntime",
            "--ortThreads", "1", "--skipInference"]  # fmt: skip
    assert build_main(argv) == 0
    _, engines, _ = read_manifest(out)
    opt = [out.parent / json.loads(e.read_text())["model"] for e in engines]
    opt_ops = [[n.op_type for n in onnx.load(str(f)).graph.node] for f in opt]
    assert "DequantizeLinear" not in opt_ops[1] and "QLinearConv" not in opt_ops[1]


def test_build_makes_one_ort_engine_per_interval_and_bench_runs_the_engine_manifest(
    exported, tmp_path, capsys
):
    from pqcad_deploy.runtime.build_cli import main as build_main

    d, _, spec = exported
    out = tmp_path / "engines" / "unet.manifest.json"
    argv = ["--onnx", str(d / "unet.manifest.json"), "--saveEngine", str(out), "--backend", "onnxruntime",
            "--ortThreads", "1", "--optShapes", "sample:2x1x16x16,timestep:2", "--iterations", "2"]  # fmt: skip
    assert build_main(argv) == 0
    assert "interval 2: unet.i2.onnx -> unet.i2.ort.json" in capsys.readouterr().out
    schedule, files, doc = read_manifest(out)
    assert doc["backend"] == "onnxruntime" and [f.name for f in files] == [
        f"unet.i{k}.ort.json" for k in range(3)
    ]
    assert [e["onnx"] for e in doc["entries"]] == [f"unet.i{k}.onnx" for k in range(3)]
    x = torch.randn(2, *spec.sample_shape, generator=torch.Generator().manual_seed(5))
    feed = {SAMPLE: x, TIMESTEP: torch.tensor([500, 500])}
    with (
        IntervalRunner.from_manifest(out) as built,
        IntervalRunner.from_manifest(d / "unet.manifest.json") as raw,
    ):
        torch.testing.assert_close(built.infer(feed), raw.infer(feed), rtol=1e-4, atol=1e-4)
        assert built.calls == [0, 1, 0]
    argv = ["--checkpoint", str(d / "k3.safetensors"), "--engine", "kset=ort:" + str(out), "--steps", "6",
            "--batch-size", "2", "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", str(tmp_path / "b.json")]  # fmt: skip
    assert bench_main(argv) == 0
    row = json.loads((tmp_path / "b.json").read_text())["rows"][0]
    assert row["error"] is None and row["describe"]["calls_per_interval"] == [4, 4, 4]
    # an engine manifest is not an ONNX manifest; a replaced engine is refused by its hash
    assert build_main(["--onnx", str(out), "--saveEngine", str(tmp_path / "again.manifest.json"),
                       "--backend", "onnxruntime"]) == 2  # fmt: skip
    assert "already an engine manifest" in capsys.readouterr().err
    shutil.copy(files[0], files[1])
    with pytest.raises(CheckpointError, match="rebuild the engines"):
        read_manifest(out)


def test_engine_cost_benchmark_runs_every_row(exported, tmp_path, capsys):
    from tests._utils import load_benchmark

    d, _, _ = exported
    out = tmp_path / "ie.json"
    argv = ["--single", str(d / "unet.i0.onnx"), "--manifest", f"k3={d / 'unet.manifest.json'}", "--batch-size", "2",
            "--steps", "6", "--repeats", "1", "--threads", "1", "--sample-shape", "1", "16", "16", "--out", str(out)]  # fmt: skip
    assert load_benchmark("interval_engines").main(argv) == 0
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["single", "k3", "k3 own arenas"]
    assert rows["k3"]["shared_arena"] and not rows["k3 own arenas"]["shared_arena"]
    assert rows["k3"]["calls_per_interval"] == [4, 4, 4]  # a warm-up and one timed run, 2 steps per interval
    assert all(r["rss_delta_mb"] > 0 and r["e2e_ms_median"] > 0 for r in rows.values())


def test_a_sampler_unlike_the_calibrated_one_is_warned(exported, tmp_path, capsys):
    d, _, _ = exported
    runner = IntervalRunner.from_manifest(d / "unet.manifest.json", threads=1)
    sched = make_scheduler("ddim")
    sched.set_timesteps(6)
    assert runner.sampler_steps == 6 and runner.sampler_warnings(sched.timesteps.tolist()) == []
    warned = runner.sampler_warnings([999])  # one step: two of the three intervals never run
    assert "calibrated for a 6-step sampler and runs 1" in warned[0] and "interval(s) [1, 2]" in warned[1]
    argv = ["--checkpoint", str(d / "k3.safetensors"), "--engine", "ort:" + str(d / "unet.manifest.json") + "@1",
            "--batch-size", "2", "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", str(tmp_path / "b.json")]  # fmt: skip
    assert bench_main(argv) == 0
    assert "never run" in capsys.readouterr().err
