"""Errors in data a user gave: ``DataError`` lives in the one errors module (``distst.errors``)."""

from ..errors import DataError

__all__ = ["DataError"]
