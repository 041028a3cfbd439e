"""The `hmt` command: a thin Typer layer over the heatmap_templates library.

Each command lives in its own module under cli/ and registers itself on `app`; this module
owns the shared behaviour: --version, and turning user errors into one line and exit code 2.
"""
from __future__ import annotations

import os
import sys

import typer

from heatmap_templates import __version__
from heatmap_templates.errors import HmtError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the terminal

app = typer.Typer(
    name="hmt",
    help=(
        "Heatmap-template biomarker analysis for chest X-rays.\n\n"
        "Example: hmt synth data/ && hmt train data/ && hmt build-templates --class covid"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"hmt {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Heatmap-template biomarker analysis for chest X-rays."""


def _register_commands() -> None:
    """Import the command modules; each adds its commands to `app`."""
    from hmt_cli import commands  # noqa: F401  (import registers the commands)


def run() -> None:
    """Console-script entry point: run the app, mapping user errors to one line and exit code 2.

    Typer's standalone mode already turns usage errors into exit code 2; library user errors
    (`HmtError`) pass through it and are caught here.
    """
    _register_commands()
    try:
        app()
    except HmtError as error:
        typer.echo(f"hmt: error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    # Run through the package module so commands register on the same `app` object as `hmt`.
    from hmt_cli.main import run as package_run

    package_run()
