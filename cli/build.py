"""`hmt build-templates`: registered, normalised per-class template heatmaps in templates.h5."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from heatmap_templates.analysis.strategies import MIN_STRATEGY_MEMBERS, StrategySettings
from heatmap_templates.analysis.strategy_search import add_strategies
from heatmap_templates.errors import HmtError
from heatmap_templates.explain.cam_methods import DEFAULT_METHOD, METHODS
from heatmap_templates.explain.scores import DEFAULT_SCORE, SCORES
from heatmap_templates.project import DEFAULT_PROJECT_FOLDER, load_project
from heatmap_templates.templates.build import DEFAULT_OUT, BuildConfig, BuildSummary, build_templates
from heatmap_templates.templates.members import INCLUDES
from heatmap_templates.templates.normalisation import NORMALISATIONS
from heatmap_templates.templates.registration import REGISTRATIONS
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
from hmt_cli.strategies import parse_k


@app.command("build-templates")
def build_templates_command(
    model: Path | None = typer.Argument(None, help="Model (.keras); default: the one the last `hmt train` recorded."),
    data: Path | None = typer.Argument(None, help="Data set (class folders or CSV); default: the last `hmt train`'s."),
    class_names: list[str] = typer.Option([], "--class", "-c", help="Class to build a template for (repeatable)."),
    all_classes: bool = typer.Option(False, "--all-classes", help="Build a template for every class."),
    heatmaps: Path | None = typer.Option(None, "--heatmaps", help="Heatmap store to build from (computed or resumed first when MODEL/DATA are known)."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Templates file; another class is added to an existing one."),
    registration: str = registry_option(BuildConfig.registration, "--registration", REGISTRATIONS, "Registration"),
    reference: Path | None = typer.Option(None, "--reference", help="Image to use as the reference frame (default: built from the data)."),
    normalisation: str = registry_option(BuildConfig.normalisation, "--normalisation", NORMALISATIONS, "Per-map normalisation"),
    include: str = registry_option(BuildConfig.include, "--include", INCLUDES, "Members"),
    method: str = registry_option(DEFAULT_METHOD, "--method", METHODS, "CAM method when heatmaps must be computed"),
    score: str = registry_option(DEFAULT_SCORE, "--score", SCORES, "CAM score when heatmaps must be computed"),
    layer: str | None = typer.Option(None, "--layer", help="CAM layer when heatmaps must be computed."),
    classes: str | None = classes_option(),
    labels: str | None = labels_option(),
    uncertain: str | None = uncertain_option(),
    head: str | None = head_option(),
    preprocessing: str | None = preprocessing_option(),
    intensity: str | None = intensity_option(),
    components: int = typer.Option(BuildConfig.n_components, "--components", min=1, help="Eigen-heatmaps kept per class."),
    bootstrap: int = typer.Option(BuildConfig.bootstrap_replicates, "--bootstrap", min=2, help="Bootstrap replicates for the template's confidence band."),
    median: bool = typer.Option(BuildConfig.median, "--median/--no-median", help="Also store the per-pixel median."),
    batch_size: int = typer.Option(BuildConfig.batch_size, "--batch-size", min=1, help="Images per batch."),
    threads: int = typer.Option(BuildConfig.threads, "--threads", min=1, help="Threads of a build in this process (the result does not depend on them)."),
    chunk_images: int = typer.Option(BuildConfig.chunk_images, "--chunk-images", min=1, help="Images per chunk, the unit of work of a thread or a cluster task. The result depends on it (bit for bit), not on the threads or the scheduler; on a large cluster use a few thousand, since each chunk's partial statistics (about 60 MB per class at 224 px) travel once to be merged (docs/cluster.md)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help=SCHEDULER_HELP),
    strategies: str | None = typer.Option(None, "--strategies", help="Also find each built class's strategies: auto (the eigengap chooses how many) or a number (see hmt strategies)."),
    project_dir: Path = typer.Option(DEFAULT_PROJECT_FOLDER, "--project-dir", help="Where `hmt train` recorded the project."),
    unsafe_load: bool = typer.Option(False, "--unsafe-load", help="Allow code in Lambda layers when loading the model (trusted files only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the build summary as JSON on stdout."),
) -> None:
    """Average the registered heatmaps of each class's (correctly classified) images into a template.

    MODEL and DATA default to what the last `hmt train` recorded; heatmaps are computed (or
    resumed) into a store beside the output first, so nothing is computed twice.

    Example: hmt build-templates --class covid   (on a cluster: add --scheduler tcp://scheduler:8786)
    """
    _check_class_choice(class_names, all_classes)
    config = BuildConfig(
        registration=registration, normalisation=normalisation, include=include,
        reference=str(reference) if reference else None, n_components=components,
        bootstrap_replicates=bootstrap, median=median, batch_size=batch_size, threads=threads, chunk_images=chunk_images,
    )
    config.validate()  # before any heatmap is computed
    strategy_k = parse_k(strategies) if strategies is not None else None
    brought = {"classes": names(classes), "labels": names(labels), "uncertain": uncertain, "head": head, "preprocessing": preprocessing,
               "intensity": intensity}
    model, data = _model_and_data(model, data, heatmaps, project_dir, brought)
    if model is not None:
        assert data is not None  # given with the model, or the project's
        heatmaps = _extract_first(
            model, data, heatmaps, out, method=method, score=score, layer=layer,
            batch_size=batch_size, unsafe_load=unsafe_load, scheduler=scheduler, as_json=as_json, brought=brought,
        )
    assert heatmaps is not None  # given, extracted above, or the project's model was
    summary = build_templates(
        heatmaps, None if all_classes else class_names, out, config=config,
        command=command_line(), progress=progress_bar(as_json), scheduler=scheduler,
    )
    found = {}
    clusterable = [name for name, count in summary.members.items() if count >= MIN_STRATEGY_MEMBERS]
    if strategies is not None and clusterable:
        found = add_strategies(out, heatmaps, clusterable, StrategySettings(k=strategy_k), command=command_line(),
                               progress=progress_bar(as_json))
    if as_json:
        typer.echo(json.dumps(summary.to_dict() | ({"strategies": {name: result.to_dict() for name, result in found.items()}}
                                                   if found else {}), indent=2))
        return
    _echo_build(summary, found, include=include, registration=registration)


def _check_class_choice(class_names: list[str], all_classes: bool) -> None:
    """Stop unless exactly one of --class and --all-classes says which classes to build (a user error, exit 2)."""
    if not class_names and not all_classes:
        raise HmtError("name a class with --class NAME (repeatable) or use --all-classes")
    if class_names and all_classes:
        raise HmtError("use either --class or --all-classes, not both")


def _model_and_data(model: Path | None, data: Path | None, heatmaps: Path | None, project_dir: Path,
                    brought: dict) -> tuple[Path | None, Path | None]:
    """MODEL and DATA, the last `hmt train`'s where needed; (None, None) to build from --heatmaps alone, which records
    how its data set was read (so the options that say how, ``brought``, are refused there)."""
    if model is None and heatmaps is None or model is not None and data is None:
        project = load_project(project_dir)
        return model or Path(project["model"]), data or Path(project["data"])
    if model is None and any(value is not None for value in brought.values()):
        given = ", ".join("--" + key for key, value in brought.items() if value is not None)
        raise HmtError(f"{given}: say how MODEL and DATA are read; a store given alone (--heatmaps) records that itself")
    return model, data


def _extract_first(model: Path, data: Path, heatmaps: Path | None, out: Path, *, method: str, score: str,
                   layer: str | None, batch_size: int, unsafe_load: bool, scheduler: str | None, as_json: bool,
                   brought: dict) -> Path:
    """Compute (or resume) the store the build reads (default: beside OUT), so nothing is computed twice; its path.
    ``brought``: how to read the data set and a model without hmt metadata (classes, labels, uncertain, head, ...)."""
    from heatmap_templates.explain.heatmaps import default_store_path, extract_heatmaps

    heatmaps = heatmaps or default_store_path(model, method, score, out.parent)
    extraction = extract_heatmaps(
        model, data, heatmaps, method=method, score=score, layer=layer, batch_size=batch_size,
        unsafe_load=unsafe_load, command=command_line(), progress=progress_bar(as_json), scheduler=scheduler, **brought,
    )
    if not as_json:
        typer.echo(f"heatmaps: {heatmaps} ({extraction.computed} computed, {extraction.resumed} reused, {len(extraction.skipped)} skipped)")
        echo_skipped(extraction.skipped)
    return heatmaps


def _echo_build(summary: BuildSummary, found: dict, *, include: str, registration: str) -> None:
    """Print the build's summary for people: members and consistency per class, registration, strategies."""
    typer.echo(f"templates: {summary.out}")
    for name, count in summary.members.items():
        consistency = summary.mean_pairwise_correlation.get(name)
        shown = f"{consistency:.3f}" if consistency is not None else "n/a"
        typer.echo(f"  {name}: {count} members, mean pairwise correlation {shown}")
    for name in summary.empty_classes:
        typer.echo(f"  {name}: no {include} images, no template")
    fallbacks = summary.registration.get("fallbacks", {})
    typer.echo(f"registration ({registration}): {summary.registration.get('methods', {})}" + (f", fallbacks {fallbacks}" if fallbacks else ""))
    for name, result in found.items():
        typer.echo(f"strategies of {name}: {result.k} ({result.chosen_by}), sizes {', '.join(str(s.size) for s in result.strategies)}")
