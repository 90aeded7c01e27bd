"""``pqcad-train personalize``: DreamBooth-style personalization of a text-to-image model from a folder of images.

Methods (the quantized-personalization paper, arXiv 2401.04339, and its baseline):
- ``peqa``: a quantized student keeps its integer weight codes and trains only the per-output-channel weight scales
  (PEQA); the result is a patch of scales (``--out X.safetensors`` + ``.json``) that ``pqcad-patch`` applies to the
  student's exported graph, codes byte-identical;
- ``s1``: the same, trained only on the timesteps in ``--timesteps LO:HI`` (the paper's S1);
- ``s2``: ``--intervals K`` scale sets over the same codes, one per timestep interval (equal numbers of the
  sampler's steps, or the student's own intervals), each trained on its interval's timesteps and selected by
  timestep when sampling (the paper's S2); ``pqcad-patch`` turns the patch into one graph per interval and their
  interval manifest;
- ``mcsu``: PEQA plus a trainable scale per input channel (the paper's MCSU). QDQ weight scales are per output
  channel only (TensorRT and ONNX Runtime alike), so the input-channel scales cannot be a patch: they are folded
  into the weights, which the export rounds to new integer codes; ``--out`` is the personalized student, and the
  training record says what fraction of the codes changed;
- ``fp``: full fine-tuning of the FP teacher (the FP DreamBooth baseline); ``--out`` is a model file.
The subject is bound to the instance prompt (default "a photo of a sks <class>"); with ``--prior-weight`` > 0 the
model first generates ``--prior-images`` images of the class prompt and keeps fitting them (prior preservation).
Prompts are encoded by the live text encoder the model was trained on. A sample grid of the instance prompt and
coloured variants is written beside ``--out``.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pqcad_deploy.captions import EMPTY_PROMPT, PALETTE
from pqcad_deploy.cli.common import add_subcommand, float_range, int_range, resolve_device
from pqcad_deploy.conditioning import PromptEncoder, check_cache, generate_for_prompts
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.errors import UsageError
from pqcad_deploy.loading import open_model
from pqcad_deploy.zoo import ModelSpec

from .finetune import SAMPLE_STEPS, PromptedImages, TuneConfig, tune
from .finetune_cli import add_tune_args, check_run, parse_timesteps, save_result, showcase
from .personalize_data import load_subject, write_default_subject

log = logging.getLogger(__name__)


@dataclass
class PersonalizeConfig(TuneConfig):
    token: str = "sks"
    class_word: str = "bag"
    instance_prompt: str | None = None  # default: "a photo of a {token} {class_word}"
    class_prompt: str | None = None  # default: "a photo of a {class_word}"
    prior_weight: float = 1.0
    prior_images: int = 16
    guidance_scale: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.instance_prompt = self.instance_prompt or f"a photo of a {self.token} {self.class_word}"
        self.class_prompt = self.class_prompt or f"a photo of a {self.class_word}"
        if self.token not in self.instance_prompt.split():
            raise UsageError(
                f"the instance prompt {self.instance_prompt!r} does not contain the token {self.token!r}."
            )

    def coloured_prompts(self, n_colours: int | None = None) -> list[str]:
        """The subject in the palette's colours (the first ``n_colours``): prompt fidelity's prompts."""
        return [f"a photo of a {c.name} {self.token} {self.class_word}" for c in PALETTE[:n_colours]]

    def showcase_prompts(self) -> list[str]:
        """The instance prompt and the subject in three colours: what the sample grid shows."""
        return [self.instance_prompt, *self.coloured_prompts(3)]

    def prompts(self) -> list[str]:
        """Every prompt a run encodes: training, prior preservation, the grid and prompt fidelity (with the empty
        prompt of classifier-free guidance): what an embedding cache for this run must hold."""
        return [EMPTY_PROMPT, self.instance_prompt, self.class_prompt, *self.coloured_prompts()]


def warn_split_token(prompts: PromptEncoder, token: str) -> None:
    """The token should be one rare piece; a word the tokenizer splits into many pieces binds weakly."""
    enc = prompts.encoder
    if enc is None:
        return
    pieces = enc.tokenizer.tokenize(token)
    if len(pieces) > 1:
        log.warning("the tokenizer splits %r into %d pieces (%s); a rarer single-piece token binds better",
                    token, len(pieces), " ".join(pieces))  # fmt: skip


def model_samples(
    model: torch.nn.Module,
    spec: ModelSpec,
    texts: list[str],
    prompts: PromptEncoder,
    guidance_scale: float,
    seed: int,
    device: torch.device,
    weight: float,
) -> PromptedImages:
    """The model's own images of ``texts`` as a training set (prior preservation: what it knew stays fitted)."""
    model.eval()
    with torch.no_grad():
        imgs = generate_for_prompts(TorchDenoiser(model.to(device)), spec, texts, prompts, SAMPLE_STEPS,
                                    guidance_scale, seed=seed, device=device, progress=False)  # fmt: skip
    return PromptedImages(imgs, list(texts), weight)


def personalize(
    model: torch.nn.Module,
    spec: ModelSpec,
    subject: torch.Tensor,
    prompts: PromptEncoder,
    cfg: PersonalizeConfig,
    device: torch.device,
    progress: bool = True,
    sampler_steps: int = SAMPLE_STEPS,
    keep_frozen: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place on ``subject`` bound to the instance prompt, with prior preservation on the
    model's own images of the class prompt (:func:`finetune.tune`); returns the training record."""
    sets = [PromptedImages(subject, [cfg.instance_prompt] * len(subject), 1.0, augmented=True)]
    if cfg.prior_weight > 0 and cfg.prior_images > 0:
        sets.append(model_samples(model, spec, [cfg.class_prompt] * cfg.prior_images, prompts,
                                  cfg.guidance_scale, cfg.seed + 1, device, cfg.prior_weight))  # fmt: skip
    return tune(model, spec, sets, prompts, cfg, device, progress, sampler_steps, keep_frozen)


def run(args: argparse.Namespace) -> None:
    bundle = open_model(args.model)
    spec = bundle.spec
    out = check_run(args, bundle, "personalization")
    device = resolve_device(args.device)
    cfg = PersonalizeConfig(method=args.method, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                            timesteps=parse_timesteps(args.timesteps), seed=args.seed, intervals=args.intervals,
                            token=args.token, class_word=args.class_word, instance_prompt=args.instance_prompt,
                            class_prompt=args.class_prompt, prior_weight=args.prior_weight,
                            prior_images=args.prior_images, guidance_scale=args.guidance_scale)  # fmt: skip
    prompts = PromptEncoder.open(
        spec, embeddings=args.embeddings, text_encoder=args.text_encoder, device=device
    )
    check_cache(prompts, cfg.prompts(), args.embeddings)
    warn_split_token(prompts, cfg.token)
    subject = load_subject(args.images, spec)
    steps = (bundle.meta.get("sampling") or {}).get("steps") or SAMPLE_STEPS
    record = personalize(bundle.model, spec, subject, prompts, cfg, device, progress=not args.no_progress,
                         sampler_steps=steps)  # fmt: skip
    record.update(subject=str(args.images), subject_images=len(subject), base=str(bundle.source))
    save_result(bundle, cfg.method, record, out, args.save_student, "personalize")
    grid = showcase(bundle.model, spec, prompts, cfg, device, out.with_name(out.stem + "_grid.png"))
    print(f"wrote {out} ({cfg.method}, {record['trainable_parameters']} trainable parameters, "
          f"{record['seconds']} s); samples: {grid}")  # fmt: skip


def run_subject(args: argparse.Namespace) -> None:
    files = write_default_subject(
        args.out, args.class_name, args.colour, args.index, args.copies, args.data_dir
    )
    print(f"wrote {len(files)} subject images to {args.out}")


def register(sub: Any) -> None:
    s = add_subcommand(
        sub, "subject", "write the testbed's default subject: one test-set garment, augmented", None
    )
    s.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    s.add_argument("--class-name", default="Bag", help="Fashion-MNIST class name (default: Bag)")
    s.add_argument("--colour", default="red", help="palette colour of the tint")
    s.add_argument("--index", type=int_range(0), default=0, help="which test image of the class")
    s.add_argument(
        "--copies", type=int_range(1, 64), default=4, help="images written (the first unaugmented)"
    )
    s.add_argument(
        "--data-dir", default=None, help="Fashion-MNIST folder (default: $PQCAD_FMNIST_DIR or the system one)"
    )
    s.set_defaults(func=run_subject)
    p = add_subcommand(
        sub, "personalize", "DreamBooth-style personalization: scale patch (peqa/s1) or FP model", __doc__
    )
    p.add_argument(
        "--model",
        required=True,
        help="quantized student (peqa, s1, s2, mcsu) or FP teacher (fp): file or zoo name",
    )
    p.add_argument("--images", type=Path, required=True, help="folder of 3-5 images of the subject")
    p.add_argument(
        "--out", type=Path, required=True, help="patch .safetensors (peqa, s1, s2) or model file (fp)"
    )
    p.add_argument("--token", default="sks", help="rare token the subject is bound to")
    p.add_argument("--class-word", default="bag", help="the subject's class, as prompts name it")
    p.add_argument("--instance-prompt", default=None, help='default: "a photo of a TOKEN CLASS"')
    p.add_argument(
        "--class-prompt", default=None, help='prior-preservation prompt; default: "a photo of a CLASS"'
    )
    p.add_argument(
        "--prior-weight", type=float_range(0.0, 100.0), default=1.0, help="0: no prior preservation"
    )
    p.add_argument(
        "--prior-images", type=int_range(0), default=16, help="class images the model generates first"
    )
    add_tune_args(p)
    p.set_defaults(func=run)
