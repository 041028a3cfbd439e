"""Options whose choices are a registry's names: help, completion and validation generated from the registry."""
from __future__ import annotations

from typing import Any

import typer

from heatmap_templates.registry import Registry


def registry_option(default: Any, flag: str, registry: Registry, lead: str) -> Any:
    """A Typer option listing ``registry``'s entries in its help; an unknown value stops the command
    while its arguments are parsed, before any work, with the one-line error that names ``flag``."""

    def check(value: str | None) -> str | None:
        return value if value is None else registry.check(value)

    return typer.Option(default, flag, help=registry.help_text(lead), autocompletion=registry.names, callback=check)
