"""A trained student moved to another target's placement (``ptq.retarget``, ``pqcad-train pqcad --init-student``):
its weights are kept, its quantizers are rebuilt and recalibrated, and training continues from there."""

import pytest
import torch

from pqcad_deploy import calibset
from pqcad_deploy import student as student_mod
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.errors import UsageError
from pqcad_deploy.loading import open_model
from pqcad_deploy.quant import QuantConfig, iter_quantizers
from pqcad_deploy.quant.modules import QuantConv2d
from pqcad_deploy.train.cli import main
from pqcad_deploy.train.pqcad import train_pqcad
from pqcad_deploy.train.pqcad_config import PQCADConfig
from pqcad_deploy.train.ptq import ptq_student, retarget


@pytest.fixture(scope="module")
def trt_student(tmp_path_factory):
    """A TensorRT-placement student of tiny-unet whose weights differ from the teacher's (so "kept" is visible)."""
    torch.set_num_threads(1)
    bundle = open_model("tiny-unet")
    cs = calibset.collect_calibset(
        TorchDenoiser(bundle.model), bundle.spec, n_trajectories=4, steps=10, n_points=5, seed=0, batch_size=4
    )
    d = tmp_path_factory.mktemp("retarget")
    cfg = PQCADConfig(
        bits=("w8a8",), schedule="fixed", steps=4, stage1_cap=4, batch_size=4, lr=1e-3, save_every=4
    )
    path = train_pqcad(cfg, bundle.model, bundle.spec, cs, d / "trt.pt", device="cpu", progress=False)
    cal = d / "calib.safetensors"
    cs.save(cal)
    return bundle, cs, path, cal


def _weights(model) -> dict[str, torch.Tensor]:
    """The float model's tensors (a student adds quantizer state, in conv_shortcut slots too)."""
    keys = open_model("tiny-unet").model.state_dict().keys()
    return {k: v for k, v in model.state_dict().items() if k in keys}


def test_retarget_keeps_the_trained_weights_and_rebuilds_the_quantizers(trt_student):
    teacher, cs, path, _ = trt_student
    src = open_model(path)
    assert any(not torch.equal(v, teacher.model.state_dict()[k]) for k, v in _weights(src.model).items())
    model, entry = retarget(src.model, src.spec, QuantConfig(target="onnxruntime", calib_method="maxabs"), cs)
    assert (
        entry["event"] == "retarget" and entry["target"] == "onnxruntime" and entry["calib_points"] == len(cs)
    )
    moved = _weights(model)
    assert moved.keys() == _weights(src.model).keys()
    assert all(torch.equal(moved[k], v) for k, v in _weights(src.model).items())
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert convs and all(m.output_quantizer is not None for m in convs)  # the ORT placement's DQ->op->Q units
    assert all(q.is_calibrated for _, q in iter_quantizers(model))
    # the same weights through ptq_student give the same quantizers: retarget adds no estimator of its own
    fp = open_model("tiny-unet").model
    fp.load_state_dict({k: v for k, v in moved.items() if k in fp.state_dict()})
    ref, _ = ptq_student(fp, QuantConfig(target="onnxruntime", calib_method="maxabs"), cs)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True)
    )


def test_retarget_refuses_a_student_of_another_model(trt_student):
    _, cs, path, _ = trt_student
    src = open_model(path)
    other = open_model("tiny-unet-cond").spec
    with pytest.raises(UsageError, match="lacks"):
        retarget(src.model, other, QuantConfig(target="onnxruntime"), cs)


def test_cli_init_student_trains_in_the_new_placement(trt_student, tmp_path):
    _, _, path, cal = trt_student
    out = tmp_path / "ort.pt"
    argv = [
        "pqcad",
        "--teacher",
        "tiny-unet",
        "--calib",
        str(cal),
        "--out",
        str(out),
        "--init-student",
        str(path),
    ]
    argv += (
        "--target onnxruntime --bits w8a8 --schedule fixed --steps 3 --stage1-cap 3 --batch-size 4".split()
    )
    argv += "--ptq-method maxabs --device cpu --no-progress".split()
    assert main(argv) == 0
    _, _, qcfg, meta = student_mod.load_student(out)
    assert qcfg.target == "onnxruntime" and qcfg.weight_bits == 8
    first = meta["history"][0]
    assert first["event"] == "retarget" and first["from"] == str(path) and first["method"] == "maxabs"


@pytest.mark.parametrize(
    "source, match",
    [("tiny-unet", "FP model"), ("tiny-unet-cond", "is a tiny-unet-cond")],
)
def test_cli_init_student_refuses_a_wrong_source(trt_student, tmp_path, capsys, source, match):
    _, _, path, cal = trt_student
    if source == "tiny-unet-cond":  # a quantized student of another architecture
        source = str(tmp_path / "cond.pt")
        ptq = [
            "ptq",
            "--teacher",
            "tiny-unet-cond",
            "--out",
            source,
            "--calib",
            str(tmp_path / "c.safetensors"),
        ]
        ptq += "--calib-trajectories 2 --calib-steps 4 --calib-points 2 --bits w8a8 --device cpu".split()
        assert main(ptq) == 0
    argv = ["pqcad", "--teacher", "tiny-unet", "--calib", str(cal), "--out", str(tmp_path / "o.pt")]
    argv += ["--init-student", source, "--steps", "0", "--bits", "w8a8", "--device", "cpu", "--no-progress"]
    assert main(argv) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()
