"""Rich progress bar that implements heatmap_templates.progress.Progress for the CLI."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgressBar
from rich.text import Text


class _RateColumn(ProgressColumn):
    """Items per second, e.g. '123.4 images/s'."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self._unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self._unit}/s" if speed else f"- {self._unit}/s")


class RichProgress:
    """Progress bar on stderr: count, rate, elapsed and remaining time.

    Shown only when stderr is a terminal, so redirected output and error messages stay clean.
    """

    def __init__(self, unit: str = "images") -> None:
        self._unit = unit
        self._bar: RichProgressBar | None = None
        self._task: TaskID | None = None

    def start(self, total: int | None, description: str) -> None:
        self.finish()
        if not sys.stderr.isatty():
            return
        self._bar = RichProgressBar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(self._unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def progress_bar(as_json: bool = False, unit: str = "images") -> RichProgress | None:
    """The bar a command shows: none when its output is JSON for a script (RichProgress itself stays
    silent when stderr is not a terminal, so a redirected error stays one line)."""
    return None if as_json else RichProgress(unit)
