"""S2 personalization: one weight scale set per timestep interval over shared integer codes, selected by timestep;
its student checkpoint, its patch, and the patch applied to a graph as a per-interval file set with a manifest."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
import torch

from pqcad_deploy.export.cli import main as export_main
from pqcad_deploy.export.patch_cli import main as patch_main
from pqcad_deploy.interval_manifest import read_manifest
from pqcad_deploy.io import CheckpointError
from pqcad_deploy.loading import open_model
from pqcad_deploy.patch import PatchError, apply_to_student, load_patch, student_patch
from pqcad_deploy.quant.intervals import get_intervals, has_weight_sets, single_set_copy
from pqcad_deploy.quant.quantizer import QuantizerStateError
from pqcad_deploy.quant.scale_tuning import weight_codes, weight_layers
from pqcad_deploy.student import load_student


@pytest.fixture(scope="module")
def s2(t2i, tmp_path_factory):
    """A K = 2 S2 patch of the tiny student and the personalized student it describes."""
    from pqcad_deploy.train.cli import main as train_main

    d = tmp_path_factory.mktemp("s2")
    argv = ["personalize", "--model", str(t2i["student"]), "--images", str(t2i["subject"]), "--out",
            str(d / "s2.safetensors"), "--steps", "4", "--batch-size", "2", "--prior-images", "2", "--text-encoder",
            str(t2i["bert"]), "--device", "cpu", "--method", "s2", "--intervals", "2", "--save-student",
            str(d / "s2.pt")]  # fmt: skip
    assert train_main(argv) == 0
    return {"dir": d, "patch": d / "s2.safetensors", "student": d / "s2.pt"}


def test_each_interval_trains_its_own_scale_set_over_the_same_codes(t2i, s2):
    patch = load_patch(s2["patch"])
    base = student_patch(open_model(t2i["student"]).model)
    assert patch.k == 2 and patch.fingerprint == base.fingerprint  # the base's codes, unchanged
    assert patch.num_parameters == 2 * base.num_parameters
    assert patch.meta["training"]["trainable_parameters"] == patch.num_parameters
    for name, sets in patch.amax.items():
        assert sets.shape == (2, *base.amax[name].shape)
        for k in range(2):  # both sets trained (steps alternate intervals), and apart from each other
            assert not torch.allclose(sets[k], base.amax[name])
        assert not torch.allclose(sets[0], sets[1])


def test_the_student_selects_its_set_by_timestep(s2):
    model, _, _, meta = load_student(s2["student"])
    schedule = get_intervals(model)
    assert meta["interval_weights"] is True and has_weight_sets(model) and schedule.k == 2
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 16, 32, generator=g)
    with torch.no_grad():
        for k, t in enumerate((999, 0)):  # interval 0 holds the noisiest timesteps
            ts = torch.full((2,), t)
            assert int(schedule.index_of(ts)[0]) == k
            got = model(x, ts, encoder_hidden_states=cond, return_dict=False)[0]
            one = single_set_copy(model, k)  # what the engine of interval k computes
            want = one(x, ts, encoder_hidden_states=cond, return_dict=False)[0]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            codes = {n: weight_codes(m) for n, m in weight_layers(one).items()}
            assert all(torch.equal(c, weight_codes(weight_layers(model)[n])) for n, c in codes.items())
        with pytest.raises(QuantizerStateError, match="one interval per call"):
            model(x, torch.tensor([999, 0]), encoder_hidden_states=cond, return_dict=False)


def test_patch_gives_the_per_interval_file_set_of_the_tuned_student(t2i, s2, tmp_path):
    base_onnx, tuned_onnx, out = tmp_path / "base.onnx", tmp_path / "tuned.onnx", tmp_path / "p.onnx"
    assert export_main(["--checkpoint", str(t2i["student"]), "--onnx", str(base_onnx)]) == 0
    assert export_main(["--checkpoint", str(s2["student"]), "--onnx", str(tuned_onnx)]) == 0
    assert (
        patch_main(["--onnx", str(base_onnx), "--patch", str(s2["patch"]), "--out", str(out), "--verify"])
        == 0
    )
    schedule, files, doc = read_manifest(tmp_path / "p.manifest.json")
    assert schedule == load_patch(s2["patch"]).intervals and [f.name for f in files] == [
        "p.i0.onnx",
        "p.i1.onnx",
    ]
    assert doc["model"] == "tiny-t2i" and doc["sampler_steps"] == 50

    def inits(path):
        return {v.name: v.const_value.numpy() for v in ir.load(path).graph.initializers.values()}

    base = inits(base_onnx)
    codes = [k for k in base if k.endswith("_quantized")]
    for k, f in enumerate(files):
        got, want = inits(f), inits(tmp_path / f"tuned.i{k}.onnx")  # pqcad-export of the S2 student
        assert codes and all(got[c].tobytes() == base[c].tobytes() for c in codes)
        assert all(np.array_equal(got[n], want[n]) for n in want if n in got)
    one, two = inits(files[0]), inits(files[1])
    differ = [n for n in one if not np.array_equal(one[n], two[n])]
    assert differ and not set(differ) & set(codes)  # the intervals differ in their scales only


def test_patch_turns_the_base_student_into_the_s2_one(t2i, s2):
    base, tuned = open_model(t2i["student"]).model, open_model(s2["student"]).model
    apply_to_student(base, load_patch(s2["patch"]))
    sd_b, sd_t = base.state_dict(), tuned.state_dict()
    assert sd_b.keys() == sd_t.keys() and all(torch.equal(sd_b[k], sd_t[k]) for k in sd_t)
    with pytest.raises(PatchError, match="already holds weight scale sets"):
        apply_to_student(base, load_patch(s2["patch"]))


def test_s2_refusals(t2i, s2, personalize, tmp_path, capsys):
    for extra, message in [
        (["--intervals", "2"], "--method s2"),
        (["--method", "s2", "--intervals", "3", "--timesteps", "0:10"], "without timesteps"),
    ]:
        assert personalize(tmp_path / "x.safetensors", *extra) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: K >= 2
        personalize(tmp_path / "x.safetensors", "--method", "s2", "--intervals", "1")
    assert "must be >= 2" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    # a checkpoint whose interval_weights flag is not a boolean is refused, not half-loaded
    bad = tmp_path / "bad.pt"
    obj = torch.load(s2["student"], weights_only=True)
    meta = json.loads(obj["meta"])
    torch.save({**obj, "meta": json.dumps({**meta, "interval_weights": "yes"})}, bad)
    with pytest.raises(CheckpointError, match="interval_weights"):
        load_student(bad)


def test_patch_on_a_timestep_aware_base_manifest(t2i, s2, personalize, tmp_path, capsys):
    """A manifest as --onnx: a one-set patch patches every interval's file; an S2 patch must share its intervals."""
    from pqcad_deploy.train.cli import main as train_main

    student = tmp_path / "k3.pt"
    argv = ["ptq", "--teacher", str(t2i["teacher"]), "--out", str(student), *t2i["calib"], "--intervals", "3",
            "--text-encoder", str(t2i["bert"]), "--device", "cpu"]  # fmt: skip
    assert train_main(argv) == 0
    assert export_main(["--checkpoint", str(student), "--onnx", str(tmp_path / "k3.onnx")]) == 0
    peqa = tmp_path / "peqa.safetensors"
    assert personalize(peqa, "--prior-weight", "0", model=student) == 0
    out = tmp_path / "p.onnx"
    assert (
        patch_main(["--onnx", str(tmp_path / "k3.manifest.json"), "--patch", str(peqa), "--out", str(out)])
        == 0
    )
    schedule, files, _ = read_manifest(tmp_path / "p.manifest.json")
    assert schedule.k == 3 and len(files) == 3
    never = tmp_path / "never.onnx"
    argv = ["--onnx", str(tmp_path / "k3.manifest.json"), "--patch", str(s2["patch"]), "--out", str(never)]
    assert patch_main(argv) == 2
    assert "intervals start at" in capsys.readouterr().err
    assert not list(tmp_path.glob("never*"))
