"""What a sweep's trial runs: a schedule (``distst.prune.schedule``), with its Tune iterations and metrics.

A trial runs (or resumes) its job's schedule under a stop request; one row of the schedule's (``Schedule.rows``,
read from the run directory's step records) is one Tune iteration, so ASHA's rungs are those rows. The sweep
files, the trial and the results table ask the base job's kind and never branch on the method themselves; a
new method with a schedule is sweepable with nothing added here.

- IMP (``prune.method=imp``): one row per finished IMP level, with the model's set metrics (a GAN's FID).
- Channel pruning (``prune.method=l2|iccp|cpst``): one row per finished *train* stage: E after that training
  and the MACs and parameters of that stage's model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import registry
from ..config import Config, ConfigError
from ..prune.schedule import Curve, SweepableSchedule, run_schedule, schedule_class
from ..records import step_records
from ..stop import StopRequest

__all__ = ["Curve", "TrialKind", "kind_of"]


class TrialKind:
    """A schedule as a sweep sees it, for the sweep's base job (its model decides the set metrics)."""

    def __init__(self, schedule: type[SweepableSchedule], base: Config) -> None:
        self.schedule = schedule
        self.label, self.iteration, self.curve = schedule.label, schedule.iteration, schedule.curve
        self.table_columns, self.log_prefix = schedule.table_columns, schedule.log_prefix
        #: Every metric a row holds, plus Tune's ``training_iteration`` (what ``objective.metric`` may name).
        self.metrics = schedule.metrics(base)

    def accepts(self, cfg: Config) -> bool:
        """Whether ``cfg`` is a job of this kind."""
        return schedule_class(cfg) is self.schedule

    def run(self, cfg: Config, run_dir: Path, stop: StopRequest | None) -> bool:
        """Run (or resume) the job in ``run_dir``; True when it stopped on request before the end."""
        return run_schedule(cfg, run_dir, stop=stop).stopped

    def rows(self, cfg: Config, run_dir: Path, macs_budget: int | None = None) -> list[dict[str, Any]]:
        """The finished Tune iterations' metrics, in order (read from the run directory: any rank may write it)."""
        return self.schedule.rows(cfg, step_records(run_dir), macs_budget)

    def iterations(self, cfg: Config) -> int:
        """Rows a complete run of ``cfg`` reports."""
        return self.schedule.iterations(cfg)


def kind_of(cfg: Config) -> TrialKind:
    """The kind of trial that runs ``cfg``; a job that is not a schedule is refused in one line."""
    schedule = schedule_class(cfg)
    if schedule is None or not issubclass(schedule, SweepableSchedule):
        registry.load_builtins()
        by_label: dict[str, list[str]] = {}
        for name, record in sorted(registry.METHODS.items()):
            other = getattr(record.section, "schedule_class", None)
            if other is not None and issubclass(other, SweepableSchedule):
                by_label.setdefault(other.label, []).append(name)
        known = " or ".join(f"{label} (prune.method={'|'.join(names)})" for label, names in sorted(by_label.items()))
        raise ConfigError(f"sweeps run {known} trials; got prune.method={cfg.prune.method}")
    return TrialKind(schedule, cfg)
