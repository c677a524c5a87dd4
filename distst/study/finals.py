"""Which model file a finished study run leaves, and whether a run is finished (so a re-run reuses it)."""

from __future__ import annotations

from pathlib import Path

from ..outputs import StaleOutputs
from ..prune.channels.runner import SLIM_DIR
from ..prune.lottery import level_dir
from ..records import read_summary

CHANNEL_METHODS = ("l2", "iccp", "cpst")


def finished(run_dir: Path) -> bool:
    """A schedule's summary says ``complete``; a one-run job (dense, QAT) is done once it has written
    ``summary.json`` and ``model.pt`` (train() writes them at its end only). Outputs older than the run's
    checkpoints (trained on past them) are no finish: the run is resumed."""
    try:
        summary = read_summary(run_dir)
    except StaleOutputs:
        return False
    if summary is None:
        return False
    return bool(summary["complete"]) if "complete" in summary else (run_dir / "model.pt").is_file()


def final_model(run_dir: Path, method: str) -> tuple[Path, str]:
    """The run's final model file and which one it is (the report's note)."""
    if method in CHANNEL_METHODS:
        return run_dir / SLIM_DIR / "model.pt", "slimmed"
    if method == "imp":
        levels = (read_summary(run_dir) or {}).get("levels", [])
        if not levels:
            raise ValueError(f"{run_dir}: an IMP run with no finished level")
        matching = [lv for lv in levels if lv["matching"] and lv["level"] > 0]
        # The sparsest matching level is IMP's answer; with none, its last level (the table says which).
        chosen, note = (max(matching, key=lambda lv: lv["sparsity"]), "sparsest matching") if matching \
            else (levels[-1], "last level (none matching)")
        return level_dir(run_dir, chosen["level"]) / "model.pt", f"{note}: level {chosen['level']}"
    return run_dir / "model.pt", "final"
