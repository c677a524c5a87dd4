"""What a sweep's trial runs: a kind of distst job, with its Tune iterations and the metrics it reports.

A kind says how to run (or resume) its job under a stop request, which rows its run directory holds so far (one
row = one Tune iteration, so ASHA's rungs are those rows), which metrics a row has, and how many rows a job
reaches (ASHA's ``max_t``). The sweep files, the trial and the results table ask the base job's kind and never
branch on the method themselves. Adding a kind: a subclass here and one entry in ``KINDS``.

- IMP (``prune.method=imp``): one row per finished IMP level (``level_<k>/metrics.json``).
- Channel pruning (``prune.method=l2|iccp|cpst``): one row per finished *train* stage (the dense model, each
  regularised or fine-tuning stage): E after that training and the MACs and parameters of that stage's model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..config import Config, ConfigError
from ..stop import StopRequest


@dataclass(frozen=True)
class Curve:
    """The results plot of a kind: E (y) against one row metric (x) per trial."""

    x: str
    scale: float
    label: str
    file: str
    log_x: bool = False


class TrialKind(ABC):
    #: Shown in messages, e.g. "IMP trials report: ...".
    label: ClassVar[str]
    #: What one Tune iteration is, in words (messages and docs).
    iteration: ClassVar[str]
    #: Every metric a row holds, plus Tune's ``training_iteration`` (what ``objective.metric`` may name).
    metrics: ClassVar[tuple[str, ...]]
    #: The metrics of a trial's last row shown in the results table.
    table_columns: ClassVar[tuple[str, ...]]
    #: Prefix of the per-trial W&B metrics.
    log_prefix: ClassVar[str]
    curve: ClassVar[Curve]

    @abstractmethod
    def accepts(self, cfg: Config) -> bool:
        """Whether ``cfg`` is a job of this kind."""

    @abstractmethod
    def methods(self) -> list[str]:
        """The ``prune.method`` values of this kind (messages)."""

    @abstractmethod
    def run(self, cfg: Config, run_dir: Path, stop: StopRequest | None) -> bool:
        """Run (or resume) the job in ``run_dir``; True when it stopped on request before the end."""

    @abstractmethod
    def rows(self, cfg: Config, run_dir: Path, macs_budget: int | None = None) -> list[dict[str, Any]]:
        """The finished Tune iterations' metrics, in order (read from the run directory: any rank may write it)."""

    @abstractmethod
    def iterations(self, cfg: Config) -> int:
        """Rows a complete run of ``cfg`` reports."""


class ImpKind(TrialKind):
    label = "IMP"
    iteration = "IMP level"
    metrics = ("total_error", "content_error", "style_error", "sparsity", "extreme_sparsity", "matching", "level",
               "dense_total_error", "training_iteration")
    table_columns = ("level", "sparsity", "total_error", "extreme_sparsity", "matching", "dense_total_error")
    log_prefix = "imp"
    curve = Curve(x="sparsity", scale=100.0, label="sparsity (% of prunable weights)", file="e_vs_sparsity.png")

    def accepts(self, cfg: Config) -> bool:
        return cfg.prune.method == "imp"

    def methods(self) -> list[str]:
        return ["imp"]

    def run(self, cfg: Config, run_dir: Path, stop: StopRequest | None) -> bool:
        from ..prune import run_imp

        return run_imp(cfg, run_dir, stop=stop).stopped

    def rows(self, cfg: Config, run_dir: Path, macs_budget: int | None = None) -> list[dict[str, Any]]:
        return finished_levels(cfg, run_dir)

    def iterations(self, cfg: Config) -> int:
        from ..prune import planned_levels

        return len(planned_levels(cfg))


def finished_levels(cfg: Config, run_dir: Path) -> list[dict[str, Any]]:
    """Every finished IMP level, in order, as ``distst imp``'s summary has it (its errors, set metrics such as a
    GAN's FID, and the verdict of the model's own metric), with the dense E and the extreme sparsity so far."""
    from ..prune import imp_summary

    rows: list[dict[str, Any]] = []
    best = 0.0
    for level in imp_summary(cfg, run_dir)["levels"]:
        row = {**level, "matching": int(level["matching"])}
        row["dense_total_error"] = rows[0]["total_error"] if rows else row["total_error"]
        best = max(best, row["sparsity"]) if row["matching"] and row["level"] > 0 else best
        row["extreme_sparsity"] = best
        rows.append(row)
    return rows


class ChannelKind(TrialKind):
    label = "channel-pruning"
    iteration = "train stage"
    metrics = ("total_error", "content_error", "style_error", "macs", "params", "stage_index", "dense_total_error",
               "macs_ratio", "budgeted_error", "training_iteration")
    table_columns = ("stage_index", "total_error", "budgeted_error", "macs", "macs_ratio", "params",
                     "dense_total_error")
    log_prefix = "prune"
    curve = Curve(x="macs", scale=1e-9, label="GMACs per stylisation (log scale)", file="e_vs_macs.png", log_x=True)

    def accepts(self, cfg: Config) -> bool:
        from ..prune.channels.methods import ChannelSection

        return isinstance(cfg.prune, ChannelSection)

    def methods(self) -> list[str]:
        from .. import registry
        from ..prune.channels.methods import ChannelSection

        registry.load_builtins()
        return sorted(name for name, section in registry.METHOD_SECTIONS.items() if issubclass(section, ChannelSection))

    def run(self, cfg: Config, run_dir: Path, stop: StopRequest | None) -> bool:
        from ..prune.channels import run_channel_pruning

        return run_channel_pruning(cfg, run_dir, stop=stop).stopped

    def rows(self, cfg: Config, run_dir: Path, macs_budget: int | None = None) -> list[dict[str, Any]]:
        from ..prune.channels.runner import stage_records

        return channel_rows(stage_records(run_dir), macs_budget)

    def iterations(self, cfg: Config) -> int:
        from ..prune.channels.methods import TrainStage

        return sum(isinstance(stage, TrainStage) for stage in cfg.prune.schedule(cfg))


def budgeted_error(total_error: float, macs: int, macs_budget: int) -> float:
    """E within the MAC budget; beyond it E grows in proportion to the excess: E * macs / budget.

    A model twice over the budget counts as twice as bad, so a search trades E against MACs near the budget
    instead of ignoring them (or refusing every model over it, which would leave ASHA nothing to compare early).
    """
    return total_error if macs <= macs_budget else total_error * macs / macs_budget


def channel_rows(records: list[dict[str, Any]], macs_budget: int | None = None) -> list[dict[str, Any]]:
    """One row per finished train stage of a channel-pruning run (its ``stage.json`` records, in order)."""
    trained = [r for r in records if r["kind"] == "train"]
    rows: list[dict[str, Any]] = []
    for record in trained:
        errors, macs = record["errors"], record["macs"]["total"]
        row = {"stage_index": record["index"], "total_error": errors["total_error"],
               "content_error": errors["content_error"], "style_error": errors["style_error"], "macs": macs,
               "params": record["params"]["total"], "dense_total_error": trained[0]["errors"]["total_error"],
               "macs_ratio": trained[0]["macs"]["total"] / macs}
        if macs_budget is not None:
            row["budgeted_error"] = budgeted_error(errors["total_error"], macs, macs_budget)
        rows.append(row)
    return rows


KINDS: tuple[TrialKind, ...] = (ImpKind(), ChannelKind())


def kind_of(cfg: Config) -> TrialKind:
    """The kind of trial that runs ``cfg``; a job no kind runs is refused in one line."""
    for kind in KINDS:
        if kind.accepts(cfg):
            return kind
    known = " or ".join(f"{kind.label} (prune.method={'|'.join(kind.methods())})" for kind in KINDS)
    raise ConfigError(f"sweeps run {known} trials; got prune.method={cfg.prune.method}")
