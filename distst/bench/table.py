"""``distst bench table``: the README's results table, regenerated from model files.

Exports the dense model to ONNX fp32, and each slimmed model to ONNX fp32 and int8 (calibrated on held-out
shards, with E of fp32 and int8 on further held-out pairs), then measures every row with ``distst bench
latency`` at each content/style size pair (default 384/256, a phone-app size, and 512/512) with the given
threads. Rows: dense torch, dense ONNX, the ticket (torch), each slimmed model (torch) and its fp32 and int8 graphs
(a very narrow network can run faster in fp32 than int8: its quantise/dequantise steps weigh more).
E: the run's own (``summary.json`` beside the model file), and for int8 graphs the fp32 -> int8 pair measured
on the same held-out pairs. Without ``--dense`` a randomly initialised width-1.0 AdaIN stands in (timing only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .latency import SAMPLE_CONTENT, SAMPLE_STYLE, Row, measure

HELP = "the README results table: dense torch/ONNX, ticket, slimmed and slimmed int8 at 384/256 and 512/512"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dense", metavar="MODEL", help="the dense model file (default: a random width-1.0 AdaIN)")
    p.add_argument("--ticket", metavar="MODEL", help="a lottery-ticket model file (an IMP level's model.pt)")
    p.add_argument("--slim", action="append", default=[], metavar="MODEL", help="a slimmed model file; repeatable")
    p.add_argument("--calibration", default=SAMPLE_CONTENT, help="held-out content shards for int8 calibration")
    p.add_argument("--calibration-style", default=SAMPLE_STYLE, help="held-out style shards")
    p.add_argument("--vgg", metavar="FILE", help="the loss VGG every E is measured with (e.g. the loss_vgg.pth of "
                                                 "the runs); default: each model's own")
    p.add_argument("--sizes", default="384/256,512/512", help="content/style size pairs (default 384/256,512/512)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--work", default="runs/bench_table", help="where exports go (default runs/bench_table)")
    p.add_argument("--markdown", metavar="FILE", help="also write the Markdown table to FILE")
    p.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")


def _sizes(text: str) -> list[tuple[int, int]]:
    from ..errors import UserError

    try:
        pairs = [tuple(int(v) for v in item.split("/")) for item in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 16 for p in pairs):
        raise UserError(f"--sizes {text!r}: give content/style pairs of at least 16, e.g. 384/256,512/512")
    return pairs  # type: ignore[return-value]


EVAL_PAIRS = 4  # held-out pairs for E, after the 8 calibration pairs
TEMPORAL_SIZE = 128  # side of the synthetic clips the temporal error is measured on (temporal.* defaults otherwise)


def _entries(args: argparse.Namespace, work: Path) -> tuple[list[tuple[str, Path]], dict[str, float],
                                                             dict[str, float]]:
    """(row label, path to measure) for every row, exporting what needs exporting; E of every measured path on
    the same held-out pairs with the same loss VGG (``--vgg``), and its temporal error on the same synthetic clips
    stylised with the same held-out styles."""
    import torch

    from ..config import model_section
    from ..export import export_model
    from ..export.errors import compare_errors
    from ..export.quantize import quantize_export, read_calibration
    from ..models import create
    from ..models.io import save_model

    dense = Path(args.dense) if args.dense else None
    if dense is None:
        torch.manual_seed(0)
        dense = save_model(create(model_section(name="adain", width=1.0)), work / "dense_random" / "model.pt")
    calibration = read_calibration(args.calibration, args.calibration_style, 8 + EVAL_PAIRS, 256)
    held_out = calibration.content[8:], calibration.style[8:]
    errors: dict[str, float] = {}

    def measure_errors(model_file: Path, out: Path | None, variants: tuple[str, ...]) -> None:
        try:
            found = compare_errors(model_file, out or work, *held_out, variants=variants, vgg_weights=args.vgg)
        except ValueError:  # a model whose errors() cannot run on a graph (see export.errors)
            found = {"torch": compare_errors(model_file, work, *held_out, variants=(), vgg_weights=args.vgg)["torch"]}
        names = {"torch": model_file, "fp32": (out or work) / "forward.onnx", "int8": (out or work) / "forward.int8.onnx"}
        errors.update({str(names[k]): v["total_error"] for k, v in found.items()})
        if out is not None:
            (out / "int8_report.json").write_text(json.dumps({"source": str(model_file), "errors": found}, indent=2))

    export_model(dense, work / "dense")
    measure_errors(dense, work / "dense", ("fp32",))
    entries = [("dense", dense), ("dense", work / "dense" / "forward.onnx")]
    if args.ticket:
        entries.append(("ticket", Path(args.ticket)))
        measure_errors(Path(args.ticket), None, ())
    for i, slim in enumerate(map(Path, args.slim)):
        out = work / f"slim_{i}"
        export_model(slim, out)
        quantize_export(out, type(calibration)(calibration.content[:8], calibration.style[:8]))
        measure_errors(slim, out, ("fp32", "int8"))
        entries += [(f"slimmed {i + 1}", slim), (f"slimmed {i + 1}", out / "forward.onnx"),
                    (f"slimmed {i + 1}", out / "forward.int8.onnx")]
    return entries, errors, _temporal_errors([p for _, p in entries], held_out[1])


def _temporal_errors(paths: list[Path], styles: Any) -> dict[str, float]:
    from ..config import TemporalConfig
    from ..video.evaluation import TemporalEvaluation, temporal_of_file

    clips = TemporalEvaluation.from_config(TemporalConfig(eval_size=TEMPORAL_SIZE), TEMPORAL_SIZE, 8, 16)
    return {str(p): temporal_of_file(p, clips, styles)["temporal_error"] for p in paths}


def markdown(labels: list[str], by_size: dict[tuple[int, int], list[Row]], threads: int) -> str:
    sizes = list(by_size)
    first = by_size[sizes[0]]
    head = ["model", "runtime", "params", "GMACs", "file MB", "smaller", "E", "temporal error"]
    for c, s in sizes:
        head += [f"ms {c}/{s} (cached style)", f"speed-up {c}/{s}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, label in enumerate(labels):
        row = first[i]
        cells = [label, row.runtime, f"{row.params:,}", f"{row.macs / 1e9:.2f} @{sizes[0][0]}",
                 f"{row.file_bytes / 1e6:.2f}", f"{row.smaller:.1f}x", _e(row),
                 f"{row.extra['temporal_error']:.4g}" if "temporal_error" in row.extra else ""]
        for size in sizes:
            r = by_size[size][i]
            cells += [f"{r.full_ms:.0f} ({r.cached_ms:.0f})", f"{r.speedup:.1f}x ({r.cached_speedup:.1f}x)"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nCPU, {threads} threads; median ms of the full forward (content + style) and, in brackets, with "
                 "the style's inputs cached; ratios to dense torch. E (content + style error): every row on the same "
                 f"{EVAL_PAIRS} held-out pairs at 256 px with the same loss VGG; int8 rows: its fp32 graph's -> "
                 "int8's. Temporal error: the warping error (docs/video.md) on the synthetic clips at "
                 f"{TEMPORAL_SIZE} px, each row's own runtime.")
    return "\n".join(lines)


def _e(row: Row) -> str:
    if row.runtime == "onnx int8":
        fp32 = row.extra.get("fp32_error")
        return f"{fp32:.4g} -> {row.error:.4g}" if fp32 is not None and row.error is not None else ""
    return f"{row.error:.4g}" if row.error is not None else ""


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..errors import UserError
    from ..export import ExportError

    sizes = _sizes(args.sizes)
    for path in [args.dense, args.ticket, *args.slim]:
        if path and not Path(path).exists():
            raise UserError(f"{path} does not exist")
    work = Path(args.work)
    try:
        entries, errors, temporal = _entries(args, work)
        by_size = {size: measure([p for _, p in entries], *size, args.threads, args.repeats, args.warmup)
                   for size in sizes}
    except ExportError as err:
        raise UserError(str(err)) from None
    for rows in by_size.values():
        for row in rows:
            row.error, row.error_from = errors.get(row.label), "bench table: same held-out pairs"
            if row.label in temporal:
                row.extra["temporal_error"] = temporal[row.label]
            if row.runtime == "onnx int8":
                row.extra["fp32_error"] = errors.get(str(Path(row.label).parent / "forward.onnx"))
    text = markdown([label for label, _ in entries], by_size, args.threads)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{c}/{s}": [asdict(r) for r in rows] for (c, s), rows
                                               in by_size.items()}, indent=2) + "\n")
    return 0
