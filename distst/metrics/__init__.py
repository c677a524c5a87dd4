"""Set-level image metrics: FID and KID from a feature extractor (Inception v3 pool features from a local file,
or any registered extractor), the Inception Score from an extractor's class logits, and the real set's cached
FID statistics."""

from .extractors import EXTRACTORS, Extractor, build_extractor, has_logits, needs_weights, register_extractor
from .fid import frechet_distance, gaussian_stats, kernel_inception_distance, set_scores
from .inception_score import inception_score
from .reference import reference_stats, stats_key

__all__ = ["EXTRACTORS", "Extractor", "build_extractor", "frechet_distance", "gaussian_stats", "has_logits",
           "inception_score", "kernel_inception_distance", "needs_weights", "reference_stats", "register_extractor",
           "set_scores", "stats_key"]
