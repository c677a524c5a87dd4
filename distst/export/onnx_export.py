"""ONNX graphs of a distst model file, with dynamic height and width, and the manifest an app reads.

Exporter: ``torch.onnx.export`` with ``dynamo=True`` (torch.export-based; torch's default and supported path,
the TorchScript exporter is deprecated). It exports these models for any input size (reflection pads, ceil-mode
pools, nearest upsampling, the attention's reshapes), checked against torch at sizes other than the example's.
Its cost is time (several seconds per trace even for tiny models), so one module is traced and the three graphs
are cut out of it (see ``graphs.CombinedGraph``).

The batch is fixed at 1: an app stylises one image at a time, and with a symbolic batch the exporter reads
the batch size of the style side's reshapes from the content input, which the style graph does not have.

A translation model (its record's ``inputs`` is "content": CycleGAN) exports one graph, ``forward.onnx``
(content -> image), and its manifest says ``"inputs": "content"``; the source may be a model built from its
published weight files (``export_model(model, ...)``) as well as a model file.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from .. import registry
from ..errors import DiststError
from ..models import DiststModel, StyleTransferModel, param_counts
from ..models.io import load_model
from .graphs import CombinedGraph, ContentGraph, StyleCache, style_cache

MIN_OPSET = 18  # the dynamo exporter's lowest; asked for less, it silently keeps 18
DEFAULT_OPSET = 18
MANIFEST = "manifest.json"
#: Graph roles and their file names in an export directory (int8 variants add ``.int8`` before ``.onnx``).
GRAPHS = {"forward": "forward.onnx", "style": "style.onnx", "stylize": "stylize_cached.onnx"}
VALUE_RANGE = (0.0, 1.0)


class ExportError(DiststError, ValueError):
    """A model or option that cannot be exported (printed as one line by the CLI)."""


def max_opset() -> int:
    import onnx

    return int(onnx.defs.onnx_opset_version())


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= max_opset():
        import onnx

        raise ExportError(f"--opset {opset} is not supported: the dynamo ONNX exporter writes opsets "
                          f"{MIN_OPSET}..{max_opset()} (onnx {onnx.__version__})")


def variant_name(role: str, variant: str) -> str:
    name = GRAPHS[role]
    return name if variant == "fp32" else name.replace(".onnx", f".{variant}.onnx")


def _examples(model: DiststModel) -> tuple[torch.Tensor, torch.Tensor]:
    # Content and style of different, non-square sizes: the exporter merges axes whose example sizes agree.
    m = max(model.input_multiple, 8)
    base = max(model.min_size, 2 * m)
    return torch.rand(1, 3, base + 2 * m, base + m), torch.rand(1, 3, base + m, base)


def _image_dims(prefix: str, multiple: int, min_size: int) -> dict[int, Any]:
    if multiple == 1:
        return {2: torch.export.Dim(f"{prefix}height", min=min_size), 3: torch.export.Dim(f"{prefix}width", min=min_size)}
    low = -(-min_size // multiple)  # image sides must be multiples of the model's input multiple (SANet: 16)
    return {2: multiple * torch.export.Dim(f"{prefix}height_div{multiple}", min=low),
            3: multiple * torch.export.Dim(f"{prefix}width_div{multiple}", min=low)}


def _to_onnx(module: torch.nn.Module, examples: tuple[torch.Tensor, ...], names: tuple[list[str], list[str]],
             multiple: int, min_size: int, path: Path, opset: int) -> Any:
    """``module`` (image inputs ``names[0]``, sides multiples of ``multiple``) traced once to ``path``; the
    written ``onnx.ModelProto``."""
    import onnx

    dims = tuple(_image_dims("" if name == "content" else f"{name}_", multiple, min_size) for name in names[0])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names and deprecations; results are tested
        torch.onnx.export(module.eval(), examples, str(path), input_names=names[0], output_names=names[1],
                          dynamic_shapes=dims, opset_version=opset, external_data=False, dynamo=True, verbose=False)
    return onnx.load(str(path))


def trace_to_onnx(model: StyleTransferModel, cache: StyleCache, path: Path, opset: int) -> Any:
    """The combined graph (content, style -> image, cached...) as an ``onnx.ModelProto`` written to ``path``."""
    return _to_onnx(CombinedGraph(model, cache), _examples(model), (["content", "style"], ["image", *cache.names]),
                    model.input_multiple, model.min_size, path, opset)


def _cut(combined: Any, inputs: list[str], outputs: list[str], path: Path) -> Path:
    import onnx

    graph = onnx.utils.Extractor(combined).extract_model(inputs, outputs)
    for value in graph.graph.input:  # readable names for cut inputs (the exporter's are symbolic expressions)
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param and value.name not in ("content", "style"):
                dim.dim_param = f"{value.name}_{'height' if axis == 2 else 'width'}"
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


def export_model(source: str | Path | DiststModel, out_dir: str | Path, *, opset: int = DEFAULT_OPSET,
                 source_name: str | None = None) -> dict[str, Any]:
    """The ONNX graphs of a distst model file (or of a model built from its weight files, named ``source_name``
    in the manifest) in ``out_dir`` and its ``manifest.json``; returns the manifest."""
    check_opset(opset)
    if isinstance(source, DiststModel):
        model, section, label = source, source.cfg, source_name or source.name
    else:
        (model, section), label = load_model(source), str(source)
    translates = registry.model_record(model.name).inputs == "content"
    if not (translates or isinstance(model, StyleTransferModel)):
        raise ExportError(f"{label}: {model.name} is neither an encoder/transform/decoder model nor a translation "
                          "model (a content image in, an image out); only those export")
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Where the weights came from is not part of the export (as in a model file): the record names those keys.
    record = section.model_dump(mode="json", exclude={"init_from", *registry.model_record(section.name).weight_keys})
    if translates:
        import onnx

        path = out / GRAPHS["forward"]
        _to_onnx(ContentGraph(model), _examples(model)[:1], (["content"], ["image"]), model.input_multiple,
                 model.min_size, path, opset)
        onnx.checker.check_model(str(path))
        manifest = build_manifest(model, record, None, label, opset)
        write_manifest(out, manifest)
        return manifest
    assert isinstance(model, StyleTransferModel)  # for the type checker: refused above otherwise
    cache = style_cache(model)
    combined_path = out / "combined.onnx"
    combined = trace_to_onnx(model, cache, combined_path, opset)
    names = list(cache.names)
    _cut(combined, ["content", "style"], ["image"], out / GRAPHS["forward"])
    _cut(combined, ["style"], names, out / GRAPHS["style"])
    _cut(combined, ["content", *names], ["image"], out / GRAPHS["stylize"])
    combined_path.unlink()
    manifest = build_manifest(model, record, cache, label, opset)
    write_manifest(out, manifest)
    return manifest


def build_manifest(model: DiststModel, section: dict[str, Any], cache: StyleCache | None, source: str | Path,
                   opset: int) -> dict[str, Any]:
    """The manifest of a style-transfer export (``cache``: what its style graph caches), or of a translation's
    one forward graph (``cache`` None)."""
    image = {"shape": [1, 3, "height", "width"], "dtype": "float32", "range": list(VALUE_RANGE)}
    common = {
        "format": "distst-onnx/1",
        "source": str(source),
        "model": {**section, "plan": model.plan},
        "inputs": registry.model_record(model.name).inputs,
        "params": param_counts(model),
        "opset": opset,
        "batch": 1,
        "input_multiple": model.input_multiple,
        "min_size": model.min_size,
        "input_constraints": f"height and width at least {model.min_size} and multiples of {model.input_multiple}",
    }
    if cache is None:
        output = {"name": "image", **image, "range": "about [0, 1], unclamped: clamp before saving; the content's size"}
        return {**common, "graphs": {"forward": {"inputs": [{"name": "content", **image}], "outputs": [output]}},
                "variants": {"fp32": {"forward": GRAPHS["forward"]}}}
    style = {**image, "shape": [1, 3, "style_height", "style_width"]}
    cached = [{"name": name, "dtype": "float32",
               "shape": [1, "C", 1, 1] if cache.stats else [1, "C", f"{name}_height", f"{name}_width"]}
              for name in cache.names]
    output = {"name": "image", "shape": [1, 3, "H'", "W'"], "dtype": "float32",
              "range": "about [0, 1], unclamped: clamp before saving; H', W' round H, W up to multiples of 8 "
                       "(ceil-mode pooling), crop to the content's size"}
    return {
        **common,
        "style_cache": {"names": list(cache.names), "taps": list(cache.taps),
                        "kind": cache.kind or ("per-channel mean and std (unbiased variance + 1e-5, root)"
                                               if cache.stats else "encoder features")},
        "graphs": {
            "forward": {"inputs": [{"name": "content", **image}, {"name": "style", **style}], "outputs": [output]},
            "style": {"inputs": [{"name": "style", **style}], "outputs": cached},
            "stylize": {"inputs": [{"name": "content", **image}, *cached], "outputs": [output]},
        },
        "variants": {"fp32": dict(GRAPHS)},
    }


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise ExportError(f"{path} does not exist: not a distst export directory (run distst export first)")
    return json.loads(path.read_text())
