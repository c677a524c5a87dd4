"""What a study's models ship as: each final model exported to ONNX (and, with ``bench.int8``, quantised by ONNX
Runtime), every graph's E measured with the study's one loss network on the same held-out pairs, and the graphs
timed beside the torch models (``report.time_models``)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ..config import Config
from ..evaluate import evaluate
from ..export import export_model
from ..export.errors import onnx_forward
from ..export.onnx_export import MANIFEST, ExportError, read_manifest, variant_name
from ..export.quantize import quantize_export, read_calibration
from ..export.runtime import OnnxStylizer
from ..models.io import load_model

EXPORTS = "exports"


def _fresh(export_dir: Path, model_file: Path, int8: dict[str, int] | None) -> bool:
    """An export newer than its model file (with int8 graphs calibrated as ``int8`` says, if they are wanted): a
    re-run reuses it."""
    manifest = export_dir / MANIFEST
    if not manifest.is_file() or manifest.stat().st_mtime_ns < model_file.stat().st_mtime_ns:
        return False
    if int8 is None:
        return True
    recorded = read_manifest(export_dir).get("int8", {})
    return ((export_dir / variant_name("forward", "int8")).is_file()
            and all(recorded.get(key) == value for key, value in int8.items()))


def export_finals(paths: dict[str, Path], dense: Config, out: Path, int8: bool,
                  calibration_pairs: int = 8) -> dict[str, Path]:
    """Each model's export directory ``<out>/exports/<name>``; {} for a model that does not export (a GAN).
    int8 calibration: ``calibration_pairs`` images of the dense job's shards after its held-out pairs, at its
    eval size (never the pairs E is measured on)."""
    exports: dict[str, Path] = {}
    calibration = None
    data = dense.data
    size = data.eval_size or data.crop
    wanted = {"calibration_pairs": calibration_pairs, "calibration_size": size,
              "calibration_skip": data.eval_pairs} if int8 else None
    for name, model_file in paths.items():
        target = out / EXPORTS / name
        if not _fresh(target, model_file, wanted):
            try:
                export_model(model_file, target)
            except ExportError:
                return {}  # the study's one model has no ONNX graphs: the table says so
            if int8:
                if calibration is None:
                    calibration = read_calibration(data.content, data.style, calibration_pairs, size,
                                                   skip=data.eval_pairs)
                quantize_export(target, calibration)
        exports[name] = target
    return exports


def variants(int8: bool) -> tuple[str, ...]:
    return ("fp32", "int8") if int8 else ("fp32",)


def graph_errors(paths: dict[str, Path], exports: dict[str, Path], variant_names: tuple[str, ...],
                 loss_net: nn.Module, content: Tensor, style: Tensor) -> dict[str, dict[str, float]]:
    """E of every exported variant: the model's own evaluation with its forward pass answered by the graph."""
    errors: dict[str, dict[str, float]] = {}
    for name, export_dir in exports.items():
        model, _ = load_model(paths[name])
        model.eval()
        errors[name] = {}
        for variant in variant_names:
            with onnx_forward(model, OnnxStylizer(export_dir, variant)):
                errors[name][variant] = evaluate(model, loss_net, content, style)["total_error"]
    return errors


def graph_entries(exports: dict[str, Path], variant_names: tuple[str, ...]) -> dict[str, Path]:
    """``"<name> onnx <variant>"`` -> the forward graph, for timing beside the torch models."""
    return {f"{name} onnx {variant}": export_dir / variant_name("forward", variant)
            for name, export_dir in exports.items() for variant in variant_names
            if (export_dir / variant_name("forward", variant)).is_file()}
