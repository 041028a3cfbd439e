"""`hmt check`: discover and decode a whole data set, report counts and every file that would be skipped."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from heatmap_templates.data.datasets import check_dataset, load_dataset
from heatmap_templates.data.decode import DEFAULT_MAX_PIXELS
from heatmap_templates.errors import display_path
from hmt_cli.main import app
from hmt_cli.output import echo_skipped
from hmt_cli.progress import progress_bar


@app.command("check")
def check(
    data: Path = typer.Argument(..., help="Class-per-folder data set or CSV manifest (path,label[,split][,patient_id])."),
    strict: bool = typer.Option(False, "--strict", help="Stop with exit code 2 at the first bad file or row."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Refuse images whose declared size is larger."),
    classes: str | None = typer.Option(None, "--classes", help="Comma-separated classes to use, in this order."),
    patient_regex: str | None = typer.Option(None, "--patient-regex", help="Regex with one group: the patient id in file names."),
) -> None:
    """Check that every image of a data set can be read; list skipped files with reasons.

    Example: hmt check data/cxr4 --strict
    """
    class_list = [name for name in classes.split(",")] if classes else None
    dataset = load_dataset(data, classes=class_list, patient_regex=patient_regex, strict=strict)
    report = check_dataset(dataset, max_pixels=max_pixels, strict=strict, progress=progress_bar(as_json))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    usable = sum(report.images_by_class.values())
    typer.echo(f"data set: {display_path(dataset.root)} ({dataset.source}), {len(dataset.class_names)} classes, {usable} usable images")
    width = max(len(name) for name in dataset.class_names)
    typer.echo("images per class:")
    for name, count in report.images_by_class.items():
        typer.echo(f"  {name:<{width}}  {count}")
    typer.echo("images per format:")
    for name, count in report.images_by_format.items():
        typer.echo(f"  {name:<{width}}  {count}")
    if report.problems:
        echo_skipped(report.problems)
    else:
        typer.echo("skipped 0 files")
