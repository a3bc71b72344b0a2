"""Errors raised by media decoding and dataset preparation.

`MediaError` is a `ValueError` so that callers catching bad-input errors generically still work; every
message names the offending file and says how to fix the problem.
"""
from __future__ import annotations


class MediaError(ValueError):
    """A media file (audio/video) is missing, corrupt, empty, silent or otherwise unusable."""


class DatasetError(ValueError):
    """A prepared dataset directory is missing files or holds inconsistent data."""
