"""`hmt compare` and `hmt evaluate-templates`: new images against class templates."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import typer

from heatmap_templates.analysis.compare import (
    DEFAULT_BATCH_SIZE,
    Comparer,
    ComparisonRun,
    evaluate_templates,
)
from heatmap_templates.analysis.faithfulness import DEFAULT_REMOVAL, DEFAULT_SAMPLE, REMOVALS
from heatmap_templates.analysis.scoring import DEFAULT_ATYPICAL_PERCENTILE, ImageComparison
from heatmap_templates.analysis.similarity import DEFAULT_SIMILARITY, SIMILARITIES
from heatmap_templates.analysis.zone_report import file_atlas
from heatmap_templates.analysis.zones import zone_comparison
from heatmap_templates.errors import HmtError, SkipLog
from heatmap_templates.files import write_text
from heatmap_templates.synth.ground_truth import phantom_body_masks
from heatmap_templates.templates.build import DEFAULT_OUT
from heatmap_templates.templates.templates_file import save_check
from hmt_cli.choices import labels_option, names, registry_option, uncertain_option
from hmt_cli.main import app
from hmt_cli.output import command_line, echo_skipped
from hmt_cli.output import interval_text as _interval
from hmt_cli.progress import progress_bar


def _format(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _flag(result: ImageComparison) -> str:
    if result.atypical is None:
        return "n/a"
    return "ATYPICAL" if result.atypical else "typical"


def _table(run: ComparisonRun) -> list[str]:
    """The readable per-image table."""
    with_strategies = any(r.strategy is not None for r in run.results)
    rows = [("image", "predicted", "p", "best match", f"{run.similarity}", "LOO pct", "heatmap") + (("strategy",) if with_strategies else ())]
    for r in run.results:
        rows.append((r.path, r.predicted, _format(r.probabilities[r.predicted]), r.best_match or "-",
                     _format(r.predicted_similarity), _format(r.percentile_rank, ".1f"), _flag(r))
                    + ((("-" if r.strategy is None else f"{r.strategy} ({_format(r.strategy_similarity, '.2f')})"),) if with_strategies else ()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def _write_csv(run: ComparisonRun, path: Path) -> None:
    """One row per image: the summary columns (``label`` too when a manifest gave true labels: a class, or the positive
    findings joined by ';'), then p_<class> and sim_<class> columns."""
    fixed = ["path", "predicted", "best_match", "predicted_similarity", "predicted_correlation", "percentile_rank",
             "atypical_threshold", "atypical", "registration_method", "registration_quality", "lung_field_energy",
             "strategy", "strategy_similarity"]
    if any(result.label is not None for result in run.results):
        fixed.insert(1, "label")
    columns = fixed + [f"p_{name}" for name in run.class_names] + [f"sim_{name}" for name in run.template_classes]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for result in run.results:
        record = result.to_dict()
        if isinstance(result.label, dict):
            record["label"] = ";".join(name for name, value in result.label.items() if value == 1)
        writer.writerow([("" if record.get(key) is None else record[key]) for key in fixed]
                        + [record["probabilities"][name] for name in run.class_names]
                        + [record["similarities"][name] for name in run.template_classes])
    write_text(path, buffer.getvalue())


def _figure_target(figure: Path, many: bool) -> tuple[Path, bool]:
    """(target, is_folder): a folder (no suffix, or an existing folder) gets one figure per image when there are several."""
    is_folder = figure.is_dir() or (many and figure.suffix == "")
    return figure, is_folder


def _draw(result: ImageComparison, out: Path, reference_image) -> Path:
    try:
        from heatmap_templates.present.figures import comparison_figure
    except ImportError:
        raise HmtError("--figure needs heatmap_templates.present.figures.comparison_figure, which this installation lacks") from None
    maps = result.maps
    assert maps is not None  # keep_maps was set and the predicted class has a template
    return comparison_figure(
        maps.image, maps.heatmap, maps.template, title=Path(result.path).name, out=out, class_name=result.predicted,
        similarity=float(result.predicted_similarity or 0.0), reference_image=reference_image,
    )


@app.command("compare")
def compare_command(
    images: list[Path] = typer.Argument(..., help="Image files, folders (searched recursively) and/or CSV manifests (a .csv with a path column: its images, with each one's true label; another .csv is skipped like any file that is no image)."),
    templates: Path = typer.Option(DEFAULT_OUT, "--templates", "-t", help="Templates file from hmt build-templates."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Model file (default: the one the templates file records; must be the same file)."),
    threshold: float | None = typer.Option(None, "--threshold", help="Decision threshold of a one-output (binary) or multi-label model (default: the one the templates were built with)."),
    similarity: str = registry_option(DEFAULT_SIMILARITY, "--similarity", SIMILARITIES, "Similarity with each template"),
    atypical_percentile: float = typer.Option(DEFAULT_ATYPICAL_PERCENTILE, "--atypical-percentile", min=0.0, max=100.0,
                                              help="Flag a heatmap whose correlation lies below this percentile of its class's leave-one-out correlations."),
    as_json: bool = typer.Option(False, "--json", help="Print every result as JSON on stdout."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Also write one CSV row per image here."),
    figure: Path | None = typer.Option(None, "--figure", help="Figure of image, heatmap, template and difference: a .png for one image (the first), or a folder for one per image."),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", min=1, help="Images per batch."),
    unsafe_load: bool = typer.Option(False, "--unsafe-load", help="Allow code in Lambda layers when loading the model (trusted files only)."),
    labels: str | None = labels_option(recorded=True),
    uncertain: str | None = uncertain_option(recorded=True),
    zones: bool = typer.Option(False, "--zones", help="Also each image's anatomical zone profile beside its best template's (the atlas of `hmt zones`, else one built from the reference)."),
) -> None:
    """Score images against the class templates: predicted class, similarity with each template,
    best-matching template, and whether the predicted class's heatmap is atypical. A CSV manifest's images
    are scored with their true labels (read as the templates' store read its data set, or with --labels).

    Example: hmt compare new_xray.png more_xrays/ --templates templates_out/templates.h5 --csv scores.csv
    """
    comparer = Comparer(templates, model=model, similarity=similarity, atypical_percentile=atypical_percentile, threshold=threshold,
                        unsafe_load=unsafe_load)
    skip_log = SkipLog()
    paths, truths = comparer.collect(images, skip_log, labels=names(labels), uncertain=uncertain)
    target, one_per_image = _figure_target(figure, len(paths) > 1) if figure is not None else (None, False)
    results: list[ImageComparison] = []
    figures: list[Path] = []
    atlas = file_atlas(comparer.file) if zones else None
    profiles: dict[int, dict] = {}
    for result in comparer.iter_results(paths, skip_log=skip_log, batch_size=batch_size, keep_maps=target is not None or zones,
                                        progress=progress_bar(as_json)):
        if target is not None and result.maps is not None and (one_per_image or not figures):
            out = target / f"{result.position:05d}_{Path(result.path).stem}.png" if one_per_image else target
            figures.append(_draw(result, out, comparer.file.reference_image))
        if atlas is not None and result.maps is not None:
            profiles[result.position] = zone_comparison(result.maps.heatmap, result.maps.template, atlas)
        result.maps = None  # drawn (or not wanted): do not keep every map of a large folder
        result.label = truths[result.position]
        results.append(result)
    run = comparer.run_record(results, skip_log.problems)
    if not results:
        first = f"; first: {skip_log.problems[0]}" if len(skip_log) else ""
        raise HmtError(f"no image could be scored ({len(skip_log)} skipped{first})")
    if csv_out is not None:
        _write_csv(run, csv_out)
    if as_json:
        record = run.to_dict()
        if zones:
            for entry, result in zip(record["results"], run.results, strict=True):
                entry["zones"] = profiles.get(result.position)
        typer.echo(json.dumps(record, indent=2))
        return
    for line in _table(run):
        typer.echo(line)
    for result in run.results if zones else []:
        profile = profiles.get(result.position)
        shown = "no template of the predicted class" if profile is None else (
            f"image {', '.join(profile['image_most_enriched'])}; template {', '.join(profile['template_most_enriched'])}")
        typer.echo(f"zones of {Path(result.path).name} (most enriched first): {shown}")
    typer.echo(f"templates: {run.templates} ({', '.join(run.template_classes)}); model: {run.model}; "
               f"atypical: Pearson below the {atypical_percentile:g}th percentile of the class's leave-one-out correlations")
    if csv_out is not None:
        typer.echo(f"csv: {csv_out}")
    for path in figures:
        typer.echo(f"figure: {path}")
    if figure is not None and not figures:
        typer.echo("no figure: no scored image was predicted as a class that has a template")
    for line in skip_log.summary_lines():
        typer.echo(line)


@app.command("evaluate-templates")
def evaluate_templates_command(
    templates: Path = typer.Argument(..., help="Templates file from hmt build-templates."),
    data: Path = typer.Argument(..., help="Labelled images: class folders or a CSV manifest."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Model file (default: the one the templates file records)."),
    similarity: str = registry_option(DEFAULT_SIMILARITY, "--similarity", SIMILARITIES, "Similarity with each template"),
    atypical_percentile: float = typer.Option(DEFAULT_ATYPICAL_PERCENTILE, "--atypical-percentile", min=0.0, max=100.0,
                                              help="Percentile of the leave-one-out correlations below which a heatmap is atypical."),
    split: str | None = typer.Option(None, "--split", help="Only this split of a CSV manifest (train, val or test)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", min=1, help="Images per batch."),
    unsafe_load: bool = typer.Option(False, "--unsafe-load", help="Allow code in Lambda layers when loading the model (trusted files only)."),
    faithfulness: bool = typer.Option(False, "--faithfulness", help="Deletion test: remove the top (and the bottom) q %% of each image's heatmap and of its class template moved into the image, and, as baselines of the same area, random pixels, random smooth regions in the body and the ranked region moved; and the lungs against the rest and against an equal area elsewhere; how much does the model's probability fall (with 95 %% intervals)?"),
    removal: str = registry_option(DEFAULT_REMOVAL, "--removal", REMOVALS, "How removed pixels are filled"),
    deletion_sample: int = typer.Option(DEFAULT_SAMPLE, "--deletion-sample", min=1, help="Images in the deletion test (evenly spaced over the set)."),
    body_masks: Path | None = typer.Option(None, "--body-masks", help="Each image's body mask for the deletion test's baselines: a folder of masks with the images' relative paths (.png). Default: a phantom set's ground_truth/body when present, else Otsu's threshold of each image."),
    annotations: Path | None = typer.Option(None, "--annotations", help="Where the findings are: a folder of masks (same relative path as each image, .png) or a CSV of boxes path,label,x,y,width,height; scores each correct image's map and each template."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random ranking and the imputation noise."),
    labels: str | None = labels_option(recorded=True),
    uncertain: str | None = uncertain_option(recorded=True),
) -> None:
    """Measure what templates are worth on a labelled set: template-match accuracy, whether an
    atypical heatmap predicts a wrong answer (ROC AUC), and lung-field energy per class; with
    --faithfulness whether the model relies on what they mark, with --annotations whether they hit the
    annotated findings (both also stored in the templates file for figures and reports).

    Example: hmt evaluate-templates templates_out/templates.h5 data/test/ --faithfulness --annotations data/masks/ --json
    """
    report = evaluate_templates(templates, data, model=model, similarity=similarity, atypical_percentile=atypical_percentile,
                                split=split, batch_size=batch_size, unsafe_load=unsafe_load,
                                progress=progress_bar(as_json), faithfulness=faithfulness, removal=removal,
                                deletion_sample=deletion_sample, body_masks=body_masks or (phantom_body_masks(data) if faithfulness else None),
                                annotations=annotations, seed=seed,
                                labels=names(labels), uncertain=uncertain)
    if report.faithfulness is not None:
        save_check(templates, "faithfulness", report.faithfulness | {"data": str(data)}, command=command_line())
    if report.localisation is not None:
        save_check(templates, "localisation", report.localisation | {"data": str(data)}, command=command_line())
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    match = report.template_match
    typer.echo(f"{report.n_images} images, templates for {', '.join(report.template_classes)} ({report.similarity})")
    classification = report.classification
    if classification.get("multi_label"):
        typer.echo(f"classification macro AUC: {_interval(classification['macro']['auc'], classification['macro'].get('auc_ci'))} "
                   f"(n={classification['n']}; per finding: --json)")
    else:
        typer.echo(f"classification accuracy: {_interval(classification['accuracy'], classification.get('accuracy_ci'))} "
                   f"(n={classification['n']})")
    typer.echo(f"template-match accuracy [95 % CI]: {_interval(match['accuracy'], match.get('accuracy_ci'))} "
               f"({match['correct']}/{match['n']})")
    for name, row in match["per_class"].items():
        typer.echo(f"  {name}: {_interval(row['accuracy'], row.get('accuracy_ci'))} ({row['correct']}/{row['n']})")
    separation = report.correct_vs_misclassified
    auc = _interval(separation["auc"], separation.get("auc_ci")) if separation["auc"] is not None \
        else f"undefined ({separation['auc_undefined_reason']})"
    typer.echo(f"similarity AUC, correct vs misclassified: {auc} "
               f"({separation['n_correct']} correct, {separation['n_misclassified']} misclassified)")
    typer.echo(f"  flagged atypical: {_format(separation['atypical_share_correct'])} of correct, "
               f"{_format(separation['atypical_share_misclassified'])} of misclassified")
    energy = report.lung_field_energy
    typer.echo(f"lung-field energy (lung area = {energy['lung_area_fraction']:.3f} of the frame):")
    for name, row in energy["by_true_class"].items():
        template_value = energy["templates"].get(name)
        template_text = _interval(template_value, energy.get("templates_ci", {}).get(name))
        members = f" (n={energy['templates_n'][name]} members)" if name in energy.get("templates_n", {}) else ""
        typer.echo(f"  {name}: images {_interval(row['mean'], row.get('mean_ci'))} (n={row['n']}), template {template_text}{members}")
    if energy.get("templates_ci_note"):
        typer.echo(f"  note: {energy['templates_ci_note']}")
    if report.faithfulness is not None:
        for line in deletion_lines(report.faithfulness):
            typer.echo(line)
    if report.localisation is not None:
        for line in localisation_lines(report.localisation):
            typer.echo(line)
    echo_skipped(report.skipped)


_CURVE_NAMES = {"random": "random pixels", "smooth": "smooth regions", "moved_heatmap": "moved heatmap",
                "moved_template": "moved template"}
_REGION_NAMES = {"outside_lungs": "everything outside the lungs", "lungs": "the lungs",
                 "lungs_area_elsewhere": "smooth regions of the lungs' area outside them"}


def deletion_lines(result: dict) -> list[str]:
    """The deletion test as a readable table: mean probability of the predicted class per removed share, the AOPC
    ratios against each baseline and the fixed regions, each with its 95 % interval (earlier checks: their means)."""
    fractions = result["fractions"]
    body = result.get("body")
    source = f", body masks: {body.get('given', 0)} given, {body.get('otsu', 0)} Otsu" if body else ""
    lines = [f"deletion ({result['removal']} removal, {result['n_images']} images{source}): mean probability of the predicted class",
             "  removed              " + "  ".join(f"{f:>5.0%}" for f in fractions) + "   area   AOPC [95 % CI]"]
    for name, curve in result["curves"].items():
        for label, shown in ((name, curve), (f"{name} LeRF", curve.get("lerf"))):
            if shown is None:
                continue
            points = dict(zip(shown.get("fractions", fractions), shown["probability"] or [], strict=False))
            row = "  ".join("  -  " if points.get(f) is None else f"{points[f]:5.3f}" for f in fractions)
            area = "  -  " if shown.get("area") is None else f"{shown['area']:.3f}"
            lines.append(f"  {_CURVE_NAMES.get(label, label):<19}  {row}  {area}  "
                         f"{_interval(shown.get('aopc'), shown.get('aopc_ci'))}  (n={shown['n']})")
    ratios = result.get("ratios")
    if ratios:
        lines.append("  AOPC ratio, ranking / baseline of the same area [95 % CI over images]:")
        for key, ratio in ratios.items():
            ranking, baseline = key.split("_vs_")
            lines.append(f"    {ranking} / {_CURVE_NAMES.get(baseline, baseline)}: {_interval(ratio['value'], ratio['ci'], 2)}"
                         f" (n={ratio['n']})")
    elif result.get("template_vs_random") is not None:
        lines.append(f"  deleting the template's region lowers the probability {result['template_vs_random']:.1f} x as much "
                     "as random deletion (AOPC)")
    for name, curve in result["curves"].items():
        if "morf_minus_lerf" in curve:
            difference = curve["morf_minus_lerf"]
            lines.append(f"  {name}: AOPC most-relevant first minus least-relevant first "
                         f"{_interval(difference['value'], difference['ci'])} (n={difference['n']})")
    for name, region in result["regions"].items():
        accuracy = "" if region.get("accuracy") is None else \
            f", accuracy {region['accuracy_before']:.3f} -> {_interval(region['accuracy'], region.get('accuracy_ci'))}"
        lines.append(f"  remove {_REGION_NAMES.get(name, name)}: probability {region['probability']:.3f} "
                     f"(drop {_interval(region['drop'], region.get('drop_ci'))}){accuracy} (n={region['n']})")
    comparison = result.get("comparisons", {}).get("lungs_vs_elsewhere")
    if comparison:
        lines.append(f"  lungs vs an equal area elsewhere in the body: drop difference "
                     f"{_interval(comparison['value'], comparison['ci'])} (n={comparison['n']})")
    lines += [f"  note: {note}" for note in result.get("notes", [])]
    return lines


def localisation_lines(result: dict) -> list[str]:
    """Localisation against annotations: images (means) and templates."""
    images = result["images"]
    lines = [f"localisation against {result['annotations']} ({images['n']} correctly classified annotated images):"]
    for key, value in images.items():
        if key != "n":
            lines.append(f"  {key}: {_format(value['mean'])} (n={value['n']})")
    for name, scores in result["templates"].items():
        if not scores.get("annotated_members"):
            lines.append(f"  template {name}: no annotated member")
            continue
        shown = ", ".join(f"{key} {_format(value) if not isinstance(value, bool) else value}"
                          for key, value in scores.items() if key != "annotated_members")
        lines.append(f"  template {name} ({scores['annotated_members']} annotated members): {shown}")
    return lines
