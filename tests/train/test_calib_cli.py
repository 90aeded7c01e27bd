"""`pqcad-train calib` on a conditional UNet: random encoder states are stored with every point."""

from pqcad_deploy.calibset import CalibSet
from pqcad_deploy.train.cli import main
from pqcad_deploy.zoo import build_model, get_spec, save_weights


def test_calib_cli_conditional_model(tmp_path):
    spec = get_spec("tiny-unet-cond")
    teacher = save_weights(build_model(spec, seed=0), spec, tmp_path / "cond.safetensors")
    out = tmp_path / "calib.safetensors"
    argv = [
        "calib",
        "--teacher",
        str(teacher),
        "--out",
        str(out),
        "--calib-trajectories",
        "2",
        "--calib-steps",
        "4",
    ]
    assert main([*argv, "--calib-points", "2", "--calib-batch-size", "2", "--device", "cpu"]) == 0
    cs = CalibSet.load(out)
    assert cs.cond is not None
    assert tuple(cs.cond.shape) == (len(cs), *spec.cond_shape)
    assert cs.cond.std() > 0.5  # N(0, 1) states, not zeros
