"""Bad input gives one clear error and never leaves a (half-written) .onnx behind; polygraphy reads outputs."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from torch import nn

from pqcad_deploy.export.cli import main
from pqcad_deploy.export.onnx_export import ExportError, check_opset
from pqcad_deploy.export.pipeline import ExportOptions, export
from pqcad_deploy.loading import open_model


def _no_onnx_left(d):
    return not list(d.glob("*.onnx")) and not list(d.glob(".*"))


@pytest.mark.parametrize("content", [None, b"not a checkpoint", b"PK\x03\x04garbage"])
def test_missing_or_corrupt_checkpoint(tmp_path, capsys, content):
    ck = tmp_path / "student.pt"
    if content is not None:
        ck.write_bytes(content)
    assert main(["--checkpoint", str(ck), "--onnx", str(tmp_path / "u.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "student.pt" in err[0]
    assert not (tmp_path / "u.onnx").exists()


def test_unsupported_checkpoint_type(tmp_path, capsys):
    ck = tmp_path / "model.bin"
    ck.write_bytes(b"x")
    assert main(["--checkpoint", str(ck), "--onnx", str(tmp_path / "u.onnx")]) == 2
    assert "Unsupported checkpoint type" in capsys.readouterr().err


def test_unwritable_output(tmp_path, capsys):
    (tmp_path / "file").write_bytes(b"x")
    args = ["--checkpoint", "tiny-unet", "--random-weights", "--onnx", str(tmp_path / "file" / "u.onnx")]
    assert main(args) == 2
    assert "file" in capsys.readouterr().err
    if os.geteuid() == 0:
        pytest.skip("running as root: a read-only folder is still writable")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ExportError, match="not writable"):
            export(open_model("tiny-unet", random_weights=True), ro / "u.onnx", ExportOptions())
    finally:
        ro.chmod(0o700)


def test_unsupported_layer_type(tmp_path):
    loaded = open_model("tiny-unet", random_weights=True)
    loaded.model.conv_out = nn.Sequential(nn.Conv3d(1, 1, 1))  # something the exporter cannot place
    with pytest.raises(ExportError, match="Unsupported layer types.*Conv3d"):
        export(loaded, tmp_path / "u.onnx", ExportOptions())
    assert _no_onnx_left(tmp_path)


def test_opset_too_old():
    with pytest.raises(ExportError, match="needs opset >= 21"):
        check_opset(20, "fp32", quantized=True, int4=True)
    with pytest.raises(ExportError, match="float16 scales"):
        check_opset(17, "fp16", quantized=True, int4=False)
    check_opset(17, "fp16", quantized=False, int4=False)


def test_failed_check_leaves_no_file_and_keeps_old(tmp_path, monkeypatch):
    from pqcad_deploy.export import checks

    out = tmp_path / "u.onnx"
    out.write_bytes(b"previous good model")

    def broken(*a, **k):
        raise checks.CheckError("parity failed")

    monkeypatch.setattr(checks, "parity", broken)
    with pytest.raises(checks.CheckError):
        export(open_model("tiny-unet", random_weights=True), out, ExportOptions())
    assert out.read_bytes() == b"previous good model"
    assert [p.name for p in tmp_path.iterdir()] == ["u.onnx"]


def test_check_only_and_polygraphy(tmp_path):
    out = tmp_path / "u.onnx"
    export(open_model("tiny-unet", random_weights=True), out, ExportOptions(parity_samples=2))
    assert main(["--check-only", str(out)]) == 0
    if shutil.which("polygraphy") is None:
        pytest.skip("polygraphy is not installed (pip install polygraphy)")
    r = subprocess.run(["polygraphy", "inspect", "model", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "out_sample" in r.stdout + r.stderr
    r = subprocess.run(
        ["polygraphy", "run", str(out), "--onnxrt", "--input-shapes", "sample:[2,1,16,16]", "timestep:[2]",
         "--val-range", "timestep:[0,999]"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0 and "PASSED" in r.stdout + r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
