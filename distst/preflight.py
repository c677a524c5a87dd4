"""Checks a job can start before any process is launched: what batch scripts run first (``distst check``)."""

from __future__ import annotations

from pathlib import Path

import webdataset as wds

from .config import Config
from .models import model_class


def problems(cfg: Config) -> list[str]:
    """Readable reasons the job would fail at start: missing shards or weight files, impossible sizes."""
    found: list[str] = []
    data = cfg.data
    for key, pattern in (("data.content", data.content), ("data.style", data.style),
                         ("data.eval_content", data.eval_content), ("data.eval_style", data.eval_style)):
        if pattern is None or pattern.startswith(("pipe:", "http:", "https:", "s3:", "gs:")):
            continue  # streamed from elsewhere: only the loader can tell
        missing = [url for url in wds.shardlists.expand_urls(pattern) if not Path(url.removeprefix("file:")).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            found.append(f"{key}: shard {missing[0]} does not exist{more}; build shards with `distst shards build` "
                         "or point the job at them (e.g. DISTST_CONTENT / DISTST_STYLE in batch scripts)")
    for key in ("vgg_weights", "decoder_weights", "transform_weights"):
        path = getattr(cfg.model, key)
        if path and not Path(path).is_file():
            found.append(f"model.{key}: {path} does not exist (distst never downloads weights; see README)")
    model = model_class(cfg.model.name)
    for key, size in (("data.crop", data.crop), ("data.eval_size", data.eval_size or data.crop)):
        if size % model.input_multiple or size < model.min_size:
            found.append(f"{key}={size}: {cfg.model.name} needs sizes of at least {model.min_size} that are "
                         f"multiples of {model.input_multiple}")
    return found
