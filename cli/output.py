"""Output pieces shared by several commands."""
from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

import typer

from heatmap_templates.data.datasets import Problem


def echo_skipped(problems: Sequence[Problem]) -> None:
    """The end-of-run report of skipped files: a count, then one `path: reason` line each."""
    if not problems:
        return
    typer.echo(f"skipped {len(problems)} file{'s' if len(problems) != 1 else ''}:")
    for problem in problems:
        typer.echo(f"  {problem.path}: {problem.reason}")


def interval_text(value: float | None, ci: Sequence | None, digits: int = 3) -> str:
    """A number with its 95 % interval, e.g. ``0.412 [0.380, 0.447]``; ``-`` when undefined, the number alone without
    an interval."""
    if value is None:
        return "-"
    if not ci or ci[0] is None or ci[1] is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def command_line() -> str:
    """The command as the user typed it (shell-quoted), recorded in the files hmt writes."""
    return "hmt " + " ".join(shlex.quote(argument) for argument in sys.argv[1:])


SCHEDULER_HELP = ("Run on Dask: local:N (N worker processes here) or a scheduler address such as tcp://host:8786 "
                  "(docs/cluster.md). The result equals a run in this process.")
