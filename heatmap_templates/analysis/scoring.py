"""Scoring maps against class templates: similarity to each template, the atypical flag, the nearest strategy.

:class:`TemplateScorer` holds one templates file's means, reference frame, normalisation, leave-one-out
distributions and strategies, and scores images whose CAM maps are already computed: from the model
(:class:`~heatmap_templates.analysis.compare.Comparer`, which adds the model and its CAM engine) or from a heatmap
store (``hmt report``). Both therefore score an image the same way:

1. its maps are prepared exactly as build prepared the members' (:func:`~heatmap_templates.templates.prepare.prepare_maps`);
2. a similarity with each class's template mean: ``pearson`` (default), ``pearson-lungs``, ``cosine`` or
   ``ssim`` (:data:`~heatmap_templates.analysis.similarity.SIMILARITIES`);
3. the atypical flag: the Pearson correlation of the predicted class's map with its template, placed
   within that class's stored leave-one-out correlations (Pearson values, so the flag always uses Pearson
   whatever ``similarity`` ranks the templates); below the ``atypical_percentile``-th percentile is atypical;
4. the predicted class's strategy whose prototype the map resembles most, when the file holds strategies.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heatmap_templates.analysis.similarity import DEFAULT_SIMILARITY, SIMILARITIES, similarity_scores
from heatmap_templates.analysis.strategies import closest_strategy
from heatmap_templates.errors import BadFileError, HmtError, display_path
from heatmap_templates.model.heads import is_multi_label
from heatmap_templates.numeric.metrics import lung_field_energy, percentile_rank
from heatmap_templates.templates.prepare import PreparedMaps, prepare_maps, registrar_for
from heatmap_templates.templates.templates_file import TemplateFile, read_strategies, read_templates

DEFAULT_ATYPICAL_PERCENTILE = 5.0
ATYPICAL_MEASURE = "pearson"  # the measure of the stored leave-one-out distribution


# --------------------------------------------------------------------------- atypical flag


@dataclass(frozen=True)
class AtypicalReading:
    """Where one correlation falls within a class's leave-one-out distribution."""

    threshold: float  # the distribution's `percentile`-th percentile
    percentile_rank: float  # 0-100, share of the distribution below the value
    atypical: bool  # value < threshold


def atypical_reading(value: float, loo_correlations: np.ndarray, percentile: float = DEFAULT_ATYPICAL_PERCENTILE) -> AtypicalReading | None:
    """Flag ``value`` as atypical when it lies below the ``percentile``-th percentile of the
    leave-one-out correlations (linear interpolation); None with fewer than two values."""
    values = np.asarray(loo_correlations, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size < 2:
        return None
    threshold = float(np.percentile(values, percentile))
    return AtypicalReading(threshold, percentile_rank(value, values), bool(value < threshold))


# --------------------------------------------------------------------------- results


@dataclass
class ComparisonMaps:
    """What a comparison figure shows, all in the reference frame: the registered image, the
    image's normalised map for the predicted class and that class's template."""

    image: np.ndarray
    heatmap: np.ndarray
    template: np.ndarray


@dataclass
class ImageComparison:
    """One image scored against the templates."""

    path: str
    position: int  # index of the image in the list that was compared
    predicted: str
    probabilities: dict[str, float]
    similarities: dict[str, float]  # one per class with a template
    best_match: str | None  # class whose template is most similar (None without templates)
    predicted_similarity: float | None  # None when the predicted class has no template
    predicted_correlation: float | None  # Pearson, what the atypical flag uses
    atypical: bool | None  # None: no template or no leave-one-out distribution for the predicted class
    percentile_rank: float | None
    atypical_threshold: float | None
    registration_method: str
    registration_quality: float
    lung_field_energy: float | None  # share of the predicted class's normalised map inside the lung mask
    maps: ComparisonMaps | None = None
    predicted_findings: list[str] | None = None  # multi-label models: every finding at or above the threshold
    strategy: int | None = None  # the predicted class's strategy (1-based) whose prototype the map resembles most
    strategy_similarity: float | None = None
    registration_matrix: tuple[float, ...] | None = None  # image -> reference (2, 3), row-major (not in to_dict)
    label: str | dict[str, int] | None = None  # true class, or findings (1 / 0 / -1 unknown), of an image from a manifest

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            **({} if self.label is None else {"label": self.label}),
            "predicted": self.predicted,
            "probabilities": {name: round(value, 6) for name, value in self.probabilities.items()},
            "similarities": {name: round(value, 6) for name, value in self.similarities.items()},
            "best_match": self.best_match,
            "predicted_similarity": _rounded(self.predicted_similarity),
            "predicted_correlation": _rounded(self.predicted_correlation),
            "atypical": self.atypical,
            "percentile_rank": _rounded(self.percentile_rank, 2),
            "atypical_threshold": _rounded(self.atypical_threshold),
            "registration_method": self.registration_method,
            "registration_quality": round(self.registration_quality, 4),
            "lung_field_energy": _rounded(self.lung_field_energy),
            **({} if self.predicted_findings is None else {"predicted_findings": list(self.predicted_findings)}),
            "strategy": self.strategy,
            "strategy_similarity": _rounded(self.strategy_similarity),
        }


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)



def read_templates_file(path: str | os.PathLike) -> TemplateFile:
    """A templates file, with a one-line error naming it when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise BadFileError(path, "no such templates file")
    return read_templates(path)


class TemplateScorer:
    """Scores images' CAM maps against the templates of one file (see the module docstring); no model needed."""

    def __init__(self, templates: str | os.PathLike | TemplateFile, *, similarity: str = DEFAULT_SIMILARITY,
                 atypical_percentile: float = DEFAULT_ATYPICAL_PERCENTILE) -> None:
        SIMILARITIES.check(similarity)
        if not 0.0 <= atypical_percentile <= 100.0:
            raise HmtError(f"the atypical percentile must lie in 0..100, got {atypical_percentile}")
        self.file = templates if isinstance(templates, TemplateFile) else read_templates_file(templates)
        settings = self.file.settings
        if self.file.reference_image is None or self.file.lung_mask is None:
            raise BadFileError(self.file.path, "has no registration reference; rebuild it with hmt build-templates")
        if not self.file.templates:
            raise BadFileError(self.file.path, "holds no class templates")
        self.class_names = list(settings.class_names)
        self.multi_label = is_multi_label(settings.head)
        self.similarity = similarity
        self.atypical_percentile = float(atypical_percentile)
        self.normalisation = settings.normalisation
        self.registrar = registrar_for(settings.registration, self.file.reference_image, self.file.lung_mask)
        self.strategies = read_strategies(self.file.path)  # per class, when `hmt strategies` added them
        self.lung_mask = np.asarray(self.file.lung_mask, dtype=bool)
        self.template_classes = [name for name in self.class_names if name in self.file.templates]
        self._template_indices = [self.class_names.index(name) for name in self.template_classes]
        self._means = {name: np.asarray(self.file.templates[name].mean, dtype=np.float64) for name in self.template_classes}

    def prepare_maps(self, images_u8: np.ndarray, raw: np.ndarray) -> PreparedMaps:
        """Register images (N, H, W) uint8 and their all-class maps (N, K, h, w) at layer resolution exactly as build
        did; ``maps`` of the result are the template classes' (N, T, H, W), in ``template_classes`` order."""
        return prepare_maps(images_u8, np.asarray(raw)[:, self._template_indices], self.registrar, self.normalisation)

    def score(self, paths: Sequence[str | os.PathLike], positions: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray,
              images_u8: np.ndarray, raw: np.ndarray, *, findings: np.ndarray | None = None,
              keep_maps: bool = False) -> Iterator[ImageComparison]:
        """Score a batch: ``paths[positions[i]]`` has class probabilities ``probabilities[i]`` (K,), predicted class index
        ``predicted[i]`` (a multi-label model's top finding), image ``images_u8[i]`` and maps ``raw[i]`` (K, h, w);
        ``findings`` (N, K) bool are a multi-label model's decisions. ``keep_maps`` attaches what a figure shows."""
        yield from self.score_prepared(paths, positions, probabilities, predicted, self.prepare_maps(images_u8, raw),
                                       findings=findings, keep_maps=keep_maps)

    def score_prepared(self, paths: Sequence[str | os.PathLike], positions: np.ndarray, probabilities: np.ndarray,
                       predicted: np.ndarray, prepared: PreparedMaps, *, findings: np.ndarray | None = None,
                       keep_maps: bool = False) -> Iterator[ImageComparison]:
        """:meth:`score` of maps already prepared by :meth:`prepare_maps` (for callers that also use the maps)."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        alignments, warped_images, normalised = prepared.alignments, prepared.images, np.asarray(prepared.maps)
        scores = np.stack([similarity_scores(normalised[:, t], self._means[name], self.similarity, self.lung_mask)
                           for t, name in enumerate(self.template_classes)], axis=1)
        correlations = scores if self.similarity == ATYPICAL_MEASURE else np.stack(
            [similarity_scores(normalised[:, t], self._means[name]) for t, name in enumerate(self.template_classes)], axis=1)
        energies = np.asarray(lung_field_energy(normalised.reshape(-1, *normalised.shape[-2:]), self.lung_mask)).reshape(normalised.shape[:2])
        nearest = {}
        for column, name in enumerate(self.template_classes):
            if name in self.strategies:
                nearest[name] = closest_strategy(normalised[:, column], self.strategies[name], self.similarity, self.lung_mask)
        for row, position in enumerate(positions):
            predicted_name = self.class_names[int(predicted[row])]
            t: int | None = self.template_classes.index(predicted_name) if predicted_name in self.template_classes else None
            reading = None
            if t is not None:
                reading = atypical_reading(float(correlations[row, t]), self.file.templates[predicted_name].loo_correlations,
                                           self.atypical_percentile)
            yield ImageComparison(
                path=display_path(paths[int(position)]),
                position=int(position),
                predicted=predicted_name,
                probabilities={name: float(p) for name, p in zip(self.class_names, probabilities[row], strict=True)},
                similarities={name: float(scores[row, i]) for i, name in enumerate(self.template_classes)},
                best_match=self.template_classes[int(np.argmax(scores[row]))] if self.template_classes else None,
                predicted_similarity=None if t is None else float(scores[row, t]),
                predicted_correlation=None if t is None else float(correlations[row, t]),
                atypical=None if reading is None else reading.atypical,
                percentile_rank=None if reading is None else reading.percentile_rank,
                atypical_threshold=None if reading is None else reading.threshold,
                registration_method=alignments[row].method,
                registration_quality=float(alignments[row].quality),
                lung_field_energy=None if t is None else float(energies[row, t]),
                maps=ComparisonMaps(warped_images[row], normalised[row, t], self._means[predicted_name].astype(np.float32))
                if keep_maps and t is not None and warped_images is not None else None,
                predicted_findings=None if findings is None else [n for n, on in zip(self.class_names, findings[row], strict=True) if on],
                registration_matrix=tuple(float(v) for v in np.ravel(alignments[row].matrix)),
                strategy=int(nearest[predicted_name][0][row]) + 1 if predicted_name in nearest else None,
                strategy_similarity=float(nearest[predicted_name][1][row]) if predicted_name in nearest else None,
            )
