"""Text encoder export on a tiny BERT: parity, fingerprint metadata, the engine runner, and its use in pqcad-bench."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pqcad_deploy.export.cli import main as export_main
from pqcad_deploy.export.text_encoder import export_text_encoder, read_encoder_metadata
from pqcad_deploy.runtime import bench_cli
from pqcad_deploy.runtime.text_engine import TextEngine
from pqcad_deploy.text import TextEncoderError, load_embedding_cache, load_text_encoder
from pqcad_deploy.zoo import build_model, get_spec, save_weights
from tests._utils import save_tiny_bert


@pytest.fixture(scope="module")
def text_onnx(tiny_bert_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.onnx"
    rep = export_text_encoder(tiny_bert_dir, path, int8=True, parity_samples=4)
    return path, rep


def test_export_matches_the_encoder_and_records_its_fingerprint(text_onnx, tiny_bert_dir):
    path, rep = text_onnx
    enc = load_text_encoder(tiny_bert_dir)
    assert rep["parity"]["passed"] and rep["parity"]["rel_l2"] < 1e-4
    meta = read_encoder_metadata(path)
    assert meta == {"encoder_fingerprint": enc.fingerprint, "max_length": "16", "hidden_size": "32"}
    variant = next(iter(rep["variants"].values()))
    assert variant["kept"] == (path.parent / "text_int8.onnx").is_file()  # kept only when faster and faithful
    assert json.loads(path.with_suffix(".report.json").read_text())["encoder_fingerprint"] == enc.fingerprint


def test_text_engine_gives_the_encoder_states(text_onnx, tiny_bert_dir):
    path, _ = text_onnx
    prompts = ["a red dress", "", "a photo of a blue sneaker"]
    ref = load_text_encoder(tiny_bert_dir).encode(prompts)
    with TextEngine(path, tiny_bert_dir) as te:
        got = te.encode(prompts)
        assert te.last_ms > 0
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_engine_of_another_encoder_is_refused_by_the_model(
    text_onnx, tiny_bert_dir, tiny_t2i_cache, tmp_path
):
    """A tiny-t2i model trained on another encoder refuses this engine's states."""
    from pqcad_deploy.conditioning import PromptEncoder

    path, _ = text_onnx
    other = tmp_path / "other"
    save_tiny_bert(other, seed=3)
    spec = dataclasses.replace(
        get_spec("tiny-t2i"),
        text={"max_length": 16, "hidden_size": 32, "fingerprint": load_text_encoder(other).fingerprint},
    )
    with TextEngine(path, tiny_bert_dir) as te, pytest.raises(TextEncoderError, match="not the text encoder"):
        PromptEncoder(spec, encoder=te)


def test_bench_prompt_to_image_with_the_text_engine(
    text_onnx, tiny_bert_dir, tiny_t2i_cache, tmp_path, capsys
):
    path, _ = text_onnx
    spec = get_spec("tiny-t2i")
    fp = load_embedding_cache(tiny_t2i_cache).fingerprint
    spec = dataclasses.replace(spec, text={**spec.text, "fingerprint": fp})
    ckpt = save_weights(build_model(spec, seed=0), spec, tmp_path / "t2i.safetensors")
    out_json = tmp_path / "b.json"
    argv = [
        "--checkpoint",
        str(ckpt),
        "--engine",
        "torch:fp32",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--warmup",
        "0",
    ]
    argv += ["--batch-size", "2", "--prompt", "a red dress", "--text-engine", str(path)]
    argv += ["--text-encoder", str(tiny_bert_dir), "--guidance-scale", "2", "--json", str(out_json)]
    assert bench_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "p2i ms" in out and "text encoder ort:text.onnx" in out
    res = json.loads(out_json.read_text())
    assert res["prompts"] == ["a red dress", "a red dress"] and res["config"]["guidance_scale"] == 2.0
    assert res["text_encoder"]["ms"]["median"] > 0


def test_export_cli_refuses_unet_flags_for_the_text_encoder(tiny_bert_dir, tmp_path, capsys):
    argv = ["--text-encoder", str(tiny_bert_dir), "--onnx", str(tmp_path / "t.onnx"), "--opset", "19"]
    assert export_main(argv) == 2
    assert "--opset does not apply to --text-encoder" in capsys.readouterr().err
    assert not (tmp_path / "t.onnx").exists()
