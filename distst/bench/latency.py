"""``distst bench latency``: median CPU forward time of model files and ONNX graphs, as an app runs them.

Each entry is a distst model file (or run directory: torch), an ``.onnx`` graph written by ``distst export``
(ONNX Runtime; its manifest names the cached-style pair and the source model), or an export directory (its
fp32 graphs). Two timings per entry, median of ``--repeats`` after ``--warmup`` untimed runs: the full forward
(content and style), and the content side alone with the style's inputs computed once beforehand (an app that
keeps a style). Entries are timed round-robin, one run each per round, so that load changes on a shared
machine spread over all of them. Also parameters, MACs (``distst.models.complexity``), file size (the model file, or the
single-graph ``forward*.onnx``), E where known, and each entry's speed and size ratio to the first.

Without ``--checkpoint`` it measures a randomly initialised dense AdaIN at ``--width`` as torch, ONNX fp32
and ONNX int8 (calibrated on the sample shards): the comparison an app developer makes first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.bundled import CONTENT, STYLE
from ..records import SUMMARY_FILE, read_summary

HELP = "median CPU latency of model files and ONNX graphs (full forward and cached style), size, params, MACs"
SAMPLE_CONTENT = CONTENT
SAMPLE_STYLE = STYLE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                   help="a distst model file / run directory, an exported .onnx file or export directory; "
                        "repeatable; ratios are to the first (default: a random dense AdaIN as torch, ONNX, int8)")
    p.add_argument("--size", type=int, default=512, help="content height and width (default 512)")
    p.add_argument("--style-size", type=int, default=None, help="style height and width (default: --size)")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median; default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--width", type=float, default=1.0, help="width of the default random AdaIN (default 1.0)")
    p.add_argument("--profile", action="store_true",
                   help="ONNX entries: also print ONNX Runtime's time per operator type (full forward)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")


@dataclass
class Row:
    label: str
    runtime: str  # torch | onnx fp32 | onnx int8
    full_ms: float
    cached_ms: float
    params: int
    macs: int
    file_bytes: int
    error: float | None = None  # E on the run's held-out pairs, where recorded
    error_from: str | None = None  # the file E was read from: files can measure E on different pairs and sizes
    speedup: float = 1.0  # first entry's full_ms / this one's
    cached_speedup: float = 1.0
    smaller: float = 1.0  # first entry's file size / this one's
    extra: dict[str, Any] = field(default_factory=dict)


def median_ms(run: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median wall ms of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    return statistics.median(_timed(run) for _ in range(repeats))


def _timed(run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) * 1000


@dataclass
class Prepared:
    """One entry, loaded and ready: its two timed calls and the row it fills."""

    row: Row
    full: Callable[[], Any]
    cached: Callable[[], Any]
    profile: Callable[[], dict[str, float]] | None = None


def _images(multiple: int, min_size: int, size: int, style_size: int) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    sides = [max(-(-s // multiple) * multiple, min_size) for s in (size, style_size)]
    return tuple(torch.rand(1, 3, s, s, generator=generator) for s in sides)  # type: ignore[return-value]


#: E as read from a file, with that file.
KnownError = tuple[float, Path]


def _known_error(model_file: Path) -> KnownError | None:
    """E from ``summary.json`` beside the model file, if any: a training run's ``final.total_error``, or a
    channel-pruning run's ``final.errors.total_error`` (``RUN_DIR/slim/``)."""
    found = read_summary(model_file.parent)  # refuses a summary older than the run's checkpoints
    if found is None:
        return None
    final = found.get("final") or {}
    value = final.get("total_error", (final.get("errors") or {}).get("total_error"))
    return (float(value), model_file.parent / SUMMARY_FILE) if value is not None else None


def _set_error(row: Row, known: KnownError | None) -> Row:
    if known is not None:
        row.error, row.error_from = known[0], str(known[1])
    return row


def _model_path(path: Path) -> Path:
    return path / "model.pt" if path.is_dir() else path


def prepare_torch(path: Path, size: int, style_size: int, threads: int) -> Prepared:
    import torch

    from ..export.graphs import style_cache
    from ..models import StyleTransferModel, param_counts
    from ..models.complexity import macs
    from ..models.io import load_model

    torch.set_num_threads(threads)
    model, _ = load_model(path)
    model.eval()
    content, style = _images(model.input_multiple, model.min_size, size, style_size)

    @torch.inference_mode()
    def full() -> Any:
        return model(content, style)

    cached_call = full
    if isinstance(model, StyleTransferModel):
        cache = style_cache(model)
        with torch.inference_mode():
            cached = cache.from_style(model, model.encoder(style))

        @torch.inference_mode()
        def cached_call() -> Any:
            return model.decoder(cache.transform(model, model.encoder(content), cached))

    file = _model_path(path)
    row = _set_error(Row(str(path), "torch", 0.0, 0.0, param_counts(model)["total"],
                         macs(model, content.shape[-1], style.shape[-1])["total"], file.stat().st_size),
                     _known_error(file))
    return Prepared(row, full, cached_call)


def prepare_onnx(path: Path, size: int, style_size: int, threads: int) -> Prepared:
    from ..config import model_section
    from ..export.runtime import OnnxStylizer, profile_by_operator
    from ..models import create
    from ..models.complexity import macs

    runner = OnnxStylizer(path, "fp32", threads) if path.is_dir() else OnnxStylizer.from_file(path, threads)
    manifest = runner.manifest
    content, style = _images(manifest["input_multiple"], manifest["min_size"], size, style_size)
    cached = runner.style_inputs(style)
    shadow = create(model_section(**manifest["model"]))  # the architecture, for MACs (the graph's own)
    row = _set_error(Row(str(path), f"onnx {runner.variant}", 0.0, 0.0, int(manifest["params"]["total"]),
                         macs(shadow, content.shape[-1], style.shape[-1])["total"], runner.file_bytes("forward")),
                     _onnx_error(runner.dir, runner.variant, Path(manifest["source"])))
    feeds = {"content": content.numpy(), "style": style.numpy()}
    return Prepared(row, lambda: runner.forward(content, style), lambda: runner.stylize_cached(content, cached),
                    lambda: profile_by_operator(runner.paths["forward"], feeds, threads))


def _onnx_error(out_dir: Path, variant: str, source: Path) -> KnownError | None:
    report = out_dir / "int8_report.json"
    if report.is_file():
        errors = json.loads(report.read_text()).get("errors", {})
        if variant in errors:
            return float(errors[variant]["total_error"]), report
    return _known_error(_model_path(source)) if variant == "fp32" and source.exists() else None


def prepare(path: str | Path, size: int, style_size: int, threads: int) -> Prepared:
    path = Path(path)
    if path.suffix == ".onnx" or (path.is_dir() and (path / "manifest.json").is_file()):
        return prepare_onnx(path, size, style_size, threads)
    return prepare_torch(path, size, style_size, threads)


def with_ratios(rows: list[Row]) -> list[Row]:
    first = rows[0]
    for row in rows:
        row.speedup = first.full_ms / row.full_ms
        row.cached_speedup = first.cached_ms / row.cached_ms
        row.smaller = first.file_bytes / row.file_bytes
    return rows


def default_entries(out_dir: Path, width: float) -> list[Path]:
    """A random dense AdaIN at ``width``: its model file, its ONNX fp32 and int8 forward graphs."""
    import torch

    from ..config import model_section
    from ..export import export_model
    from ..export.quantize import quantize_export, read_calibration
    from ..models import create
    from ..models.io import save_model

    torch.manual_seed(0)
    model_file = save_model(create(model_section(name="adain", width=width)), out_dir / "adain.pt")
    export_model(model_file, out_dir / "onnx")
    quantize_export(out_dir / "onnx", read_calibration(SAMPLE_CONTENT, SAMPLE_STYLE, 8, 256))
    return [model_file, out_dir / "onnx" / "forward.onnx", out_dir / "onnx" / "forward.int8.onnx"]


def measure(paths: list[str | Path], size: int, style_size: int, threads: int, repeats: int, warmup: int,
            profile: bool = False) -> list[Row]:
    """Every entry's median ms. The runs go round-robin (each round times every entry once), so that a change of
    load on a shared machine hits every entry alike instead of whichever ran during it."""
    entries = [prepare(p, size, style_size, threads) for p in paths]
    for entry in entries:
        for _ in range(warmup):
            entry.full()
            entry.cached()
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in entries]
    for _ in range(repeats):
        for entry, (full, cached) in zip(entries, times, strict=True):
            full.append(_timed(entry.full))
            cached.append(_timed(entry.cached))
    for entry, (full, cached) in zip(entries, times, strict=True):
        entry.row.full_ms, entry.row.cached_ms = statistics.median(full), statistics.median(cached)
        if profile and entry.profile is not None:
            entry.row.extra["profile_ms"] = entry.profile()
    return with_ratios([entry.row for entry in entries])


def print_rows(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = ("entry", "runtime", "full ms", "cached ms", "speed-up", "MB", "smaller", "params", "GMACs", "E")
    for col in columns:
        table.add_column(col, justify="left" if col in ("entry", "runtime") else "right")
    for r in rows:
        table.add_row(r.label, r.runtime, f"{r.full_ms:.1f}", f"{r.cached_ms:.1f}", f"{r.speedup:.2f}x",
                      f"{r.file_bytes / 1e6:.2f}", f"{r.smaller:.2f}x", f"{r.params:,}", f"{r.macs / 1e9:.2f}",
                      f"{r.error:.4g}" if r.error is not None else "")
    console = Console(width=max(Console().width, 150))
    console.print(table)
    sources = sorted({r.error_from for r in rows if r.error_from})
    if len(sources) > 1:  # a run's summary (its eval size and pairs) vs an export's int8 report (256 px)
        console.print(f"E is read from {len(sources)} files that may measure it on different pairs and sizes: "
                      f"{', '.join(sources)}. `distst bench table` measures every row on the same pairs.")
    for r in rows:
        if "profile_ms" in r.extra:
            total = sum(r.extra["profile_ms"].values())
            top = ", ".join(f"{op} {ms:.1f} ms ({ms / total:.0%})" for op, ms in list(r.extra["profile_ms"].items())[:8])
            console.print(f"{r.label} ({r.runtime}) time per operator type, full forward: {top}")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError

    if args.size < 16 or (args.style_size is not None and args.style_size < 16):
        raise UserError("--size and --style-size must be at least 16")
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        raise UserError("--repeats and --threads must be at least 1, --warmup at least 0")
    style_size = args.style_size or args.size
    for path in args.checkpoint:
        if not Path(path).exists():
            raise UserError(f"--checkpoint {path} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        paths = args.checkpoint or default_entries(Path(tmp), args.width)
        from ..export import ExportError

        try:
            rows = measure(paths, args.size, style_size, args.threads, args.repeats, args.warmup, args.profile)
        except ExportError as err:
            raise UserError(str(err)) from None
        if not args.checkpoint:
            for row, label in zip(rows, ("dense AdaIN (torch)", "dense AdaIN (ONNX fp32)", "dense AdaIN (ONNX int8)"),
                                  strict=True):
                row.label = f"{label}, width {args.width}, random init"
    print_rows(rows, f"distst bench latency: content {args.size}, style {style_size}, {args.threads} threads, "
                     f"median of {args.repeats}")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "style_size": style_size, "threads": args.threads,
                                               "repeats": args.repeats, "rows": [asdict(r) for r in rows]},
                                              indent=2) + "\n")
    return 0
