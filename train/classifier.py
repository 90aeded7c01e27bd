"""``pqcad-train classifier``: the feature network behind FD-fmnist and the classifier inception score."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pqcad_deploy.classifier import FMNISTClassifier, save_classifier
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

log = logging.getLogger(__name__)


@torch.no_grad()
def accuracy(model: FMNISTClassifier, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum(
        int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch)
    )
    return correct / len(x)


def train(args: argparse.Namespace) -> Path:
    dev = resolve_device(args.device)
    check_output_path(args.out)
    torch.manual_seed(args.seed)
    tr, te = load_fashion_mnist("train", args.data_dir), load_fashion_mnist("test", args.data_dir)
    x, y = tr.as_model_input().to(dev), tr.labels.to(dev)
    xt, yt = te.as_model_input().to(dev), te.labels.to(dev)
    model = FMNISTClassifier().to(dev)
    steps_per_epoch = len(x) // args.batch_size
    if steps_per_epoch == 0:
        raise UsageError(
            f"--batch-size {args.batch_size} is larger than the {len(x)} training images; lower it."
        )
    total = args.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total)
    g = torch.Generator(device=dev).manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x), device=dev, generator=g)
        bar = tqdm(range(steps_per_epoch), desc=f"classifier epoch {epoch + 1}/{args.epochs}")
        for i in bar:
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            xb = x[idx]
            shift = torch.randint(
                -2, 3, (2,), generator=torch.Generator().manual_seed(epoch * 100003 + i)
            ).tolist()
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            xb = torch.where(torch.rand(len(xb), 1, 1, 1, device=dev) < 0.5, xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    acc = accuracy(model, xt, yt)
    log.info("classifier test accuracy: %.4f", acc)
    out = Path(args.out)
    save_classifier(
        model,
        out,
        {
            "test_accuracy": acc,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "feature_dim": 128,
        },
    )
    return out


def register(sub: Any) -> None:
    p = add_subcommand(
        sub, "classifier", "train the Fashion-MNIST feature classifier used by FD-fmnist", __doc__
    )
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--out", default="runs/fmnist_classifier.safetensors")
    p.add_argument("--epochs", type=int_range(1, 10_000), default=12)
    p.add_argument("--batch-size", type=batch_int, default=256)
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--seed", type=seed_int, default=0)
    add_device(p)
    p.set_defaults(func=train)
