"""A run's outputs, ``summary.json`` and ``model.pt``, are those of its newest checkpoint, or absent.

A finished run extended (``train.steps`` raised, re-run) trains on past its finish; were its old outputs kept,
``stylize``, ``export``, ``model.init_from``, a teacher, a bench or a study would read an old model as the run's.

- **Written with their step.** ``model.pt`` records the step it is the model of (``step``), as ``summary.json``
  does (``steps``); the newest checkpoint's step is its manifest's.
- **Retired before the first new step** (``retire``, called by the trainer whenever it is about to train):
  ``summary.json`` goes first, then ``model.pt``, each removal atomic. A kill in between leaves a ``model.pt``
  of the newest checkpoint's step, still that checkpoint's model; the next start removes it. The new finish
  writes both again.
- **Refused when older than the checkpoints** (``check``): ``distst.models.io.read_model_file`` and
  ``distst.records.read_summary`` (the readers of run outputs) refuse, in one line naming the file and what to
  do, an output whose step is below the newest complete checkpoint's beside it: a run extended by a distst
  from before the retirement, or a copy. Files without a step and directories without checkpoints (a prune
  stage's or ``slim/`` model, a file copied elsewhere) are not compared.

A multi-stage run's stage directories (``level_<k>/``, ``00_dense/`` ...) are run directories of their own: a
finished stage is never trained again (its record in ``steps/`` skips it), so its outputs stay those of its
last checkpoint, and a half-done run resumes its current stage only. Light: no torch, no distst.train.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from .atomic import fsync_dir
from .errors import DiststError

SUMMARY = "summary.json"
MODEL = "model.pt"
CHECKPOINTS = "checkpoints"
# distst.train.checkpoint's layout (importing it would import the trainer; a test holds them equal).
MANIFEST, STAGING_SUFFIX = "manifest.json", ".tmp"


class StaleOutputs(DiststError):
    """A run's ``summary.json`` or ``model.pt`` is older than its newest checkpoint: the run was trained on
    past that finish and has not finished again."""


def newest_checkpoint(run_dir: str | Path) -> tuple[Path, int] | None:
    """The newest complete checkpoint of ``run_dir`` (renamed, with a readable manifest) and its step."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    finished = sorted((p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(STAGING_SUFFIX)),
                      reverse=True)
    for path in finished:
        try:
            return path, int(json.loads((path / MANIFEST).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unfinished or damaged: no resume starts from it either
    return None


def problem(file: str | Path, step: int | None) -> str | None:
    """Why ``file`` (an output of step ``step``; None: unknown) is stale, or None when it is current."""
    file = Path(file)
    newest = newest_checkpoint(file.parent) if step is not None else None
    if newest is None or newest[1] <= step:
        return None
    path, at = newest
    return (f"{file} is of step {step}, but the run's newest checkpoint, {path}, is of step {at}: the run was "
            f"trained on past that finish and has not finished again; finish the run: re-run `distst train JOB` "
            f"(`distst imp JOB` or `distst prune JOB` for one of their stages), which resumes from step {at} and "
            "writes new outputs")


def check(file: str | Path, step: int | None) -> None:
    """Raise ``StaleOutputs`` when ``file`` of step ``step`` is older than the newest checkpoint beside it."""
    found = problem(file, step)
    if found is not None:
        raise StaleOutputs(found)


def summary_step(summary: Any) -> int | None:
    """The step a training run's summary is of (``steps``); None for other summaries (a schedule's)."""
    steps = summary.get("steps") if isinstance(summary, dict) else None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def model_step(blob: Any, file: str | Path) -> int | None:
    """The step a model file is of: its own record, else (a file from before it was recorded) the step of the
    ``summary.json`` beside it; None when neither says."""
    step = blob.get("step") if isinstance(blob, dict) else None
    if isinstance(step, int):
        return step
    try:
        return summary_step(json.loads((Path(file).parent / SUMMARY).read_text()))
    except (OSError, ValueError):
        return None


def retire(run_dir: str | Path, until: int) -> list[Path]:
    """Remove ``run_dir``'s ``summary.json``, then ``model.pt`` (each removal atomic and durable) before training
    goes on to step ``until``; returns what was removed, after saying so on stderr."""
    run_dir = Path(run_dir)
    try:
        finished_at = summary_step(json.loads((run_dir / SUMMARY).read_text()))
    except (OSError, ValueError):
        finished_at = None
    removed = []
    for name in (SUMMARY, MODEL):  # the summary first: it is what says "finished"
        path = run_dir / name
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        fsync_dir(run_dir)
        removed.append(path)
    if removed:
        at = f" at step {finished_at}" if finished_at is not None else ""
        print(f"distst: removed {', '.join(p.name for p in removed)} of {run_dir} (the finish{at}): training goes "
              f"on to step {until}, whose finish writes them again", file=sys.stderr, flush=True)
    return removed
