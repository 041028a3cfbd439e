"""What a report shows, collected in one pass over a heatmap store: a row per image and the gallery thumbnails.

Every image of the store is scored against the templates by :class:`~heatmap_templates.analysis.scoring.TemplateScorer`,
the same scoring ``hmt compare`` uses, from the maps the store keeps (no model is needed). Galleries per class:
the members with the highest and the lowest leave-one-out correlation (most typical, most atypical) and the
misclassified images (the most confident mistakes first), each a thumbnail of the heatmap over the registered image.
A class that splits into strategies (:mod:`.strategies`) also has a gallery of each strategy's most typical members,
and its atypical gallery ranks members by their similarity to their own strategy's prototype; those thumbnails,
known only once every member is scored, are drawn in a second, short pass over their rows.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from heatmap_templates.analysis.scoring import ImageComparison, TemplateScorer
from heatmap_templates.analysis.similarity import DEFAULT_SIMILARITY
from heatmap_templates.analysis.strategy_search import members_store
from heatmap_templates.data.datasets import Sample, patient_groups, patient_id_from_name
from heatmap_templates.errors import HmtError, display_path
from heatmap_templates.model.heads import is_multi_label
from heatmap_templates.numeric.bootstrap import mean_interval
from heatmap_templates.numeric.metrics import classification_report, interval_ci, lung_field_energy, multilabel_report
from heatmap_templates.present.report.strategies import (
    STRATEGY_GALLERY_SIZE,
    Labels,
    Similarities,
    embedding_points,
    least_typical,
    member_labels,
    most_typical,
    prototype_similarities,
    row_strategy,
)
from heatmap_templates.present.report.thumbnails import colour_table, enlarged_views, jpeg_bytes, overlay_rgb
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.store import HeatmapReader
from heatmap_templates.templates.prepare import PreparedMaps, prepare_maps
from heatmap_templates.templates.templates_file import (
    TemplateFile,
    read_checks,
    read_contrasts,
    read_zones,
    replicate_interval,
)

DEFAULT_GALLERY_SIZE = 24  # thumbnails per gallery (typical, atypical, misclassified) and class
GALLERIES = ("typical", "atypical", "misclassified")
ROW_COLUMNS = ("index", "path", "label", "predicted", "probability", "correct", "best_template", "similarity", "atypical",
               "percentile_rank", "strategy", "strategy_similarity", "lung_field_energy", "registration_quality", "member_of", "loo_correlation", "thumbnail")


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
    strategy: int | None  # as a member of a class with K >= 2 strategies: its strategy (1-based); else None
    lung_field_energy: float | None
    registration_quality: float
    member_of: str = ""  # the classes whose template it is a member of
    loo_correlation: float | None = None  # as a member: its correlation with the template built without it
    thumbnail: str | None = None  # name of its thumbnail (the predicted class's map), when a gallery shows it
    strategy_similarity: float | None = None  # to its strategy's prototype, by the report's similarity
    strategy_of: str = ""  # the class whose strategy ``strategy`` is

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
    embedding: list[list] = field(default_factory=list)  # K >= 2: [row or None, x, y, strategy] per clustered member
    atypical_by_strategy: bool = False  # the atypical gallery ranks by similarity to each member's strategy prototype


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
        return _gallery_item(wanted, names, row, k, value)

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


def _template_numbers(file: TemplateFile, sections: list[ClassSection], energies: dict[str, list[tuple[float, str]]],
                      strategies: dict, where: dict[str, int]) -> None:
    """Consistency, lung-field energy (the template's and the mean of the images predicted as the class, each with its
    95 % interval) and strategies of each class with a template; ``energies``: (energy, path) of each class's images."""
    lungs = np.asarray(file.lung_mask, bool)
    for position, section in enumerate(sections):  # in the store's class order
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
            section.strategies = {"k": result.k, "chosen_by": result.chosen_by, "stability": result.stability, "class_index": position,
                                  "eigenvalues": [float(v) for v in result.eigenvalues],
                                  "clusters": [{"size": s.size, "consistency": s.consistency} for s in result.strategies]}
            section.embedding = embedding_points(file, result, where) if result.k >= 2 else []


def _gallery_item(wanted: dict[int, dict[str, int]], names: list[str], row: int, k: int, value: float | None) -> GalleryItem:
    """A gallery entry showing class ``k``'s map of ``row``, noted in ``wanted`` (row -> {thumbnail: class}) to be drawn."""
    key = f"{row}-{k}"
    wanted.setdefault(row, {})[key] = k
    return GalleryItem(row, key, names[k], None if value is None else float(value))


def _plan_strategy_galleries(sections: list[ClassSection], labels: Labels, similarities: Similarities, strategies: dict,
                             names: list[str], size: int) -> dict[int, dict[str, int]]:
    """Per class with strategies: a gallery of each strategy's most typical members, and the atypical gallery ranked
    by each member's similarity to its own strategy's prototype (the one template's leave-one-out correlation mostly
    ranks the smaller strategy's members lowest); returns the thumbnails they need (row -> {thumbnail: class})."""
    wanted: dict[int, dict[str, int]] = {}
    for section in sections:
        if section.name not in labels:
            continue
        k, rows, values = names.index(section.name), labels[section.name], similarities.get(section.name, {})
        for label in range(strategies[section.name].k):
            kind = f"strategy-{label + 1}"
            chosen = most_typical(rows, values, label, min(size, STRATEGY_GALLERY_SIZE))
            section.galleries[kind] = [_gallery_item(wanted, names, row, k, value) for row, value in chosen]
            section.gallery_totals[kind] = sum(own == label for own in rows.values())
        if "atypical" in section.galleries:
            shown = {item.row for item in section.galleries.get("typical", [])}
            chosen = least_typical(values, len(section.galleries["atypical"]), shown)
            section.galleries["atypical"] = [_gallery_item(wanted, names, row, k, value) for row, value in chosen]
            section.gallery_totals["atypical"] = len(values)
            section.atypical_by_strategy = True
    return wanted


@dataclass
class _Pictures:
    """The thumbnails and enlarged views drawn so far, by name, in one colour table."""

    table: np.ndarray
    thumbnails: dict[str, bytes] = field(default_factory=dict)
    enlarged: dict[str, bytes] = field(default_factory=dict)

    def draw(self, keys: dict[str, int], row: int, image: np.ndarray, maps: np.ndarray) -> None:
        """Draw each thumbnail of ``keys`` ({name: class}) of one row from its registered image and class maps."""
        for key, k in keys.items():
            self.thumbnails[key] = jpeg_bytes(overlay_rgb(image, maps[k], self.table))
            self.enlarged.update(enlarged_views(key, row, image, maps[k], self.table))


def _draw_more(reader: HeatmapReader, scorer: TemplateScorer, wanted: dict[int, dict[str, int]], pictures: _Pictures,
               batch_size: int) -> None:
    """The thumbnails of ``wanted`` not drawn yet, in a pass over their rows only."""
    missing = {row: {key: k for key, k in keys.items() if key not in pictures.thumbnails} for row, keys in wanted.items()}
    order = sorted(row for row, keys in missing.items() if keys)
    for start, batch in zip(range(0, len(order), batch_size), reader.iter_batches(batch_size, order), strict=True):
        prepared = prepare_maps(batch.images, batch.raw, scorer.registrar, scorer.normalisation)
        assert prepared.images is not None  # prepared with their images
        for offset, row in enumerate(order[start:start + len(batch)]):
            pictures.draw(missing[row], row, prepared.images[offset], prepared.maps[offset])


def _memberships(file: TemplateFile, where: dict[str, int]) -> dict[int, list[tuple[str, float | None]]]:
    """Per store row, the templates it is a member of, with its leave-one-out correlation in each."""
    members: dict[int, list[tuple[str, float | None]]] = {}
    for name, template in file.templates.items():
        loo = np.asarray(template.loo_correlations, np.float64)
        for position, member in enumerate(template.members):
            if member.path in where:
                members.setdefault(where[member.path], []).append((name, float(loo[position]) if position < loo.size else None))
    return members


@dataclass
class _Pass:
    """What one pass over the store needs besides the reader and the scorer, and what it gathers."""

    predicted: np.ndarray
    wanted: dict[int, dict[str, int]]
    members: dict[int, list[tuple[str, float | None]]]
    labels: Labels
    pictures: _Pictures
    rows: list[ImageRow] = field(default_factory=list)
    energies: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    similarities: Similarities = field(default_factory=dict)


def _score_store(reader: HeatmapReader, scorer: TemplateScorer, state: _Pass, batch_size: int, progress: Progress) -> None:
    """Score every image of the store, drawing the planned thumbnails and measuring each member against its
    strategy's prototype on the way; fills ``state``."""
    template_columns = [reader.class_names.index(name) for name in scorer.template_classes]
    predicted = state.predicted
    progress.start(len(reader), "scoring the store's images")
    try:
        start = 0
        for batch in reader.iter_batches(batch_size):
            positions = np.arange(start, start + len(batch))
            prepared = prepare_maps(batch.images, batch.raw, scorer.registrar, scorer.normalisation)
            assert prepared.images is not None  # prepared with their images
            for_templates = PreparedMaps(prepared.alignments, prepared.images, prepared.maps[:, template_columns])
            found = prototype_similarities(prepared.maps, positions, state.labels, scorer.strategies, reader.class_names,
                                           scorer.similarity, scorer.lung_mask)
            for name, values in found.items():
                state.similarities.setdefault(name, {}).update(values)
            findings = reader.predicted[positions].astype(bool) if is_multi_label(reader.settings.head) else None
            for offset, result in enumerate(scorer.score_prepared(reader.paths, positions, reader.probabilities[positions],
                                                                  predicted[positions], for_templates, findings=findings)):
                i = int(positions[offset])
                state.pictures.draw(state.wanted.get(i, {}), i, prepared.images[offset], prepared.maps[offset])
                if result.lung_field_energy is not None:
                    state.energies.setdefault(result.predicted, []).append((result.lung_field_energy, reader.paths[i]))
                state.rows.append(_row(reader, i, result, state))
            start += len(batch)
            progress.advance(len(batch))
    finally:
        progress.finish()


def _row(reader: HeatmapReader, i: int, result: ImageComparison, state: _Pass) -> ImageRow:
    """The table's row of store image ``i`` from its scoring (its thumbnail is chosen once every gallery is drawn)."""
    k = int(state.predicted[i])
    membership = state.members.get(i, [])
    strategy_of, strategy, strategy_similarity = row_strategy(i, reader.class_names[k], state.labels, state.similarities)
    return ImageRow(
        index=i, path=reader.paths[i], label=_label_text(reader, i),
        predicted=", ".join(result.predicted_findings) if result.predicted_findings is not None else result.predicted,
        probability=float(reader.probabilities[i, k]), correct=_correct(reader, i),
        best_template=result.best_match, similarity=result.predicted_similarity, atypical=result.atypical,
        percentile_rank=result.percentile_rank, strategy=strategy, lung_field_energy=result.lung_field_energy,
        registration_quality=result.registration_quality, member_of=", ".join(name for name, _ in membership),
        loo_correlation=membership[0][1] if len(membership) == 1 else None,
        strategy_similarity=strategy_similarity, strategy_of=strategy_of)


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
    state = _Pass(predicted, wanted, _memberships(file, where), member_labels(file, scorer.strategies, where),
                  _Pictures(colour_table(cmap)))
    _score_store(reader, scorer, state, batch_size, progress or NullProgress())
    _template_numbers(file, sections, state.energies, scorer.strategies, where)
    more = _plan_strategy_galleries(sections, state.labels, state.similarities, scorer.strategies, reader.class_names, gallery_size)
    _draw_more(reader, scorer, more, state.pictures, batch_size)
    thumbnails = state.pictures.thumbnails
    for row in state.rows:  # its own class's map when a gallery shows it, else any of its thumbnails
        own = f"{row.index}-{int(predicted[row.index])}"
        drawn = [key for key in [*wanted.get(row.index, {}), *more.get(row.index, {})] if key in thumbnails]
        row.thumbnail = own if own in thumbnails else next(iter(drawn), None)
    return ReportData(templates=file, store=reader, similarity=similarity, rows=state.rows, classes=sections, thumbnails=thumbnails,
                      enlarged=state.pictures.enlarged, store_metrics=store_metrics(reader), checks=read_checks(file.path),
                      path_root=common_folder(reader.paths), contrasts=read_contrasts(file.path), zones=read_zones(file.path))
