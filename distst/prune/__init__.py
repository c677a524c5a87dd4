"""Compression methods, each a ``distst.train.Method`` strategy: lottery tickets (IMP), channel pruning."""

from . import channels  # registers l2, iccp, cpst
from .lottery import ImpResult, imp_summary, planned_levels, run_imp
from .masks import MaskedTraining, full_masks, prunable_layers, prune_magnitude, sparsity_report

__all__ = ["ImpResult", "channels", "MaskedTraining", "full_masks", "imp_summary", "planned_levels", "prunable_layers",
           "prune_magnitude", "run_imp", "sparsity_report"]
