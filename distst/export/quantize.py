"""int8 post-training static quantisation of exported graphs with ONNX Runtime.

``quant_pre_process`` (shape inference, graph optimisation) then ``quantize_static`` in QDQ format: int8
per-output-channel weights, uint8 activations with MinMax ranges from calibration images (U8S8, ORT's
recommended x86 pairing; it measured faster here than S8S8 and than quantising only the convs). ORT's fused
int8 kernels (QLinearConv) run the quantised graph. Why ORT and not torch: torch.ao's eager/FX quantisation is
deprecated, PT2E moved to torchao (not installed), and an ONNX graph is what an app ships anyway.

Calibration images come from held-out shards: the first ``count`` content and style images (pairs), centre-
cropped to ``size``. The cached pair is calibrated on what it sees in use: the content graph on the fp32 style
graph's outputs.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .onnx_export import GRAPHS, ExportError, read_manifest, variant_name, write_manifest
from .runtime import OnnxStylizer


@dataclass
class Calibration:
    """Content and style images (count x 3 x S x S in [0, 1]) the activation ranges are measured on."""

    content: Tensor
    style: Tensor
    #: Where in the shards they start (recorded in the manifest: a re-used export says what it was calibrated on).
    skip: int = 0


def read_calibration(content: str, style: str | None, count: int, size: int, skip: int = 0) -> Calibration:
    """Images ``skip`` .. ``skip + count`` of the content and style shards (style defaults to content's)."""
    from ..data.loader import first_images

    images = []
    for pattern in (content, style or content):
        try:
            images.append(first_images(pattern, skip + count, size)[skip:])
        except FileNotFoundError as err:
            raise ExportError(f"calibration shards: {err}") from None
    return Calibration(*images, skip=skip)


class _Feeds:
    """An ONNX Runtime ``CalibrationDataReader`` over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # part of ORT's reader protocol; one pass is all MinMax needs
        pass


def _feeds(runner: OnnxStylizer, calib: Calibration) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration inputs of each graph of ``runner``'s variant (a translation's one graph: the content alone)."""
    feeds: dict[str, list[dict[str, np.ndarray]]] = {role: [] for role in runner.paths}
    for i in range(len(calib.content)):
        content, style = calib.content[i:i + 1].numpy(), calib.style[i:i + 1].numpy()
        if not runner.takes_style:
            feeds["forward"].append({"content": content})
            continue
        feeds["forward"].append({"content": content, "style": style})
        feeds["style"].append({"style": style})
        feeds["stylize"].append({"content": content, **runner.style_inputs(calib.style[i:i + 1])})
    return feeds


def quantize_graph(fp32: Path, out: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = fp32.resolve()  # before the chdir below: a relative --out would resolve inside the temporary directory
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ORT's symbolic shape inference gives up on SANet's attention reshapes, and then saves its partial model
        # (tens of MB) to the working directory: run it in the temporary one.
        with contextlib.chdir(tmp):
            try:
                quant_pre_process(str(fp32), str(prepared))
            except Exception:  # noqa: BLE001  # ONNX's own shape inference is enough for the quantised convs
                quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        # Per-channel weights (one scale per output filter); activations per tensor.
        quantize_static(str(prepared), str(out), _Feeds(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def quantize_export(out_dir: str | Path, calib: Calibration) -> dict[str, Any]:
    """int8 copies of an export directory's fp32 graphs (``*.int8.onnx``), added to its manifest."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    runner = OnnxStylizer(out, "fp32")
    feeds = _feeds(runner, calib)
    files = {}
    for role in runner.paths:
        files[role] = variant_name(role, "int8")
        quantize_graph(out / GRAPHS[role], out / files[role], feeds[role])
    manifest["variants"]["int8"] = files
    manifest["int8"] = {"method": "ONNX Runtime quantize_static, QDQ, per-channel int8 weights, uint8 activations "
                                  "(MinMax)", "calibration_pairs": len(calib.content),
                        "calibration_size": int(calib.content.shape[-1]), "calibration_skip": calib.skip}
    write_manifest(out, manifest)
    return manifest


def int8_weight_count(path: str | Path) -> int:
    """Elements of int8 weight tensors (initializers of two or more dimensions: not the per-channel zero points)
    in an ONNX graph; 0 for an fp32 graph."""
    import onnx
    from onnx import TensorProto

    graph = onnx.load(str(path)).graph
    return sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) > 1)


def relative_error(a: Tensor, b: Tensor) -> float:
    """mean |a - b| / mean |b|."""
    return float((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12))


__all__ = ["Calibration", "int8_weight_count", "quantize_export", "quantize_graph", "read_calibration",
           "relative_error"]
