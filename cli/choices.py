"""Options whose choices are a registry's names: help, completion and validation generated from the registry; and the
options every command that reads a data set or a brought model shares (--classes, --labels, --uncertain, --head,
--preprocessing, --intensity)."""
from __future__ import annotations

from typing import Any

import typer

from heatmap_templates.data.datasets import UNCERTAIN
from heatmap_templates.data.decode import INTENSITIES
from heatmap_templates.data.preprocess import PREPROCESSING
from heatmap_templates.model.heads import HEADS
from heatmap_templates.registry import Registry


def registry_option(default: Any, flag: str, registry: Registry, lead: str) -> Any:
    """A Typer option listing ``registry``'s entries in its help; an unknown value stops the command
    while its arguments are parsed, before any work, with the one-line error that names ``flag``."""

    def check(value: str | None) -> str | None:
        return value if value is None else registry.check(value)

    return typer.Option(default, flag, help=registry.help_text(lead), autocompletion=registry.names, callback=check)


def labels_option(recorded: bool = False) -> Any:
    """--labels: a multi-label model's finding columns of a CSV manifest (``recorded``: default the store's record)."""
    default = "the store's record, else " if recorded else ""
    return typer.Option(None, "--labels", help="Comma-separated finding columns of a CSV manifest, in the model's output order "
                                               "(1 positive, 0 negative, -1 uncertain, blank unknown; other columns ignored); "
                                               f"default: {default}the columns named like the model's findings. A model "
                                               "without hmt metadata takes them as its class names (--classes). Recorded.")


def uncertain_option(recorded: bool = False) -> Any:
    """--uncertain: the policy for uncertain (-1) findings of a multi-label data set."""
    default = "the store's record, else " if recorded else ""
    return registry_option(None, "--uncertain", UNCERTAIN, f"Uncertain findings (-1) (default: {default}the model's "
                                                             "training policy, else ignore; recorded)")


def classes_option() -> Any:
    """--classes: the class names of a model without hmt metadata, in its output order."""
    return typer.Option(None, "--classes", help="Comma-separated class names in output order, for a model without hmt "
                                                "metadata (default --labels).")


def preprocessing_option() -> Any:
    """--preprocessing: the input mode of a model without hmt metadata."""
    return registry_option(None, "--preprocessing", PREPROCESSING, "Input mode for a model without hmt metadata (default unit)")


def intensity_option() -> Any:
    """--intensity: how a model without hmt metadata saw integer pixels."""
    return registry_option(None, "--intensity", INTENSITIES, "Pixel scaling for a model without hmt metadata (default bits)")


def head_option() -> Any:
    """--head: the head kind of a model without hmt metadata, named instead of read from its output layer."""
    return registry_option(None, "--head", HEADS, "Head kind, instead of the one read from the output layer: a linear "
                                                  "output (logits) read as sigmoid or sigmoids is read through sigmoid "
                                                  "(recorded)")


def names(text: str | None) -> list[str] | None:
    """A comma-separated list of names (--classes, --labels), blanks dropped; None when not given."""
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]
