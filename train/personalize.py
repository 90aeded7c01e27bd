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
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pqcad_deploy.captions import EMPTY_PROMPT, PALETTE
from pqcad_deploy.cli.common import (
    add_device,
    add_subcommand,
    add_text_args,
    batch_int,
    check_output_path,
    float_range,
    int_range,
    positive_float,
    resolve_device,
    seed_int,
)
from pqcad_deploy.conditioning import PromptEncoder, generate_for_prompts
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.errors import UsageError
from pqcad_deploy.images import save_grid
from pqcad_deploy.loading import open_model
from pqcad_deploy.patch import student_patch
from pqcad_deploy.quant.intervals import (
    IntervalError,
    IntervalSchedule,
    add_intervals,
    add_weight_sets,
    get_intervals,
)
from pqcad_deploy.quant.scale_tuning import codes_changed, freeze_codes, frozen_codes, materialize
from pqcad_deploy.sampling import make_scheduler
from pqcad_deploy.student import save_student
from pqcad_deploy.zoo import ModelSpec, save_weights

from .checkpointing import TrainingDiverged
from .personalize_data import augment, load_subject, write_default_subject

log = logging.getLogger(__name__)

METHODS = ("peqa", "s1", "s2", "mcsu", "fp")
SCALE_METHODS = ("peqa", "s1", "s2", "mcsu")  # codes frozen, scales trained
PATCH_METHODS = ("peqa", "s1", "s2")  # ... and the result is a patch of scales
# scales: a relative change per step (they train in log space); fp: the weights themselves
DEFAULT_LR = {"peqa": 1e-3, "s1": 1e-3, "s2": 1e-3, "mcsu": 1e-3, "fp": 1e-5}
SAMPLE_STEPS = 50


@dataclass
class PersonalizeConfig:
    method: str = "peqa"
    token: str = "sks"
    class_word: str = "bag"
    instance_prompt: str | None = None  # default: "a photo of a {token} {class_word}"
    class_prompt: str | None = None  # default: "a photo of a {class_word}"
    steps: int = 400
    lr: float | None = None  # default: DEFAULT_LR[method]
    batch_size: int = 4
    prior_weight: float = 1.0
    prior_images: int = 16
    # [lo, hi) drawn in training; None: the whole range (s1 needs one)
    timesteps: tuple[int, int] | None = None
    guidance_scale: float = 3.0
    seed: int = 0
    intervals: int | None = None  # s2: scale sets (default 2, or the student's own intervals)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        if self.intervals is not None and (self.method != "s2" or self.intervals < 2):
            raise UsageError(
                "--intervals K (K >= 2) sets the scale sets of --method s2; the other methods train one."
            )
        if self.method == "s1" and self.timesteps is None:
            raise UsageError("s1 trains on selected timesteps only: give --timesteps LO:HI (e.g. 0:500).")
        self.instance_prompt = self.instance_prompt or f"a photo of a {self.token} {self.class_word}"
        self.class_prompt = self.class_prompt or f"a photo of a {self.class_word}"
        if self.token not in self.instance_prompt.split():
            raise UsageError(
                f"the instance prompt {self.instance_prompt!r} does not contain the token {self.token!r}."
            )
        self.lr = self.lr or DEFAULT_LR[self.method]

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


def install_scale_sets(
    model: torch.nn.Module, spec: ModelSpec, k: int | None, sampler_steps: int
) -> IntervalSchedule:
    """S2: K weight scale sets on ``model``, over the student's own intervals or K equal shares of the sampler's
    ``sampler_steps`` DDIM steps."""
    own = get_intervals(model)
    if own is None:
        ddim = make_scheduler("ddim", **spec.scheduler)
        ddim.set_timesteps(sampler_steps)
        n_train = int(spec.scheduler.get("num_train_timesteps", 1000))
        try:
            own = IntervalSchedule.equal_steps([int(t) for t in ddim.timesteps], k or 2, n_train)
        except IntervalError as e:
            raise UsageError(f"--intervals {k}: {e}") from None
        add_intervals(model, own)
    elif k is not None and k != own.k:
        raise UsageError(
            f"the student already holds {own.k} timestep intervals; drop --intervals or give {own.k}."
        )
    add_weight_sets(model)
    return own


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
    """Fine-tune ``model`` in place on ``subject`` (scale-only for peqa/s1/s2/mcsu, materialized at the end unless
    ``keep_frozen``: then :func:`quant.scale_tuning.materialize` is the caller's); returns the training record
    (loss curve, trainable parameters, time, peak memory)."""
    model = model.to(device)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    sched = make_scheduler("ddpm", **spec.scheduler)
    n_t = sched.config.num_train_timesteps
    lo, hi = cfg.timesteps or (0, n_t)
    if not 0 <= lo < hi <= n_t:
        raise UsageError(f"--timesteps {lo}:{hi} must satisfy 0 <= LO < HI <= {n_t}.")
    intervals = install_scale_sets(model, spec, cfg.intervals, sampler_steps) if cfg.method == "s2" else None
    # the timesteps each scale set trains on: its interval's, within [lo, hi)
    ranges = [(lo, hi)] if intervals is None else [intervals.timestep_range(k) for k in range(intervals.k)]
    ranges = [(max(a, lo), min(b, hi)) for a, b in ranges]
    if any(a >= b for a, b in ranges):
        raise UsageError(
            f"--timesteps {lo}:{hi} leaves some of the {len(ranges)} intervals without timesteps."
        )
    subject = subject.to(device)
    inst = prompts.states([cfg.instance_prompt]).to(device)
    prior = None
    if (
        cfg.prior_weight > 0 and cfg.prior_images > 0
    ):  # the model's own images of the class (prior preservation)
        model.eval()
        with torch.no_grad():
            imgs = generate_for_prompts(TorchDenoiser(model), spec, [cfg.class_prompt] * cfg.prior_images, prompts,
                                        SAMPLE_STEPS, cfg.guidance_scale, seed=cfg.seed + 1, device=device,
                                        progress=False)  # fmt: skip
        prior = (imgs.to(device), prompts.states([cfg.class_prompt]).to(device))
    scale_only = cfg.method in SCALE_METHODS
    params = (
        freeze_codes(model, input_scales=cfg.method == "mcsu") if scale_only else list(model.parameters())
    )
    codes = frozen_codes(model) if cfg.method == "mcsu" else None  # kept: materialize() drops the buffers
    for p in params:
        p.requires_grad_(True)
    # Scales train in log space (a step changes a scale by a fraction of itself, whatever its size, and it stays
    # positive), one tensor per scale set so that a step updates only the set its interval selected; the fp
    # baseline trains its weights directly.
    with torch.no_grad():
        sets = [list(p.unbind(0)) if intervals is not None else [p] for p in params] if scale_only else []
    logs = [[r.detach().log().clone().requires_grad_(True) for r in rows] for rows in sets]
    opt = torch.optim.AdamW(
        [x for xs in logs for x in xs] if scale_only else params, lr=cfg.lr, weight_decay=0.0
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()

    def loss_on(x0: torch.Tensor, states: torch.Tensor, k: int) -> torch.Tensor:
        t = torch.randint(*ranges[k], (x0.shape[0],), device=device, generator=g)
        noise = torch.randn(x0.shape, device=device, generator=g)
        cond = states.expand(x0.shape[0], *states.shape[1:])
        pred = model(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond, return_dict=False)[0]
        return F.mse_loss(pred.float(), noise)

    curve, t0 = [], time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"personalize ({cfg.method})", unit="step", disable=not progress)
    for step in bar:
        k = step % len(ranges)  # s2: the intervals in turn, every step one interval (as the sampler calls it)
        idx = torch.randint(0, len(subject), (cfg.batch_size,), device=device, generator=g)
        loss = loss_on(augment(subject[idx], g), inst, k)
        if prior is not None:
            pidx = torch.randint(0, len(prior[0]), (cfg.batch_size,), device=device, generator=g)
            loss = loss + cfg.prior_weight * loss_on(prior[0][pidx], prior[1], k)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"non-finite loss at step {step}; nothing was written. Lower --lr.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if scale_only:
            with torch.no_grad():
                for p, rows, log_rows in zip(params, sets, logs, strict=True):
                    grads = p.grad.unbind(0) if intervals is not None else [p.grad]
                    for j, (r, log_r, gr) in enumerate(zip(rows, log_rows, grads, strict=True)):
                        log_r.grad = gr * r if j == k else None  # d loss / d log s = d loss / d s * s
                    p.grad = None
        opt.step()
        if scale_only:
            with torch.no_grad():
                for rows, log_rows in zip(sets, logs, strict=True):
                    rows[k].copy_(log_rows[k].exp())
        if step % 10 == 0 or step == cfg.steps - 1:
            curve.append([step, round(loss.item(), 6)])
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    for p in params:
        p.requires_grad_(False)
    extra = {}
    if scale_only and not keep_frozen:
        materialize(model)
        if codes is not None:  # MCSU: the input-channel scales live on in new codes
            extra["codes_changed"] = round(codes_changed(model, codes), 6)
    return {
        **extra,
        "config": asdict(cfg),
        "intervals": intervals.to_dict() if intervals is not None else None,
        "sampler_steps": sampler_steps,
        "trainable_parameters": sum(p.numel() for p in params),
        "seconds": round(time.perf_counter() - t0, 1),
        "loss_curve": curve,
        "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }  # fmt: skip


def showcase(model: torch.nn.Module, spec: ModelSpec, prompts: PromptEncoder, cfg: PersonalizeConfig, device,
             path: Path, per_prompt: int = 4) -> Path:  # fmt: skip
    """A grid: one row per showcase prompt, ``per_prompt`` noise seeds each (the same noise for every model)."""
    texts = [p for p in cfg.showcase_prompts() for _ in range(per_prompt)]
    imgs = generate_for_prompts(TorchDenoiser(model.eval()), spec, texts, prompts, SAMPLE_STEPS, cfg.guidance_scale,
                                seed=1000, device=device, progress=False)  # fmt: skip
    return Path(save_grid(imgs, path, nrow=per_prompt))


def run(args: argparse.Namespace) -> None:
    bundle = open_model(args.model)
    spec = bundle.spec
    if not spec.text_conditioned:
        raise UsageError(
            f"{args.model} is not text-conditioned; personalization binds a prompt token to a subject."
        )
    scale_only = args.method in SCALE_METHODS
    if scale_only and not bundle.quantized:
        raise UsageError(f"--method {args.method} tunes the scales of a quantized student; {args.model} is FP. "
                         "Quantize it first (pqcad-train ptq), or use --method fp for the FP baseline.")  # fmt: skip
    if args.method == "fp" and bundle.quantized:
        raise UsageError(
            "--method fp fine-tunes an FP model; give the FP teacher, or --method peqa for a student."
        )
    if args.out.suffix != ".safetensors":
        what = "a scale patch" if args.method in PATCH_METHODS else "the personalized model"
        raise UsageError(f"--out {args.out}: {what} is written as .safetensors (with a .json sidecar).")
    out = check_output_path(args.out, [args.model])
    if args.save_student:
        if args.method not in PATCH_METHODS:
            raise UsageError(f"--save-student: --method {args.method} writes the model itself to --out.")
        check_output_path(args.save_student, [args.model], "--save-student", outputs=[out])
    device = resolve_device(args.device)
    ts = None
    if args.timesteps:
        parts = args.timesteps.split(":")
        if len(parts) != 2 or not all(v.strip().isdigit() for v in parts):
            raise UsageError(f"--timesteps {args.timesteps!r}: write LO:HI, e.g. 0:500.")
        ts = (int(parts[0]), int(parts[1]))
    cfg = PersonalizeConfig(args.method, args.token, args.class_word, args.instance_prompt, args.class_prompt,
                            args.steps, args.lr, args.batch_size, args.prior_weight, args.prior_images, ts,
                            args.guidance_scale, args.seed, args.intervals)  # fmt: skip
    prompts = PromptEncoder.open(
        spec, embeddings=args.embeddings, text_encoder=args.text_encoder, device=device
    )
    if prompts.cache is not None:
        missing = [t for t in cfg.prompts() if t not in prompts.cache]
        if missing:
            raise UsageError(f"--embeddings {args.embeddings} lacks {len(missing)} of this run's prompts (e.g. "
                             f"{missing[0]!r}); drop --embeddings to encode them with the text encoder, or build a "
                             "cache of them (python -m pqcad_deploy.text OUT --prompts FILE).")  # fmt: skip
    warn_split_token(prompts, cfg.token)
    subject = load_subject(args.images, spec)
    steps = (bundle.meta.get("sampling") or {}).get("steps") or SAMPLE_STEPS
    record = personalize(bundle.model, spec, subject, prompts, cfg, device, progress=not args.no_progress,
                         sampler_steps=steps)  # fmt: skip
    record.update(subject=str(args.images), subject_images=len(subject), base=str(bundle.source))
    meta = {**bundle.meta, "history": [*bundle.meta.get("history", []), {"personalize": record}]}
    if cfg.method in PATCH_METHODS:
        patch = student_patch(bundle.model, {"method": cfg.method, "training": record})  # checks the scales
        if args.save_student:
            save_student(args.save_student, bundle.model, spec, meta=meta)
        patch.save(out)
        log.info("wrote patch %s: %d scale values (%d layers)", out, patch.num_parameters, len(patch.scales))
    elif scale_only:
        save_student(out, bundle.model, spec, meta=meta)
        log.info("wrote student %s; folding the input-channel scales changed %.2f %% of the integer codes", out,
                 100 * record["codes_changed"])  # fmt: skip
    else:
        save_weights(bundle.model, spec, out, extra={"personalize": record})
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
    p.add_argument("--method", choices=METHODS, default="peqa")
    p.add_argument("--token", default="sks", help="rare token the subject is bound to")
    p.add_argument("--class-word", default="bag", help="the subject's class, as prompts name it")
    p.add_argument("--instance-prompt", default=None, help='default: "a photo of a TOKEN CLASS"')
    p.add_argument(
        "--class-prompt", default=None, help='prior-preservation prompt; default: "a photo of a CLASS"'
    )
    p.add_argument("--steps", type=int_range(1), default=400)
    p.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="default: 1e-3 for scales (in log space: a relative step), 1e-5 for fp",
    )
    p.add_argument(
        "--batch-size", type=batch_int, default=4, help="subject images per step (and prior images)"
    )
    p.add_argument(
        "--prior-weight", type=float_range(0.0, 100.0), default=1.0, help="0: no prior preservation"
    )
    p.add_argument(
        "--prior-images", type=int_range(0), default=16, help="class images the model generates first"
    )
    p.add_argument(
        "--timesteps", default=None, metavar="LO:HI", help="train on timesteps in [LO, HI) (s1: required)"
    )
    p.add_argument(
        "--intervals",
        type=int_range(2, 64),
        default=None,
        metavar="K",
        help="s2: scale sets, one per timestep interval (default 2, or the student's own intervals)",
    )
    p.add_argument(
        "--save-student", type=Path, default=None, help="also write the personalized student (peqa, s1, s2)"
    )
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_text_args(p)
    add_device(p)
    p.set_defaults(func=run)
