"""Reports of transferred-ticket runs (``kind: transfer``, ``prune.method=transfer``): where the ticket came from,
what it was trained on, and how it compares with the target's own IMP ticket at the same sparsity and with the
target's dense model.

Reads the run directory's ``summary.json`` and, when the summary names one, the comparison run's step records
again (``comparison``), so a report made after the comparison run has finished shows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from ..records import record_path  # noqa: E402
from .base import Report, ReportError, register  # noqa: E402
from .imp import _label, evaluation_row, level_values  # noqa: E402

START = {"rewind": "the source's rewind point (its level_0/rewind.pt), masked",
         "init": "this run's own initialisation, masked (only the mask transferred)",
         "trained": "the source level's trained weights (fine-tuned here)"}


def _values(run_dir: Path, step: str) -> dict[str, Any] | None:
    path = record_path(run_dir, step)
    return level_values(json.loads(path.read_text())) if path.is_file() else None


def comparison(path: str, verdict: str) -> dict[str, Any]:
    """The level ``path`` (RUN_DIR/level_K of an IMP run) as the comparison: its evaluation row, its run's dense
    value of ``verdict`` and that run's data; ``finished`` False while the level has not finished."""
    level = Path(path)
    found: dict[str, Any] = {"path": path, "finished": False}
    values = _values(level.parent, level.name)
    if values is not None:
        found.update(evaluation_row(values), finished=True, steps=values.get("steps"), wall_s=values.get("wall_s"))
    dense = _values(level.parent, "level_0")
    if dense is not None and verdict in dense:
        found.update({f"dense_{verdict}": dense[verdict], "dense": evaluation_row(dense)})
    return found


def _refreshed(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The summary's comparison, read again from its run when that is still where it was (it may have gone on)."""
    compared = summary.get("compare")
    if compared and Path(compared["path"]).parent.is_dir():
        return comparison(compared["path"], summary["verdict"])
    return compared


def _metric_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys and k not in ("level", "sparsity", "label", "steps", "wall_s")]
    return keys


def table_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The transferred ticket, then (when given) the target's own ticket and the target's dense model."""
    verdict = summary["verdict"]
    rows = [{"label": "transferred ticket", **summary["ticket"]}] if summary.get("ticket") else []
    compared = _refreshed(summary)
    if compared and compared["finished"]:
        rows.append({"label": f"target's own ticket ({compared['path']})",
                     **{k: v for k, v in compared.items() if k not in ("path", "finished", "dense", f"dense_{verdict}")}})
    if compared and "dense" in compared:
        rows.append({"label": "target's dense model (its level_0)", **compared["dense"]})
    return rows


def markdown_table(summary: dict[str, Any]) -> str:
    rows = table_rows(summary)
    keys = [k for k in _metric_keys(rows) if k not in ("off_mask_nonzero", "sparsity_groups")]
    head = ["model", "sparsity", *map(_label, keys)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"], f"{row['sparsity']:.2%}",
                 *(f"{row[k]:.4g}" if isinstance(row.get(k), int | float) else "-" for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_verdict(summary: dict[str, Any], path: Path) -> Path:
    """The verdict metric (E, or a GAN's FID) of each row of the table, as bars."""
    verdict = summary["verdict"]
    rows = [r for r in table_rows(summary) if verdict in r]
    fig, ax = plt.subplots(figsize=(5.5, 3.4), constrained_layout=True)
    ax.bar(range(len(rows)), [r[verdict] for r in rows], color=["tab:blue", "tab:green", "tab:red"][: len(rows)])
    ax.set_xticks(range(len(rows)), [r["label"].split(" (")[0] for r in rows], fontsize=8)
    ax.set_ylabel(f"{_label(verdict)} (lower is better)")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sample_rows(run_dir: Path, summary: dict[str, Any], path: Path) -> Path | None:
    """Held-out pairs, the transferred ticket's outputs and, when finished, the target's own ticket's, stacked."""
    compared = summary.get("compare") or {}
    files = [run_dir / "pairs.png", run_dir / "ticket" / "samples.png"]
    if compared.get("path"):
        files.append(Path(compared["path"]) / "samples.png")
    images = [Image.open(f).convert("RGB") for f in files if f.is_file()]
    if not images:
        return None
    canvas = Image.new("RGB", (max(i.width for i in images), sum(i.height + 4 for i in images)), "white")
    y = 0
    for image in images:
        canvas.paste(image, (0, y))
        y += image.height + 4
    canvas.save(path)
    return path


def _verdict_line(summary: dict[str, Any]) -> str:
    name = _label(summary["verdict"])
    compared = _refreshed(summary)
    if summary.get("ticket") is None:
        return "The transferred ticket has not finished training yet."
    if not compared:
        return (f"No comparison given (`prune.compare_with=RUN_DIR/level_K` of an IMP run on this data): whether the "
                f"ticket is matching needs the dense {name} on this data.")
    dense = compared.get(f"dense_{summary['verdict']}")
    if dense is None:
        return f"The comparison run {compared['path']} has no finished dense level yet: no verdict."
    value = summary["ticket"][summary["verdict"]]
    bound = dense * (1 + summary.get("matching_tolerance", 0.0))
    verdict = "**matching**" if value <= bound else "**not matching**"
    own = (f"; the target's own ticket at {compared['sparsity']:.2%}: {compared[summary['verdict']]:.4g}"
           if compared.get("finished") else "; the target's own ticket has not finished yet")
    return f"Transferred ticket {verdict}: {name} {value:.4g} against the target's dense {dense:.4g}{own}."


def write_report(run_dir: Path, summary: dict[str, Any], out: Path) -> Path:
    source, ticket = summary.get("source"), summary.get("ticket")
    if source is None:
        raise ReportError(f"{run_dir}: the ticket has not been copied yet (no finished step)")
    bars = plot_verdict(summary, out / "transfer.png") if ticket else None
    samples = _sample_rows(run_dir, summary, out / "samples.png")
    found_on = ", ".join(f"{k} `{v}`" for k, v in source["data"].items() if v)
    trained_on = ", ".join(f"{k} `{v}`" for k, v in summary["data"].items() if v)
    kept = ticket and ticket["off_mask_nonzero"] == 0
    lines = [
        f"# Transferred ticket report: {run_dir}",
        "",
        f"The ticket: level {source['level']} of `{source['run']}` (`{source['path']}`), model **{source['model']}** "
        f"(width {source['width']}), **{source['sparsity']:.2%}** sparse, found by {source['method']} "
        f"(rewind to step {source['rewind_step']}, control {source['control']}) on {found_on}"
        + (f"; {_label(summary['verdict'])} there: {source['source_' + summary['verdict']]:.4g}"
           if f"source_{summary['verdict']}" in source else "") + f". Mask sha256 `{source['mask_sha256'][:16]}`.",
        "",
        f"Trained here on {trained_on} for {summary['steps']} steps, starting from "
        f"{START[summary['transfer_weights']]}; the mask held fixed"
        + (f" (after training, {ticket['off_mask_nonzero']} masked weights are nonzero"
           f"{': the mask held' if kept else ''})." if ticket else "."),
        "",
        _verdict_line(summary),
        "",
        f"Evaluated on {summary['eval_pairs']} held-out pairs at {summary['eval_size']} px (compare runs only at the "
        "same size and pairs)." if summary["verdict"] == "total_error" else
        f"{_label(summary['verdict'])} decides (lower is better).",
        "",
        markdown_table(summary),
    ]
    if bars:
        lines += ["", f"![{_label(summary['verdict'])} of the transferred ticket]({bars.name})"]
    if samples:
        lines += ["", "Held-out pairs (top), the transferred ticket's outputs, then the target's own ticket's:", "",
                  f"![samples]({samples.name})"]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


@register
class TransferReport(Report):
    kind = "transfer"
    table_key = "transfer/ticket"

    def write(self, run_dir: Path, summary: dict[str, Any], out: Path) -> Path:
        return write_report(run_dir, summary, out)

    def table(self, run_dir: Path, summary: dict[str, Any]) -> str:
        return markdown_table(summary)

    def rows(self, summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        rows = table_rows(summary)
        columns = ["label", "sparsity", *[k for k in _metric_keys(rows) if k != "sparsity_groups"]]
        return columns, [[row.get(c) for c in columns] for row in rows]

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        ticket = summary.get("ticket") or {}
        return {"sparsity": ticket.get("sparsity"), summary["verdict"]: ticket.get(summary["verdict"]),
                "matching": summary.get("matching")}

    def finished(self, run_dir: Path, summary: dict[str, Any]) -> str:
        source = summary["source"]
        return (f"transferred ticket trained: {run_dir}\n  from level {source['level']} of {source['run']} "
                f"({source['model']}, {source['sparsity']:.2%} sparse)\n  {_verdict_line(summary).replace('**', '')}\n"
                f"  report: {run_dir / 'report' / 'report.md'}")
