"""`hmt inspect` (what is inside an hmt HDF5 file) and `hmt merge-templates`."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import typer

from heatmap_templates.errors import HmtError
from heatmap_templates.store import HEATMAPS, file_kind, open_heatmaps
from heatmap_templates.store.hdf5 import jsonable
from heatmap_templates.templates.build import merge_template_files
from heatmap_templates.templates.members import class_view
from heatmap_templates.templates.templates_file import read_strategies, read_templates
from hmt_cli.main import app
from hmt_cli.output import command_line
from hmt_cli.progress import progress_bar


def describe(path: str | Path) -> dict[str, Any]:
    """A JSON-serialisable summary of an hmt file (what `hmt inspect` prints)."""
    path = Path(path)
    kind = file_kind(path)
    if kind == HEATMAPS:
        reader = open_heatmaps(path)
        names = reader.class_names
        per_class = {}
        for index, name in enumerate(names):  # per finding for a multi-label store
            is_class, predicted, correct = class_view(reader.labels, reader.predicted, reader.correct, index)
            per_class[name] = {"images": int(is_class.sum()), "correct": int((is_class & correct).sum()), "predicted": int(predicted.sum())}
        shapes = {}
        if len(reader):
            sample = next(reader.iter_batches(1))
            shapes = {"image": list(sample.images.shape[1:]), "raw": list(sample.raw.shape[1:])}
        return {
            "path": str(path), "kind": kind.name, "attrs": _public_attrs(reader.attrs), "settings": reader.settings.to_dict(), "images": len(reader),
            "correct": int(np.asarray(reader.correct).reshape(len(reader), -1).all(axis=1).sum()),  # every finding right
            "unknown_label": int((np.asarray(reader.labels).reshape(len(reader), -1) < 0).any(axis=1).sum()), "classes": per_class,
            "shapes": shapes, "pending_shards": reader.pending_shards,
        }
    data = read_templates(path)
    classes = {}
    for name, template in data.templates.items():
        loo = template.loo_correlations
        classes[name] = {
            "count": template.count,
            "shape": list(np.shape(template.mean)),
            "median": template.median is not None,
            "eigen_components": int(len(template.components)),
            "explained_variance": [round(float(v), 4) for v in template.explained_variance_ratio],
            "band_mean_width": float(np.mean(template.band_high - template.band_low)),
            "mean_pairwise_correlation": template.mean_pairwise_correlation,
            "loo_method": template.loo_method,
            "loo_percentiles": {str(q): float(np.percentile(loo, q)) for q in (5, 25, 50, 75, 95)} if len(loo) else None,
        }
    return {
        "path": str(path), "kind": kind.name, "attrs": _public_attrs(data.attrs), "settings": data.settings.to_dict(), "classes": classes,
        "reference": list(data.reference_image.shape) if data.reference_image is not None else None,
        "similarity": {"classes": data.similarity_classes, "matrix": np.round(data.similarity, 4).tolist()},
    }


def _public_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Root attributes except the settings JSON (shown parsed instead)."""
    return {key: jsonable(value) for key, value in attrs.items() if key != "settings"}


def _print_settings(summary: dict[str, Any]) -> None:
    attrs = summary["attrs"]
    typer.echo(f"{summary['path']}: {summary['kind']} (schema {attrs.get('schema_version')}, hmt {attrs.get('hmt_version')}, created {attrs.get('created')})")
    if attrs.get("command"):
        typer.echo(f"command: {attrs['command']}")
    typer.echo("settings:")
    for key, value in summary["settings"].items():
        typer.echo(f"  {key}: {json.dumps(value)}")


def _print_heatmaps(summary: dict[str, Any]) -> None:
    typer.echo(f"images: {summary['images']} ({summary['correct']} correctly classified, {summary['unknown_label']} without a label)")
    if summary["pending_shards"]:
        typer.echo(f"not finalised: {summary['pending_shards']} batch shard(s) pending (rerun the heatmaps command to finish)")
    if summary["shapes"]:
        typer.echo("shapes per image: " + ", ".join(f"{name} {tuple(shape)}" for name, shape in summary["shapes"].items()))
    typer.echo("per class (true label / correct / predicted):")
    for name, counts in summary["classes"].items():
        typer.echo(f"  {name}: {counts['images']} / {counts['correct']} / {counts['predicted']}")


def _print_templates(summary: dict[str, Any]) -> None:
    if summary["reference"]:
        typer.echo(f"reference image: {tuple(summary['reference'])}")
    if not summary["classes"]:
        typer.echo("no class templates")
    for name, info in summary["classes"].items():
        pairwise = info["mean_pairwise_correlation"]
        typer.echo(f"class {name}: {info['count']} members, template {tuple(info['shape'])}, median {'yes' if info['median'] else 'no'}")
        typer.echo(f"  eigen-heatmaps: {info['eigen_components']}, explained variance {info['explained_variance']}")
        typer.echo(f"  mean pairwise correlation: {'n/a' if pairwise is None else f'{pairwise:.3f}'}; bootstrap band mean width {info['band_mean_width']:.4f}")
        if info["loo_percentiles"]:
            spread = ", ".join(f"p{q} {v:.3f}" for q, v in info["loo_percentiles"].items())
            typer.echo(f"  leave-one-out correlation: {spread} ({info['loo_method']})")
        else:
            typer.echo(f"  leave-one-out correlation: {info['loo_method']}")
    similarity = summary["similarity"]
    if len(similarity["classes"]) > 1:
        typer.echo("template similarity (Pearson):")
        width = max(len(name) for name in similarity["classes"])
        for name, row in zip(similarity["classes"], similarity["matrix"], strict=True):
            typer.echo(f"  {name:<{width}}  " + "  ".join(f"{value:+.3f}" for value in row))


@app.command("inspect")
def inspect_file(
    path: Path = typer.Argument(..., help="A templates file or a heatmap store (.h5)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Show what is inside an hmt HDF5 file: settings, classes, counts, shapes, consistency.

    Example: hmt inspect templates_out/templates.h5
    """
    summary = describe(path)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_settings(summary)
    if summary["kind"] == HEATMAPS.name:
        _print_heatmaps(summary)
    else:
        _print_templates(summary)


@app.command("merge-templates")
def merge_templates(
    inputs: list[Path] = typer.Argument(..., help="Two or more templates files built with the same model and settings over different images."),
    output: Path = typer.Option(..., "-o", "--output", help="The merged templates file to write."),
    as_json: bool = typer.Option(False, "--json", help="Print a summary of the merged file as JSON."),
) -> None:
    """Merge templates files into one, equal to a single build over all their images.

    Example: hmt merge-templates site_a.h5 site_b.h5 -o templates.h5
    """
    if len(inputs) < 2:
        raise HmtError("merge-templates needs at least two input files")
    if output.resolve() in {path.resolve() for path in inputs}:
        raise HmtError(f"{output}: the output must not be one of the inputs")
    merged = merge_template_files(inputs, output, command=command_line(), progress=progress_bar(as_json, unit="files"))
    dropped = sorted({name for path in inputs for name in read_strategies(path)})
    note = (f"strategies of {', '.join(dropped)} were not merged (clusters of different builds do not merge); "
            f"run: hmt strategies {output}") if dropped else None
    if as_json:
        typer.echo(json.dumps(describe(output) | {"notes": [note] if note else []}, indent=2))
        return
    counts = ", ".join(f"{name} {template.count}" for name, template in merged.templates.items())
    typer.echo(f"wrote {output}: {len(merged.templates)} classes ({counts}) from {len(inputs)} files")
    if note:
        typer.echo(f"note: {note}")
