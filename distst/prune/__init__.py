"""Compression methods: lottery tickets (IMP) and channel pruning, each a schedule run by one driver."""

from . import channels  # registers l2, iccp, cpst
from .lottery import ImpSchedule, imp_summary, planned_levels
from .masks import MaskedTraining, full_masks, prunable_layers, prune_magnitude, sparsity_report
from .schedule import RunResult, Schedule, run_schedule

__all__ = ["ImpSchedule", "MaskedTraining", "RunResult", "Schedule", "channels", "full_masks", "imp_summary",
           "planned_levels", "prunable_layers", "prune_magnitude", "run_schedule", "sparsity_report"]
