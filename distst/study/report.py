"""The study's results: ``summary.json``, ``report.md`` (one table) and the Pareto plots (E against latency, E
against MACs), each point labelled, the front drawn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..bench.latency import measure
from .pareto import pareto_front

SUMMARY = "summary.json"
REPORT = "report.md"


def time_models(paths: dict[str, Path], sizes: list[tuple[int, int]], threads: int, repeats: int = 5,
                warmup: int = 1) -> dict[str, dict[str, float]]:
    """Torch fp32 ms of a whole stylisation per model and size, round-robin (``distst bench latency``'s
    ``measure``); speed-up against the first model (the dense baseline)."""
    names = list(paths)
    timed: dict[str, dict[str, float]] = {name: {} for name in names}
    for size, style_size in sizes:
        rows = measure([paths[n] for n in names], size, style_size, threads, repeats, warmup)
        for name, row in zip(names, rows, strict=True):
            timed[name][f"ms_{size}_{style_size}"] = row.full_ms
            timed[name][f"speedup_{size}_{style_size}"] = row.speedup
    return timed


def study_rows(runs: list[dict[str, Any]], measured: dict[str, dict[str, Any]], timed: dict[str, dict[str, float]],
               graph_e: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """One row per model (the dense baseline first): its run, its measures, E / the dense E, on the front?, and
    its ONNX graphs (``onnx``: variant -> E, E ratio, ms and speed-ups against the dense torch model)."""
    dense_e = measured[runs[0]["name"]]["total_error"]
    rows = [{**run, **measured[run["name"]], **timed.get(run["name"], {}),
             "e_ratio": measured[run["name"]]["total_error"] / dense_e} for run in runs]
    for row in rows:
        graphs = (graph_e or {}).get(row["name"], {})
        row["onnx"] = {variant: {"total_error": e, "e_ratio": e / dense_e,
                                 **timed.get(f"{row['name']} onnx {variant}", {})} for variant, e in graphs.items()}
    ms_key = next((k for k in rows[0] if k.startswith("ms_")), None)
    if ms_key:
        for i in pareto_front([(r[ms_key], r["total_error"]) for r in rows]):
            rows[i]["pareto_latency"] = True
    for i in pareto_front([(float(r["macs"]), r["total_error"]) for r in rows]):
        rows[i]["pareto_macs"] = True
    return rows


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The study's one table (head, cells): the report's and the W&B table's."""
    times = [k for k in rows[0] if k.startswith(("ms_", "speedup_"))]
    temporal = ["temporal error"] if "temporal_error" in rows[0] else []
    head = ["model", "method", "distill", "final model", "params", "zero weights", "MACs", "file MB", "E",
            "E / dense E", *temporal, *times]
    return head, [[r["name"], r["method"], "yes" if r["distill"] else "no", r["final"], f"{r['params']:,}",
                   f"{r['sparsity']:.1%}", f"{r['macs']:.3g}", f"{r['file_mb']:.2f}", f"{r['total_error']:.4g}",
                   f"{r['e_ratio']:.3f}", *(f"{r['temporal_error']:.4g}" for _ in temporal),
                   *(f"{r[k]:.2f}" for k in times)] for r in rows]


def _markdown(head: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(cells) + " |" for cells in body)])


def _graph_table(rows: list[dict[str, Any]]) -> str:
    """The exported graphs: E (the graph's own, same pairs and loss network) and time against dense torch."""
    graphs = [(r["name"], variant, g) for r in rows for variant, g in r.get("onnx", {}).items()]
    if not graphs:
        return "No ONNX graphs (`bench.onnx: false`, or the model does not export)."
    times = [k for k in graphs[0][2] if k.startswith(("ms_", "speedup_"))]
    return _markdown(["model", "runtime", "E", "E / dense E", *times],
                     [[name, f"onnx {variant}", f"{g['total_error']:.4g}", f"{g['e_ratio']:.3f}",
                       *(f"{g[k]:.2f}" for k in times)] for name, variant, g in graphs])


def plot(rows: list[dict[str, Any]], x_key: str, front_key: str, path: Path, xlabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r[x_key] for r in rows], [r["total_error"] for r in rows])
    for r in rows:
        ax.annotate(r["name"], (r[x_key], r["total_error"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    front = sorted((r for r in rows if r.get(front_key)), key=lambda r: r[x_key])
    ax.step([r[x_key] for r in front], [r["total_error"] for r in front], where="post", color="C1",
            label="Pareto front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("E (held-out pairs)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(out: Path, name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json`` (kind ``study``), ``report.md`` and the plots in ``out``; returns the summary."""
    summary = {"kind": "study", "name": name, "complete": True, "models": rows}
    write_text(out / SUMMARY, json.dumps(summary, indent=2))
    plots = [plot(rows, "macs", "pareto_macs", out / "e_vs_macs.png", "MACs of one stylisation")]
    ms_key = next((k for k in rows[0] if k.startswith("ms_")), None)
    if ms_key:
        plots.append(plot(rows, ms_key, "pareto_latency", out / "e_vs_latency.png", f"torch {ms_key} (ms)"))
    images = "\n".join(f"![{p.stem}]({p.name})" for p in plots)
    write_text(out / REPORT, f"# Study {name}\n\n{_markdown(*table(rows))}\n\n## ONNX Runtime graphs\n\n{_graph_table(rows)}\n\n"
                             f"{images}\n")
    return summary
