"""Errors a user can act on.

The CLI prints any :class:`DistillError` as one line and exits with code 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class DistillError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""


class ConfigError(DistillError):
    """A config file or override is invalid; the message names every bad field."""


class DataError(DistillError):
    """An input data file is missing, empty, undecodable or holds an unknown label.

    Args:
        path: the offending file.
        reason: what is wrong and what to do about it.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ArtifactError(DistillError):
    """A stage's input artifact is missing, partial or fails its checksum.

    Args:
        path: the artifact directory or file.
        reason: what is wrong and what to do about it.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")
