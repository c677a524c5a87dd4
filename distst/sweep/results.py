"""The sweep's results: one row per trial (parameters, final metrics, run directory), best first, as CSV and
Markdown, and E against the kind's x metric (IMP: sparsity; channel pruning: MACs) with one line per trial;
also sent to W&B."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from ..reports import publish_table
from .spec import SweepSpec
from .trial import ATTEMPTS_FILE


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def trial_rows(spec: SweepSpec, results: Any, sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per trial, best first by the sweep's objective (trials without it last)."""
    rows = []
    columns = spec.kind().table_columns
    iterations = spec.max_iterations()
    for result in results:
        config = dict(result.config or {})
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name.split("_", 2)[-1]
        run_dir = sweep_dir / "trials" / str(trial_id)
        reached = int(metrics.get("training_iteration", 0) or 0)
        if result.error is not None:
            status = "error"
        elif reached < iterations:
            status = "stopped early"
        else:
            status = "done"
        attempts = (run_dir / ATTEMPTS_FILE)
        row = {"trial": trial_id, "status": status,
               **{key: config.get(key) for key in spec.space},
               **{key: metrics.get(key) for key in columns},
               "attempts": len(attempts.read_text().splitlines()) if attempts.is_file() else 0,
               "run_dir": str(run_dir)}
        rows.append(row)
    sign = -1.0 if spec.objective.mode == "max" else 1.0

    def key(row: dict[str, Any]) -> tuple[int, float]:
        value = _number(row.get(spec.objective.metric))
        return (1, 0.0) if value is None or math.isnan(value) else (0, sign * value)

    return sorted(rows, key=key)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "+".join(map(str, value))
    return "" if value is None else str(value)


def write_tables(rows: list[dict[str, Any]], sweep_dir: Path) -> tuple[Path, Path]:
    columns = list(rows[0]) if rows else ["trial"]
    csv_path, md_path = sweep_dir / "results.csv", sweep_dir / "results.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    shown = [c for c in columns if c != "run_dir"]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in shown) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _label(row: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_cell(row[k])}" for k in keys) or row["trial"]


def plot_error_curves(rows: list[dict[str, Any]], spec: SweepSpec, path: Path) -> Path | None:
    """E against the kind's x metric (IMP: sparsity, channel pruning: MACs), one line per trial (labelled by
    its parameters); None when no trial finished a Tune iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = spec.base_config()
    kind = spec.kind()
    curve = kind.curve
    figure, axes = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for row in rows:
        points = kind.rows(base, Path(row["run_dir"]))
        if not points:
            continue
        axes.plot([curve.scale * p[curve.x] for p in points], [p["total_error"] for p in points], marker="o",
                  label=_label(row, list(spec.space)))
        drawn += 1
    if not drawn:
        plt.close(figure)
        return None
    if curve.log_x:
        axes.set_xscale("log")
    axes.set_xlabel(curve.label)
    axes.set_ylabel("E = content + style error (lower is better)")
    axes.set_title(f"{spec.sweep_name}: E against {curve.x}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def publish(rows: list[dict[str, Any]], spec: SweepSpec, sweep_dir: Path, plot: Path | None) -> str | None:
    """The results table and plot as one W&B run in the sweep's group (offline without a key)."""
    cfg = spec.base_config().tracking
    if cfg.backend != "wandb":
        return None
    columns = [c for c in (rows[0] if rows else {}) if c != "run_dir"]
    best = {"best_trial": rows[0]["trial"], f"best_{spec.objective.metric}": rows[0].get(spec.objective.metric)}
    return publish_table(cfg, sweep_dir, name=f"{spec.sweep_name}/results", group=spec.sweep_name,
                         job_type="tune-results", config={"sweep": spec.model_dump(mode="json")},
                         table_key="tune/results", columns=columns,
                         rows=[[_cell(row[c]) for c in columns] for row in rows],
                         images=[plot] if plot is not None else [], summary=best if rows else {})


def write_results(spec: SweepSpec, results: Any, sweep_dir: Path) -> dict[str, Any]:
    rows = trial_rows(spec, results, sweep_dir)
    csv_path, md_path = write_tables(rows, sweep_dir)
    plot = plot_error_curves(rows, spec, sweep_dir / spec.kind().curve.file)
    return {"rows": rows, "csv": csv_path, "markdown": md_path, "plot": plot,
            "wandb": publish(rows, spec, sweep_dir, plot)}
