"""Quality metrics: FD-fmnist, classifier inception score, fidelity to the FP sampler.

FD-fmnist is the Frechet distance between Gaussian fits of the shipped Fashion-MNIST classifier's penultimate
features (128-d). It plays FID's role on this data set but is not comparable to Inception FID numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import torch
from scipy import linalg

from .classifier import CLASSIFIER_PATH, load_classifier
from .data import load_fashion_mnist

log = logging.getLogger(__name__)


def untint(images: torch.Tensor) -> torch.Tensor:
    """RGB [N, 3, H, W] in [-1, 1] -> grey [N, 1, H, W]: the brightest channel, which tinting leaves untouched
    (the palette's colours all have a 255 channel), so this is the exact inverse of ``captions.tint``."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"untint expects RGB images [N, 3, H, W], got {tuple(images.shape)}")
    return images.amax(dim=1, keepdim=True)


def classifier_input(images: torch.Tensor) -> torch.Tensor:
    """Map images in [-1, 1] onto the classifier's [N, 1, 32, 32]: RGB tinted garments become grey (the brightest
    channel, which tinting leaves untouched), other channel counts (latents of tiny test models) keep channel 0,
    and other sizes are resized (nearest), so every sampler's output can be scored the same way."""
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
    x = untint(images) if images.shape[1] == 3 else images[:, :1]
    if x.shape[-2:] != (32, 32):
        x = torch.nn.functional.interpolate(x.float(), size=(32, 32), mode="nearest")
    return x


@torch.inference_mode()
def classifier_outputs(
    images: torch.Tensor, device: str | torch.device = "cpu", batch: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, 128] float64, class probabilities [N, 10]) for images in [-1, 1] (:func:`classifier_input`)."""
    net = _classifier(str(device))
    feats, probs = [], []
    for i in range(0, len(images), batch):
        x = classifier_input(images[i : i + batch]).to(device, torch.float32).clamp(-1, 1)
        f = net.forward_features(x)
        feats.append(f.double().cpu())
        probs.append(torch.softmax(net.head(f), dim=1).double().cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


@lru_cache(maxsize=4)
def _classifier(device: str):
    return load_classifier(CLASSIFIER_PATH, device)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    diff = mu1 - mu2
    # ReLU features include a few dead dimensions, so the covariances are singular; a tiny ridge keeps sqrtm stable
    # (changes the distance by < 1e-5 on this feature scale).
    off = np.eye(s1.shape[0]) * 1e-6
    covmean = linalg.sqrtm((s1 + off) @ (s2 + off)).real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@lru_cache(maxsize=2)
def reference_stats(split: str = "test", data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics of a real split (the test set is the reference for FD-fmnist)."""
    data = load_fashion_mnist(split, data_dir).as_model_input()
    feats, _ = classifier_outputs(data, "cuda" if torch.cuda.is_available() else "cpu")
    return gaussian_stats(feats)


def fd_fmnist(images: torch.Tensor, device: str | torch.device = "cpu", data_dir: str | None = None) -> float:
    """Frechet distance of ``images`` to the Fashion-MNIST test set in the classifier's feature space."""
    _check_count(images)
    feats, _ = classifier_outputs(images, device)
    return _fd_from_features(feats, data_dir)


def inception_score(
    images: torch.Tensor, device: str | torch.device = "cpu", splits: int = 10
) -> tuple[float, float]:
    """Classifier-based inception score exp(E[KL(p(y|x) || p(y))]) (max 10 for 10 classes): mean and std over splits."""
    _, probs = classifier_outputs(images, device)
    return _is_from_probs(probs, splits)


def sample_quality(
    images: torch.Tensor, device: str | torch.device = "cpu", data_dir: str | None = None
) -> dict[str, float]:
    """FD-fmnist and inception score from one classifier pass (both need the same features/probabilities)."""
    _check_count(images)
    feats, probs = classifier_outputs(images, device)
    is_mean, is_std = _is_from_probs(probs)
    return {"fd_fmnist": _fd_from_features(feats, data_dir), "is_mean": is_mean, "is_std": is_std}


def _check_count(images: torch.Tensor) -> None:
    if len(images) < 2:
        raise ValueError(
            "FD-fmnist needs at least 2 images (a covariance); use thousands for a stable number."
        )


def _fd_from_features(feats: np.ndarray, data_dir: str | None) -> float:
    mu, sigma = gaussian_stats(feats)
    mu_r, sigma_r = reference_stats("test", data_dir)
    return frechet_distance(mu, sigma, mu_r, sigma_r)


def _is_from_probs(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    scores = []
    for part in np.array_split(probs, max(1, min(splits, len(probs) // 2))):
        py = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(py + 1e-12))).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def fidelity(images: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How close two samplers' outputs from the same initial noise are: PSNR (dB, images in [-1, 1] so peak-to-peak
    2), relative L2 and max abs error. ``reference`` is usually the FP model's output."""
    if images.shape != reference.shape:
        raise ValueError(
            f"fidelity needs equal shapes, got {tuple(images.shape)} and {tuple(reference.shape)}"
        )
    a = images.detach().double().cpu().clamp(-1, 1)
    b = reference.detach().double().cpu().clamp(-1, 1)
    mse = float(((a - b) ** 2).mean())
    psnr = float("inf") if mse == 0 else float(10 * np.log10(4.0 / mse))
    rel = float((a - b).norm() / b.norm().clamp_min(1e-12))
    return {"psnr_db": psnr, "rel_l2": rel, "max_abs": float((a - b).abs().max())}


def fd_between(images: torch.Tensor, reference: torch.Tensor, device: str | torch.device = "cpu") -> float:
    """Frechet distance between two image sets in the classifier's feature space; with ``reference`` the FP
    model's images for the same prompts and noise this is PCR's "FD to FP" (how far quantization moved the
    distribution, independent of how good the FP model is)."""
    _check_count(images)
    _check_count(reference)
    fa, _ = classifier_outputs(images, device)
    fb, _ = classifier_outputs(reference, device)
    return frechet_distance(*gaussian_stats(fa), *gaussian_stats(fb))


def over_seeds(runs: list[dict], keys: Iterable[str]) -> dict[str, float]:
    """Mean and half-range (``<key>_spread``) over per-noise-seed results of every key present; missing and
    non-finite values (a metric a run could not compute) are left out, and a key with none left is omitted."""
    out: dict[str, float] = {}
    for k in keys:
        vals = [r[k] for r in runs if r.get(k) is not None and np.isfinite(r[k])]
        if vals:
            out[k], out[f"{k}_spread"] = float(np.mean(vals)), float((max(vals) - min(vals)) / 2)
    return out
