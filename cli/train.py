"""`hmt train` and `hmt evaluate`: fit a classifier on a labelled data set, and measure one."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from heatmap_templates.analysis.prior_masks import LungMasks
from heatmap_templates.data.datasets import UNCERTAIN, load_dataset
from heatmap_templates.data.decode import INTENSITIES
from heatmap_templates.errors import HmtError, display_path, problems_json
from heatmap_templates.files import write_text
from heatmap_templates.model.attention_prior import ATTENTION_PRIORS
from heatmap_templates.model.backbones import BACKBONES
from heatmap_templates.model.evaluation import DEFAULT_BATCH_SIZE, DEFAULT_SPLIT, load_dataset_for, write_predictions
from heatmap_templates.model.evaluation import evaluate as evaluate_model
from heatmap_templates.model.heads import DEFAULT_THRESHOLD
from heatmap_templates.model.model_file import load_model, save_model
from heatmap_templates.model.recipe import SCHEDULES
from heatmap_templates.model.training import EpochLog, TrainConfig, TrainResult
from heatmap_templates.model.training import train as train_model
from heatmap_templates.model.training_files import save_training_outputs
from heatmap_templates.present.figures import confusion_matrix_figure, training_figures
from heatmap_templates.project import DEFAULT_PROJECT_FOLDER, load_project, record_project
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
from hmt_cli.output import echo_skipped, interval_text
from hmt_cli.progress import progress_bar


def _epoch_line(entry: EpochLog) -> None:
    validation = ""
    if entry.val_loss is not None:
        validation = f"  val_loss {entry.val_loss:.4f}  val_acc {entry.val_accuracy:.3f}"
    typer.echo(f"{entry.phase} epoch {entry.epoch}/{entry.epochs}  loss {entry.loss:.4f}  acc {entry.accuracy:.3f}"
               f"{validation}  ({entry.seconds:.1f} s)", err=True)


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def report_lines(report: dict) -> list[str]:
    """A readable table of a metrics.classification_report (per-class scores, confusion matrix, binary readings),
    or of a multilabel_report (per finding)."""
    if report.get("multi_label"):
        return _finding_lines(report)
    names = report["class_names"]
    width = max(10, *(len(name) for name in names))
    macro = report["macro"]
    lines = [f"accuracy {interval_text(report['accuracy'], report.get('accuracy_ci'))} on {report['n']} images "
             f"(macro F1 {interval_text(macro['f1'], macro.get('f1_ci'))}, macro AUC {interval_text(macro['auc'], macro.get('auc_ci'))})",
             f"{'class':<{width}}  precision  recall  f1     auc    support  auc [95 % CI]"]
    for name in names:
        row = report["per_class"][name]
        lines.append(f"{name:<{width}}  {row['precision']:.3f}      {row['recall']:.3f}   {row['f1']:.3f}  "
                     f"{_fmt(row['auc'])}  {row['support']:<7}  {interval_text(row['auc'], row.get('auc_ci'))}")
    cell = max(7, *(len(name) for name in names)) + 1
    lines.append("confusion matrix (rows true, columns predicted):")
    lines.append(" " * width + "".join(f"{name:>{cell}}" for name in names))
    for name, counts in zip(names, report["confusion_matrix"], strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{count:>{cell}}" for count in counts))
    for key, reading in report["binary_readings"].items():
        summed, argmax = reading["summed_probability"], reading["argmax"]
        lines.append(f"{key.replace('_', ' ')} (positive: {reading['positive']}, {reading['n_positive']} vs {reading['n_negative']}):")
        lines.append(f"  summed probabilities  acc {summed['accuracy']:.3f}  sens {summed['sensitivity']:.3f}  "
                     f"spec {summed['specificity']:.3f}  F1 {summed['f1']:.3f}  AUC {_fmt(summed['auc'])}")
        lines.append(f"  mapped arg-max        acc {argmax['accuracy']:.3f}  sens {argmax['sensitivity']:.3f}  "
                     f"spec {argmax['specificity']:.3f}  F1 {argmax['f1']:.3f}")
        if "accuracy_ci" in summed:
            lines.append(f"  [95 % CI] summed: acc {interval_text(summed['accuracy'], summed['accuracy_ci'])}, AUC "
                         f"{interval_text(summed['auc'], summed.get('auc_ci'))}; arg-max: acc "
                         f"{interval_text(argmax['accuracy'], argmax.get('accuracy_ci'))}")
    return lines + _interval_note(report)


def _interval_note(report: dict) -> list[str]:
    """How the report's [95 % CI] were computed (reports written before them have none)."""
    how = report.get("bootstrap")
    if not how:
        return []
    return [f"[95 % CI]: {how['method']} over {how['units']} {how['unit']}s, {how['resamples']} resamples"]


def _finding_lines(report: dict) -> list[str]:
    width = max(10, *(len(name) for name in report["class_names"]))
    macro = report["macro"]
    lines = [f"multi-label, {report['n']} images, threshold {report['threshold']:g}: macro AUC "
             f"{interval_text(macro['auc'], macro.get('auc_ci'))}, macro F1 {interval_text(macro['f1'], macro.get('f1_ci'))}",
             f"{'finding':<{width}}  known  positive  auc    sens   spec   f1     auc [95 % CI]"]
    for name, row in report["per_finding"].items():
        lines.append(f"{name:<{width}}  {row['n']:>5}  {row['positives']:>8}  {_fmt(row['auc'])}  {row['sensitivity']:.3f}  "
                     f"{row['specificity']:.3f}  {row['f1']:.3f}  {interval_text(row['auc'], row.get('auc_ci'))}")
    return lines + _interval_note(report)


def _headline(report: dict, split: str = "test") -> str:
    if report.get("multi_label"):
        return f"{split} macro AUC: {interval_text(report['macro']['auc'], report['macro'].get('auc_ci'))}"
    return f"{split} accuracy: {interval_text(report['accuracy'], report.get('accuracy_ci'))}"


@app.command("train")
def train(
    data: Path = typer.Argument(..., help="Class-per-folder data set or CSV manifest (path,label[,split][,patient_id])."),
    out: Path = typer.Option(DEFAULT_PROJECT_FOLDER / "model.keras", "--out", "-o", help="Model file to write (.keras)."),
    backbone: str = registry_option(TrainConfig.backbone, "--backbone", BACKBONES, "Backbone"),
    weights: str = typer.Option(TrainConfig.weights, "--weights", help="imagenet (Keras download), none (random), a local weights file, or auto (imagenet; none for small)."),
    epochs: int = typer.Option(TrainConfig.epochs, "--epochs", help="Epochs (the cosine schedule runs them all; the constant schedule stops early on validation loss)."),
    batch_size: int = typer.Option(TrainConfig.batch_size, "--batch-size", help="Images per batch."),
    lr: float = typer.Option(TrainConfig.learning_rate, "--lr", help="Adam learning rate."),
    input_size: int | None = typer.Option(None, "--input-size", help="Square input side in px (default: 224 VGG/ResNet, 299 Xception, 128 small)."),
    seed: int = typer.Option(TrainConfig.seed, "--seed", help="Seed for the split, weights, shuffling and augmentation."),
    augment: bool | None = typer.Option(TrainConfig.augment, "--augment/--no-augment", help="Random small rotation, shift, zoom and brightness of training images (default: on for `small` on up to 20k images, off for pretrained bases, which train on cached features)."),
    fine_tune_blocks: int = typer.Option(TrainConfig.fine_tune_blocks, "--fine-tune-blocks", help="After the head converged, also train the base's last N blocks."),
    fine_tune_epochs: int = typer.Option(TrainConfig.fine_tune_epochs, "--fine-tune-epochs", help="Epochs of fine-tuning."),
    fine_tune_lr: float = typer.Option(TrainConfig.fine_tune_learning_rate, "--fine-tune-lr", help="Learning rate for fine-tuning."),
    schedule: str = registry_option(TrainConfig.schedule, "--schedule", SCHEDULES, "Learning-rate schedule"),
    warmup_epochs: int = typer.Option(TrainConfig.warmup_epochs, "--warmup-epochs", min=0, help="Epochs of linear warm-up (cosine schedule)."),
    average_last: float = typer.Option(TrainConfig.average_last, "--average-last", min=0.0, max=0.99, help="Share of the last epochs whose weights are averaged, then batch norm re-estimated (0: off; not with the constant schedule)."),
    label_smoothing: float = typer.Option(TrainConfig.label_smoothing, "--label-smoothing", min=0.0, max=0.99, help="Share of each training target moved towards uniform (0: off)."),
    weight_decay: float = typer.Option(TrainConfig.weight_decay, "--weight-decay", min=0.0, max=0.99, help="Decoupled weight decay of the kernels (AdamW; 0: plain Adam)."),
    patience: int = typer.Option(TrainConfig.patience, "--patience", help="Epochs without validation-loss improvement before stopping (constant schedule)."),
    val_fraction: float = typer.Option(TrainConfig.val_fraction, "--val-fraction", help="Share of images (by patient) for validation."),
    test_fraction: float = typer.Option(TrainConfig.test_fraction, "--test-fraction", help="Share of images (by patient) for the test split."),
    intensity: str = registry_option(TrainConfig.intensity, "--intensity", INTENSITIES, "How integer pixels are scaled (recorded in the model; every later command decodes the same way)"),
    binary: str | None = typer.Option(None, "--binary", help="POS[:NEG]: one sigmoid output, class POS against every other class (the negative class is named NEG, default not-POS)."),
    multi_label: bool = typer.Option(False, "--multi-label", help="One sigmoid per finding of a CSV manifest (name its columns with --labels)."),
    labels: str | None = typer.Option(None, "--labels", help="Comma-separated finding columns of a CSV manifest (1 positive, 0 negative, -1 uncertain, blank unknown)."),
    uncertain: str = registry_option(TrainConfig.uncertain, "--uncertain", UNCERTAIN, "Uncertain findings (-1)"),
    patient_regex: str | None = typer.Option(None, "--patient-regex", help="Regex with one group: the patient id in file names."),
    strict: bool = typer.Option(False, "--strict", help="Stop with exit code 2 at the first bad file."),
    shuffle_labels: bool = typer.Option(False, "--shuffle-labels", help="Train on randomly permuted labels: a model for the data-randomisation check (hmt sanity --shuffled-model)."),
    memory_budget: float = typer.Option(TrainConfig.memory_budget_gb, "--memory-budget", help="GB of decoded images to hold in memory; a larger data set streams from a disk cache (same split and result)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Folder for that disk cache (default: the system's temporary folder); removed after training."),
    attention_prior: str | None = typer.Option(None, "--attention-prior", help="lungs[:WEIGHT]: penalise every class's explanation outside each training image's lung fields (--prior-penalty); without WEIGHT, 0.3, 1 and 3 are tried and the validation split chooses (three trainings). Recorded."),
    prior_penalty: str = registry_option(TrainConfig.prior_penalty, "--prior-penalty", ATTENTION_PRIORS, "Penalty of --attention-prior"),
    prior_masks: Path | None = typer.Option(None, "--prior-masks", help="Folder of lung masks named like the images (relative paths under DATA; non-zero = lung, at each image's size); default: each image's lung fields, hmt's lung segmentation united with the reference's lungs moved back (segmentation alone leaves dense opacities out)."),
    outside_lungs_augment: float = typer.Option(TrainConfig.outside_lungs_augment, "--outside-lungs-augment", min=0.0, max=1.0, help="Probability that a training image's pixels outside the lungs are removed (ROAD's noisy linear imputation, computed once per image), without a penalty. Recorded."),
    project_dir: Path = typer.Option(DEFAULT_PROJECT_FOLDER, "--project-dir", help="Where to record this model and data set for later commands."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout (epoch lines stay on stderr)."),
) -> None:
    """Train a classifier (frozen base + new head, or `small` from scratch) with a patient-grouped split.

    Writes MODEL.keras (metadata inside) and, beside it, MODEL.history.csv, MODEL.curves.png,
    MODEL.evaluation.json and MODEL.confusion.png; records MODEL and DATA in templates_out/project.json.

    Example: hmt train data/phantom --backbone small --batch-size 16 --epochs 40 --out templates_out/model.keras
    """
    config = TrainConfig(
        backbone=backbone, weights=weights, epochs=epochs, batch_size=batch_size, learning_rate=lr, input_size=input_size,
        seed=seed, augment=augment, fine_tune_blocks=fine_tune_blocks, fine_tune_epochs=fine_tune_epochs,
        fine_tune_learning_rate=fine_tune_lr, patience=patience, schedule=schedule, warmup_epochs=warmup_epochs,
        average_last=average_last, label_smoothing=label_smoothing, weight_decay=weight_decay, val_fraction=val_fraction, test_fraction=test_fraction,
        patient_regex=patient_regex, strict=strict, intensity=intensity, binary=binary, uncertain=uncertain,
        memory_budget_gb=memory_budget, cache_dir=str(cache_dir) if cache_dir else None, shuffle_labels=shuffle_labels,
        attention_prior=attention_prior, prior_penalty=prior_penalty, outside_lungs_augment=outside_lungs_augment,
    )
    config.validate()
    _check_outputs_and_labels(out, multi_label, labels)
    dataset = load_dataset(data, labels=labels.split(",") if labels else None, uncertain=uncertain, patient_regex=patient_regex,
                           strict=strict)
    if prior_masks is not None and not config.uses_masks:
        raise HmtError("--prior-masks are the masks of --attention-prior or --outside-lungs-augment; give one of them")
    masks = LungMasks(dataset.root, prior_masks) if config.uses_masks else None
    result = train_model(dataset, config, progress=progress_bar(as_json), on_epoch=_epoch_line, masks=masks)
    model_path = save_model(result.model, result.info, out)
    written = {"model": model_path, **save_training_outputs(result, model_path), **training_figures(result, model_path)}
    written["project"] = record_project(model=model_path, data=data, folder=project_dir)
    if as_json:
        typer.echo(json.dumps(_training_json(result, written), indent=2))
        return
    _echo_training(result, written, backbone=backbone, root=dataset.root)


def _check_outputs_and_labels(out: Path, multi_label: bool, labels: str | None) -> None:
    """Stop before any image is read when the model's file name or the finding columns cannot work (exit 2)."""
    if out.suffix != ".keras":
        raise HmtError(f"{display_path(out)}: the model file must end in .keras")
    if multi_label != (labels is not None):
        raise HmtError("--multi-label trains on the finding columns named by --labels; give both or neither")


def _training_json(result: TrainResult, written: dict[str, Path]) -> dict:
    """The training summary for `--json`: the files written, the split, the epochs and the reports, for scripts."""
    return {
        "files": {key: str(path) for key, path in written.items()},
        "class_names": result.info.class_names,
        "split_counts": result.split_counts,
        "epochs_run": len(result.history),
        "seconds": round(result.seconds, 2),
        "val_accuracy": None if result.val_report is None else result.val_report.get("accuracy"),
        "val_report": result.val_report,
        "test_accuracy": None if result.test_report is None else result.test_report.get("accuracy"),
        "test_report": result.test_report,
        "skipped": problems_json(result.problems),
        "attention_prior": result.info.training.get("attention_prior"),
    }


def _echo_training(result: TrainResult, written: dict[str, Path], *, backbone: str, root: Path) -> None:
    """Print the training summary for people: the split, the files written, skipped inputs and the headline scores."""
    counts = ", ".join(f"{name} {sum(c.values())}" for name, c in result.split_counts.items())
    typer.echo(f"trained {backbone} on {display_path(root)} ({counts} images) in {result.seconds:.1f} s")
    for key, path in written.items():
        typer.echo(f"  {key:<10} {display_path(path)}")
    echo_skipped(result.problems)
    prior = result.info.training.get("attention_prior")
    if prior is not None:
        counts = "; ".join(f"{label} " + ", ".join(f"{count} {source}" for source, count in by_source.items() if count)
                           for label, by_source in prior["mask_counts"].items())
        what = f"{prior['penalty']} penalty, weight {prior['weight']:g}" if prior["penalty"] else "no penalty"
        typer.echo(f"attention prior: {what}, outside-lungs augmentation {prior['outside_lungs_augment']:g}; "
                   f"masks ({prior['masks']}): {counts}")
    if result.val_report is not None:
        typer.echo(_headline(result.val_report, "validation"))
    if result.test_report is None:
        typer.echo("no test split (--test-fraction 0): no test accuracy")
    else:
        typer.echo(_headline(result.test_report))
        for line in report_lines(result.test_report):
            typer.echo(line)


@app.command("evaluate")
def evaluate(
    model: Path | None = typer.Argument(None, help="Model file (.keras; default: the one the last `hmt train` recorded)."),
    data: Path | None = typer.Argument(None, help="Labelled data set (default: the one the last `hmt train` recorded)."),
    split: str = typer.Option(DEFAULT_SPLIT, "--split", help="test, val or train (the split stored in the model; only for its own data set), or all."),
    classes: str | None = classes_option(),
    labels: str | None = labels_option(),
    uncertain: str | None = uncertain_option(),
    head: str | None = head_option(),
    preprocessing: str | None = preprocessing_option(),
    intensity: str | None = intensity_option(),
    unsafe_load: bool = typer.Option(False, "--unsafe-load", help="Load models that contain code (Lambda layers); only for files you trust."),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", help="Images per batch."),
    patient_regex: str | None = typer.Option(None, "--patient-regex", help="Regex with one group: the patient id in file names."),
    strict: bool = typer.Option(False, "--strict", help="Stop with exit code 2 at the first bad file."),
    out: Path | None = typer.Option(None, "--out", help="Folder for evaluation.json and confusion_matrix.png."),
    predictions: Path | None = typer.Option(None, "--predictions", help="Also write one CSV row per image: path, label, predicted, p_<class>..."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, "--threshold", help="Decision threshold of a one-output (binary) or multi-label model."),
    project_dir: Path = typer.Option(DEFAULT_PROJECT_FOLDER, "--project-dir", help="Where `hmt train` recorded MODEL and DATA."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Accuracy, per-class precision/recall/F1, confusion matrix, one-vs-rest ROC AUC and covid / normal binary readings.

    Works for any Keras classifier given its class names (--classes) when it has no hmt metadata; a multi-label one
    reads the CSV columns --labels names (per-finding AUC, unknown findings left out). Such a model records no split:
    the CSV's split column chooses --split's images, or every image is evaluated when it has none of them (or there
    is no such column).

    Example: hmt evaluate templates_out/model.keras data/phantom --split test --out templates_out/eval
    """
    if model is None or data is None:
        project = load_project(project_dir)
        model = model or Path(project["model"])
        data = data or Path(project["data"])
    keras_model, info = load_model(model, unsafe=unsafe_load, classes=names(classes), preprocessing=preprocessing, intensity=intensity,
                                   head=head, labels=names(labels))
    dataset = load_dataset_for(info, data, labels=names(labels), uncertain=uncertain, patient_regex=patient_regex, strict=strict)
    result = evaluate_model(keras_model, info, dataset, split=split, batch_size=batch_size, threshold=threshold, strict=strict,
                            progress=progress_bar(as_json))
    output = {"model": str(model), "data": str(data), **result.to_dict()}
    if predictions is not None:
        write_predictions(result, info.class_names, predictions)
    if out is not None:
        write_text(out / "evaluation.json", json.dumps(output, indent=2) + "\n")
        if "confusion_matrix" in result.report:
            confusion_matrix_figure(result.report["confusion_matrix"], info.class_names, out / "confusion_matrix.png",
                                    title=f"{display_path(model)}, {result.split} ({result.report['n']} images)")
    if as_json:
        typer.echo(json.dumps(output, indent=2))
        return
    typer.echo(f"model {display_path(model)} ({info.backbone}, classes {', '.join(info.class_names)}); "
               f"data {display_path(dataset.root)}; split {result.split}")
    for note in result.notes:
        typer.echo(f"note: {note}")
    for line in report_lines(result.report):
        typer.echo(line)
    echo_skipped(result.problems)
    if out is not None:
        typer.echo(f"wrote {display_path(out / 'evaluation.json')} and {display_path(out / 'confusion_matrix.png')}")
    if predictions is not None:
        typer.echo(f"predictions: {display_path(predictions)}")
