"""The Jetson demo: its numpy DDIM against diffusers' DDIMScheduler, and its TensorRT + pycuda path (engines,
prompts, classifier-free guidance) on the fake TensorRT and pycuda of tests/runtime/fakes. No real TensorRT or
GPU runs here: the fakes prove the calls, buffers and arithmetic around the engines, not the engines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pqcad_deploy import denoiser
from pqcad_deploy.runtime import jetson_demo as jd
from pqcad_deploy.sampling import make_scheduler, sample
from pqcad_deploy.zoo import get_spec
from tests.runtime.fakes import FakeDevice, engine_plan, install_fake_pycuda, install_fake_tensorrt
from tests.runtime.fakes.kernels import text_states, unet_eps


def _eps(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A deterministic, t-dependent fake denoiser."""
    return (np.tanh(x) * 0.5 + np.cos(t[:, None, None, None] / 100.0) * 0.3).astype(np.float32)


@pytest.mark.parametrize("model,steps", [("fmnist-ddpm", 10), ("fmnist-ddpm", 50), ("sd15-unet", 25)])
def test_numpy_ddim_matches_diffusers(model, steps):
    spec = get_spec(model)
    sched = make_scheduler("ddim", **spec.scheduler)
    sched.set_timesteps(steps)
    np.testing.assert_array_equal(jd.ddim_timesteps(steps), sched.timesteps.numpy())
    np.testing.assert_allclose(jd.alphas_cumprod(**spec.scheduler), sched.alphas_cumprod.numpy(), rtol=1e-5)

    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = sample(
        lambda x, t, c: torch.from_numpy(_eps(x.numpy(), t.numpy())),
        make_scheduler("ddim", **spec.scheduler),
        (2, 1, 8, 8),
        steps=steps,
        noise=noise,
    )
    got = jd.ddim_sample(_eps, noise.numpy().copy(), steps, spec.scheduler)
    np.testing.assert_allclose(got, ref.images.numpy(), atol=2e-5, rtol=1e-5)


def test_bad_steps_and_schedule():
    with pytest.raises(ValueError, match="steps"):
        jd.ddim_timesteps(0)
    with pytest.raises(ValueError, match="cosine"):
        jd.alphas_cumprod(beta_schedule="cosine")


def test_grid_png(tmp_path):
    from PIL import Image

    imgs = np.linspace(-1, 1, 5 * 1 * 4 * 6, dtype=np.float32).reshape(5, 1, 4, 6)
    im = Image.open(jd.save_grid_png(imgs, tmp_path / "g.png"))
    assert im.size == (3 * 6, 2 * 4) and im.mode == "L"
    rgb = Image.open(jd.save_grid_png(np.zeros((2, 3, 4, 4), np.float32), tmp_path / "c.png"))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (128, 128, 128)


def test_demo_module_is_torch_free():
    code = "import sys, pqcad_deploy.runtime.jetson_demo; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_io_names_match_the_package():
    assert (jd.SAMPLE, jd.TIMESTEP, jd.COND, jd.OUTPUT_NAME) == (
        denoiser.SAMPLE,
        denoiser.TIMESTEP,
        denoiser.COND,
        denoiser.OUTPUT_NAME,
    )


# -- TensorRT + pycuda, on the fakes ----------------------------------------------------------------------

CHW, TOKENS, WIDTH = (1, 8, 8), 6, 5
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "a",
    "red",
    "blue",
    "shirt",
    "dress",
    "long",
    "##er",
    "with",
    "bag",
]


@pytest.fixture
def board(monkeypatch):
    device = FakeDevice()
    trt = install_fake_tensorrt(monkeypatch, device)
    install_fake_pycuda(monkeypatch, device)
    return device, trt


def _io(name, mode, dtype, dims, batch=(1, 4, 8)):
    profile = [[b, *dims] for b in batch] if mode == "INPUT" else None
    return {"name": name, "mode": mode, "dtype": dtype, "shape": [-1, *dims], "profile": profile}


def write_unet(path: Path, conditional: bool, tokens: int = TOKENS) -> Path:
    tensors = [_io(jd.SAMPLE, "INPUT", "FLOAT", list(CHW)), _io(jd.TIMESTEP, "INPUT", "INT64", [])]
    tensors += [_io(jd.COND, "INPUT", "FLOAT", [tokens, WIDTH])] if conditional else []
    tensors += [_io(jd.OUTPUT_NAME, "OUTPUT", "FLOAT", list(CHW))]
    path.write_bytes(engine_plan(tensors, "unet"))
    return path


def write_text_engine(path: Path) -> Path:
    """input_ids/attention_mask [B, L] (L dynamic) -> last_hidden_state [B, L, WIDTH]."""
    tensors = [
        {**_io(n, "INPUT", "INT64", [-1]), "profile": [[1, 1], [4, TOKENS], [8, 32]]} for n in jd.TEXT_INPUTS
    ]
    tensors.append({"name": jd.TEXT_OUTPUT, "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, -1, WIDTH]})
    path.write_bytes(engine_plan(tensors, "text"))
    return path


@pytest.fixture
def tokenizer_dir(tmp_path):
    """A BERT-style WordPiece tokenizer with a 13-token vocabulary, saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _executions(trt, kernel):
    ctx = next(c for c in trt.contexts if c.engine.record["kernel"] == kernel)
    return [c for c in ctx.calls if c[0] == "execute_async_v3"], ctx


def test_pycuda_engine_copies_in_executes_and_copies_out(board, tmp_path):
    device, trt = board
    eng = jd.PycudaEngine(write_unet(tmp_path / "u.plan", conditional=False), batch=2)
    assert eng.input_shapes == {jd.SAMPLE: (2, *CHW), jd.TIMESTEP: (2,)}
    ctx = trt.contexts[0]
    assert ctx.shapes == eng.input_shapes
    allocated = {e[1] for e in device.log if e[0] == "mem_alloc"}
    assert allocated == {2 * 64 * 4, 2 * 8}  # float32 sample/out_sample and int64 timestep, in device memory
    assert set(ctx.addresses.values()) == {int(dev) for _, dev in eng.buf.values()}
    x = np.random.default_rng(0).standard_normal((2, *CHW)).astype(np.float32)
    t = np.array([999, 499])
    device.log.clear()
    out = eng.run({jd.SAMPLE: x, jd.TIMESTEP: t})[jd.OUTPUT_NAME]
    np.testing.assert_allclose(out, unet_eps(x, t), rtol=1e-6)
    assert [e[0] for e in device.log] == ["htod", "htod", "execute_async_v3", "ran", "dtoh", "stream_sync"]
    assert {e[-1] for e in device.log if e[0] in ("htod", "dtoh", "execute_async_v3", "stream_sync")} == {
        eng.stream.handle
    }
    out2 = eng.run({jd.SAMPLE: -x, jd.TIMESTEP: t})[jd.OUTPUT_NAME]
    np.testing.assert_allclose(out, unet_eps(x, t), rtol=1e-6)  # a copy, not the reused pinned buffer
    np.testing.assert_allclose(out2, unet_eps(-x, t), rtol=1e-6)
    with pytest.raises(jd.DemoError, match="input timestep needs shape \\(2,\\), got nothing"):
        eng.run({jd.SAMPLE: x})
    with pytest.raises(jd.DemoError, match="outside the engine's profile .*--maxShapes"):
        jd.PycudaEngine(tmp_path / "u.plan", batch=9)


def test_tokenizer_pads_truncates_and_counts_what_was_cut(tokenizer_dir):
    tok = jd.load_tokenizer(tokenizer_dir, 6)
    ids, mask, cut = jd.tokenize(tok, ["a red shirt", "", "a longer blue dress with a red bag"])
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape == (3, 6)
    assert ids[0].tolist() == [2, 4, 5, 7, 3, 0] and mask[0].tolist() == [1, 1, 1, 1, 1, 0]
    assert ids[1].tolist() == [2, 3, 0, 0, 0, 0]
    # "a long ##er blue dress with a red bag" is 9 word pieces; [CLS] + 4 + [SEP] fit, 5 are cut
    assert ids[2].tolist() == [2, 4, 9, 10, 6, 3] and cut == [0, 0, 5]
    with pytest.raises(jd.DemoError, match="no tokenizer.json"):
        jd.load_tokenizer(tokenizer_dir.parent, 6)


def test_guidance_is_one_batched_call_per_step_matching_numpy():
    rng = np.random.default_rng(1)
    cond = rng.standard_normal((4, TOKENS, WIDTH)).astype(np.float32)  # [uncond x2; cond x2]
    seen = []

    def unet(x, t):
        seen.append((x.shape, t.tolist()))
        return unet_eps(x, t, cond)

    x = rng.standard_normal((2, *CHW)).astype(np.float32)
    t = np.array([500, 500])
    got = jd.guided(unet, 7.5)(x, t)
    eps_u = unet_eps(x, t, cond[:2])
    eps_c = unet_eps(x, t, cond[2:])
    np.testing.assert_allclose(got, eps_u + 7.5 * (eps_c - eps_u), rtol=1e-5, atol=1e-6)
    assert seen == [((4, *CHW), [500, 500, 500, 500])]


def _reference_images(tokenizer_dir, prompts, scale, steps, seed, max_length=TOKENS):
    """The demo's output recomputed in numpy: tokenizer -> text kernel -> [uncond; cond] -> guided DDIM."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
    texts = [""] * len(prompts) + prompts
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc])
    states = text_states(ids, np.array([e.attention_mask for e in enc]), WIDTH)

    def eps(x, t):
        u, c = np.split(unet_eps(np.concatenate([x, x]), np.concatenate([t, t]), states), 2)
        return u + np.float32(scale) * (c - u)

    noise = np.random.default_rng(seed).standard_normal((len(prompts), *CHW), dtype=np.float32)
    return jd.ddim_sample(eps, noise, steps)


def test_demo_with_prompts_and_guidance(board, tmp_path, tokenizer_dir, capsys):
    device, trt = board
    unet = write_unet(tmp_path / "unet.plan", conditional=True)
    text = write_text_engine(tmp_path / "text.plan")
    out = tmp_path / "grid.png"
    prompts = ["a red shirt", "a longer blue dress with a red bag"]
    argv = ["--engine", str(unet), "--text-engine", str(text), "--tokenizer", str(tokenizer_dir)]
    argv += [
        "--prompt",
        prompts[0],
        "--prompt",
        prompts[1],
        "--guidance-scale",
        "3",
        "--max-length",
        str(TOKENS),
    ]
    assert jd.main([*argv, "--steps", "5", "--warmup", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "was truncated to --max-length 6: 5 tokens cut" in printed
    assert "text encoder" in printed and "4 texts x 6 tokens" in printed
    assert "batch 2 (x2 rows for guidance scale 3)" in printed and "sampler per step" in printed
    assert "prompt to image" in printed
    unet_runs, unet_ctx = _executions(trt, "unet")
    text_runs, text_ctx = _executions(trt, "text")
    assert len(unet_runs) == 2 * 5 and len(text_runs) == 2  # one UNet call per step; warm-up + timed run
    assert unet_ctx.shapes == {jd.SAMPLE: (4, *CHW), jd.TIMESTEP: (4,), jd.COND: (4, TOKENS, WIDTH)}
    assert text_ctx.shapes == {n: (4, TOKENS) for n in jd.TEXT_INPUTS}
    from PIL import Image

    reference = jd.save_grid_png(
        _reference_images(tokenizer_dir, prompts, 3.0, 5, seed=0), tmp_path / "ref.png"
    )
    got, want = (np.asarray(Image.open(p), dtype=np.int16) for p in (out, reference))
    assert np.abs(got - want).max() <= 1


def test_demo_without_prompts_runs_the_unconditional_engine(board, tmp_path, capsys):
    device, trt = board
    unet = write_unet(tmp_path / "unet.plan", conditional=False)
    assert (
        jd.main(["--engine", str(unet), "--steps", "3", "--batch", "3", "--out", str(tmp_path / "g.png")])
        == 0
    )
    runs, ctx = _executions(trt, "unet")
    assert len(runs) == 2 * 3 and ctx.shapes[jd.SAMPLE] == (3, *CHW)
    printed = capsys.readouterr().out
    assert "text encoder" not in printed and "sampler end to end" in printed


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prompt", "a red shirt"], "--prompt needs --text-engine PLAN and --tokenizer DIR"),
        (["--guidance-scale", "3"], "--guidance-scale needs --prompt"),
        (
            ["--prompt", "a", "--prompt", "b", "--batch", "3", "--text-engine", "t", "--tokenizer", "k"],
            "one per batch row",
        ),
    ],
)
def test_demo_flag_errors(extra, message, capsys):
    with pytest.raises(SystemExit) as e:
        jd.main(["--engine", "unet.plan", *extra])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_demo_reports_a_length_the_unet_was_not_built_for(board, tmp_path, tokenizer_dir, capsys):
    unet = write_unet(tmp_path / "unet.plan", conditional=True, tokens=TOKENS)
    text = write_text_engine(tmp_path / "text.plan")
    argv = ["--engine", str(unet), "--text-engine", str(text), "--tokenizer", str(tokenizer_dir)]
    assert jd.main([*argv, "--prompt", "a red shirt", "--max-length", "8", "--batch", "2"]) == 2
    err = capsys.readouterr().err
    assert "input encoder_hidden_states shape (2, 8, 5) is outside the engine's profile" in err


def _engine_manifest(tmp_path, plans, starts, backend="tensorrt"):
    import hashlib
    import json

    entries = [{"interval": k, "engine": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
               for k, p in enumerate(plans)]  # fmt: skip
    doc = {"format": "pqcad-interval-manifest", "format_version": 1, "backend": backend,
           "intervals": {"k": len(plans), "starts": starts, "num_train_timesteps": 1000}, "entries": entries}  # fmt: skip
    path = tmp_path / "unet.manifest.json"
    path.write_text(json.dumps(doc))
    return path


def test_demo_runs_a_manifest_switching_engine_by_timestep(board, tmp_path, capsys):
    device, trt = board
    plans = [write_unet(tmp_path / f"unet.i{k}.plan", conditional=False) for k in range(2)]
    manifest = _engine_manifest(tmp_path, plans, [500])
    argv = ["--steps", "10", "--batch", "2", "--warmup", "0"]
    assert jd.main(["--engine", str(manifest), *argv, "--out", str(tmp_path / "k.png")]) == 0
    assert "2 interval engines" in capsys.readouterr().out
    ts = jd.ddim_timesteps(10)
    runs = [sum(1 for c in ctx.calls if c[0] == "execute_async_v3") for ctx in trt.contexts]
    assert runs == [int((ts > 500).sum()), int((ts <= 500).sum())]  # each step on its interval's engine
    # the same kernels in one plan give the same images: switching changes the engine, not the sampler
    assert jd.main(["--engine", str(plans[0]), *argv, "--out", str(tmp_path / "one.png")]) == 0
    assert (tmp_path / "k.png").read_bytes() == (tmp_path / "one.png").read_bytes()


def test_demo_refuses_a_bad_manifest(board, tmp_path, capsys):
    plans = [write_unet(tmp_path / f"unet.i{k}.plan", conditional=False) for k in range(2)]
    manifest = _engine_manifest(tmp_path, plans, [500], backend="onnxruntime")
    assert jd.main(["--engine", str(manifest), "--warmup", "0"]) == 2
    assert "not a TensorRT engine manifest" in capsys.readouterr().err
    manifest = _engine_manifest(tmp_path, plans, [500])
    plans[1].write_bytes(plans[1].read_bytes() + b" ")
    assert jd.main(["--engine", str(manifest), "--warmup", "0"]) == 2
    assert "SHA-256 differs" in capsys.readouterr().err
