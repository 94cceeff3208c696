"""Shared pieces of the generative digits models (``digit_vae``, ``digit_unet``): the
16x16 image space they work in and the judge their samples are scored by.

Images: scikit-learn's 8x8 digits (values / 16, in [0, 1]) upsampled x2 bilinearly to
``IMAGE_SIZE`` = 16. The judge is the shipped digits CNN (``models.digits_cnn``), which reads
8x8: generated and real 16x16 images are both area-averaged back to 8x8 (:func:`downsample`)
before it, so they reach it by the same path.
"""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
NULL_CLASS = 10  # the "no label" class of classifier-free guidance (classes are 0..9)
N_CLASSES = 10


def upsample(x8: np.ndarray) -> np.ndarray:
    """``(N, 1, 8, 8)`` in [0, 1] -> ``(N, 1, 16, 16)`` float32 in [0, 1]: bilinear x2,
    ``align_corners=False`` (deterministic)."""
    x = torch.from_numpy(np.ascontiguousarray(x8, dtype=np.float32))
    y = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    return y.clamp(0.0, 1.0).numpy()


def downsample(x16: np.ndarray) -> np.ndarray:
    """``(N, 1, 16, 16)`` -> ``(N, 1, 8, 8)`` float32: the mean of each 2x2 block."""
    x = np.asarray(x16, dtype=np.float32)
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5)).astype(np.float32)


@cache
def _judge() -> torch.nn.Module:
    from models import digits_cnn

    return digits_cnn.load().eval()


@torch.inference_mode()
def judge_features(images16: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """The digits CNN on ``(N, 1, 16, 16)`` images in [0, 1] (area-averaged to 8x8):
    (predicted labels ``(N,)`` int64, penultimate features ``(N, 512)`` float64: the
    flattened output of ``.features``, before dropout and the head)."""
    judge = _judge()
    x8 = torch.from_numpy(downsample(images16))
    preds, feats = [], []
    for start in range(0, len(x8), batch_size):
        f = torch.flatten(judge.features(x8[start : start + batch_size]), 1)
        preds.append(judge.head(f).argmax(dim=1).numpy())
        feats.append(f.double().numpy())
    return np.concatenate(preds).astype(np.int64), np.concatenate(feats)


def frechet_distance(f_a: np.ndarray, f_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)``:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

    With the judge's D = 512 features and a few hundred images per set (450 held-out),
    D > N, so both covariances are rank-deficient: the distance stays defined, but the
    matrix square root is of a singular product; as pytorch-fid does, ``eps`` is added to
    both diagonals when that root comes out non-finite, and only its real part is kept.
    Compare figures computed with the same set sizes only (the estimate is biased by N).
    """
    from scipy import linalg

    a, b = np.asarray(f_a, np.float64), np.asarray(f_b, np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # "singular": expected when D > N
        covmean = linalg.sqrtm(s_a @ s_b)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(s_a)) * eps
            covmean = linalg.sqrtm((s_a + offset) @ (s_b + offset))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(max(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean), 0.0))


def conditional_accuracy(images16: np.ndarray, labels: np.ndarray) -> float:
    """Share of images the judge reads as their requested digit."""
    return float((judge_features(images16)[0] == np.asarray(labels)).mean())


def sample_labels(per_class: int) -> np.ndarray:
    """``per_class`` of each digit 0..9, in order: ``(10 * per_class,)`` int64."""
    return np.repeat(np.arange(N_CLASSES, dtype=np.int64), per_class)


def shift(x: torch.Tensor, max_shift_px: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift_px`` pixels (zero padding), seeded."""
    if max_shift_px == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift_px,) * 4)
    offs = torch.randint(0, 2 * max_shift_px + 1, (n, 2), generator=gen)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs.tolist())])
