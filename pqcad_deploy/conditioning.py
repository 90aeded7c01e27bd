"""Encoder states for a text-conditioned UNet, checked against the encoder it was trained on.

Two sources give the same states: the caption embedding cache (training, calibration and evaluation prompts, no
encoder needed: what a GPU run carries) and the live text encoder (any prompt: what the demo and a user run). Both
are refused when their encoder fingerprint, token count or width is not the model's (``ModelSpec.text``), so a
UNet is never conditioned on states of another encoder. The empty prompt gives the unconditional states of
classifier-free guidance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .captions import EMPTY_PROMPT, TRAIN_PAIRS, caption_index, evaluation_prompts
from .denoiser import Denoiser
from .errors import UsageError
from .sampling import make_scheduler, sample_many
from .text import EmbeddingCache, TextEncoder, TextEncoderError, load_embedding_cache, load_text_encoder
from .zoo import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_GUIDANCE = 3.0


class PromptEncoder:
    """``states(prompts) -> [N, L, D]`` float32 for one text-conditioned model, from a cache or an encoder."""

    def __init__(
        self, spec: ModelSpec, cache: EmbeddingCache | None = None, encoder: TextEncoder | None = None
    ):
        if not spec.text_conditioned:
            raise UsageError(
                f"{spec.name} is not text-conditioned; prompts apply to text-to-image models only."
            )
        if (cache is None) == (encoder is None):
            raise UsageError("give exactly one source of prompt states: an embedding cache or a text encoder")
        self.spec, self.cache, self.encoder = spec, cache, encoder
        # what calibration trajectories are prompted with (None: the testbed's training captions)
        self.calibration_prompts: list[str] | None = None
        source = cache if cache is not None else encoder
        check_encoder_matches(
            spec, source.fingerprint, source.max_length, source.hidden_size, _describe(cache, encoder)
        )

    @classmethod
    def open(
        cls,
        spec: ModelSpec,
        embeddings: str | Path | None = None,
        text_encoder: str | Path | None = None,
        device: str | torch.device = "cpu",
    ) -> PromptEncoder:
        """From ``embeddings`` (a cache file) when given, else the live encoder (default: the installed MiniLM)."""
        if embeddings is not None:
            return cls(spec, cache=load_embedding_cache(embeddings))
        max_length = (spec.text or {}).get("max_length", 16)
        return cls(spec, encoder=load_text_encoder(text_encoder, device=device, max_length=max_length))

    @property
    def fingerprint(self) -> str:
        return (self.cache if self.cache is not None else self.encoder).fingerprint

    def states(self, prompts: Sequence[str]) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if self.cache is not None:
            return self.cache.lookup(prompts).float()
        return self.encoder.encode(prompts).float().cpu()

    def uncond(self) -> torch.Tensor:
        """[1, L, D]: the empty prompt, what classifier-free guidance pushes away from."""
        return self.states([EMPTY_PROMPT])

    def calibration_cond_fn(self, seed: int) -> Callable[[int], torch.Tensor]:
        """``cond_fn(batch)`` of training captions of random seen (colour, class) pairs, for calibration sets:
        the prompts a deployment sees, never the held-out ones the evaluation keeps for generalization; or, when
        ``calibration_prompts`` is set (``--calib-prompts``), prompts drawn at random from those. Works from the
        cache (lookup) and from a live encoder (the captions are encoded)."""
        g = torch.Generator().manual_seed(seed)
        if self.calibration_prompts:
            texts = self.calibration_prompts

            def from_list(batch: int) -> torch.Tensor:
                return self.states(
                    [texts[i] for i in torch.randint(len(texts), (batch,), generator=g).tolist()]
                )

            return from_list
        index = caption_index()
        pairs = torch.tensor(TRAIN_PAIRS)

        def cond_fn(batch: int) -> torch.Tensor:
            pick = pairs[torch.randint(len(pairs), (batch,), generator=g)]
            ids = index.sample_train_ids(pick[:, 0], pick[:, 1], g, dropout=0.0)
            return self.states([index.captions[i] for i in ids.tolist()])

        return cond_fn


def check_cache(
    prompts: PromptEncoder, needed: list[str], embeddings: str | Path | None, what: str = "this run's prompts"
) -> None:
    """An embedding cache must hold every prompt of the run (``what`` names them), checked before any work."""
    if prompts.cache is None:
        return
    missing = [t for t in dict.fromkeys(needed) if t not in prompts.cache]
    if missing:
        raise UsageError(f"--embeddings {embeddings} lacks {len(missing)} of {what} (e.g. {missing[0]!r}); drop "
                         "--embeddings to encode them with the text encoder, or build a cache of them (python -m "
                         "pqcad_deploy.text OUT --prompts FILE).")  # fmt: skip


def prompts_for(spec: ModelSpec, prompts: Sequence[str] | None, n: int) -> list[str] | None:
    """One prompt per image: the given prompts in equal shares (in order), or seen evaluation prompts; None for
    models without text (which refuse prompts)."""
    if not spec.text_conditioned:
        if prompts:
            raise UsageError(f"--prompt: {spec.name} is not a text-to-image model.")
        return None
    if not prompts:
        return list(evaluation_prompts("seen", n, seed=0).prompts)
    return [prompts[i * len(prompts) // n] for i in range(n)]


def generate_for_prompts(
    denoiser: Denoiser,
    spec: ModelSpec,
    prompts: Sequence[str],
    states: PromptEncoder,
    steps: int,
    guidance_scale: float = DEFAULT_GUIDANCE,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 500,
    progress: bool = True,
) -> torch.Tensor:
    """One image per prompt with the shared sampler and classifier-free guidance; batch i uses noise seed
    ``seed + i``, so the same prompts and seed give every model the same noise (fidelity-to-FP comparisons)."""
    return sample_many(
        denoiser,
        lambda: make_scheduler("ddim", **spec.scheduler),
        len(prompts),
        spec.sample_shape,
        steps,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        cond=states.states(list(prompts)),
        uncond=states.uncond(),
        guidance_scale=guidance_scale,
    )


def check_encoder_matches(spec: ModelSpec, fingerprint: str, max_length: int, hidden: int, what: str) -> None:
    """Refuse states whose encoder, token count or width differ from what the model was trained on."""
    text = spec.text or {}
    if spec.cond_shape is not None and (max_length, hidden) != tuple(spec.cond_shape):
        raise TextEncoderError(
            f"{what} gives {max_length} tokens x {hidden} dims, but {spec.name} cross-attends to "
            f"{spec.cond_shape[0]} x {spec.cond_shape[1]}; use the encoder the model was trained with."
        )
    want = text.get("fingerprint")
    if want and fingerprint != want:
        raise TextEncoderError(
            f"{what} is not the text encoder {spec.name} was trained on (fingerprint {fingerprint[:12]}, the model "
            f"records {want[:12]}); its states would condition the UNet on the wrong features."
        )


def _describe(cache: EmbeddingCache | None, encoder: TextEncoder | None) -> str:
    return "the embedding cache" if cache is not None else f"the text encoder {encoder.source}"
