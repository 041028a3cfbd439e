"""`hmt heatmaps`: classify every image and store its class activation maps in an HDF5 heatmap store."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from heatmap_templates.data.decode import DEFAULT_MAX_PIXELS
from heatmap_templates.explain.cam_methods import DEFAULT_METHOD, METHODS
from heatmap_templates.explain.heatmaps import DEFAULT_BATCH_SIZE, DEFAULT_STORE, extract_heatmaps
from heatmap_templates.explain.scores import DEFAULT_SCORE, SCORES
from heatmap_templates.model.heads import DEFAULT_THRESHOLD
from hmt_cli.choices import (
    classes_option,
    head_option,
    intensity_option,
    labels_option,
    names,
    preprocessing_option,
    registry_option,
    uncertain_option,
)
from hmt_cli.main import app
from hmt_cli.output import SCHEDULER_HELP, command_line, echo_skipped
from hmt_cli.progress import progress_bar


@app.command("heatmaps")
def heatmaps(
    model: Path = typer.Argument(..., help="Model file (.keras) from `hmt train`, or your own with --classes."),
    data: Path = typer.Argument(..., help="Class-per-folder data set or CSV manifest."),
    out: Path = typer.Option(DEFAULT_STORE, "--out", "-o", help="Heatmap store to write (resumed if it exists)."),
    method: str = registry_option(DEFAULT_METHOD, "--method", METHODS, "CAM method"),
    score: str = registry_option(DEFAULT_SCORE, "--score", SCORES, "Score explained (changes the maps; recorded)"),
    layer: str | None = typer.Option(None, "--layer", help="CAM layer, nested names with '/', e.g. vgg19/block5_conv4 (default: the model's record or the last 4-D layer)."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, "--threshold", help="Decision threshold of a one-output (binary) or multi-label model (recorded; a resume must keep it)."),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", min=1, help="Images per batch."),
    classes: str | None = classes_option(),
    labels: str | None = labels_option(),
    uncertain: str | None = uncertain_option(),
    head: str | None = head_option(),
    preprocessing: str | None = preprocessing_option(),
    intensity: str | None = intensity_option(),
    unsafe_load: bool = typer.Option(False, "--unsafe-load", help="Allow code in Lambda layers when loading the model (trusted files only)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Refuse images whose declared size is larger."),
    strict: bool = typer.Option(False, "--strict", help="Stop with exit code 2 at the first bad file."),
    mixed_precision: bool = typer.Option(
        False, "--mixed-precision",
        help="Run the network in float16 with float32 weights: faster on GPUs with tensor cores, slower on CPUs; "
             "maps correlate >= 0.99 with float32 ones. Recorded in the store.",
    ),
    scheduler: str | None = typer.Option(None, "--scheduler", help=SCHEDULER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout."),
) -> None:
    """Run classifier + CAM over every image; store probabilities and every class's map.

    A rerun on the same --out skips images already stored (resume after a crash or Ctrl-C);
    a store made with another model or settings is refused.

    A GPU is used automatically; --mixed-precision uses its tensor cores (slower on CPUs).

    Example: hmt heatmaps templates_out/model.keras data/ --out templates_out/heatmaps.h5
    (on a cluster: add --scheduler tcp://scheduler:8786; see docs/cluster.md)

    Your own multi-label model and a CheXpert-style CSV: hmt heatmaps chexnet.h5 train.csv --labels Edema,Consolidation
    --head sigmoids (--head only when its output layer is linear: logits)
    """
    summary = extract_heatmaps(
        model, data, out,
        method=method, score=score, layer=layer, threshold=threshold, batch_size=batch_size,
        classes=names(classes), preprocessing=preprocessing, intensity=intensity,
        head=head, labels=names(labels), uncertain=uncertain,
        unsafe_load=unsafe_load, max_pixels=max_pixels, strict=strict, mixed_precision=mixed_precision,
        command=command_line(),
        progress=progress_bar(as_json), scheduler=scheduler,
    )
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    typer.echo(f"heatmaps: {summary.out}")
    typer.echo(f"  computed {summary.computed} images ({summary.images_per_second:.1f} images/s), {summary.resumed} already stored")
    typer.echo(f"  of those computed: correct {summary.correct}, incorrect {summary.incorrect}, unlabelled {summary.unlabelled}; per class:")
    for name, count in summary.per_class.items():
        typer.echo(f"  {name}: {count}")
    echo_skipped(summary.skipped)
