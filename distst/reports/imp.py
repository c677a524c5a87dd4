"""Reports of IMP runs (``kind: imp``): a Markdown table, plots against sparsity, per-group sparsity bars, an
image grid.

Reads only the run directory (``summary.json``, the levels' records in ``steps/``, ``level_<k>/samples.png``,
``pairs.png``), so a report can be made anywhere the directory is, without the data or a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from ..records import step_records  # noqa: E402
from ..video import TEMPORAL_KEYS  # noqa: E402
from .base import Report, ReportError, register  # noqa: E402

ERRORS = (("total_error", "E (total)"), ("content_error", "content error"), ("style_error", "style error"))
#: Plots of a run whose verdict is a set metric (a GAN's FID), with KID and the cycle errors' E beside it.
SET_PLOTS = (("fid", "FID"), ("kid", "KID"), ("total_error", "E (cycle errors)"))
LABELS = {"total_error": "E", "fid": "FID", "kid": "KID", "kid_std": "KID std", "fid_images": "images"}


def level_values(record: dict[str, Any]) -> dict[str, Any]:
    """A level's train record with its errors at the top level (as the summary's rows and the report show it)."""
    return {**{k: v for k, v in record.items() if k != "errors"}, **record.get("errors", {})}


def evaluation_row(lv: dict[str, Any]) -> dict[str, Any]:
    """A level's evaluation values: the per-pair error means (``*_error``, E included), the temporal errors and any
    set metrics."""
    keys = [k for k in lv if k.endswith("_error") or k in TEMPORAL_KEYS] + list(lv.get("set_metrics", []))
    return {"level": lv["level"], "sparsity": lv["sparsity"], **{k: lv[k] for k in keys}}


def load_levels(run_dir: Path) -> list[dict[str, Any]]:
    """Each finished level's values (its train step's record, errors at the top level), in level order."""
    levels = [level_values(r) for r in step_records(run_dir) if r["kind"] == "train"]
    if not levels:
        raise ReportError(f"{run_dir} has no finished level yet")
    return levels


def _verdicts(summary: dict[str, Any]) -> dict[int, bool]:
    return {row["level"]: row["matching"] for row in summary.get("levels", [])}


def metric_columns(levels: list[dict[str, Any]]) -> list[str]:
    """The levels' evaluation values in table order: per-pair errors, E last of them, the temporal errors, then set
    metrics."""
    keys: list[str] = []
    for lv in levels:
        keys += [k for k in lv if k.endswith("_error") and k != "total_error" and k not in TEMPORAL_KEYS
                 and k not in keys]
    keys += ["total_error"] if any("total_error" in lv for lv in levels) else []
    keys += [k for k in TEMPORAL_KEYS if any(k in lv for lv in levels)]
    for lv in levels:
        keys += [k for k in lv.get("set_metrics", []) if k not in keys and k != "fid_images"]
    return keys


def _label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def markdown_table(summary: dict[str, Any], levels: list[dict[str, Any]]) -> str:
    verdicts = _verdicts(summary)
    groups = sorted({g for lv in levels for g in lv.get("sparsity_groups", {})})
    columns = metric_columns(levels)  # SANet's E includes its identity losses; a GAN adds FID and KID
    head = ["level", "sparsity", *(f"{g} sparsity" for g in groups), *map(_label, columns), "matching", "steps",
            "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lv in levels:
        match = verdicts.get(lv["level"])
        cells = [str(lv["level"]), f"{lv['sparsity']:.2%}", *(f"{lv['sparsity_groups'].get(g, 0):.2%}" for g in groups),
                 *(f"{lv.get(key, float('nan')):.4g}" for key in columns),
                 {True: "yes", False: "no", None: "?"}[match], str(lv["steps"]), f"{lv['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_errors(levels: list[dict[str, Any]], path: Path,
                plotted: tuple[tuple[str, str], ...] = ERRORS) -> Path:
    """Each ``plotted`` metric (E, content and style error by default) against sparsity, with the dense model's
    value as a line."""
    plotted = tuple((key, label) for key, label in plotted if all(key in lv for lv in levels))
    fig, axes = plt.subplots(1, len(plotted), figsize=(4.2 * len(plotted), 3.4), constrained_layout=True,
                             squeeze=False)
    axes = axes[0]
    sparsity = [100 * lv["sparsity"] for lv in levels]
    for ax, (key, label) in zip(axes, plotted, strict=True):
        ax.plot(sparsity, [lv[key] for lv in levels], "o-", color="tab:blue", label="IMP levels")
        ax.axhline(levels[0][key], color="tab:red", linestyle="--", label="dense")
        ax.set_xlabel("sparsity (% of prunable weights)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_group_sparsity(levels: list[dict[str, Any]], path: Path) -> Path:
    groups = sorted({g for lv in levels for g in lv.get("sparsity_groups", {})})
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(levels) + 2), 3.4), constrained_layout=True)
    width = 0.8 / max(1, len(groups))
    for i, group in enumerate(groups):
        ax.bar([lv["level"] + (i - (len(groups) - 1) / 2) * width for lv in levels],
               [100 * lv["sparsity_groups"].get(group, 0.0) for lv in levels], width, label=group)
    ax.set_xlabel("level")
    ax.set_ylabel("sparsity (%)")
    ax.set_xticks([lv["level"] for lv in levels])
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_grid(run_dir: Path, levels: list[dict[str, Any]], path: Path) -> Path | None:
    """Held-out content and style on top, then one row per level (columns = held-out pairs)."""
    rows: list[tuple[str, Image.Image]] = []
    if (run_dir / "pairs.png").is_file():
        rows.append(("content / style", Image.open(run_dir / "pairs.png").convert("RGB")))
    for lv in levels:
        sample = run_dir / f"level_{lv['level']}" / "samples.png"
        if sample.is_file():
            rows.append((f"level {lv['level']}: {lv['sparsity']:.1%}", Image.open(sample).convert("RGB")))
    if not rows:
        return None
    label_w = 150
    width = label_w + max(img.width for _, img in rows)
    canvas = Image.new("RGB", (width, sum(img.height + 4 for _, img in rows)), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for label, img in rows:
        canvas.paste(img, (label_w, y))
        draw.text((6, y + img.height // 2 - 6), label, fill="black")
        y += img.height + 4
    canvas.save(path)
    return path


def write_report(run_dir: Path, summary: dict[str, Any], out: Path) -> Path:
    """``out/report.md`` with its PNGs; returns the Markdown file."""
    levels = load_levels(run_dir)
    verdict = summary.get("verdict", "total_error")
    by_error = verdict == "total_error"
    name = "E" if by_error else _label(verdict)
    errors_png = plot_errors(levels, out / ("errors_vs_sparsity.png" if by_error else f"{verdict}_vs_sparsity.png"),
                             ERRORS if by_error else SET_PLOTS)
    groups_png = plot_group_sparsity(levels, out / "group_sparsity.png")
    grid_png = image_grid(run_dir, levels, out / "samples.png")
    extreme = summary.get("extreme_sparsity")
    setup = (f"encoder {summary.get('encoder', '?')}" if "encoder" in summary or by_error else
             f"discriminator: {summary.get('discriminator', '?')}")
    lines = [
        f"# IMP report: {run_dir}",
        "",
        f"Model **{summary.get('model', '?')}**, {setup}, scope "
        f"{', '.join(summary.get('scope', []))}, rate {summary.get('rate', '?')} per round"
        f"{' (layerwise)' if summary.get('layerwise') else ' (global)'}, rewind to step {summary.get('rewind_step', '?')}, "
        f"control: {summary.get('control', 'none')}.",
        "",
        f"Extreme sparsity (highest level still matching the dense {name}"
        f"{' within ' + format(summary['matching_tolerance'], '.0%') if summary.get('matching_tolerance') else ''}): "
        f"**{extreme:.2%}**" if extreme else
        (f"**No matching subnetwork**: no pruned level reaches the dense {name}." if len(levels) > 1
         else "No pruned level has finished yet."),
        "",
        f"E is measured on {summary.get('eval_pairs', '?')} held-out pairs at {summary.get('eval_size', '?')} px "
        "(an L2 norm over C x H x W: compare runs only at the same size)." if by_error else
        f"{name} decides (lower is better; KID beside it): {int(levels[0].get('fid_images', 0))} held-out inputs "
        f"translated against as many held-out real images at {summary.get('eval_size', '?')} px; the cycle errors' "
        "E is shown but does not decide.",
        "" if summary.get("complete") else "\n_The run is not finished: levels still to come are missing._",
        "",
        markdown_table(summary, levels),
        "",
        f"![{'errors' if by_error else name} against sparsity]({errors_png.name})",
        "",
        f"![sparsity per group]({groups_png.name})",
    ]
    if grid_png:
        caption = ("Held-out pairs (top), then each level's stylisations:" if by_error else
                   "Held-out inputs and real targets (top), then each level's translations of the inputs:")
        lines += ["", caption, "", f"![samples]({grid_png.name})"]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


@register
class ImpReport(Report):
    kind = "imp"
    table_key = "imp/levels"

    def write(self, run_dir: Path, summary: dict[str, Any], out: Path) -> Path:
        return write_report(run_dir, summary, out)

    def table(self, run_dir: Path, summary: dict[str, Any]) -> str:
        return markdown_table(summary, load_levels(run_dir))

    def rows(self, summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        columns = list(summary["levels"][0]) if summary["levels"] else ["level", "sparsity", "matching"]
        return columns, [[row[c] for c in columns] for row in summary["levels"]]

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {"extreme_sparsity": summary["extreme_sparsity"], "levels": len(summary["levels"])}
