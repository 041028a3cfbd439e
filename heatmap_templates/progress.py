"""A tiny progress protocol so library code can report long work without printing.

The CLI passes a rich-based implementation; Python users may pass their own or nothing.
"""
from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress from long-running library calls."""

    def start(self, total: int | None, description: str) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """Progress sink that ignores everything (the library default)."""

    def start(self, total: int | None, description: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass
