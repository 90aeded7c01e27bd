import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from pqcad_deploy.denoiser import UNetWrapper
from pqcad_deploy.io import CheckpointError
from pqcad_deploy.quant import QuantConfig, calibrate, iter_quantizers, quantize_model, set_weight_bits
from pqcad_deploy.student import STUDENT_FORMAT_VERSION, load_student, save_student
from pqcad_deploy.zoo import build_model, example_inputs, get_spec

warnings.filterwarnings("ignore", category=FutureWarning)


def _student(name="tiny-unet", cfg=None, calibrated=True):
    spec = get_spec(name)
    model = build_model(spec).eval()
    cfg = cfg or QuantConfig()
    quantize_model(model, cfg)
    inputs = example_inputs(spec, 2)
    if calibrated:
        calibrate(model, lambda m: UNetWrapper(m)(**inputs), "maxabs")
    return model, spec, cfg, inputs


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("name", ["tiny-unet", "tiny-unet-cond"])
def test_round_trip_bit_exact(tmp_path, name, suffix):
    cfg = QuantConfig(target="onnxruntime" if name == "tiny-unet" else "tensorrt", int4_block_size=16)
    model, spec, cfg, inputs = _student(name, cfg)
    set_weight_bits(model, 4)  # progressive switch: the live bit-width must survive the round trip
    meta = {"history": [{"stage": "ptq", "method": "maxabs"}], "sampling": {"scheduler": "ddim", "steps": 25}}
    path = save_student(tmp_path / f"student{suffix}", UNetWrapper(model), spec, meta=meta)
    loaded, spec2, cfg2, meta2 = load_student(path)
    assert spec2.to_dict() == json.loads(json.dumps(spec.to_dict())) and cfg2 == cfg.replace(weight_bits=4)
    assert meta2["history"] == meta["history"] and meta2["sampling"]["steps"] == 25
    assert meta2["format_version"] == STUDENT_FORMAT_VERSION
    assert all(q.bits == 4 for n, q in iter_quantizers(loaded) if q.kind == "weight")
    with torch.no_grad():
        assert torch.equal(UNetWrapper(model)(**inputs), UNetWrapper(loaded)(**inputs))
    loaded_q = dict(iter_quantizers(loaded))
    for n, q in iter_quantizers(model):
        assert torch.equal(q.amax, loaded_q[n].amax)
    if suffix == ".pt":
        raw = torch.load(path, weights_only=True)  # plain tensors + strings, no pickled objects
        assert set(raw) == {"format", "meta", "state_dict"}


def test_defaults_for_meta(tmp_path):
    model, spec, cfg, _ = _student()
    _, _, _, meta = load_student(save_student(tmp_path / "s.pt", model, spec))
    assert meta["history"] == [] and meta["sampling"] == {"scheduler": "ddim", "steps": None}


def test_refuses_uncalibrated_and_unquantized_on_save(tmp_path):
    model, spec, cfg, _ = _student(calibrated=False)
    with pytest.raises(CheckpointError, match="uncalibrated"):
        save_student(tmp_path / "s.pt", model, spec, cfg)
    with pytest.raises(CheckpointError, match="not quantized"):
        save_student(tmp_path / "s.pt", build_model("tiny-unet"), spec)
    model, spec, cfg, _ = _student()
    with pytest.raises(CheckpointError, match="JSON"):
        save_student(tmp_path / "s.pt", model, spec, cfg, {"history": [object()]})
    assert not (tmp_path / "s.pt").exists()


def _rewrite(path, fn):
    obj = torch.load(path, weights_only=True)
    fn(obj)
    torch.save(obj, path)


@pytest.fixture(scope="module")
def saved_once(tmp_path_factory):
    model, spec, cfg, _ = _student()
    return save_student(tmp_path_factory.mktemp("student") / "s.pt", model, spec, cfg)


@pytest.fixture
def saved(tmp_path, saved_once):
    """A fresh copy of one calibrated checkpoint, free to corrupt."""
    path = tmp_path / "s.pt"
    shutil.copy(saved_once, path)
    return path


def _weight_bits_to(obj, bits):
    """Edit every weight quantizer's num_bits without touching the stored config (a hand-edited file)."""
    for k, v in obj["state_dict"].items():
        if k.endswith("weight_quantizer.num_bits"):
            v.fill_(bits)


def _first_quantizer_key(obj, leaf):
    return next(k for k in obj["state_dict"] if k.endswith(f"input_quantizer.{leaf}"))


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda o: o.update(format="other"), "not a student checkpoint"),
        (lambda o: o.pop("meta"), "malformed"),
        (lambda o: o["state_dict"].pop(next(iter(o["state_dict"]))), "missing keys"),
        (lambda o: o["state_dict"].update(extra=torch.zeros(1)), "unexpected keys"),
        (lambda o: o["state_dict"].update({"conv_in.weight": torch.zeros(3, 3)}), "wrong shape"),
        (lambda o: o.update(state_dict=[1, 2]), "dict of tensors"),
        (lambda o: o["state_dict"].update({"conv_in.weight": "weights"}), "non-tensor"),
        (lambda o: o.update(meta=json.dumps([1, 2])), "JSON object"),
        (lambda o: o["state_dict"][_first_quantizer_key(o, "calibrated")].fill_(False), "uncalibrated"),
        (lambda o: o["state_dict"][_first_quantizer_key(o, "amax")].fill_(float("nan")), "non-finite"),
        (lambda o: o["state_dict"][_first_quantizer_key(o, "amax")].fill_(0.0), "non-positive"),
        (lambda o: o["state_dict"][_first_quantizer_key(o, "num_bits")].fill_(12), "num_bits=12"),
        (lambda o: _weight_bits_to(o, 4), "QuantConfig builds it at 8"),
        (
            lambda o: o.update(meta=json.dumps({**json.loads(o["meta"]), "format_version": 2})),
            "format version 2",
        ),
        (
            lambda o: o.update(meta=json.dumps({**json.loads(o["meta"]), "quant": {"version": 7}})),
            "version 7",
        ),
        (
            lambda o: o.update(
                meta=json.dumps({k: v for k, v in json.loads(o["meta"]).items() if k != "quant"})
            ),
            "lacks",
        ),
    ],
)
def test_refusals(saved, mutate, needle):
    _rewrite(saved, mutate)
    with pytest.raises(CheckpointError, match=needle):
        load_student(saved)


def test_refuses_config_shape_mismatch(saved):
    """A block-size config that does not match the stored amax shapes is refused before loading."""

    def to_block(o):
        meta = json.loads(o["meta"])
        meta["quant"].update(weight_bits=4, int4_block_size=16)
        o["meta"] = json.dumps(meta)

    _rewrite(saved, to_block)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_student(saved)


def test_refuses_corrupt_and_missing_files(tmp_path, saved):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_student(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_student(tmp_path / "missing.pt")
    st = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(1)}, str(st))
    with pytest.raises(CheckpointError, match="sidecar"):
        load_student(st)


def test_safetensors_sidecar_checked(tmp_path):
    model, spec, cfg, _ = _student()
    path = save_student(tmp_path / "s.safetensors", model, spec, cfg)
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    assert meta["quant"] == cfg.to_dict() and meta["model"]["name"] == "tiny-unet"
    tensors = load_file(str(path))
    tensors.pop(next(iter(tensors)))
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_student(path)
