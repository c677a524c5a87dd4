"""Where the bundled sample shards are: ``sample_location()``, and the ``sample:`` prefix that names them.

The sample set (about 1.3 MB: 24 content photos, 12 style images) is package data, ``distst/data/sample_shards``,
found through ``importlib.resources``. That is the one way to find it: the same in a source checkout, an
editable install and a wheel, and from any working directory. Jobs and config defaults name its files as
``sample:content-{000000..000001}.tar``; ``expand_pattern`` (the one place shard patterns become URLs, for the
loader, the preflight and the benches) turns the prefix into this folder. A relative ``shards/sample/...``
(resolved against the working directory) or a path computed from ``__file__`` (which a wheel does not keep
beside the repository) broke as soon as distst ran from elsewhere or was installed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import DataError

PREFIX = "sample:"
CONTENT = f"{PREFIX}content-{{000000..000001}}.tar"
STYLE = f"{PREFIX}style-{{000000..000001}}.tar"


def sample_location() -> Path:
    """The folder of the bundled sample shards (``content-*.tar``, ``style-*.tar``, manifests, README)."""
    folder = resources.files("distst.data") / "sample_shards"
    path = Path(str(folder))
    if not (path / "content.json").is_file():
        raise DataError(f"the bundled sample shards are missing from {path}: reinstall distst (pip install distst), "
                        "or rebuild them with 'distst shards sample --out distst/data/sample_shards' in a checkout")
    return path


def resolve_sample(pattern: str) -> str:
    """``sample:NAME`` -> the bundled folder's ``NAME``; any other pattern unchanged."""
    if pattern.startswith(PREFIX):
        return f"{sample_location()}/{pattern[len(PREFIX):]}"
    return pattern
