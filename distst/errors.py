"""Errors a user can act on: the CLI prints each as one line (``distst CMD: error: ...``) and exits with its
``exit_code``; anything else is a bug and keeps its traceback.

This module imports nothing of distst, so every module can derive its errors from ``DiststError``. The
classes that belong to one subsystem stay defined there (``distst.weights.WeightsError``,
``distst.train.checkpoint.CheckpointError``, ...); the ones used everywhere (bad data included) live here.
"""

from __future__ import annotations


class DiststError(Exception):
    """Base of every error caused by input, saved state or settings rather than by a bug in distst."""

    #: The process exit code when the CLI catches this error (2: bad input, as argparse uses).
    exit_code: int = 2


class UserError(DiststError):
    """Raised by commands for bad input: printed as one line, exit code 2, no traceback."""


class ConfigError(DiststError, ValueError):
    """A config file or override is wrong; the message names the key and what would be valid."""


class DataError(DiststError, ValueError):
    """Shards or images that cannot be used as given (shard patterns, shards, image folders); the message says
    which and why."""
