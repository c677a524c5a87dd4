"""Shipping a model: ONNX graphs (whole forward and the cached-style pair), int8, and ONNX Runtime sessions."""

from .onnx_export import GRAPHS, MANIFEST, ExportError, export_model, read_manifest

__all__ = ["GRAPHS", "MANIFEST", "ExportError", "export_model", "read_manifest"]
