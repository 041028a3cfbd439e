"""Error types shared by every stage.

`HmtError` is a *user* error: the CLI prints its message on one line and exits with code 2,
never a traceback. Library users catch it like any other exception.
"""
from __future__ import annotations

from pathlib import Path


class HmtError(Exception):
    """A problem the user can fix (bad argument, bad file, missing input); exit code 2."""


class BadImageError(HmtError):
    """One input image cannot be used; runs skip it and report it at the end."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class BadFileError(HmtError):
    """A model, template or heatmap file cannot be used (wrong kind, corrupt, incompatible)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def one_line(error: BaseException, limit: int = 120) -> str:
    """An exception's message collapsed to one line of at most ``limit`` characters, for reasons and errors."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
