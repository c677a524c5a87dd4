"""A whole study: run what is not finished, then measure and time every final model once, and report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .finals import final_model, finished
from .measure import measure_all
from .report import study_rows, time_models, write_report
from .runner import run_dir, run_study
from .spec import load_study


def study(file: Path, out: Path, repeats: int = 5) -> dict[str, Any] | None:
    """Runs (on the Ray instance already started), measures, times, writes ``out``'s summary and report;
    None when runs are left unfinished (the study was stopped: running it again resumes them)."""
    spec = load_study(file)
    run_study(spec, file, out)
    if not all(finished(run_dir(out, r.name)) for r in spec.runs):
        return None
    finals = {r.name: final_model(run_dir(out, r.name), r.method) for r in spec.runs}
    paths = {name: path for name, (path, _) in finals.items()}
    measured = measure_all(paths, spec.runs[0].cfg, out)
    timed = time_models(paths, list(spec.file.bench.sizes), spec.file.bench.threads, repeats)
    runs = [{"name": r.name, "method": r.method, "distill": r.distill, "final": finals[r.name][1],
             "run_dir": str(run_dir(out, r.name))} for r in spec.runs]
    return write_report(out, spec.name, study_rows(runs, measured, timed))
