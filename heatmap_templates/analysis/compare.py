"""Scoring stage: new images against class templates, and what templates are worth on a labelled set.

A :class:`Comparer` is made from a templates file. It loads the model recorded there (or one
given, which must be the same file by content hash) and a CAM engine with the recorded layer,
method, score and threshold (a threshold given beats the recorded one:
:func:`~heatmap_templates.explain.engine_choice.engine_for`), once. Images then stream through the same tf.data pipeline as extraction
(:func:`~heatmap_templates.explain.heatmaps.iter_model_batches`) in batches; each batch's probabilities and
every class's CAM map come from one forward pass, and :class:`~heatmap_templates.analysis.scoring.TemplateScorer`
(which a Comparer is) scores them: maps prepared exactly as build prepared the members', a similarity with
each template, the atypical flag and the nearest strategy.

Bad images are skipped and logged (:class:`~heatmap_templates.errors.SkipLog`), never a crash.
:func:`evaluate_templates` runs the same scoring over a labelled set and reports template-match
accuracy, how well the similarity separates correct from misclassified images (ROC AUC),
lung-field energy per class and the classification metrics for context.

Example::

    comparer = Comparer("templates_out/templates.h5")
    run = comparer.compare(["new.png", "folder_of_images/"])
    for result in run.results:
        print(result.path, result.predicted, result.best_match, result.atypical)
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from heatmap_templates.analysis.scoring import (
    ATYPICAL_MEASURE,
    DEFAULT_ATYPICAL_PERCENTILE,
    ImageComparison,
    TemplateScorer,
)
from heatmap_templates.analysis.similarity import DEFAULT_SIMILARITY
from heatmap_templates.data.datasets import patient_groups
from heatmap_templates.data.decode import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from heatmap_templates.errors import BadFileError, HmtError, Problem, SkipLog, display_path, problems_json
from heatmap_templates.model.evaluation import DEFAULT_BATCH_SIZE
from heatmap_templates.model.heads import HEADS, predicted_classes
from heatmap_templates.model.objectives import Objective
from heatmap_templates.numeric.bootstrap import mean_interval
from heatmap_templates.numeric.metrics import add_interval, auc_interval, interval_ci, lung_field_energy, roc_auc
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.templates.templates_file import TemplateFile, replicate_interval

if TYPE_CHECKING:  # annotations only: the annotations module (and OpenCV) loads when annotations are given
    from heatmap_templates.analysis.annotations import Annotations
    from heatmap_templates.data.datasets import Dataset, Sample


@dataclass
class ComparisonRun:
    """Every image of one ``compare`` call, the files skipped, and the settings used."""

    templates: str
    model: str
    similarity: str
    atypical_percentile: float
    class_names: list[str]
    template_classes: list[str]
    results: list[ImageComparison]
    skipped: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "templates": self.templates,
            "model": self.model,
            "similarity": self.similarity,
            "atypical_measure": ATYPICAL_MEASURE,
            "atypical_percentile": self.atypical_percentile,
            "class_names": list(self.class_names),
            "template_classes": list(self.template_classes),
            "results": [result.to_dict() for result in self.results],
            "skipped": problems_json(self.skipped),
        }


# --------------------------------------------------------------------------- image discovery


def collect_images(inputs: Sequence[str | os.PathLike], skip_log: SkipLog) -> list[Path]:
    """Files given and image files under folders given (recursive, sorted, hidden entries skipped).

    A path that does not exist is logged as skipped; a folder without images is an error.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = []
            for directory, subdirs, names in os.walk(path):
                subdirs[:] = sorted(name for name in subdirs if not name.startswith("."))
                files += [Path(directory) / name for name in sorted(names)
                          if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES]
            if not files:
                raise HmtError(f"{display_path(path)}: no image files in this folder")
            found += files
        elif path.is_file():
            found.append(path)
        else:
            skip_log.add(path, "no such file or folder")
    return found


# --------------------------------------------------------------------------- comparer


class Comparer(TemplateScorer):
    """Scores image files against the templates of one file with the model that built them (see the module docstring)."""

    def __init__(self, templates: str | os.PathLike | TemplateFile, *, model: str | os.PathLike | None = None,
                 similarity: str = DEFAULT_SIMILARITY, atypical_percentile: float = DEFAULT_ATYPICAL_PERCENTILE,
                 threshold: float | None = None, unsafe_load: bool = False) -> None:
        from heatmap_templates.explain.engine_choice import engine_for
        from heatmap_templates.explain.heatmaps import model_sha256

        super().__init__(templates, similarity=similarity, atypical_percentile=atypical_percentile)
        settings = self.file.settings
        model_path = Path(model) if model is not None else Path(settings.model_path or "")
        if model is None and not model_path.is_file():
            raise HmtError(f"{display_path(self.file.path)}: the model it was built with ({display_path(model_path)}) "
                           "is not there; give it with $model", parameters=("model",))
        if not model_path.is_file():
            raise BadFileError(model_path, "no such model file")
        sha = model_sha256(model_path)
        if sha != settings.model_sha256:
            raise BadFileError(model_path, f"is not the model that {display_path(self.file.path)} was built with "
                                           f"(sha256 {sha[:12]} vs {settings.model_sha256[:12]})")
        self.model, self.info = load_recorded_model(model_path, settings, unsafe_load=unsafe_load)
        self.model_path = model_path
        self.engine = engine_for(settings, self.model, self.info, threshold=threshold)
        self.multi_label = HEADS[self.engine.head].multi_label

    def iter_results(self, paths: Sequence[str | os.PathLike], *, skip_log: SkipLog, batch_size: int = DEFAULT_BATCH_SIZE,
                     keep_maps: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                     progress: Progress | None = None) -> Iterator[ImageComparison]:
        """Score image files batch by batch, in order; bad files go to ``skip_log``.

        ``keep_maps`` attaches the :class:`ComparisonMaps` a figure needs (memory grows with the
        images kept, so callers drawing many figures should consume results as they come).
        """
        from heatmap_templates.explain.heatmaps import iter_model_batches

        if batch_size < 1:
            raise HmtError(f"batch size must be at least 1, got {batch_size}")
        progress = progress or NullProgress()
        progress.start(len(paths), "comparing")
        try:
            batches = iter_model_batches(paths, tuple(self.info.input_size), self.info.channels, self.info.preprocessing,
                                         batch_size=batch_size, skip_log=skip_log, max_pixels=max_pixels,
                                         intensity=self.info.intensity)
            for batch_number, batch in enumerate(batches):
                if len(batch.positions):
                    yield from self._score_batch(paths, batch.positions, batch.inputs, batch.images, keep_maps)
                progress.advance(min(batch_size, len(paths) - batch_number * batch_size))
        finally:
            progress.finish()

    def compare(self, inputs: Sequence[str | os.PathLike], *, batch_size: int = DEFAULT_BATCH_SIZE, keep_maps: bool = False,
                strict: bool = False, progress: Progress | None = None, labels: Sequence[str] | None = None,
                uncertain: str | None = None) -> ComparisonRun:
        """Score files, folders (searched recursively) and CSV manifests (:meth:`collect`); see :meth:`iter_results`."""
        skip_log = SkipLog(strict)
        paths, truths = self.collect(inputs, skip_log, labels=labels, uncertain=uncertain)
        results = list(self.iter_results(paths, skip_log=skip_log, batch_size=batch_size, keep_maps=keep_maps, progress=progress))
        for result in results:
            result.label = truths[result.position]
        return self.run_record(results, skip_log.problems)

    def load_dataset(self, data: str | os.PathLike, *, labels: Sequence[str] | None = None, uncertain: str | None = None,
                     strict: bool = False) -> Dataset:
        """A labelled data set read as the templates' store read its own: ``labels`` and ``uncertain`` given, else those
        recorded, else the model's own (:func:`~heatmap_templates.model.evaluation.load_dataset_for`)."""
        from heatmap_templates.model.evaluation import load_dataset_for

        settings = self.file.settings
        return load_dataset_for(self.info, data, labels=labels if labels is not None else settings.labels,
                                uncertain=uncertain if uncertain is not None else settings.uncertain, strict=strict)

    def collect(self, inputs: Sequence[str | os.PathLike], skip_log: SkipLog, *, labels: Sequence[str] | None = None,
                uncertain: str | None = None) -> tuple[list[Path], list[str | dict[str, int] | None]]:
        """The image files of ``inputs`` (:func:`collect_images`; a CSV manifest, a ``.csv`` with a path column
        (:func:`~heatmap_templates.data.datasets.is_manifest`), is read by :meth:`load_dataset` and its rows are images;
        another CSV is a file like any other, skipped when it does not decode) and each one's true label: a class name,
        a multi-label image's findings (1 / 0 / -1 unknown by name), or None for an image outside a manifest."""
        from heatmap_templates.data.datasets import is_manifest

        paths: list[Path] = []
        truths: list[str | dict[str, int] | None] = []
        manifests = [Path(item) for item in inputs if is_manifest(item)]
        if (labels is not None or uncertain is not None) and not manifests:
            raise HmtError("$labels and $uncertain read a CSV manifest; none is among the inputs", parameters=("labels", "uncertain"))
        for item in inputs:
            if Path(item) in manifests:
                dataset = self.load_dataset(item, labels=labels, uncertain=uncertain, strict=skip_log.strict)
                for problem in dataset.problems:
                    skip_log.add(problem.path, problem.reason)
                paths += [sample.path for sample in dataset.samples]
                truths += [sample.label if sample.findings is None else dict(zip(dataset.class_names, sample.findings, strict=True))
                           for sample in dataset.samples]
            else:
                found = collect_images([item], skip_log)
                paths += found
                truths += [None] * len(found)
        return paths, truths

    def run_record(self, results: list[ImageComparison], skipped: list[Problem]) -> ComparisonRun:
        """Wrap results with this comparer's settings."""
        return ComparisonRun(
            templates=display_path(self.file.path), model=display_path(self.model_path), similarity=self.similarity,
            atypical_percentile=self.atypical_percentile, class_names=list(self.class_names),
            template_classes=list(self.template_classes), results=results, skipped=skipped,
        )

    def _score_batch(self, paths: Sequence[str | os.PathLike], positions: np.ndarray, inputs: np.ndarray,
                     images_u8: np.ndarray, keep_maps: bool) -> Iterator[ImageComparison]:
        result = self.engine.all_classes(inputs)
        probabilities = np.asarray(result.probabilities, dtype=np.float64)
        if not np.all(np.isfinite(probabilities)):
            raise HmtError(f"{display_path(self.model_path)}: the model produced non-finite probabilities")
        findings = predicted_classes(probabilities, self.engine.head, self.engine.threshold) if self.multi_label else None
        # targets: the head's decision (a multi-label model's top finding)
        yield from self.score(paths, positions, probabilities, result.targets, images_u8, result.raw, findings=findings, keep_maps=keep_maps)


def load_recorded_model(model_path: Path, settings, *, unsafe_load: bool = False):
    """The model a store or templates file was made with (already checked by content hash), loaded as it was when its
    maps were made: (keras model, ModelInfo). Every model gets the recorded preprocessing and head kind; a model without
    hmt metadata also the recorded class names (which load_model checks against its output size) and pixel scaling (a
    model with metadata keeps its own, the same file's)."""
    from heatmap_templates.model.model_file import load_model

    brought = not _has_info(model_path)
    return load_model(model_path, unsafe=unsafe_load, classes=list(settings.class_names) if brought else None,
                      preprocessing=settings.preprocessing, intensity=settings.intensity if brought else None,
                      head=settings.head)


def _has_info(model_path: Path) -> bool:
    from heatmap_templates.model.model_file import read_model_info

    return read_model_info(model_path) is not None


# --------------------------------------------------------------------------- evaluation


@dataclass
class TemplateEvaluation:
    """How well templates describe a labelled set (see :func:`evaluate_templates`)."""

    templates: str
    data: str
    similarity: str
    n_images: int
    class_names: list[str]
    template_classes: list[str]
    template_match: dict  # overall and per-class accuracy of best-matching template == true class
    correct_vs_misclassified: dict  # ROC AUC of the predicted class's similarity, with counts
    lung_field_energy: dict  # per true class (images' predicted-class maps) and per template
    classification: dict  # metrics.classification_report over the same images
    skipped: list[Problem] = field(default_factory=list)
    faithfulness: dict | None = None  # deletion curves (faithfulness=True)
    localisation: dict | None = None  # against annotations (annotations=PATH)

    def to_dict(self) -> dict:
        return {
            **({"faithfulness": self.faithfulness} if self.faithfulness is not None else {}),
            **({"localisation": self.localisation} if self.localisation is not None else {}),
            "templates": self.templates,
            "data": self.data,
            "similarity": self.similarity,
            "n_images": self.n_images,
            "class_names": list(self.class_names),
            "template_classes": list(self.template_classes),
            "template_match": self.template_match,
            "correct_vs_misclassified": self.correct_vs_misclassified,
            "lung_field_energy": self.lung_field_energy,
            "classification": self.classification,
            "skipped": problems_json(self.skipped),
        }


def _summary(values: list[float], groups: Sequence | None = None) -> dict:
    """n, mean (with its 95 % bootstrap interval ``mean_ci``, whole ``groups``) and median of a list of numbers
    (None when empty)."""
    if not values:
        return {"n": 0, "mean": None, "median": None, "mean_ci": None}
    mean = mean_interval(values, groups=groups)
    return {"n": len(values), "mean": float(np.mean(values)), "median": float(np.median(values)), "mean_ci": interval_ci(mean)}


def _rows_of(groups: Sequence | None, rows: Sequence[int]) -> list | None:
    """The groups (patients) of some rows, in their order (None without groups)."""
    return None if groups is None else [groups[i] for i in rows]


def template_match_report(true_labels: Sequence[str | set[str]], best_matches: Sequence[str | None],
                          template_classes: Sequence[str], *, groups: Sequence | None = None) -> dict:
    """Accuracy of the best-matching template as a classifier, overall and per true class.

    Only images whose true class has a template count (another image can never match). A
    multi-label image's true label is the set of its positive findings: the best-matching template
    is right when it is one of them, and the image counts for each of its findings. Each accuracy has its 95 %
    bootstrap interval (``accuracy_ci``) over its images, a patient's images together with ``groups`` (one per image).
    """
    truths = [set(truth) if isinstance(truth, (set, frozenset)) else {truth} for truth in true_labels]
    hit = [best in truth for truth, best in zip(truths, best_matches, strict=True)]
    per_class: dict[str, dict] = {}
    for name in template_classes:
        rows = [i for i, truth in enumerate(truths) if name in truth]
        matches = [hit[i] for i in rows]
        per_class[name] = {"n": len(matches), "correct": int(sum(matches)),
                           "accuracy": float(np.mean(matches)) if matches else None,
                           "accuracy_ci": interval_ci(mean_interval(matches, groups=_rows_of(groups, rows)))}
    rows = [i for i, truth in enumerate(truths) if truth & set(template_classes)]
    hits, total = int(sum(hit[i] for i in rows)), len(rows)
    return {"n": total, "correct": hits, "accuracy": hits / total if total else None, "per_class": per_class,
            "accuracy_ci": interval_ci(mean_interval([hit[i] for i in rows], groups=_rows_of(groups, rows)))}


def separation_report(scores: Sequence[float], correct: Sequence[bool], atypical: Sequence[bool | None], *,
                      groups: Sequence | None = None) -> dict:
    """ROC AUC of ``scores`` for telling correct (positive) from misclassified images, with counts,
    and how often each group was flagged atypical. The AUC is None with a reason when a group is empty; its 95 %
    bootstrap interval (``auc_ci``) resamples the images (whole ``groups``), resamples lacking a group dropped and counted."""
    correct_array = np.asarray(correct, dtype=bool)
    n_correct = int(correct_array.sum())
    n_wrong = int(correct_array.size - n_correct)
    auc = roc_auc(np.asarray(scores, dtype=np.float64), correct_array) if correct_array.size else None
    reason = None
    if auc is None:
        reason = "no misclassified images" if n_wrong == 0 else "no correctly classified images"
    flags = np.asarray([bool(flag) for flag in atypical], dtype=bool)
    known = np.asarray([flag is not None for flag in atypical], dtype=bool)

    def flagged_share(group: np.ndarray) -> float | None:
        considered = group & known
        return float(flags[considered].mean()) if considered.any() else None

    return add_interval({
        "auc": auc,
        "auc_undefined_reason": reason,
        "n_correct": n_correct,
        "n_misclassified": n_wrong,
        "atypical_share_correct": flagged_share(correct_array),
        "atypical_share_misclassified": flagged_share(~correct_array),
        "n": n_correct + n_wrong,
    }, "auc", auc_interval(np.asarray(scores, dtype=np.float64), correct_array, groups=groups))


def evaluate_templates(
    templates: str | os.PathLike,
    data: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    similarity: str = DEFAULT_SIMILARITY,
    atypical_percentile: float = DEFAULT_ATYPICAL_PERCENTILE,
    split: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    unsafe_load: bool = False,
    progress: Progress | None = None,
    faithfulness: bool = False,
    removal: str = "road",
    deletion_sample: int = 100,
    body_masks: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    uncertain: str | None = None,
) -> TemplateEvaluation:
    """Score a labelled set (class folders or CSV; ``split`` keeps one split of a CSV) against the templates.
    A multi-label model's CSV is read with ``labels`` and ``uncertain`` given, else as the store recorded
    (:meth:`Comparer.load_dataset`).

    Reports template-match accuracy (best-matching template == true class), the ROC AUC of the
    predicted class's similarity for separating correct from misclassified images, lung-field
    energy (the share of the predicted class's registered, normalised map inside the reference
    lung mask) per true class and of each template, and the classification metrics. With
    ``faithfulness``, the deletion test (:mod:`heatmap_templates.analysis.faithfulness`) on a sample of
    ``deletion_sample`` images (``body_masks``: a folder of each image's body mask, as an annotation mask folder, for
    its like-for-like baselines; else Otsu's threshold of each image); with ``annotations`` (a mask folder or a box CSV), localisation of each
    correctly classified image's map and of each template (:mod:`heatmap_templates.analysis.annotations`).
    """
    from heatmap_templates.model.evaluation import check_labels_fit

    comparer = Comparer(templates, model=model, similarity=similarity, atypical_percentile=atypical_percentile, unsafe_load=unsafe_load)
    objective = Objective(comparer.engine.head, comparer.class_names, comparer.info.negatives)
    dataset = comparer.load_dataset(data, labels=labels, uncertain=uncertain)
    check_labels_fit(objective, dataset)
    samples = _split_samples(dataset, split, data)
    skip_log = SkipLog(False, dataset.problems)
    found = None if annotations is None else _read_annotations(annotations, comparer, dataset, samples, data)
    results, image_scores = _score_images(comparer, samples, found, data, skip_log=skip_log, batch_size=batch_size,
                                          progress=progress)
    targets = objective.labels([samples[r.position] for r in results])
    groups = patient_groups([samples[r.position] for r in results])  # the intervals' units: patients where known
    truths = [{name for name, value in zip(comparer.class_names, row, strict=True) if value == 1} if objective.multi_label
              else comparer.class_names[int(row)] for row in targets]
    probabilities = np.array([[r.probabilities[name] for name in comparer.class_names] for r in results])
    scored_rows = [i for i, r in enumerate(results) if r.predicted_similarity is not None]
    scored = [(results[i], truths[i]) for i in scored_rows]
    scored_similarities = [r.predicted_similarity for r, _ in scored if r.predicted_similarity is not None]
    energy = _energy_report(comparer, results, truths, groups)
    deletion = None
    if faithfulness:
        deletion = _deletion_curves(comparer, [samples[r.position] for r in results], targets, objective.multi_label,
                                    sample=deletion_sample, removal=removal, seed=seed, batch_size=batch_size,
                                    progress=progress, body_masks=body_masks, root=dataset.root)
    localisation = None if found is None else _localisation(comparer, found, image_scores)
    return TemplateEvaluation(
        templates=display_path(comparer.file.path),
        data=display_path(data),
        similarity=similarity,
        n_images=len(results),
        class_names=list(comparer.class_names),
        template_classes=list(comparer.template_classes),
        template_match=template_match_report(truths, [r.best_match for r in results], comparer.template_classes, groups=groups),
        correct_vs_misclassified=separation_report(
            scored_similarities, [r.predicted in ({truth} if isinstance(truth, str) else truth) for r, truth in scored],
            [r.atypical for r, _ in scored], groups=_rows_of(groups, scored_rows)),
        lung_field_energy=energy,
        faithfulness=deletion,
        localisation=localisation,
        classification=objective.report(probabilities, targets, comparer.engine.threshold, groups=groups),
        skipped=skip_log.problems,
    )


def _split_samples(dataset: Dataset, split: str | None, data: str | os.PathLike) -> list[Sample]:
    """The samples evaluated: every one, or those of one split of a CSV (a user error when that split is empty)."""
    samples = dataset.samples
    if split is not None:
        samples = [sample for sample in samples if sample.split == split]
        if not samples:
            raise HmtError(f"{display_path(data)}: no images in split {split!r}")
    return samples


def _read_annotations(annotations: str | os.PathLike, comparer: Comparer, dataset: Dataset, samples: Sequence[Sample],
                      data: str | os.PathLike) -> Annotations:
    """The annotations of the evaluated images and of the templates' members, at input size, read before any image
    is scored so that a file matching nothing stops the run early."""
    from heatmap_templates.analysis.annotations import check_annotated, read_annotations

    members = [(m.path, name, dataset.root) for name, t in comparer.file.templates.items() for m in t.members]
    found = read_annotations(annotations, [(str(s.path), s.label, dataset.root) for s in samples] + members,
                             (int(comparer.info.input_size[0]), int(comparer.info.input_size[1])))
    check_annotated(found, display_path(data))
    return found


def _score_images(comparer: Comparer, samples: Sequence[Sample], found: Annotations | None, data: str | os.PathLike, *,
                  skip_log: SkipLog, batch_size: int, progress: Progress | None) -> tuple[list[ImageComparison], list[dict]]:
    """Every sample scored against the templates, and (with annotations) each image's localisation, scored as it
    streams past so that no image's maps are held; stops when no image could be scored."""
    image_scores: list[dict] = []
    results = []
    for result in comparer.iter_results([s.path for s in samples], skip_log=skip_log, batch_size=batch_size, progress=progress,
                                        keep_maps=found is not None):
        if found is not None:
            image_scores.extend(_image_localisation(comparer, result, samples[result.position], found))
            result.maps = None  # scored: do not hold every image's maps
        results.append(result)
    if not results:
        raise HmtError(f"{display_path(data)}: no image could be scored")
    return results, image_scores


def _energy_report(comparer: Comparer, results: Sequence[ImageComparison], truths: Sequence[str | set[str]],
                   groups: Sequence | None = None) -> dict:
    """Lung-field energy of the images' predicted-class maps per true class (the mean with its 95 % bootstrap interval
    over the images, whole ``groups``) and of each template (``templates_ci``: the 2.5th and 97.5th percentiles of the
    energies of the template's stored bootstrap replicate means), beside the lung area's share of the image (what a
    map spread evenly would score)."""
    energy_by_class = {}
    for name in comparer.class_names:
        rows = [i for i, (r, truth) in enumerate(zip(results, truths, strict=True))
                if name in ({truth} if isinstance(truth, str) else truth) and r.lung_field_energy is not None]
        values = [energy for i in rows if (energy := results[i].lung_field_energy) is not None]
        energy_by_class[name] = _summary(values, _rows_of(groups, rows))
    template_energy = {name: float(lung_field_energy(comparer.file.templates[name].mean, comparer.lung_mask))
                       for name in comparer.template_classes}
    replicates = {name: replicate_interval(comparer.file.path, name, partial(lung_field_energy, lung_mask=comparer.lung_mask))
                  for name in comparer.template_classes}
    missing = [name for name, (ci, _) in replicates.items() if ci is None]
    return {
        "lung_area_fraction": float(comparer.lung_mask.mean()),
        "by_true_class": energy_by_class,
        "templates": template_energy,
        "templates_ci": {name: ci for name, (ci, _) in replicates.items()},
        "templates_n": {name: comparer.file.templates[name].count for name in comparer.template_classes},
        "templates_replicates": {name: count for name, (_, count) in replicates.items()},
        **({"templates_ci_note": f"no interval for {', '.join(missing)}: the templates file keeps no bootstrap replicates "
            "of the template mean (built with 0 replicates, or its band state is not stored)"} if missing else {}),
    }


def _deletion_curves(comparer: Comparer, samples: Sequence[Sample], labels: np.ndarray, multi_label: bool, *, sample: int,
                     removal: str, seed: int, batch_size: int, progress: Progress | None,
                     body_masks: str | os.PathLike | None = None, root: Path | None = None) -> dict:
    """The deletion test on the scored images (their class index, -1 for multi-label: unknown), as its JSON record;
    intervals resample patients where the data set knows them."""
    from heatmap_templates.analysis.faithfulness import run_deletion

    single = np.asarray(labels) if not multi_label else np.full(len(samples), -1)
    paths = [str(s.path) for s in samples]
    bodies: Callable[[str], np.ndarray | None] | None = None
    if body_masks is not None:
        from heatmap_templates.analysis.annotations import read_annotations

        if not Path(body_masks).is_dir():
            raise BadFileError(Path(body_masks), "body masks must be a folder of masks named as the images (.png)")
        size = (int(comparer.info.input_size[0]), int(comparer.info.input_size[1]))
        found = read_annotations(body_masks, [(path, "body", root or Path(path).parent) for path in paths], size)
        if not len(found):  # a phantom's <data>/ground_truth/body names images relative to <data>, wherever the list is
            found = read_annotations(body_masks, [(path, "body", Path(body_masks).resolve().parent.parent) for path in paths], size)
        if not len(found):
            raise HmtError(f"{display_path(body_masks)}: no body mask matches any image of the deletion test")
        bodies = partial(found.for_image, label="body")

    groups = patient_groups(samples)  # an image of unknown patient is its own
    return run_deletion(comparer, paths, single, sample=sample, removal=removal, seed=seed, batch_size=batch_size,
                        progress=progress, bodies=bodies, groups=groups).to_dict()


def _localisation(comparer: Comparer, found: Annotations, image_scores: Sequence[dict]) -> dict:
    """The images' localisation scores summarised, and each template against its annotated members' masks."""
    from heatmap_templates.analysis.annotations import summarise, template_localisation

    image_shape = (int(comparer.info.input_size[0]), int(comparer.info.input_size[1]))
    return {
        "annotations": display_path(found.source),
        "images": summarise(image_scores),
        "templates": {name: template_localisation(template, found, comparer.registrar, image_shape)
                      for name, template in comparer.file.templates.items()},
    }


def _image_localisation(comparer: Comparer, result: ImageComparison, sample, annotations) -> list[dict]:
    """Localisation of a correctly classified image's map for its class against its annotation, in the reference
    frame (the annotation moved with the image's registration); empty when it is not scored."""
    from heatmap_templates.numeric.metrics import localisation_scores
    from heatmap_templates.templates.registration import Alignment

    if result.maps is None or result.registration_matrix is None or sample.findings is not None:
        return []
    index = comparer.info.label_index(sample.label)
    if index < 0 or result.predicted != comparer.class_names[index]:
        return []
    mask = annotations.for_image(sample.path, sample.label)
    if mask is None:
        mask = annotations.for_image(sample.path, result.predicted)
    if mask is None:
        return []
    alignment = Alignment(np.reshape(result.registration_matrix, (2, 3)), result.registration_method, result.registration_quality,
                          None, (int(comparer.info.input_size[0]), int(comparer.info.input_size[1])))
    moved = comparer.registrar.warp(mask.astype(np.float32), alignment) >= 0.5
    if not moved.any():
        return []
    return [localisation_scores(result.maps.heatmap, moved)]
