"""What a report shows, collected in one pass over a heatmap store: a row per image and the gallery thumbnails.

Every image of the store is scored against the templates by :class:`~heatmap_templates.analysis.scoring.TemplateScorer`,
the same scoring ``hmt compare`` uses, from the maps the store keeps (no model is needed). Galleries per class:
the members with the highest and the lowest leave-one-out correlation (most typical, most atypical) and the
misclassified images (the most confident mistakes first), each a thumbnail of the heatmap over the registered image.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from heatmap_templates.analysis.scoring import TemplateScorer
from heatmap_templates.analysis.similarity import DEFAULT_SIMILARITY
from heatmap_templates.analysis.strategy_search import members_store
from heatmap_templates.data.datasets import Sample, patient_groups, patient_id_from_name
from heatmap_templates.errors import HmtError, display_path
from heatmap_templates.model.heads import is_multi_label
from heatmap_templates.numeric.bootstrap import mean_interval
from heatmap_templates.numeric.metrics import classification_report, interval_ci, lung_field_energy, multilabel_report
from heatmap_templates.present.report.thumbnails import colour_table, enlarged_views, jpeg_bytes, overlay_rgb
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.store import HeatmapReader
from heatmap_templates.templates.prepare import PreparedMaps, prepare_maps
from heatmap_templates.templates.templates_file import (
    TemplateFile,
    read_checks,
    read_contrasts,
    read_strategies,
    read_zones,
    replicate_interval,
)

DEFAULT_GALLERY_SIZE = 24  # thumbnails per gallery (typical, atypical, misclassified) and class
GALLERIES = ("typical", "atypical", "misclassified")
ROW_COLUMNS = ("index", "path", "label", "predicted", "probability", "correct", "best_template", "similarity", "atypical",
               "percentile_rank", "strategy", "lung_field_energy", "registration_quality", "member_of", "loo_correlation", "thumbnail")


@dataclass
class ImageRow:
    """One image of the heatmap store as the report's table shows it."""

    index: int
    path: str
    label: str  # the true class; multi-label: the positive findings, comma-separated; "" when unknown
    predicted: str  # the predicted class; multi-label: the findings at the threshold
    probability: float  # of the predicted class (multi-label: of the most probable finding)
    correct: bool | None  # None when the label is unknown
    best_template: str | None
    similarity: float | None  # to the predicted class's template, by the report's similarity
    atypical: bool | None
    percentile_rank: float | None  # within the predicted class's leave-one-out correlations
    strategy: int | None
    lung_field_energy: float | None
    registration_quality: float
    member_of: str = ""  # the classes whose template it is a member of
    loo_correlation: float | None = None  # as a member: its correlation with the template built without it
    thumbnail: str | None = None  # name of its thumbnail (the predicted class's map), when a gallery shows it

    def values(self) -> list:
        """The row in ``ROW_COLUMNS`` order, numbers rounded for the page."""
        return [_rounded(getattr(self, name), 1 if name == "percentile_rank" else 4) for name in ROW_COLUMNS]


@dataclass
class GalleryItem:
    """A thumbnail in a gallery: the row it shows, which class's map, and the value the gallery is sorted by."""

    row: int
    thumbnail: str
    map_class: str
    value: float | None


@dataclass
class ClassSection:
    """One class: its template's numbers (when it has one), strategies and galleries."""

    name: str
    members: int = 0
    mean_pairwise_correlation: float | None = None
    loo_median: float | None = None
    loo_range: tuple[float, float] | None = None
    template_lung_energy: float | None = None
    predicted_lung_energy: float | None = None  # mean over the images predicted as the class
    template_lung_energy_ci: list[float] | None = None  # 2.5th and 97.5th percentiles over the template's bootstrap replicates
    predicted_lung_energy_ci: list | None = None  # 95 % bootstrap interval of the mean over those images (patients by file name)
    strategies: dict | None = None
    galleries: dict[str, list[GalleryItem]] = field(default_factory=dict)
    gallery_totals: dict[str, int] = field(default_factory=dict)  # how many images each gallery could show


@dataclass
class ReportData:
    """Everything the page shows except the figure files."""

    templates: TemplateFile
    store: HeatmapReader
    similarity: str
    rows: list[ImageRow]
    classes: list[ClassSection]
    thumbnails: dict[str, bytes]
    store_metrics: dict | None  # classification over the store's labelled images
    checks: dict[str, dict]
    path_root: str = ""  # the folder every path starts with; once paths are shown relative to it (privacy), its name
    contrasts: dict[str, dict] = field(default_factory=dict)  # hmt contrast results by name
    zones: dict | None = None  # the hmt zones table
    enlarged: dict[str, bytes] = field(default_factory=dict)  # the enlarged view's images by name (enlarged_views)


def _rounded(value, digits: int = 4):
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else round(float(value), digits)
    return value


def common_folder(paths: list[str]) -> str:
    """The deepest folder holding every path ('' when they share none), so that the page can show shorter paths."""
    folders = {os.path.dirname(path) for path in paths}
    try:
        common = os.path.commonpath(sorted(folders)) if folders else ""
    except ValueError:  # absolute and relative paths mixed
        return ""
    return "" if common in ("", os.sep) else common + os.sep


def open_store_for(file: TemplateFile, heatmaps: str | os.PathLike | None) -> HeatmapReader:
    """The heatmap store given, or the one the templates were built from (:func:`members_store`), with images in it."""
    reader = members_store(file, heatmaps)
    if not len(reader):
        raise HmtError(f"{display_path(reader.path)}: holds no images")
    return reader


def _label_text(reader: HeatmapReader, i: int) -> str:
    names = reader.class_names
    if is_multi_label(reader.settings.head):
        return ", ".join(n for n, v in zip(names, reader.labels[i], strict=True) if v == 1)
    return names[int(reader.labels[i])] if int(reader.labels[i]) >= 0 else ""


def _correct(reader: HeatmapReader, i: int) -> bool | None:
    if is_multi_label(reader.settings.head):
        known = reader.labels[i] >= 0
        return bool(np.all(reader.correct[i][known])) if known.any() else None
    return bool(reader.correct[i]) if int(reader.labels[i]) >= 0 else None


def _predicted_index(reader: HeatmapReader) -> np.ndarray:
    """Each image's predicted class (N,): the head's decision, or a multi-label model's most probable finding."""
    if is_multi_label(reader.settings.head):
        return np.argmax(reader.probabilities, axis=1) if len(reader) else np.zeros(0, np.int64)
    return np.asarray(reader.predicted, np.int64)


def store_groups(paths: Sequence[str]) -> list[str] | None:
    """The patients of a store's images for the intervals, by the file-name rules (the store keeps no patient column;
    :func:`~heatmap_templates.data.datasets.patient_id_from_name`); None when every image is its own."""
    return patient_groups([Sample(Path(path), "", patient_id_from_name(Path(path).name)) for path in paths])


def store_metrics(reader: HeatmapReader) -> dict | None:
    """The classifier's metrics over the store's labelled images (every split the heatmaps were computed for), with
    intervals over their patients as far as the file names tell them."""
    names = reader.class_names
    multi = is_multi_label(reader.settings.head)
    known = np.any(reader.labels >= 0, axis=1) if multi else reader.labels >= 0
    if not known.any():
        return None
    groups = store_groups([path for path, keep in zip(reader.paths, known, strict=True) if keep])
    if multi:
        return multilabel_report(reader.probabilities[known], reader.labels[known], names, float(reader.settings.threshold),
                                 groups=groups)
    return classification_report(reader.probabilities[known], reader.labels[known], names, predicted=reader.predicted[known],
                                 groups=groups)


def _plan_galleries(file: TemplateFile, reader: HeatmapReader, size: int, where: dict[str, int],
                    predicted: np.ndarray) -> tuple[list[ClassSection], dict[int, dict[str, int]]]:
    """Sections per class with gallery entries chosen (thumbnails not yet drawn) and, per row, the class maps to draw."""
    names = reader.class_names
    wanted: dict[int, dict[str, int]] = {}
    sections = []

    def item(row: int, k: int, value: float | None) -> GalleryItem:
        key = f"{row}-{k}"
        wanted.setdefault(row, {})[key] = k
        return GalleryItem(row, key, names[k], None if value is None else float(value))

    for k, name in enumerate(names):
        section = ClassSection(name)
        template = file.templates.get(name)
        if template is not None and template.count:
            rows = np.asarray([where.get(member.path, -1) for member in template.members])
            loo = np.asarray(template.loo_correlations, np.float64)
            if len(loo) == len(rows):
                order = np.argsort(-loo, kind="stable")
                order = order[rows[order] >= 0]
                shown = min(size, (len(order) + 1) // 2)  # a small class splits its members between the two galleries
                typical = order[:shown]
                atypical = order[::-1][:min(size, len(order) - shown)]
                section.galleries["typical"] = [item(int(rows[i]), k, loo[i]) for i in typical]
                section.galleries["atypical"] = [item(int(rows[i]), k, loo[i]) for i in atypical]
                section.gallery_totals.update(typical=len(order), atypical=len(order))
        if is_multi_label(reader.settings.head):
            known = reader.labels[:, k] >= 0
            wrong = np.flatnonzero(known & ~reader.correct[:, k].astype(bool))
            confidence = np.abs(reader.probabilities[wrong, k] - float(reader.settings.threshold))
            chosen = [(int(i), k) for i in wrong[np.argsort(-confidence, kind="stable")][:size]]
        else:
            wrong = np.flatnonzero((reader.labels == k) & ~reader.correct.astype(bool))
            confidence = reader.probabilities[wrong, predicted[wrong]] if len(wrong) else np.zeros(0)
            chosen = [(int(i), int(predicted[i])) for i in wrong[np.argsort(-confidence, kind="stable")][:size]]
        section.galleries["misclassified"] = [item(i, m, reader.probabilities[i, m]) for i, m in chosen]
        section.gallery_totals["misclassified"] = len(wrong)
        sections.append(section)
    return sections, wanted


def _template_numbers(file: TemplateFile, sections: list[ClassSection], energies: dict[str, list[tuple[float, str]]]) -> None:
    """Consistency, lung-field energy (the template's and the mean of the images predicted as the class, each with its
    95 % interval) and strategies of each class with a template; ``energies``: (energy, path) of each class's images."""
    lungs = np.asarray(file.lung_mask, bool)
    strategies = read_strategies(file.path)
    for section in sections:
        template = file.templates.get(section.name)
        if template is None:
            continue
        section.members = template.count
        section.mean_pairwise_correlation = template.mean_pairwise_correlation
        loo = np.asarray(template.loo_correlations, np.float64)
        if loo.size:
            section.loo_median = float(np.median(loo))
            section.loo_range = (float(loo.min()), float(loo.max()))
        section.template_lung_energy = float(lung_field_energy(np.asarray(template.mean), lungs))
        section.template_lung_energy_ci, _ = replicate_interval(file.path, section.name, partial(lung_field_energy, lung_mask=lungs))
        values = [energy for energy, _ in energies.get(section.name, [])]
        section.predicted_lung_energy = float(np.mean(values)) if values else None
        groups = store_groups([path for _, path in energies.get(section.name, [])])
        section.predicted_lung_energy_ci = interval_ci(mean_interval(values, groups=groups)) if values else None
        if section.name in strategies:
            result = strategies[section.name]
            section.strategies = {"k": result.k, "chosen_by": result.chosen_by, "stability": result.stability,
                                  "clusters": [{"size": s.size, "consistency": s.consistency} for s in result.strategies]}


def collect(file: TemplateFile, reader: HeatmapReader, *, similarity: str = DEFAULT_SIMILARITY,
            gallery_size: int = DEFAULT_GALLERY_SIZE, cmap: str, batch_size: int = 64,
            progress: Progress | None = None) -> ReportData:
    """Score every image of ``reader`` against ``file``'s templates and draw the thumbnails the galleries show."""
    if gallery_size < 0:
        raise HmtError(f"$gallery_size must be 0 or more, got {gallery_size}", parameters=("gallery_size",))
    scorer = TemplateScorer(file, similarity=similarity)
    if reader.class_names != scorer.class_names:
        raise HmtError(f"{display_path(reader.path)}: its classes {reader.class_names} are not the templates' {scorer.class_names}")
    where = {path: i for i, path in enumerate(reader.paths)}
    predicted = _predicted_index(reader)
    sections, wanted = _plan_galleries(file, reader, gallery_size, where, predicted)
    table = colour_table(cmap)
    template_columns = [reader.class_names.index(name) for name in scorer.template_classes]
    members: dict[int, list[tuple[str, float | None]]] = {}
    for name, template in file.templates.items():
        loo = np.asarray(template.loo_correlations, np.float64)
        for position, member in enumerate(template.members):
            if member.path in where:
                members.setdefault(where[member.path], []).append((name, float(loo[position]) if position < loo.size else None))
    rows: list[ImageRow] = []
    energies: dict[str, list[tuple[float, str]]] = {}
    thumbnails: dict[str, bytes] = {}
    enlarged: dict[str, bytes] = {}
    progress = progress or NullProgress()
    progress.start(len(reader), "scoring the store's images")
    try:
        start = 0
        for batch in reader.iter_batches(batch_size):
            positions = np.arange(start, start + len(batch))
            prepared = prepare_maps(batch.images, batch.raw, scorer.registrar, scorer.normalisation)
            for_templates = PreparedMaps(prepared.alignments, prepared.images, prepared.maps[:, template_columns])
            findings = reader.predicted[positions].astype(bool) if is_multi_label(reader.settings.head) else None
            for offset, result in enumerate(scorer.score_prepared(reader.paths, positions, reader.probabilities[positions],
                                                                  predicted[positions], for_templates, findings=findings)):
                i = int(positions[offset])
                for key, k in wanted.get(i, {}).items():
                    assert prepared.images is not None  # prepared with their images
                    thumbnails[key] = jpeg_bytes(overlay_rgb(prepared.images[offset], prepared.maps[offset, k], table))
                    enlarged.update(enlarged_views(key, i, prepared.images[offset], prepared.maps[offset, k], table))
                if result.lung_field_energy is not None:
                    energies.setdefault(result.predicted, []).append((result.lung_field_energy, reader.paths[i]))
                own = f"{i}-{int(predicted[i])}"
                membership = members.get(i, [])
                rows.append(ImageRow(
                    index=i, path=reader.paths[i], label=_label_text(reader, i),
                    predicted=", ".join(result.predicted_findings) if result.predicted_findings is not None else result.predicted,
                    probability=float(reader.probabilities[i, int(predicted[i])]), correct=_correct(reader, i),
                    best_template=result.best_match, similarity=result.predicted_similarity, atypical=result.atypical,
                    percentile_rank=result.percentile_rank, strategy=result.strategy, lung_field_energy=result.lung_field_energy,
                    registration_quality=result.registration_quality, member_of=", ".join(name for name, _ in membership),
                    loo_correlation=membership[0][1] if len(membership) == 1 else None,
                    thumbnail=own if own in thumbnails else next(iter(wanted.get(i, {})), None)))
            start += len(batch)
            progress.advance(len(batch))
    finally:
        progress.finish()
    _template_numbers(file, sections, energies)
    return ReportData(templates=file, store=reader, similarity=similarity, rows=rows, classes=sections, thumbnails=thumbnails,
                      enlarged=enlarged, store_metrics=store_metrics(reader), checks=read_checks(file.path), path_root=common_folder(reader.paths),
                      contrasts=read_contrasts(file.path), zones=read_zones(file.path))
