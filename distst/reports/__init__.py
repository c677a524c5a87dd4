"""Reports of multi-step runs, one per ``summary.json`` ``kind`` (``imp``, ``channels``, ``transfer``), and one
``publish``.

A report reads only the run directory (its summary and step records, images the steps saved), so it can be
made anywhere the directory is; ``publish`` writes it and sends its table, plots and headline numbers to
W&B as one summary run in the run's group.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..records import read_summary
from ..track import Tracker
from . import channels, imp, transfer  # noqa: F401  (register their kinds)
from .base import REPORTS, Report, ReportError

if TYPE_CHECKING:
    from ..config import Config, TrackingSection

REPORT_DIR = "report"


def report_for(run_dir: Path) -> tuple[Report, dict[str, Any]]:
    """The report of the run in ``run_dir`` (by its summary's ``kind``) and the summary."""
    summary = read_summary(run_dir)
    if summary is None:
        raise ReportError(f"{run_dir} has no finished level or stage (no summary.json): is it a distst imp or "
                          "distst prune run directory?")
    kind = summary.get("kind")
    if kind not in REPORTS:
        raise ReportError(f"{run_dir}/summary.json is of kind {kind!r}; distst reports on {', '.join(REPORTS)}")
    return REPORTS[kind], summary


def write_report(run_dir: str | Path) -> Path:
    """``RUN_DIR/report/report.md`` with its PNGs; returns the Markdown file."""
    run_dir = Path(run_dir)
    report, summary = report_for(run_dir)
    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    return report.write(run_dir, summary, out)


def publish_table(tracking: TrackingSection, folder: Path, *, name: str, group: str, job_type: str,
                  config: dict[str, Any], table_key: str, columns: list[str], rows: list[list[Any]],
                  images: list[Path], summary: dict[str, Any]) -> str | None:
    """One W&B run holding a table, images and summary numbers (offline without a key); where it went."""
    tracker = Tracker(tracking, folder, config=config, name=name, group=group, enabled=True, job_type=job_type,
                      resume_step=None, metrics_file=None)
    tracker.log_table(table_key, columns, rows)
    prefix = table_key.split("/", 1)[0]
    for image in images:
        tracker.log_image(f"{prefix}/{image.stem}", image, step=None)
    if summary:
        tracker.summary(summary)
    where = tracker.where()
    tracker.finish()
    return where


def publish(cfg: Config, run_dir: Path, summary: dict[str, Any], group: str) -> Path:
    """Write the run's report and send its table, plots and headline numbers to W&B."""
    path = write_report(run_dir)
    report, _ = report_for(run_dir)
    columns, rows = report.rows(summary)
    publish_table(cfg.tracking, run_dir, name=f"{group}/summary", group=group,
                  job_type=f"{summary.get('method', report.kind)}-summary", config=cfg.model_dump(mode="json"), table_key=report.table_key, columns=columns, rows=rows,
                  images=sorted(path.parent.glob("*.png")), summary=report.headline(summary))
    return path


__all__ = ["REPORTS", "Report", "ReportError", "publish", "publish_table", "report_for", "write_report"]
