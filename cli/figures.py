"""`hmt figures`: the paper figures of a templates file (PDF, SVG, PNG)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from heatmap_templates.present.figures import (
    DEFAULT_CMAP,
    DEFAULT_DPI,
    DEFAULT_EIGEN_COMPONENTS,
    DEFAULT_WIDTH,
    FIGURE_FORMATS,
    parse_formats,
    template_figures,
)
from heatmap_templates.templates.build import DEFAULT_OUT
from hmt_cli.main import app
from hmt_cli.progress import progress_bar


@app.command("figures")
def figures_command(
    templates: Path = typer.Argument(DEFAULT_OUT, help="Templates file from `hmt build-templates`."),
    out: Path = typer.Option(Path("templates_out/figures"), "--out", "-o", help="Folder for the figure files: new, empty, or earlier figures (replaced; those in formats not drawn now are kept)."),
    formats: str = typer.Option(",".join(FIGURE_FORMATS), "--format", help="Comma-separated formats: pdf, svg, png."),
    dpi: int = typer.Option(DEFAULT_DPI, "--dpi", help="Resolution of PNG files and of images inside PDF/SVG."),
    cmap: str = typer.Option(DEFAULT_CMAP, "--cmap", help="Colour map of the heatmaps: cividis (default) or viridis are colour-blind safe; jet to match older papers."),
    width: str = typer.Option(DEFAULT_WIDTH, "--width", help="single (3.5 in, one journal column) or double (7.2 in, page width)."),
    components: int = typer.Option(DEFAULT_EIGEN_COMPONENTS, "--components", help="Eigen-heatmaps shown per class."),
    as_json: bool = typer.Option(False, "--json", help="Print the files written, colour scales and notes as JSON."),
) -> None:
    """Draw the templates over the reference chest (one shared colour scale), their standard deviations,
    eigen-heatmaps, template similarity, leave-one-out consistency, and the classifier's confusion matrix
    and training curves when the model's record is beside it. Identical input gives identical files.

    Example: hmt figures templates_out/templates.h5 --out figures/ --format pdf,png --width single
    """
    progress = progress_bar(as_json, unit="figures")
    summary = template_figures(templates, out, formats=parse_formats(formats), dpi=dpi, cmap=cmap, width=width,
                               components=components, progress=progress)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    typer.echo(f"wrote {len(summary.files)} files to {out}:")
    for path in summary.files:
        typer.echo(f"  {path}")
    for note in summary.notes:
        typer.echo(f"note: {note}")
