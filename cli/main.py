"""The `hmt` command: a thin Typer layer over the heatmap_templates library.

Each command lives in its own module under cli/ and registers itself on `app`; this module
owns the shared behaviour: --version, and turning user errors into one line and exit code 2.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable

import typer

from heatmap_templates import __version__
from heatmap_templates.errors import HmtError, display_path
from heatmap_templates.files import fault_reason

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's C++ start-up chatter off the terminal

# Library parameters whose flag is not the parameter's name with "_" -> "-" (the same flag in every command that has
# one); user errors name the parameters of the library call, run() names them by these flags.
PARAMETER_FLAGS = {
    "unsafe": "--unsafe-load",  # model_file.load_model
    "gallery_size": "--gallery",  # present.report.write_report
    "shortcuts": "--shortcut",  # synth.synthesize_dataset (a mapping; the CLI repeats CLASS:FRACTION)
}

# Commands whose work runs a Keras model; TensorFlow is imported (quietly) only for these.
TENSORFLOW_COMMANDS = frozenset({"train", "evaluate", "heatmaps", "build-templates", "compare", "evaluate-templates", "demo"})

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


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 muted: its C++ runtime prints CUDA-probe lines
    before any log level applies, which would bury hmt's own one-line messages."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow

            tensorflow.config.list_logical_devices()  # device initialisation logs here too
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def run() -> None:
    """Console-script entry point: run the app, mapping user errors to one line and exit code 2.

    Typer's standalone mode already turns usage errors into exit code 2; library user errors
    (`HmtError`) pass through it and are caught here.
    """
    _register_commands()
    builds_from_store_only = sys.argv[1:2] == ["build-templates"] and "--heatmaps" in sys.argv
    if TENSORFLOW_COMMANDS.intersection(sys.argv[1:2]) and "--help" not in sys.argv and not builds_from_store_only:
        _import_tensorflow_quietly()
    try:
        app()
    except HmtError as error:  # library parameters named by this command's flags (errors.py, PARAMETER_FLAGS)
        typer.echo(f"hmt: error: {error.render(parameter_flags(error.parameters, sys.argv[1:2]))}", err=True)
        sys.exit(2)
    except OSError as error:  # an environment fault that no library call turned into a BadFileError
        where = f"{display_path(error.filename)}: " if error.filename else ""
        typer.echo(f"hmt: error: {where}{fault_reason(error)}", err=True)
        sys.exit(2)


def parameter_flags(parameters: Iterable[str], command: list[str]) -> dict[str, str]:
    """The flags of the running ``command`` that stand for library ``parameters``: ``--name-with-dashes``, or the
    flag PARAMETER_FLAGS gives; a parameter that command has no flag for is left out (its message keeps the library's form)."""
    flags = _command_flags(command)
    wanted = {parameter: PARAMETER_FLAGS.get(parameter, "--" + parameter.replace("_", "-")) for parameter in parameters}
    return {parameter: flag for parameter, flag in wanted.items() if flag in flags}


def _command_flags(command: list[str]) -> set[str]:
    """The option flags of the command being run, so a library parameter is named by its flag only where it has one."""
    group = typer.main.get_command(app)
    found = group.commands.get(command[0]) if command and hasattr(group, "commands") else None
    return {flag for parameter in getattr(found, "params", []) for flag in getattr(parameter, "opts", [])}


if __name__ == "__main__":
    # Run through the package module so commands register on the same `app` object as `hmt`.
    from hmt_cli.main import run as package_run

    package_run()
