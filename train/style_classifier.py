"""``pqcad-train style-classifier``: the network behind style fidelity (:mod:`pqcad_deploy.style_classifier`).

Every training image is drawn in a random one of the testbed's styles (or left plain) after a random shift and
flip, and half of them are then damaged the way a sampled image is (:func:`degrade`); the style head learns which
style, the garment head which class. Test accuracy of both heads is measured on the test split drawn in every
style, clean and damaged, and stored in the sidecar.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pqcad_deploy.cli.common import (
    add_device,
    add_subcommand,
    batch_int,
    check_output_path,
    int_range,
    positive_float,
    resolve_device,
    seed_int,
)
from pqcad_deploy.data import load_fashion_mnist
from pqcad_deploy.errors import UsageError
from pqcad_deploy.style_classifier import StyleClassifier, save_style_classifier
from pqcad_deploy.styles import STYLE_CLASSES, render

log = logging.getLogger(__name__)


def render_by_label(grey: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """Each image of ``grey`` drawn in the style ``STYLE_CLASSES[styles[i]]``."""
    out = torch.empty_like(grey)
    for k, name in enumerate(STYLE_CLASSES):
        mask = styles == k
        if mask.any():
            out[mask] = render(grey[mask], name)
    return out


def degrade(x: torch.Tensor, g: torch.Generator, share: float = 0.5) -> torch.Tensor:
    """``share`` of the grey images ``x`` in [-1, 1] damaged like sampled garments: speckle noise as untinting an
    RGB sample leaves it (the brightest of three noisy channels, so mostly bright specks on the black background),
    lower contrast, sometimes a slight blur. A classifier trained on clean renderings alone calls such specks
    "outline" (edges everywhere) and misses stripes and dots drawn by a model."""
    n, dev = len(x), x.device

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=dev, generator=g)

    sigma = u(n, 1, 1, 1) * 0.3
    noise = torch.randn(n, 3, *x.shape[-2:], device=dev, generator=g).mul(sigma).amax(1, keepdim=True)
    y = (x + noise + 1) * (0.7 + 0.3 * u(n, 1, 1, 1)) - 1
    blurred = 0.5 * y + 0.5 * F.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)
    y = torch.where(u(n, 1, 1, 1) < 0.2, blurred, y).clamp(-1, 1)
    return torch.where(u(n, 1, 1, 1) < share, y, x)


@torch.no_grad()
def accuracies(
    model: StyleClassifier,
    grey: torch.Tensor,
    garments: torch.Tensor,
    batch: int = 1000,
    damaged: bool = False,
) -> dict:
    """Style and garment accuracy over ``grey`` drawn in every style (overall and per style); ``damaged``: every
    image through :func:`degrade` first (fixed seed)."""
    model.eval()
    per_style, per_garment = {}, {}
    g = torch.Generator(device=grey.device)
    for k, name in enumerate(STYLE_CLASSES):
        style_ok = garment_ok = 0
        g.manual_seed(1234 + k)
        for i in range(0, len(grey), batch):
            x = render(grey[i : i + batch], name)
            s, g_logits = model(degrade(x, g, share=1.0) if damaged else x)
            style_ok += int((s.argmax(1) == k).sum())
            garment_ok += int((g_logits.argmax(1) == garments[i : i + batch]).sum())
        per_style[name], per_garment[name] = style_ok / len(grey), garment_ok / len(grey)
    return {
        "style_accuracy": sum(per_style.values()) / len(per_style),
        "garment_accuracy": sum(per_garment.values()) / len(per_garment),
        "style_accuracy_per_style": per_style,
        "garment_accuracy_per_style": per_garment,
    }


def train_style_classifier(
    images: torch.Tensor,
    garments: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    progress: bool = True,
) -> StyleClassifier:
    x, y = images.to(device), garments.to(device)
    steps = len(x) // batch_size
    if steps == 0:
        raise UsageError(f"--batch-size {batch_size} is larger than the {len(x)} training images; lower it.")
    torch.manual_seed(seed)
    model = StyleClassifier().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    g = torch.Generator(device=device).manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), device=device, generator=g)
        bar = tqdm(range(steps), desc=f"style classifier epoch {epoch + 1}/{epochs}", disable=not progress)
        for i in bar:
            idx = perm[i * batch_size : (i + 1) * batch_size]
            xb = x[idx]
            dy, dx = torch.randint(-2, 3, (2,), device=device, generator=g).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            xb = torch.where(torch.rand(len(xb), 1, 1, 1, device=device, generator=g) < 0.5, xb.flip(-1), xb)
            styles = torch.randint(0, len(STYLE_CLASSES), (len(xb),), device=device, generator=g)
            s, c = model(degrade(render_by_label(xb, styles), g))
            loss = F.cross_entropy(s, styles, label_smoothing=0.05) + F.cross_entropy(
                c, y[idx], label_smoothing=0.05
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def run(args: argparse.Namespace) -> Path:
    dev = resolve_device(args.device)
    out = check_output_path(args.out)
    tr, te = load_fashion_mnist("train", args.data_dir), load_fashion_mnist("test", args.data_dir)
    n = args.train_images or len(tr)
    model = train_style_classifier(tr.as_model_input()[:n], tr.labels[:n], args.epochs, args.batch_size, args.lr,
                                   args.seed, dev, progress=not args.no_progress)  # fmt: skip
    m = args.test_images or len(te)
    test_x, test_y = te.as_model_input()[:m].to(dev), te.labels[:m].to(dev)
    acc = accuracies(model, test_x, test_y)
    damaged = accuracies(model, test_x, test_y, damaged=True)
    acc.update({f"damaged_{k}": v for k, v in damaged.items()})
    log.info("style accuracy %.4f (damaged %.4f), garment accuracy %.4f (damaged %.4f); test split, every style",
             acc["style_accuracy"], damaged["style_accuracy"], acc["garment_accuracy"],
             damaged["garment_accuracy"])  # fmt: skip
    info = {**acc, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
            "train_images": n, "test_images": m}  # fmt: skip
    save_style_classifier(model, out, info)
    print(
        f"wrote {out}: style accuracy {acc['style_accuracy']:.4f}, garment accuracy {acc['garment_accuracy']:.4f}"
    )
    return out


def register(sub: Any) -> None:
    p = add_subcommand(sub, "style-classifier", "train the style classifier behind style fidelity", __doc__)
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--out", type=Path, default=Path("runs/fmnist_style_classifier.safetensors"))
    p.add_argument("--epochs", type=int_range(1, 10_000), default=6)
    p.add_argument("--batch-size", type=batch_int, default=256)
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--train-images", type=int_range(1), default=None, help="use the first N training images")
    p.add_argument(
        "--test-images",
        type=int_range(1),
        default=None,
        help="measure on the first N test images (default: all)",
    )
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device(p)
    p.set_defaults(func=run)
