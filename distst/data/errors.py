"""Errors in data a user gave (shard patterns, shards, image folders): one line and exit code 2 in the CLI."""

from __future__ import annotations

from ..errors import DiststError


class DataError(DiststError, ValueError):
    """Shards or images that cannot be used as given; the message says which and why."""
