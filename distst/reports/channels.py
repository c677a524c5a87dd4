"""Reports of channel-pruning runs (``kind: channels``): a stage table, widths before/after as bars, E against
MACs.

Reads only ``summary.json``, like the IMP report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .base import Report, register  # noqa: E402


def plot_widths(summary: dict[str, Any], path: Path) -> Path:
    """Output channels of every channel layer, dense against slimmed, one panel per group."""
    groups = list(summary["dense"]["widths"])
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.6), constrained_layout=True, squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        layers = list(summary["dense"]["widths"][group])
        xs = range(len(layers))
        ax.bar([x - 0.2 for x in xs], [summary["dense"]["widths"][group][k] for k in layers], 0.4, label="dense")
        ax.bar([x + 0.2 for x in xs], [summary["final"]["widths"][group].get(k, 0) for k in layers], 0.4,
               label="slimmed")
        ax.set_xticks(list(xs), layers, rotation=60, fontsize=7)
        ax.set_ylabel("output channels")
        ax.set_title(group)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_error_vs_macs(summary: dict[str, Any], path: Path) -> Path:
    """E of every stage against its MACs (GMACs per stylisation at the evaluation size)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
    for kind, marker in (("train", "o"), ("prune", "x")):
        rows = [r for r in summary["stages"] if r["kind"] == kind and r["total_error"] is not None]
        ax.scatter([r["macs"] / 1e9 for r in rows], [r["total_error"] for r in rows], marker=marker,
                   label="after training" if kind == "train" else "right after pruning")
        for r in rows:
            ax.annotate(r["stage"], (r["macs"] / 1e9, r["total_error"]), fontsize=6)
    ax.axhline(summary["dense"]["errors"]["total_error"], color="tab:red", linestyle="--", label="dense E")
    ax.set_xscale("log")
    ax.set_xlabel(f"GMACs at {summary['eval_size']} px")
    ax.set_ylabel("E (held-out pairs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _value(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else "-"


def markdown_table(summary: dict[str, Any]) -> str:
    lines = ["| stage | kind | params | GMACs | E | temporal error |", "|---|---|---|---|---|---|"]
    for r in summary["stages"]:
        note = " (before fine-tuning)" if r["kind"] == "prune" else ""
        lines.append(f"| {r['stage']} | {r['kind']} | {r['params']:,} | {r['macs'] / 1e9:.3f} | "
                     f"{_value(r['total_error'])}{note} | {_value(r.get('temporal_error'))} |")
    return "\n".join(lines)


def write_report(run_dir: Path, summary: dict[str, Any], out: Path) -> Path:
    widths_png = plot_widths(summary, out / "widths.png")
    errors_png = plot_error_vs_macs(summary, out / "error_vs_macs.png")
    dense, final = summary["dense"], summary["final"]
    lines = [
        f"# Channel pruning report ({summary['method']}, {summary['model']}): {run_dir}",
        "",
        f"Channels removed **{summary['channels_removed_in_scope']:.1%}** of the pruned layers' "
        f"({summary['channels_removed']:.1%} of all channel layers'), parameters removed "
        f"**{summary['params_removed']:.1%}** ({dense['params']['total']:,} -> {final['params']['total']:,}), "
        f"MACs **{summary['macs_speedup']:.2f}x** fewer ({dense['macs']['total'] / 1e9:.3f} -> "
        f"{final['macs']['total'] / 1e9:.3f} GMACs at {summary['eval_size']} px).",
        "",
        f"E on {summary['eval_pairs']} held-out pairs at {summary['eval_size']} px: dense "
        f"{dense['errors']['total_error']:.4g}, slimmed {final['errors'].get('total_error', float('nan')):.4g}."
        + (f" Temporal error (warping error on the synthetic clips, docs/video.md): dense "
           f"{dense['errors']['temporal_error']:.4g}, slimmed {_value(final['errors'].get('temporal_error'))}."
           if "temporal_error" in dense["errors"] else ""),
        "",
        f"The slimmed model: `{summary['slim_model']}` (`distst stylize --checkpoint` loads it as is; "
        "`distst bench latency` times it).",
        "",
        markdown_table(summary),
        "",
        f"![widths]({widths_png.name})",
        "",
        f"![E against MACs]({errors_png.name})",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


@register
class ChannelReport(Report):
    kind = "channels"
    table_key = "channels/stages"

    def write(self, run_dir: Path, summary: dict[str, Any], out: Path) -> Path:
        return write_report(run_dir, summary, out)

    def table(self, run_dir: Path, summary: dict[str, Any]) -> str:
        return markdown_table(summary)

    def rows(self, summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        columns = ["stage", "kind", "params", "macs", "total_error", "temporal_error"]
        return columns, [[r.get(c) for c in columns] for r in summary["stages"]]

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {"channels_removed": summary["channels_removed"], "params_removed": summary["params_removed"],
                "macs_speedup": summary["macs_speedup"],
                "final_total_error": summary["final"]["errors"].get("total_error"),
                "final_temporal_error": summary["final"]["errors"].get("temporal_error")}
