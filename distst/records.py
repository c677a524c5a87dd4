"""What a multi-step run leaves on disk for others to read: each finished step's record and the summary.

The schedule driver (``distst.prune.schedule``) writes them; reports, sweeps and benches read them, from any
machine that sees the run directory (no data, no GPU, no torch needed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import outputs

#: One record per finished step, ``steps/<step name>.json``: the driver's one done marker.
STEPS_DIR = "steps"
SUMMARY_FILE = "summary.json"

Record = dict[str, Any]


def record_path(run_dir: Path, step_name: str) -> Path:
    return Path(run_dir) / STEPS_DIR / f"{step_name}.json"


def step_records(run_dir: Path) -> list[Record]:
    """The finished steps' records, in run order."""
    records = [json.loads(p.read_text()) for p in (Path(run_dir) / STEPS_DIR).glob("*.json")]
    return sorted(records, key=lambda r: r["index"])


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """``summary.json`` (rewritten after every step: ``complete`` says whether the run is finished), or None.
    A training run's summary older than its newest checkpoint is refused (``distst.outputs.StaleOutputs``)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    outputs.check(path, outputs.summary_step(summary))
    return summary
