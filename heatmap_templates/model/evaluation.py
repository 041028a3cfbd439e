"""Classifying in-memory images and measuring a classifier on a labelled data set (`hmt evaluate`).

Images reach the model through :mod:`heatmap_templates.data.preprocess` (uint8 at input size, then the
model's preprocessing), and outputs become class probabilities through the model's head kind, so
the predictions here equal those ``hmt heatmaps`` stores for the same model and images.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from heatmap_templates.data.datasets import (
    DEFAULT_UNCERTAIN,
    SPLIT_NAMES,
    Dataset,
    Sample,
    dataset_fingerprint,
    load_dataset,
    patient_groups,
    relative_path,
)
from heatmap_templates.data.disk_arrays import DiskArray
from heatmap_templates.data.preprocess import load_images, to_model_input
from heatmap_templates.errors import HmtError, Problem, SkipLog, display_path, problems_json
from heatmap_templates.files import write_text
from heatmap_templates.model.heads import DEFAULT_THRESHOLD, HEADS, predicted_classes, probabilities_of, reads_logits
from heatmap_templates.model.model_file import ModelInfo
from heatmap_templates.model.objectives import Objective
from heatmap_templates.progress import NullProgress, Progress

DEFAULT_BATCH_SIZE = 32
EVALUATION_SPLITS = (*SPLIT_NAMES, "all")
DEFAULT_SPLIT = "test"


@dataclass
class EvaluationResult:
    """The metrics of one evaluation run, what it ran on, and every image's prediction."""

    report: dict
    split: str  # the split actually evaluated (``all`` when DATA is not the training set)
    requested_split: str
    problems: list[Problem]
    notes: list[str]
    paths: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) class indices, or (N, L) findings
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (N, K)
    predicted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) or (N, L) bool

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "requested_split": self.requested_split,
            "notes": list(self.notes),
            "skipped": problems_json(self.problems),
            **self.report,
        }


def load_dataset_for(info: ModelInfo, source: str | os.PathLike, *, labels: Sequence[str] | None = None,
                     uncertain: str | None = None, patient_regex: str | None = None, strict: bool = False) -> Dataset:
    """A data set labelled as the model's labels are: a multi-label model reads its findings from the columns of a CSV
    manifest named ``labels`` (in its output order; default: named like its findings) with the ``uncertain``-label
    policy (default: the one it was trained with, else ``ignore``), the data set's findings named as the model's;
    any other model reads classes (and refuses ``labels`` and ``uncertain``)."""
    if not HEADS[info.head_kind].multi_label:
        if labels is not None or uncertain is not None:
            raise HmtError(f"$labels and $uncertain read the findings of a multi-label model; this model's head is "
                           f"{info.head_kind} (one class per image; a linear output meant as independent sigmoids is "
                           "read as such with $head sigmoids)", parameters=("labels", "uncertain", "head"))
        return load_dataset(source, patient_regex=patient_regex, strict=strict)
    columns = [name.strip() for name in labels] if labels is not None else list(info.class_names)
    if len(columns) != len(info.class_names):
        raise HmtError(f"$labels names {len(columns)} finding columns; the model has {len(info.class_names)} outputs "
                       f"({', '.join(info.class_names)})", parameters=("labels",))
    policy = uncertain if uncertain is not None else info.training.get("uncertain", DEFAULT_UNCERTAIN)
    dataset = load_dataset(source, labels=columns, uncertain=policy, patient_regex=patient_regex, strict=strict)
    return _named_as_model(dataset, list(info.class_names))


def _named_as_model(dataset: Dataset, names: list[str]) -> Dataset:
    """A multi-label data set whose findings (columns in the model's output order) carry the model's finding names."""
    if list(dataset.class_names) == names:
        return dataset
    renamed = dict(zip(dataset.class_names, names, strict=True))
    samples = [replace(sample, label=renamed.get(sample.label, sample.label)) for sample in dataset.samples]
    return replace(dataset, samples=samples, class_names=names)


def model_input(images: np.ndarray, info: ModelInfo) -> np.ndarray:
    """(N, h, w) uint8 images at the model's input size -> float32 model input."""
    return to_model_input(images, info.channels, info.preprocessing)


def predict_in_batches(model, images, info: ModelInfo, batch_size: int, progress: Progress | None,
                       description: str) -> Iterator[np.ndarray]:
    """``model.predict_on_batch`` over uint8 images (an array, or a DiskArray read batch by batch), one output per batch."""
    progress = progress or NullProgress()
    progress.start(len(images), description)
    try:
        for start in range(0, len(images), batch_size):
            batch = model_input(images[start:start + batch_size], info)
            yield np.asarray(model.predict_on_batch(batch))
            progress.advance(len(batch))
    finally:
        progress.finish()


def predict_probabilities(model, info: ModelInfo, images: np.ndarray | DiskArray, *, batch_size: int = DEFAULT_BATCH_SIZE,
                          progress: Progress | None = None) -> np.ndarray:
    """Class probabilities (N, K) for in-memory uint8 images, through the model's head kind."""
    outputs = list(predict_in_batches(model, images, info, batch_size, progress, "classifying"))
    if not outputs:
        return np.zeros((0, len(info.class_names)))
    values = np.concatenate(outputs)
    if not np.all(np.isfinite(values)):
        raise HmtError("the model produced non-finite outputs (NaN or infinity)")
    probabilities = probabilities_of(values, info.head_kind, from_logits=reads_logits(model, info.head_kind))
    if probabilities.ndim != 2 or probabilities.shape[1] != len(info.class_names):
        raise HmtError(f"the model outputs shape {values.shape[1:]}, expected scores of {len(info.class_names)} classes")
    return probabilities


def evaluate(model, info: ModelInfo, dataset: Dataset, *, split: str = DEFAULT_SPLIT, batch_size: int = DEFAULT_BATCH_SIZE,
             threshold: float = DEFAULT_THRESHOLD, strict: bool = False, progress: Progress | None = None) -> EvaluationResult:
    """Classification report of ``model`` on ``dataset`` (per finding for a multi-label model).

    ``split`` (test, val, train) selects the images of that split recorded in the model's metadata,
    but only when ``dataset`` is the data set the model was trained on (same fingerprint); a model that records no
    split (one hmt did not train) takes that split from a CSV ``split`` column when it has rows of that split;
    otherwise, and for ``all``, every image is evaluated and a note says so. ``threshold`` decides
    a one-output or multi-label model's predictions. A one-against-the-rest model (``TrainConfig.binary``)
    counts the data set's other classes as its negative class. The report's 95 % intervals resample the evaluated
    images, a patient's images together where the data set knows patients.
    """
    if split not in EVALUATION_SPLITS:
        raise HmtError(f"unknown split {split!r}; choose test, val, train or all")
    objective = Objective(info.head_kind, info.class_names, info.negatives)
    check_labels_fit(objective, dataset)
    samples, used, notes = _evaluated_samples(info, dataset, split)
    if not samples:
        raise HmtError(f"{display_path(dataset.root)}: the {split} split has no images")
    skip_log = SkipLog(strict, dataset.problems)
    images, kept = load_images(samples, info.input_size, skip_log, intensity=info.intensity, progress=progress)
    if not kept:
        raise HmtError(f"{display_path(dataset.root)}: none of the {len(samples)} images could be decoded")
    labels = objective.labels(kept)
    probabilities = predict_probabilities(model, info, images, batch_size=batch_size, progress=progress)
    report = objective.report(probabilities, labels, threshold, groups=patient_groups(kept))
    return EvaluationResult(report=report, split=used, requested_split=split, problems=skip_log.problems, notes=notes,
                            paths=[display_path(s.path) for s in kept], labels=labels, probabilities=probabilities,
                            predicted=predicted_classes(probabilities, objective.head, threshold))


def _evaluated_samples(info: ModelInfo, dataset: Dataset, split: str) -> tuple[list[Sample], str, list[str]]:
    """(samples, split used, notes): the model's recorded ``split`` of its own data set; for a model that records no
    split (one hmt did not train) the rows of a CSV ``split`` column that has rows of it; otherwise every image, with a
    note naming the split asked for."""
    samples = list(dataset.samples)
    if split == "all":
        return samples, "all", []
    if info.split.get(split) is not None and info.dataset_fingerprint == dataset_fingerprint(dataset):
        wanted = set(info.split[split])
        return [s for s in samples if relative_path(s, dataset.root) in wanted], split, []
    in_split = [s for s in samples if s.split == split]
    if not info.split and in_split:
        return in_split, split, [f"the model records no split: the {split} rows of DATA's split column"]
    if info.split:
        reason = f"DATA is not the data set this model was trained on (or the model records no {split} split)"
    elif any(s.split is not None for s in samples):
        reason = f"the model records no split and DATA's split column has no {split} rows"
    else:
        reason = "the model records no split and DATA has no split column"
    return samples, "all", [f"{reason}: evaluating all {len(samples)} images instead of the {split} split"]


def check_labels_fit(objective: Objective, dataset: Dataset) -> None:
    """HmtError when the data set's labels are not the model's: other findings, or classes it does not know."""
    where = display_path(dataset.root)
    if objective.multi_label or dataset.multi_label:
        if objective.multi_label != dataset.multi_label or list(dataset.class_names) != objective.class_names:
            kind = "findings" if objective.multi_label else "classes"
            raise HmtError(f"{where}: the data set's labels ({', '.join(dataset.class_names)}) are not the model's {kind} "
                           f"({', '.join(objective.class_names)}); a multi-label model needs a data set loaded with $labels "
                           "set to the same findings", parameters=("labels",))
        return
    unknown = sorted({s.label for s in dataset.samples if objective.labels([s])[0] < 0})
    if unknown:
        raise HmtError(f"{where}: class {', '.join(unknown)} is not one of the model's classes ({', '.join(objective.class_names)})")


def write_predictions(result: EvaluationResult, class_names: list[str], path: str | os.PathLike) -> Path:
    """One CSV row per evaluated image, atomically: path, label, predicted, then p_<class> for every class.

    For a multi-label model ``label`` and ``predicted`` list the positive findings, joined by ``;``.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "predicted", *(f"p_{name}" for name in class_names)])
    for image_path, label, decision, row in zip(result.paths, result.labels, result.predicted, result.probabilities, strict=True):
        if np.ndim(label):
            shown_label = ";".join(name for name, value in zip(class_names, label, strict=True) if value == 1)
            shown_decision = ";".join(name for name, value in zip(class_names, decision, strict=True) if value)
        else:
            shown_label, shown_decision = class_names[int(label)], class_names[int(decision)]
        writer.writerow([image_path, shown_label, shown_decision, *(repr(float(p)) for p in row)])
    return write_text(path, buffer.getvalue())
