"""Data layer: WebDataset shards of content photos and style paintings, and their streaming loader.

``distst.data.shards`` builds shards (``distst shards build``), ``distst.data.manifest`` verifies them,
``distst.data.sample`` makes the bundled sample set (``sample_shards/``, found by ``distst.data.bundled``), and
``distst.data.loader`` streams them.
The loader (torch, webdataset) is imported on first use, so that the CLI and the light submodules
(``errors``, ``bundled``) start fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainStream", "eval_pairs", "image_batches"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
