"""Where results go: ``metrics.jsonl`` always, and Weights & Biases when enabled.

Only rank 0 tracks. W&B trouble (no network, no key, a crash inside wandb) is reported once and never
stops training: the JSONL log is the record of truth.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import TrackingConfig


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_mode(cfg: TrackingConfig) -> str:
    """online/offline/disabled: WANDB_MODE wins; 'auto' is online only with credentials."""
    if cfg.backend == "none":
        return "disabled"
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if cfg.mode != "auto":
        return cfg.mode
    return "online" if _has_wandb_credentials() else "offline"


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: JSON has no NaN (Python would write a bare
    ``NaN`` that other readers reject), and a diverged value is better absent than a number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def dumps_finite(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (they become null)."""
    return json.dumps(finite_json(value), allow_nan=False, **kwargs)


class MetricsLog:
    """Append-only JSONL of logged rows; on resume, rows past the resumed step are dropped, and a row of a kind
    (its keys) the resumed step already has is not written again: a run resumed from its final checkpoint
    evaluates that step once more, and each such resume would add the row again."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self.resume_step = resume_step
        self._at_resume: set[frozenset[str]] = set()  # the kinds of the rows logged at the resumed step
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.is_file():
            rows = [(line, json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
            kept = [(line, row) for line, row in rows if row.get("step", 0) <= resume_step]
            self._at_resume = {_kind(row) for _, row in kept if row.get("step") == resume_step}
            path.write_text("".join(line + "\n" for line, _ in kept))
        elif resume_step is None:
            path.write_text("")

    def write(self, row: Mapping[str, Any]) -> None:
        if row.get("step") == self.resume_step and "config_changed" not in row:  # a change is an event: kept
            if _kind(row) in self._at_resume:
                return
        with self.path.open("a") as handle:
            handle.write(dumps_finite(row, sort_keys=True) + "\n")


def _kind(row: Mapping[str, Any]) -> frozenset[str]:
    """A row's kind: its keys (a step's loss row, its evaluation row...)."""
    return frozenset(row)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


class Tracker:
    """Rank-0 logging of scalars, images and tables; a no-op on other ranks."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path, *, config: Mapping[str, Any], name: str,
                 enabled: bool, resume_step: int | None = None, group: str | None = None,
                 job_type: str = "train", metrics_file: str | None = "metrics.jsonl") -> None:
        self.enabled = enabled
        self.metrics = MetricsLog(run_dir / metrics_file, resume_step) if enabled and metrics_file else None
        self.run = None
        self.mode = wandb_mode(cfg)
        if not enabled or self.mode == "disabled":
            return
        try:
            import wandb

            # One W&B run per run directory: a resumed job continues its own W&B run.
            run_id = hashlib.sha1(f"{run_dir.resolve()}|{job_type}".encode()).hexdigest()[:16]
            self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=name, group=group or cfg.group,
                                  job_type=job_type, dir=str(run_dir), config=dict(config), mode=self.mode,
                                  id=run_id, resume="allow", reinit="create_new",
                                  settings=wandb.Settings(silent=True, console="off"))
        except Exception as err:  # noqa: BLE001 - W&B must never stop training
            self._warn("start", err)

    def _warn(self, what: str, err: Exception) -> None:
        warnings.warn(f"W&B {what} failed ({type(err).__name__}: {err}); training goes on, "
                      "metrics.jsonl still has everything", stacklevel=3)
        self.run = None

    def log(self, row: Mapping[str, Any], step: int) -> None:
        if not self.enabled:
            return
        if self.metrics is not None:
            self.metrics.write({"step": step, **row})
        if self.run is not None:
            try:
                self.run.log(dict(row), step=step)
            except Exception as err:  # noqa: BLE001
                self._warn("log", err)

    def log_image(self, key: str, path: Path, step: int | None, caption: str = "") -> None:
        if self.run is not None:
            try:
                import wandb

                self.run.log({key: wandb.Image(str(path), caption=caption)}, step=step)
            except Exception as err:  # noqa: BLE001
                self._warn("image", err)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        if self.run is not None:
            try:
                import wandb

                self.run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)
            except Exception as err:  # noqa: BLE001
                self._warn("table", err)

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            try:
                self.run.summary.update(dict(values))
            except Exception as err:  # noqa: BLE001
                self._warn("summary", err)

    def where(self) -> str | None:
        """Where the W&B run lies and how to sync it (offline), for the user."""
        if self.run is None:
            return None
        if self.mode == "offline":
            return f"W&B offline run in {Path(self.run.dir).parent}; upload with `wandb sync {Path(self.run.dir).parent}`"
        return f"W&B run: {self.run.url}"

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as err:  # noqa: BLE001
                self._warn("finish", err)
