"""``distst export CHECKPOINT --out DIR [--int8] [--calibration SHARDS] [--opset N]``: ONNX graphs of a model file.

``--model NAME --weights KEY=FILE`` instead of CHECKPOINT exports a model built from its published weight files
(a CycleGAN generator: ``--model cyclegan --weights generator_weights=latest_net_G.pth``), checked as
``distst stylize`` checks them. A translation model exports one graph, forward.onnx (content -> image).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .stylize import add_weights_option

if TYPE_CHECKING:
    from ..export.quantize import Calibration

REPORT = "int8_report.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="ONNX graphs (whole forward and the cached-style pair) of a model file, "
                                      "optionally int8",
                       description="Writes forward.onnx (content, style -> image), style.onnx (style -> the "
                                   "transform's style inputs) and stylize_cached.onnx (content + those inputs -> "
                                   "image) with dynamic height and width, and manifest.json. --int8 adds "
                                   "*.int8.onnx (ONNX Runtime static quantisation, calibrated on held-out shards) "
                                   "and int8_report.json (E of torch, fp32 and int8 on held-out pairs, file sizes).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?",
                   help="a distst model file (or a run directory with model.pt); or --model with --weights")
    p.add_argument("--model", help="export this model built from its weight files (--weights) instead of CHECKPOINT")
    p.add_argument("--width", type=float, help="channel multiplier of --model's weights (default 1)")
    add_weights_option(p, "a weight file of --model by its model.* key (repeatable), e.g. "
                          "generator_weights=latest_net_G.pth (cyclegan)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--int8", action="store_true", help="also write int8 graphs (needs --calibration)")
    p.add_argument("--calibration", metavar="SHARDS", help="held-out content shards (brace pattern) to calibrate on")
    p.add_argument("--calibration-style", metavar="SHARDS", help="held-out style shards (default: --calibration)")
    p.add_argument("--calibration-pairs", type=int, default=8, help="pairs to calibrate on (default 8)")
    p.add_argument("--eval-pairs", type=int, default=4,
                   help="further pairs of the same shards to measure E on, fp32 vs int8 (default 4; 0: skip)")
    p.add_argument("--vgg", metavar="FILE", help="the loss VGG for E (the run's model.vgg_weights, or the "
                                                 "loss_vgg.pth a channel-pruning run wrote); default: the model's own")
    p.add_argument("--size", type=int, default=256, help="calibration and evaluation image size (default 256)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.int8 and not args.calibration:
        raise UserError("--int8 needs --calibration SHARDS (held-out content shards; and --calibration-style)")
    if args.calibration_pairs < 1 or args.eval_pairs < 0 or args.size < 16:
        raise UserError("--calibration-pairs must be at least 1, --eval-pairs at least 0, --size at least 16")
    if bool(args.checkpoint) == bool(args.model):
        raise UserError("give CHECKPOINT (a distst model file) or --model NAME with its --weights KEY=FILE, one of them")
    if args.checkpoint and (args.weights or args.width is not None):
        raise UserError("--weights and --width go with --model; a model file holds its own weights and plan")
    import json

    from ..export import ExportError, export_model
    from ..export.onnx_export import DEFAULT_OPSET

    out = Path(args.out)
    try:
        calib = _calibration(args) if args.int8 else None  # read first: a bad pattern fails before exporting
        manifest = export_model(_source(args), out, opset=args.opset or DEFAULT_OPSET,
                                source_name=", ".join(args.weights) or None)
        report = _int8(args, out, calib) if calib is not None else None
    except ExportError as err:
        raise UserError(str(err)) from None
    manifest = json.loads((out / "manifest.json").read_text()) if report is not None else manifest
    print(f"wrote {', '.join(sorted(f for v in manifest['variants'].values() for f in v.values()))} and "
          f"manifest.json to {out}")
    if report is not None:
        (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        _print_report(report)
    return 0


def _source(args: argparse.Namespace) -> Any:
    """CHECKPOINT, or ``--model`` built from its ``--weights`` (every part inference uses must have a file)."""
    if args.checkpoint:
        return args.checkpoint
    from .stylize import checked_model_name, model_from_files, weight_options

    name = checked_model_name(args.model)
    return model_from_files(name, args.width, weight_options(name, args.weights))


def _calibration(args: argparse.Namespace) -> Calibration:
    from ..export.quantize import read_calibration

    return read_calibration(args.calibration, args.calibration_style, args.calibration_pairs + args.eval_pairs,
                            args.size)


def _int8(args: argparse.Namespace, out: Path, calib: Calibration) -> dict[str, Any]:
    """Quantise with the first ``--calibration-pairs`` pairs; E on the ``--eval-pairs`` after them."""
    from ..export.errors import compare_errors
    from ..export.quantize import Calibration, quantize_export

    n = args.calibration_pairs
    manifest = quantize_export(out, Calibration(calib.content[:n], calib.style[:n]))
    sizes = {variant: {role: (out / name).stat().st_size for role, name in files.items()}
             for variant, files in manifest["variants"].items()}
    report: dict[str, Any] = {"source": str(args.checkpoint or ", ".join(args.weights)), "file_bytes": sizes, "calibration_pairs": n,
                    "eval_pairs": args.eval_pairs, "size": args.size}
    if args.eval_pairs and not args.checkpoint:
        report["errors_skipped"] = "E is measured on a model file (CHECKPOINT), not on --model's weight files"
    elif args.eval_pairs:
        from ..export import ExportError

        try:
            report["errors"] = compare_errors(args.checkpoint, out, calib.content[n:], calib.style[n:],
                                              vgg_weights=args.vgg)
        except ExportError as err:
            report["errors_skipped"] = str(err)
    return report


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    errors = report.get("errors", {})
    # Every error term the model reports (SANet and MCCNet add identity_error), E being their sum.
    terms = [k for k in errors.get("torch", {}) if k != "total_error"]
    table = Table(title=f"int8 vs fp32 ({report['eval_pairs']} held-out pairs at {report['size']} px; "
                        f"E = {' + '.join(t.replace('_', ' ') for t in terms) or 'the errors'})")
    for col in ("graph", "forward MB", "E", *(t.replace("_", " ") for t in terms)):
        table.add_column(col, justify="left" if col == "graph" else "right")
    for name in ("torch", "fp32", "int8"):
        e = errors.get(name, {})
        size = report["file_bytes"].get(name, {}).get("forward")
        table.add_row(name, f"{size / 1e6:.2f}" if size else "",
                      *(f"{e[k]:.4g}" if k in e else "" for k in ("total_error", *terms)))
    Console().print(table)
    if "errors_skipped" in report:
        print(f"E not measured: {report['errors_skipped']}")
