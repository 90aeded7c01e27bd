"""Fashion-MNIST made compositional: tinted garments, captions from templates, and a held-out split.

Each garment is tinted with one of eight named colours and captioned from templates with synonyms ("a crimson
sneaker", "a photo of a blue ankle boot"). Some (colour, class) pairs and some templates never reach training, so
a text-to-image model's prompt generalization is measurable (PCR evaluates on prompts unlike its calibration set).
The split is defined here, in code; ``python -m pqcad_deploy.captions`` writes it to ``assets/t2i_split.json``
(the shipped record, for readers and torch-free tools) and a test keeps the two equal.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from .data import CLASSES, to_model_range
from .errors import UsageError
from .io import atomic_json_save

log = logging.getLogger(__name__)

SPLIT_PATH = Path(__file__).parent / "assets" / "t2i_split.json"
SPLIT_FORMAT_VERSION = 1
EMPTY_PROMPT = ""  # caption id 0: the unconditional prompt of classifier-free guidance
CAPTION_DROPOUT = 0.1


@dataclass(frozen=True)
class Colour:
    """A tint: max channel 255 (so untinting is max over channels, exactly) and saturated (min channel <= 64)."""

    name: str
    rgb: tuple[int, int, int]
    synonyms: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)


# Hues (degrees) 355, 30, 66, 120, 180, 225, 270, 315: every neighbour at least 35 degrees away, so a nearest-hue
# colour classifier has a margin of >= 17.5 degrees on each side.
PALETTE: tuple[Colour, ...] = (
    Colour("red", (255, 0, 21), ("crimson",)),
    Colour("orange", (255, 128, 0), ("tangerine",)),
    Colour("yellow", (230, 255, 0), ("lemon",)),
    Colour("green", (0, 255, 0), ("emerald",)),
    Colour("cyan", (0, 255, 255), ("turquoise",)),
    Colour("blue", (0, 64, 255), ("cobalt",)),
    Colour("purple", (128, 0, 255), ("violet",)),
    Colour("pink", (255, 0, 191), ("magenta",)),
)
COLOUR_NAMES = tuple(c.name for c in PALETTE)

# Words for each Fashion-MNIST class (same order as data.CLASSES); each reads naturally after "a {colour}".
CLASS_WORDS: tuple[tuple[str, ...], ...] = (
    ("t-shirt", "tee"),
    ("pair of trousers", "pair of pants"),
    ("pullover", "sweater", "jumper"),
    ("dress", "frock"),
    ("coat", "jacket"),
    ("sandal", "strappy sandal"),
    ("shirt", "blouse"),
    ("sneaker", "trainer", "running shoe"),
    ("bag", "handbag"),
    ("ankle boot", "boot"),
)
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a {colour} {garment}",
    "a photo of a {colour} {garment}",
    "{colour} {garment} on black",
    "an image of a {colour} {garment}",
    "a {garment} in {colour}",
)
HELD_OUT_TEMPLATES: tuple[str, ...] = (
    "a {colour} {garment} on a black background",
    "the {garment} is {colour}",
)
# Eight pairs that training never sees, each colour and each class at most once.
_HELD_OUT_BY_NAME = (
    ("red", "Sneaker"),
    ("orange", "Dress"),
    ("yellow", "Bag"),
    ("green", "T-shirt/top"),
    ("cyan", "Ankle boot"),
    ("blue", "Pullover"),
    ("purple", "Trouser"),
    ("pink", "Coat"),
)
HELD_OUT_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (COLOUR_NAMES.index(c), CLASSES.index(k)) for c, k in _HELD_OUT_BY_NAME
)
ALL_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (c, k) for c in range(len(PALETTE)) for k in range(len(CLASSES))
)
TRAIN_PAIRS: tuple[tuple[int, int], ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)
# Evaluation sets: which pairs and which templates each draws from.
EVAL_SETS: dict[str, tuple[tuple[tuple[int, int], ...], tuple[str, ...]]] = {
    "seen": (TRAIN_PAIRS, TRAIN_TEMPLATES),
    "held_out_pairs": (HELD_OUT_PAIRS, TRAIN_TEMPLATES),
    "held_out_templates": (TRAIN_PAIRS, HELD_OUT_TEMPLATES),
}


# ---------------------------------------------------------------- colour
def hue_degrees(r: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """HSV hue in [0, 360) of same-shape channel tensors (0 where the pixel is grey and hue is undefined)."""
    mx = torch.maximum(torch.maximum(r, g), b)
    chroma = mx - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    sector = torch.where(
        mx == r,
        torch.remainder((g - b) / safe, 6.0),
        torch.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    return torch.where(chroma > 0, sector * 60.0, torch.zeros_like(sector))


def palette_hues() -> torch.Tensor:
    """float64 [8] hue of each palette colour, degrees."""
    rgb = torch.tensor([c.rgb for c in PALETTE], dtype=torch.float64)
    return hue_degrees(rgb[:, 0], rgb[:, 1], rgb[:, 2])


def palette_scales(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[8, 3] colour / 255: the factor each channel's garment intensity is multiplied by."""
    return torch.tensor([c.rgb for c in PALETTE], dtype=torch.float64).div(255).to(device, dtype)


def tint(grey: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Grey images [N, 1, H, W] in [-1, 1] -> RGB [N, 3, H, W] in [-1, 1] (intensity v -> v * colour / 255).

    Black (-1) stays black. Written as ``x * s + (s - 1)`` (= ``(x + 1) * s - 1``) so the 255 channel (s == 1)
    returns x bit for bit; the minimum clips rounding above x in the other channels, which makes ``untint`` (max
    over channels) an exact inverse for any input.
    """
    if grey.dim() != 4 or grey.shape[1] != 1:
        raise ValueError(f"tint expects grey images [N, 1, H, W], got {tuple(grey.shape)}")
    if colours.shape != (grey.shape[0],):
        raise ValueError(
            f"tint needs one colour per image: {grey.shape[0]} images, colours {tuple(colours.shape)}"
        )
    s = palette_scales(grey.device, grey.dtype)[colours.to(grey.device)][:, :, None, None]
    return torch.minimum(grey * s + (s - 1), grey)


def tinted_model_input(images_u8: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Fashion-MNIST uint8 [N, 28, 28] -> tinted float32 [N, 3, 32, 32] in [-1, 1], padded like data.py."""
    return tint(to_model_range(images_u8), colours)


def _colour_choices(allow_held_out: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """([10, 8] colour ids allowed for each class, padded; [10] how many)."""
    table = torch.zeros(len(CLASSES), len(PALETTE), dtype=torch.long)
    counts = torch.zeros(len(CLASSES), dtype=torch.long)
    for c, k in ALL_PAIRS:  # colour-major order, so each class's list is in palette order
        if allow_held_out or (c, k) not in HELD_OUT_PAIRS:
            table[k, counts[k]] = c
            counts[k] += 1
    return table, counts


def assign_colours(classes: torch.Tensor, seed: int, *, allow_held_out: bool) -> torch.Tensor:
    """One colour per image, uniform over the colours allowed for its class, the same for a seed on any device."""
    table, counts = _colour_choices(allow_held_out)
    cls = classes.detach().to("cpu", torch.long)
    u = torch.rand(cls.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    n = counts[cls]
    pick = torch.minimum((u * n).long(), n - 1)
    return table[cls, pick].to(classes.device)


def train_colours(classes: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Training images' colours: never a held-out pair."""
    return assign_colours(classes, seed, allow_held_out=False)


def eval_colours(classes: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Test images' colours for evaluation: any colour, held-out pairs included (they are what evaluation asks for)."""
    return assign_colours(classes, seed, allow_held_out=True)


# ---------------------------------------------------------------- captions
def caption(template: str, colour_word: str, garment_word: str) -> str:
    text = template.format(colour=colour_word, garment=garment_word)
    return re.sub(r"\ba (?=[aeiou])", "an ", text)  # "a orange ..." -> "an orange ..."


def pair_captions(colour: int, cls: int, templates: Sequence[str]) -> list[str]:
    """Every caption of one (colour, class) pair under ``templates``, in a fixed order."""
    return [caption(t, cw, gw) for t in templates for cw in PALETTE[colour].words for gw in CLASS_WORDS[cls]]


def _all_captions() -> Iterator[str]:
    yield EMPTY_PROMPT
    for t in (*TRAIN_TEMPLATES, *HELD_OUT_TEMPLATES):
        for c, k in ALL_PAIRS:
            yield from pair_captions(c, k, (t,))


@dataclass(frozen=True)
class CaptionIndex:
    """Integer ids for every distinct caption (training and evaluation), and each pair's training caption ids.

    ``train_ids[c, k, :train_counts[c, k]]`` are the ids of pair (colour c, class k)'s training captions; a
    held-out pair has count 0.
    """

    captions: tuple[str, ...]
    train_ids: torch.Tensor  # int64 [8, 10, M], padded with 0
    train_counts: torch.Tensor  # int64 [8, 10]
    _id_of: dict[str, int] = field(repr=False, compare=False)
    _on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __len__(self) -> int:
        return len(self.captions)

    def ids(self, prompts: Sequence[str]) -> torch.Tensor:
        """int64 ids of known captions; an unknown one raises with the prompt named."""
        out = []
        for p in prompts:
            if p not in self._id_of:
                raise UsageError(f"prompt {p!r} is not in the caption table ({len(self)} captions)")
            out.append(self._id_of[p])
        return torch.tensor(out, dtype=torch.long)

    def sample_train_ids(
        self,
        colours: torch.Tensor,
        classes: torch.Tensor,
        generator: torch.Generator,
        dropout: float = CAPTION_DROPOUT,
    ) -> torch.Tensor:
        """A random training caption id per (colour, class) label, 0 (the empty prompt) with probability
        ``dropout``; all in torch on the labels' device (``generator`` must live there too)."""
        ids, counts = self._tables(colours.device)
        n = counts[colours, classes]
        held_out = n == 0
        if bool(held_out.any()):  # one sync per batch: a held-out pair in training data is a data bug
            i = int(held_out.flatten().nonzero()[0, 0])
            c, k = int(colours.flatten()[i]), int(classes.flatten()[i])
            raise UsageError(
                f"({COLOUR_NAMES[c]}, {CLASSES[k]}) is a held-out pair and has no training captions; "
                "assign training colours with train_colours()"
            )
        u = torch.rand(colours.shape, generator=generator, device=colours.device)
        pick = torch.minimum((u * n).long(), n - 1)
        chosen = ids[colours, classes, pick]
        drop = torch.rand(colours.shape, generator=generator, device=colours.device) < dropout
        return torch.where(drop, torch.zeros_like(chosen), chosen)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._on_device:  # copied once per device, not once per training step
            self._on_device[key] = (self.train_ids.to(device), self.train_counts.to(device))
        return self._on_device[key]


@lru_cache(maxsize=1)
def caption_index() -> CaptionIndex:
    captions = tuple(_all_captions())
    id_of = {c: i for i, c in enumerate(captions)}
    if len(id_of) != len(captions):
        raise AssertionError("caption templates produce duplicate strings")  # a bug in the tables above
    per_pair = {p: [id_of[s] for s in pair_captions(*p, TRAIN_TEMPLATES)] for p in TRAIN_PAIRS}
    width = max(len(v) for v in per_pair.values())
    ids = torch.zeros(len(PALETTE), len(CLASSES), width, dtype=torch.long)
    counts = torch.zeros(len(PALETTE), len(CLASSES), dtype=torch.long)
    for (c, k), v in per_pair.items():
        ids[c, k, : len(v)] = torch.tensor(v)
        counts[c, k] = len(v)
    return CaptionIndex(captions, ids, counts, id_of)


# ---------------------------------------------------------------- evaluation prompts
@dataclass(frozen=True)
class EvalPrompts:
    """Prompts with the (colour, class) labels the prompt-fidelity metrics score them against."""

    set_name: str
    prompts: tuple[str, ...]
    colours: torch.Tensor  # int64 [N]
    classes: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.prompts)

    def caption_ids(self) -> torch.Tensor:
        """Ids into ``caption_index()`` (and so rows of an embedding cache built from it)."""
        return caption_index().ids(self.prompts)


def _check_set(set_name: str) -> tuple[tuple[tuple[int, int], ...], tuple[str, ...]]:
    if set_name not in EVAL_SETS:
        raise UsageError(f"unknown evaluation set {set_name!r}; choose one of {sorted(EVAL_SETS)}")
    return EVAL_SETS[set_name]


def eval_set(set_name: str) -> EvalPrompts:
    """Every distinct prompt of one evaluation set ("seen", "held_out_pairs", "held_out_templates")."""
    pairs, templates = _check_set(set_name)
    rows = [(s, c, k) for c, k in pairs for s in pair_captions(c, k, templates)]
    return EvalPrompts(
        set_name,
        tuple(r[0] for r in rows),
        torch.tensor([r[1] for r in rows], dtype=torch.long),
        torch.tensor([r[2] for r in rows], dtype=torch.long),
    )


def evaluation_prompts(set_name: str, n: int, seed: int = 0) -> EvalPrompts:
    """``n`` prompts of one set, balanced over its pairs (counts differ by at most one), each a random caption of
    its pair; the same list for the same seed everywhere."""
    pairs, templates = _check_set(set_name)
    if n < 1:
        raise UsageError(f"the number of evaluation prompts must be >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    rounds = -(-n // len(pairs))
    order = torch.cat([torch.randperm(len(pairs), generator=g) for _ in range(rounds)])[:n]
    u = torch.rand(n, generator=g, dtype=torch.float64)
    prompts, colours, classes = [], [], []
    for i, j in enumerate(order.tolist()):
        c, k = pairs[j]
        options = pair_captions(c, k, templates)
        prompts.append(options[min(int(u[i] * len(options)), len(options) - 1)])
        colours.append(c)
        classes.append(k)
    return EvalPrompts(
        set_name,
        tuple(prompts),
        torch.tensor(colours, dtype=torch.long),
        torch.tensor(classes, dtype=torch.long),
    )


# ---------------------------------------------------------------- the shipped record of the split
def split_spec() -> dict:
    """The split as JSON-able data: what ``assets/t2i_split.json`` holds."""
    hues = palette_hues().tolist()
    return {
        "format_version": SPLIT_FORMAT_VERSION,
        "palette": [
            {"name": c.name, "rgb": list(c.rgb), "synonyms": list(c.synonyms), "hue_degrees": round(h, 2)}
            for c, h in zip(PALETTE, hues, strict=True)
        ],
        "classes": [
            {"label": k, "fashion_mnist_name": name, "words": list(words)}
            for k, (name, words) in enumerate(zip(CLASSES, CLASS_WORDS, strict=True))
        ],
        "templates": {"train": list(TRAIN_TEMPLATES), "held_out": list(HELD_OUT_TEMPLATES)},
        "held_out_pairs": [{"colour": PALETTE[c].name, "class": CLASSES[k]} for c, k in HELD_OUT_PAIRS],
        "eval_sets": {
            name: {
                "pairs": "held_out" if pairs == HELD_OUT_PAIRS else "train",
                "templates": "held_out" if templates == HELD_OUT_TEMPLATES else "train",
            }
            for name, (pairs, templates) in EVAL_SETS.items()
        },
        "caption_dropout": CAPTION_DROPOUT,
        "empty_prompt_id": 0,
        "caption_count": len(caption_index()),
    }


def write_split_file(path: str | Path = SPLIT_PATH) -> Path:
    return atomic_json_save(split_spec(), path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log.info("wrote %s (%d captions)", write_split_file(), len(caption_index()))
