"""The deployed text encoder: the encoder's own tokenizer plus its exported ONNX (``pqcad-export --text-encoder``)
on ONNX Runtime. ``encode(prompts)`` gives the same states as ``text.TextEncoder.encode``; the fingerprint stamped
into the ONNX at export lets ``conditioning.PromptEncoder`` refuse an engine of another encoder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from pqcad_deploy.conditioning import PromptEncoder, prompts_for
from pqcad_deploy.export.text_encoder import OUTPUT, read_encoder_metadata
from pqcad_deploy.text import TextEncoderError, resolve_encoder_dir, tokenize
from pqcad_deploy.timing import summarize
from pqcad_deploy.zoo import ModelSpec

from .backends.ort_backend import OrtRunner


class TextEngine:
    """Tokenizer + ORT session of an exported text encoder; a context manager like every runner."""

    def __init__(
        self, onnx_path: str | os.PathLike, tokenizer_source: str | os.PathLike | None = None, threads=None
    ):
        self.path = Path(onnx_path)
        meta = read_encoder_metadata(self.path) if self.path.is_file() else {}
        if set(meta) != {"encoder_fingerprint", "max_length", "hidden_size"}:
            raise TextEncoderError(
                f"{self.path} is not a text encoder exported by pqcad-export --text-encoder (no encoder metadata)."
            )
        self.fingerprint = meta["encoder_fingerprint"]
        self.max_length, self.hidden_size = int(meta["max_length"]), int(meta["hidden_size"])
        self.source = self.path
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(
            resolve_encoder_dir(tokenizer_source), local_files_only=True
        )
        self.runner = OrtRunner(self.path, intra_op_threads=threads, name=f"text:{self.path.name}")
        self.last_ms: float | None = None

    def __enter__(self) -> TextEngine:
        self.runner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.__exit__(*exc)

    def encode(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """float32 [B, max_length, hidden] states (use inside ``with engine:``); ``last_ms`` is the tokenizer +
        encoder wall time of this call."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        t0 = time.perf_counter()
        feed = tokenize(self.tokenizer, prompts, self.max_length)
        out = self.runner.infer(feed)[OUTPUT].float()
        self.last_ms = (time.perf_counter() - t0) * 1e3
        return out


def prompt_conditioning(
    spec: ModelSpec,
    prompts: Sequence[str] | None,
    batch: int,
    text_engine: str | os.PathLike | None = None,
    text_encoder: str | os.PathLike | None = None,
    embeddings: str | os.PathLike | None = None,
    threads: int | None = None,
    repeats: int = 3,
) -> dict | None:
    """What ``runtime.bench.run_bench`` needs to sample a text-to-image model from prompts (None for other models):
    the states of one prompt per image, the empty prompt's, and the text encoder's latency when it is the exported
    engine (``text_engine``, what a deployment runs); without it the torch encoder or the embedding cache gives the
    states and no encoder time is reported."""
    chosen = prompts_for(spec, prompts, batch)
    if chosen is None:
        return None
    if text_engine is None:
        enc = PromptEncoder.open(spec, embeddings, text_encoder)
        return {"cond": enc.states(chosen), "uncond": enc.uncond(), "prompts": chosen, "encoder": None}
    with TextEngine(text_engine, text_encoder, threads=threads) as engine:
        enc = PromptEncoder(spec, encoder=engine)
        cond, uncond = enc.states(chosen), enc.uncond()
        times = []
        for _ in range(max(3, repeats)):
            engine.encode(chosen)
            times.append(engine.last_ms)
    timing = {"name": f"ort:{Path(text_engine).name}", "ms": summarize(times)}
    return {"cond": cond, "uncond": uncond, "prompts": chosen, "encoder": timing}
