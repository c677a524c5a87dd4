"""Running exported graphs with ONNX Runtime: the whole forward and the cached-style pair, as an app would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .onnx_export import GRAPHS, MANIFEST, ExportError, read_manifest, variant_name


def session_options(threads: int | None = None) -> Any:
    """``threads`` fixes intra-op threads (and one inter-op thread). No memory pattern: the graphs take any H x W,
    so ORT's planned pattern is rebuilt per shape and roughly doubles a session's memory, at no measured speed
    gain (dense AdaIN at 512 px: +0.6 GiB per session with it, +0.3 without; 1.49 s vs 1.47 s)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.enable_mem_pattern = False
    return options


def session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session (``session_options``), every graph optimisation on."""
    import onnxruntime as ort

    options = session_options(threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
        raise ExportError(f"{path} is not a loadable ONNX graph: {str(err).splitlines()[0]}") from None


def locate(path: str | Path) -> tuple[Path, str, dict[str, Any] | None]:
    """(export dir, variant, manifest) of an ``.onnx`` file; the manifest is None for a foreign graph."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX file {path} does not exist")
    manifest_path = path.parent / MANIFEST
    if not manifest_path.is_file():
        return path.parent, "fp32", None
    manifest = read_manifest(path.parent)
    for variant, files in manifest.get("variants", {}).items():
        if path.name in files.values():
            return path.parent, variant, manifest
    return path.parent, "fp32", None


class OnnxStylizer:
    """The graphs of one export variant (``fp32``, ``int8``) loaded in ONNX Runtime sessions."""

    def __init__(self, out_dir: str | Path, variant: str = "fp32", threads: int | None = None) -> None:
        self.dir = Path(out_dir)
        self.manifest = read_manifest(self.dir)
        files = self.manifest["variants"].get(variant)
        if files is None:
            raise ExportError(f"{self.dir} has no {variant} graphs; variants: {', '.join(self.manifest['variants'])}")
        self.variant = variant
        #: Whether the graphs take a style image (an export before ``inputs`` was recorded: style transfer).
        self.takes_style = self.manifest.get("inputs", "content_style") == "content_style"
        self.paths = {role: self.dir / name for role, name in files.items()}
        self.sessions = {role: session(p, threads) for role, p in self.paths.items()}

    @classmethod
    def from_file(cls, path: str | Path, threads: int | None = None) -> OnnxStylizer:
        out_dir, variant, manifest = locate(path)
        if manifest is None:
            raise ExportError(f"{path} has no distst {MANIFEST} beside it (export it with distst export)")
        return cls(out_dir, variant, threads)

    def forward(self, content: Tensor, style: Tensor | None = None) -> Tensor:
        """The forward graph: content (and style, for a style-transfer export) -> image."""
        feeds = {"content": _np(content)} if style is None else {"content": _np(content), "style": _np(style)}
        return torch.from_numpy(self.sessions["forward"].run(None, feeds)[0])

    def style_inputs(self, style: Tensor) -> dict[str, np.ndarray]:
        names = self.manifest["style_cache"]["names"]
        return dict(zip(names, self.sessions["style"].run(None, {"style": _np(style)}), strict=True))

    def stylize_cached(self, content: Tensor, cached: dict[str, np.ndarray]) -> Tensor:
        return torch.from_numpy(self.sessions["stylize"].run(None, {"content": _np(content), **cached})[0])

    def file_bytes(self, role: str = "forward") -> int:
        return self.paths[role].stat().st_size


def profile_by_operator(path: str | Path, feeds: dict[str, np.ndarray], threads: int | None = None,
                        runs: int = 3) -> dict[str, float]:
    """Mean ms per run spent in each operator type (ONNX Runtime's profiler, kernel times), largest first.
    One warm-up run first, left out of the means."""
    import json
    import tempfile

    import onnxruntime as ort

    options = session_options(threads)
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, list[float]] = {}
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            per_op.setdefault(event["args"]["op_name"], []).append(event["dur"] / 1000)
    # Each op type's events come in run order, the same count per run: drop the warm-up run's share.
    totals = {op: sum(times[len(times) // (runs + 1):]) / runs for op, times in per_op.items()}
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().float().contiguous().numpy()


__all__ = ["GRAPHS", "OnnxStylizer", "locate", "profile_by_operator", "session", "session_options", "variant_name"]
