"""Quantisation: quantisation-aware fine-tuning as a training method (``prune.method=qat``)."""

from .qat import QatSection, QuantAwareTraining

__all__ = ["QatSection", "QuantAwareTraining"]
