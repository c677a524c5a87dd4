"""A whole study: run what is not finished, then measure and time every final model once, and report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..reports import publish_table
from .finals import final_model, finished
from .measure import held_out, measure_all, study_loss_network
from .report import study_rows, table, time_models, write_report
from .runner import run_dir, run_study
from .shipped import export_finals, graph_entries, graph_errors, variants
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
    dense, bench = spec.measuring(), spec.file.bench
    # One loss network and one read of the pairs for the torch models and their graphs.
    loss_net, pairs = study_loss_network(dense, out), held_out(dense)
    measured = measure_all(paths, dense, out, loss_net, pairs)
    exports = export_finals(paths, dense, out, bench.int8, bench.calibration_pairs) if bench.onnx else {}
    kinds = variants(bench.int8)
    graph_e = graph_errors(paths, exports, kinds, loss_net, *pairs)
    # Torch models and their graphs timed in one round-robin, against the dense torch model.
    timed = time_models({**paths, **graph_entries(exports, kinds)}, list(bench.sizes), bench.threads, repeats)
    runs = [{"name": r.name, "method": r.method, "distill": r.distill, "final": finals[r.name][1],
             "run_dir": str(run_dir(out, r.name))} for r in spec.runs]
    summary = write_report(out, spec.name, study_rows(runs, measured, timed, graph_e))
    # The table and plots join the runs' W&B group (a no-op with tracking.backend: none).
    columns, cells = table(summary["models"])
    publish_table(dense.tracking, out, name=f"{spec.name}/summary", group=spec.name, job_type="study",
                  config=spec.file.model_dump(mode="json"), table_key="study/table", columns=columns, rows=cells,
                  images=sorted(out.glob("*.png")), summary={})
    return summary
