"""`hmt report`: a self-contained HTML report of a study that opens from disk in any browser."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from heatmap_templates.analysis.similarity import DEFAULT_SIMILARITY, SIMILARITIES
from heatmap_templates.present.figures import DEFAULT_CMAP
from heatmap_templates.present.report import DEFAULT_GALLERY_SIZE, write_report
from heatmap_templates.templates.build import DEFAULT_OUT
from hmt_cli.choices import labels_option, names, registry_option, uncertain_option
from hmt_cli.main import app
from hmt_cli.progress import progress_bar


@app.command("report")
def report_command(
    templates: Path = typer.Argument(DEFAULT_OUT, help="Templates file from `hmt build-templates`."),
    out: Path = typer.Option(Path("templates_out/report"), "--out", "-o", help="Folder of the report (replaced when it holds an earlier report)."),
    heatmaps: Path | None = typer.Option(None, "--heatmaps", help="Heatmap store the templates were built from (default: the one the file records)."),
    data: Path | None = typer.Option(None, "--data", help="Labelled image folder or CSV manifest: evaluate the model and the templates on it for the overview (needs the model)."),
    labels: str | None = labels_option(recorded=True),
    uncertain: str | None = uncertain_option(recorded=True),
    single_file: bool = typer.Option(False, "--single-file", help="Embed every image in index.html: one file to send."),
    gallery: int = typer.Option(DEFAULT_GALLERY_SIZE, "--gallery", min=0, help="Thumbnails per gallery (typical, atypical, misclassified) and class."),
    similarity: str = registry_option(DEFAULT_SIMILARITY, "--similarity", SIMILARITIES, "Similarity of an image's map to a template"),
    cmap: str = typer.Option(DEFAULT_CMAP, "--cmap", help="Colour map of the heatmaps (cividis and viridis are colour-blind safe)."),
    pseudonymise: bool = typer.Option(False, "--pseudonymise", help="Replace image file names by salted hashes (SHA-256 of the salt and the relative path, 12 hex digits) and leave the model path out; text burned into the images stays visible."),
    salt: str | None = typer.Option(None, "--salt", help="Salt of --pseudonymise's hashes (the same salt gives the same names; default: drawn for this report). Never written into the report."),
    as_json: bool = typer.Option(False, "--json", help="Print the files written and the page weight as JSON."),
) -> None:
    """Write a report to browse and share: overview and classifier metrics, templates, strategies, galleries of the most
    typical and atypical members and of misclassified images (click to enlarge), sanity, deletion and localisation
    results when the templates file holds them, and a sortable, filterable table of every image (also as CSV).
    It opens from disk in any browser: no server, nothing fetched from the network. Paths are shown relative to the
    data folder and other files by name, never this machine's absolute paths.

    Example: hmt report templates_out/templates.h5 --out templates_out/report --single-file
    """
    summary = write_report(templates, out, heatmaps=heatmaps, data=data, single_file=single_file, gallery_size=gallery,
                           similarity=similarity, cmap=cmap, progress=progress_bar(as_json), labels=names(labels),
                           uncertain=uncertain, pseudonymise=pseudonymise, salt=salt)
    for warning in summary.warnings:  # on stderr, also beside --json
        typer.echo(f"hmt: warning: {warning}", err=True)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    typer.echo(f"wrote {summary.index} ({summary.images} images, {summary.thumbnails} thumbnails; "
               f"page {summary.page_bytes / 1024:.0f} KiB, {summary.total_bytes / 1024:.0f} KiB in all)")
    for note in summary.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"open it in a browser: file://{summary.index.resolve()}")
