"""The real set's feature statistics for FID, computed once and cached.

A generator's FID compares its images with a fixed real set (CIFAR-10's 50,000 training images for SNGAN): the
real side's mean and covariance are the same at every IMP level and every evaluation, and extracting them costs
as much as the generated side. They are cached as ``<cache>/<key>.npz``, the key a SHA-256 of the images
themselves (their shape and float32 bytes, so another set, order, crop or count is another entry), the
extractor's name and its weights file's bytes: a stale entry cannot be read back for a changed input.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .. import atomic
from .fid import extract, gaussian_stats


def stats_key(images: Tensor, extractor: str, weights: str | None) -> str:
    """The cache key of ``images``' statistics under extractor ``extractor`` (with its ``weights`` file)."""
    digest = hashlib.sha256(f"{extractor}\n{tuple(images.shape)}\n".encode())
    digest.update(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    if weights:
        with open(weights, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:32]


def reference_stats(extractor: nn.Module, images: Tensor, cache: str | Path | None, key: str,
                    batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``extractor``'s features of the real ``images``: read from ``cache/<key>.npz`` when
    there, else computed and written there (atomically; no cache: computed each time)."""
    path = Path(cache) / f"{key}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as saved:
            return saved["mu"], saved["sigma"]
    mu, sigma = gaussian_stats(extract(extractor, images, batch_size))
    if path is not None:
        staged = path.with_name(f"{key}.{os.getpid()}.tmp.npz")  # ranks computing it at once never collide
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(staged, mu=mu, sigma=sigma)
            atomic.replace(staged, path)
        except OSError as err:  # a read-only shard folder: the metric stands, only the cache is lost
            staged.unlink(missing_ok=True)
            warnings.warn(f"FID statistics not cached in {path.parent}: {err}", stacklevel=2)
    return mu, sigma
