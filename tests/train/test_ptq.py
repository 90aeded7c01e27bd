import warnings

import pytest
import torch

from pqcad_deploy.denoiser import UNetWrapper
from pqcad_deploy.quant import iter_quantizers
from pqcad_deploy.student import load_student
from pqcad_deploy.train.cli import main

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.mark.parametrize(
    "method, bits, target", [("maxabs", "w8a8", "tensorrt"), ("mse", "w4a8", "onnxruntime")]
)
def test_ptq_cli_produces_loadable_student(tmp_path, method, bits, target):
    out = tmp_path / "student.pt"
    calib = tmp_path / "calib.safetensors"
    argv = [
        "ptq",
        "--teacher",
        "tiny-unet",
        "--ptq-method",
        method,
        "--bits",
        bits,
        "--target",
        target,
        "--calib-trajectories",
        "4",
        "--calib-steps",
        "6",
        "--calib-points",
        "3",
        "--calib-batch-size",
        "8",
        "--device",
        "cpu",
        "--calib",
        str(calib),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    model, spec, qcfg, meta = load_student(out)
    assert qcfg.target == target and qcfg.weight_bits == int(bits[1])
    assert meta["history"][0]["event"] == "ptq" and meta["history"][0]["method"] == method
    assert qcfg.calib_method == method  # the stored config says what PTQ ran
    assert all(q.is_calibrated for _, q in iter_quantizers(model))
    x = torch.randn(2, *spec.sample_shape)
    with torch.no_grad():
        assert torch.isfinite(UNetWrapper(model)(x, torch.tensor([10, 500]))).all()
    # reuse the saved calibration set
    out2 = tmp_path / "student2.pt"
    assert (
        main(
            [
                "ptq",
                "--teacher",
                "tiny-unet",
                "--calib",
                str(calib),
                "--ptq-method",
                "percentile",
                "--device",
                "cpu",
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    assert load_student(out2)[3]["history"][0]["method"] == "percentile"


def test_ptq_cli_errors(tmp_path, capsys):
    assert (
        main(["ptq", "--teacher", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "s.pt")]) == 2
    )
    err = capsys.readouterr().err
    assert (
        "pqcad-train: error:" in err and "nope.safetensors does not exist" in err and "Traceback" not in err
    )
