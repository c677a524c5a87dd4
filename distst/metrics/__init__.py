"""Set-level image metrics: FID and KID from a feature extractor (Inception v3 pool features from a local file,
or any registered extractor)."""

from .extractors import EXTRACTORS, Extractor, build_extractor, needs_weights, register_extractor
from .fid import frechet_distance, gaussian_stats, kernel_inception_distance, set_scores

__all__ = ["EXTRACTORS", "Extractor", "build_extractor", "frechet_distance", "gaussian_stats",
           "kernel_inception_distance", "needs_weights", "register_extractor", "set_scores"]
