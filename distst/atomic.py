"""Writes that a kill can never leave half done: write a sibling temporary file, then rename it over.

A rename within one directory is atomic on POSIX file systems (and on the shared file systems clusters use
for run directories), so readers see the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def _staging(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".tmp")


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = _staging(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, data: Any, indent: int = 2) -> Path:
    return write_text(path, json.dumps(data, indent=indent) + "\n")


def torch_save(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    tmp = _staging(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path
