"""What a report of one kind of run is, and the table of kinds (``summary.json``'s ``kind``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from ..errors import DiststError


class ReportError(DiststError, ValueError):
    """The directory is not a (partly) finished run that distst can report on."""


class Report(ABC):
    #: The ``kind`` in the summary of the runs it reports on.
    kind: ClassVar[str]
    #: The W&B table its rows go to.
    table_key: ClassVar[str]

    @abstractmethod
    def write(self, run_dir: Path, summary: dict[str, Any], out: Path) -> Path:
        """``out/report.md`` with its plots; returns the Markdown file."""

    @abstractmethod
    def table(self, run_dir: Path, summary: dict[str, Any]) -> str:
        """The report's Markdown table (what ``distst report`` prints)."""

    @abstractmethod
    def rows(self, summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        """Columns and rows of the W&B table."""

    @abstractmethod
    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The W&B run summary's numbers."""

    def finished(self, run_dir: Path, summary: dict[str, Any]) -> str:
        """What the command that ran it prints at the end (a few lines)."""
        return f"{self.kind} run finished: {run_dir}\n  report: {run_dir / 'report' / 'report.md'}"


REPORTS: dict[str, Report] = {}


def register(cls: type[Report]) -> type[Report]:
    """Class decorator: reports of ``cls.kind`` runs are written by ``cls``."""
    if cls.kind in REPORTS and type(REPORTS[cls.kind]) is not cls:
        raise ValueError(f"a report of kind {cls.kind!r} is registered already")
    REPORTS[cls.kind] = cls()
    return cls
