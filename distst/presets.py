"""The tiny job: a 1/8-width model on small crops of the bundled sample shards, a few steps, no tracking.

One definition for the tests (``tests/helpers.py``), the benches (``distst bench faults``, ``distst bench tune``)
and anyone who wants a run that finishes in seconds on a CPU. Callers change what they need through ``extra``
(dotted keys) and turn the settings into ``key=value`` overrides with ``as_overrides``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def tiny_settings(shards: Path | str | None = None, *, steps: int = 4, crop: int = 32,
                  **extra: object) -> dict[str, object]:
    """The tiny job's settings; ``shards``: a folder with ``content-``/``style-{000000..000001}.tar``
    (default: the bundled sample shards). ``extra``: further settings, ``__`` standing for ``.``."""
    if shards is None:
        from .data.bundled import sample_location

        shards = sample_location()
    settings: dict[str, object] = {
        "model.width": 0.125,
        "data.content": f"{shards}/content-{{000000..000001}}.tar",
        "data.style": f"{shards}/style-{{000000..000001}}.tar",
        "data.crop": crop, "data.batch_size": 2, "data.workers": 0, "data.shuffle_buffer": 16, "data.eval_pairs": 2,
        "train.steps": steps, "tracking.backend": "none",
    }
    settings.update({k.replace("__", "."): v for k, v in extra.items()})
    return settings


def as_overrides(settings: Mapping[str, object]) -> list[str]:
    """``key=value`` overrides, as the CLI takes them."""
    return [f"{k}={v}" for k, v in settings.items()]
