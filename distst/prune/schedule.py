"""One driver for every multi-step compression run: a resumable sequence of train and prune steps.

A method that needs more than one training run declares a ``Schedule`` (``MethodSection.schedule_class``):
its steps, in order, each in a directory of the run directory (a lottery-ticket level's masks and its training,
a channel method's dense, sparsify, prune and fine-tuning stages); what each finished step's record holds; the
run's summary; and what a sweep trial reports from those records. ``run_schedule`` runs any of them the same
way and never asks which method it is:

- a *train* step is one ``distst.train.train`` run in its directory (it resumes from its last checkpoint); with
  ``distill.*`` on, every train step after the first learns from the model the first one trained too;
- a *prune* step runs on rank 0 only and writes its outputs (masks, a slimmed model) into its directory;
- a finished step gets its record, ``steps/<name>.json``: the one done marker (in one folder, so that steps
  may share a directory: a lottery level's masks step and training step both work in ``level_<k>``).
  Re-running skips finished steps;
- after every step rank 0 rewrites ``summary.json`` (with ``kind`` and ``complete``), so ``distst report``
  and a sweep can read a run that is still going; at the end the schedule finishes (a slimmed model, say),
  and the report of the schedule's kind is written and published (``distst.reports``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist

from .. import atomic
from ..config import Config, with_overrides
from ..distill import with_distillation
from ..distributed import on_main_then_shared
from ..records import SUMMARY_FILE, Record, record_path
from ..reports import publish
from ..stability import with_temporal_losses
from ..stop import StopRequest
from ..train import Method, TrainResult, train
from ..train.engine import setup_distributed


@dataclass
class TrainStep:
    """One training run in ``run_dir/<dir or name>``."""

    name: str
    steps: int
    #: The method that trains in this step (given the step directory), or None for plain training.
    method: Callable[[Path], Method | None] | None = None
    #: Config overrides of this step (besides ``train.steps``), given the records of the steps before it.
    overrides: Callable[[list[Record]], dict[str, Any]] | None = None
    #: The weights the step starts from (every rank calls it), or None: the model's own initialisation.
    init_state: Callable[[], dict[str, torch.Tensor]] | None = None
    #: The directory the step works in, if not its name.
    dir: str | None = None
    kind: ClassVar[str] = "train"


@dataclass
class PruneStep:
    """Rank 0 writes the step's outputs into its directory and returns what its record adds."""

    name: str
    prune: Callable[[Path, list[Record]], Record]
    dir: str | None = None
    kind: ClassVar[str] = "prune"


Step = TrainStep | PruneStep


@dataclass(frozen=True)
class Curve:
    """A sweep's results plot: E (y) against one row metric (x), one line per trial."""

    x: str
    scale: float
    label: str
    file: str
    log_x: bool = False


@dataclass
class RunResult:
    stopped: bool
    summary: dict[str, Any] = field(default_factory=dict)


class Schedule(ABC):
    """The steps of one method's run, its records and its summary (``SweepableSchedule`` adds sweep rows)."""

    #: ``summary.json``'s ``kind``: how reports and sweeps read the run (``distst.reports``).
    kind: ClassVar[str]

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)

    @classmethod
    def validate(cls, cfg: Config) -> None:
        """Refuse a job this schedule cannot run (before anything is written)."""
        return

    def prepare(self, is_main: bool) -> None:
        """Run-wide inputs every step shares (rank 0 writes, every rank then reads); may set ``self.cfg``."""
        return

    @abstractmethod
    def steps(self) -> list[Step]:
        """Every step, in order."""

    def describe(self, step: Step, step_dir: Path, result: TrainResult | None) -> Record:
        """Rank 0: what the finished step's record holds besides its index, name and kind (and, for a train
        step, the training summary's final errors and timing)."""
        return {}

    @abstractmethod
    def summary(self, records: list[Record]) -> dict[str, Any]:
        """``summary.json`` from the finished steps' records (also for a run not finished yet)."""

    def finish(self, summary: dict[str, Any]) -> None:
        """Rank 0, after the last step: package the result (e.g. the slimmed model)."""
        return


class SweepableSchedule(Schedule):
    """A schedule whose runs are Ray Tune trials: one finished row of its run is one Tune iteration."""

    # What a sweep trial of this kind reports (one Tune iteration = one row).
    label: ClassVar[str]
    iteration: ClassVar[str]
    table_columns: ClassVar[tuple[str, ...]]
    log_prefix: ClassVar[str]
    curve: ClassVar[Curve]

    @classmethod
    @abstractmethod
    def metrics(cls, cfg: Config) -> tuple[str, ...]:
        """Every metric a row of ``cfg``'s run holds, plus Tune's ``training_iteration``."""

    @classmethod
    @abstractmethod
    def rows(cls, cfg: Config, records: list[Record], macs_budget: int | None = None) -> list[dict[str, Any]]:
        """One row per Tune iteration, from the finished steps' records, in order."""

    @classmethod
    @abstractmethod
    def iterations(cls, cfg: Config) -> int:
        """Rows a complete run of ``cfg`` reports."""


def schedule_class(cfg: Config) -> type[Schedule] | None:
    """The schedule ``cfg.prune``'s method declares, or None for a method that is one training run."""
    return getattr(type(cfg.prune), "schedule_class", None)


def _train_record(result: TrainResult) -> Record:
    s = result.summary
    return {"errors": s["final"], "steps": s["steps"], "wall_s": s["wall_s"], "images_per_s": s["images_per_s"]}


def _method(schedule: Schedule, step: TrainStep, step_dir: Path, records: list[Record]) -> Method | None:
    """The step's own method, with the temporal losses beside it (``temporal.*``) in every train step and
    distillation (``distill.*``) after the first: the dense model that step trained is the default teacher."""
    method = with_temporal_losses(step.method(step_dir) if step.method else None, schedule.cfg)
    dense = next((r for r in records if r["kind"] == "train"), None)
    if dense is None:
        return method  # the dense step itself: nothing to learn from yet
    return with_distillation(method, schedule.cfg, schedule.run_dir / dense["dir"] / "model.pt")


def _prune(step: PruneStep, step_dir: Path, records: list[Record]) -> Record:
    step_dir.mkdir(parents=True, exist_ok=True)
    return step.prune(step_dir, records)


def _mark_done(schedule: Schedule, step: Step, step_dir: Path, result: TrainResult | None, record: Record,
               done: Path) -> None:
    """Rank 0: the finished step's record, its done marker."""
    record.update(schedule.describe(step, step_dir, result))
    atomic.write_json(done, record)


def run_schedule(cfg: Config, run_dir: Path, *, stop: StopRequest | None = None,
                 on_step: Callable[[Record, dict[str, Any]], None] | None = None) -> RunResult:
    """Run (or resume) every step of ``cfg.prune``'s schedule in ``run_dir``; then summarise, finish, report.

    ``on_step`` is called on rank 0 after each step (also steps finished before a resume) with its record and
    the summary so far: what a Tune trial reports.
    """
    cls = schedule_class(cfg)
    if cls is None:
        raise ValueError(f"prune.method={cfg.prune.method} is one training run (distst train), not a schedule")
    cls.validate(cfg)
    info = setup_distributed()
    schedule = cls(cfg, run_dir)
    schedule.prepare(info.is_main)
    job = cfg.run.name or run_dir.name
    group = cfg.tracking.group or f"{job}-{run_dir.name}"  # a sweep sets tracking.group: one group per sweep
    steps = schedule.steps()
    records: list[Record] = []
    summary: dict[str, Any] = {}
    for index, step in enumerate(steps):
        step_dir = run_dir / (step.dir or step.name)
        done = record_path(run_dir, step.name)
        if not done.is_file():
            result = None
            record: Record = {"index": index, "step": step.name, "dir": step.dir or step.name, "kind": step.kind}
            if isinstance(step, TrainStep):
                overrides = {"train.steps": step.steps, **(step.overrides(records) if step.overrides else {})}
                result = train(with_overrides(schedule.cfg, overrides), step_dir, _method(schedule, step, step_dir, records),
                               init_state=step.init_state() if step.init_state else None,
                               run_name=f"{job}/{step.name}", run_group=group, stop=stop)
                if result.stopped:
                    return RunResult(stopped=True, summary=summary)
                record.update(_train_record(result))
            else:  # rank 0 prunes; shared: its DiststError (a full disk) stops every rank, none waits for it
                record.update(on_main_then_shared(partial(_prune, step, step_dir, records)))
            dist.barrier()
            on_main_then_shared(partial(_mark_done, schedule, step, step_dir, result, record, done))
        records.append(json.loads(done.read_text()))
        summary = {"kind": schedule.kind, **schedule.summary(records), "complete": index == len(steps) - 1}
        on_main_then_shared(partial(atomic.write_json, run_dir / SUMMARY_FILE, summary))
        if info.is_main and on_step is not None:
            on_step(records[-1], summary)
    if info.is_main:
        (run_dir / "config.yaml").write_text(schedule.cfg.to_yaml())
        schedule.finish(summary)
        publish(schedule.cfg, run_dir, summary, group=group)
    dist.barrier()
    return RunResult(stopped=False, summary=summary)
