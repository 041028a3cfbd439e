"""Strategies in the report: each member's strategy, its similarity to that strategy's prototype, and what the
strategy galleries and the embedding show.

A class whose members split into K >= 2 strategies (``hmt strategies``) has one template but several ways of being
recognised; a member is typical or atypical of *its* strategy, so the report measures each member against its
strategy's prototype (the mean of the strategy's prepared maps) with the same similarity it uses for the template.
Ranking members by the one template instead mostly picks the smaller strategy as "atypical". Classes with K = 1 and
images that are not members have no strategy here.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from heatmap_templates.analysis.similarity import similarity_scores
from heatmap_templates.store.records import ClassStrategies
from heatmap_templates.templates.templates_file import TemplateFile

STRATEGY_GALLERY_SIZE = 8  # thumbnails per strategy's gallery of its most typical members (at most the gallery size)

Labels = dict[str, dict[int, int]]  # class -> {store row: its strategy, 0-based}
Similarities = dict[str, dict[int, float]]  # class -> {store row: similarity to its strategy's prototype}


def split_classes(strategies: Mapping[str, ClassStrategies]) -> dict[str, ClassStrategies]:
    """The classes whose members split into two strategies or more."""
    return {name: result for name, result in strategies.items() if result.k >= 2}


def member_labels(file: TemplateFile, strategies: Mapping[str, ClassStrategies], where: Mapping[str, int]) -> Labels:
    """Per split class, the strategy of each member found in the store (``where``: path -> row), from the stored
    labels (in the template's member order); a class whose labels do not match its members is left out."""
    found: Labels = {}
    for name, result in split_classes(strategies).items():
        template = file.templates.get(name)
        if template is None or len(result.labels) != len(template.members):
            continue
        found[name] = {where[member.path]: int(label) for member, label in zip(template.members, result.labels, strict=True)
                       if member.path in where and int(label) >= 0}
    return found


def prototype_similarities(maps: np.ndarray, positions: np.ndarray, labels: Labels, strategies: Mapping[str, ClassStrategies],
                           class_names: Sequence[str], similarity: str, lung_mask: np.ndarray | None) -> Similarities:
    """For one batch (``maps`` (B, K, H, W): every class's prepared map of the store rows ``positions``), each
    member's similarity to its own strategy's prototype, by the report's ``similarity``."""
    found: Similarities = {}
    for name, rows in labels.items():
        column = class_names.index(name)
        offsets = [offset for offset, row in enumerate(positions) if int(row) in rows]
        for label in sorted({rows[int(positions[offset])] for offset in offsets}):
            chosen = [offset for offset in offsets if rows[int(positions[offset])] == label]
            prototype = np.asarray(strategies[name].strategies[label].mean, dtype=np.float64)
            values = similarity_scores(np.asarray(maps)[chosen, column], prototype, similarity, lung_mask)
            found.setdefault(name, {}).update({int(positions[offset]): float(v) for offset, v in zip(chosen, values, strict=True)})
    return found


def row_strategy(row: int, predicted: str, labels: Labels, similarities: Similarities) -> tuple[str, int | None, float | None]:
    """(class, strategy 1-based, similarity to its prototype) that the table shows for a store row: its membership in
    the predicted class when it has one, else its first membership of a split class; ('', None, None) for none."""
    names = sorted((name for name, rows in labels.items() if row in rows), key=lambda name: name != predicted)
    if not names:
        return "", None, None
    name = names[0]
    return name, labels[name][row] + 1, similarities.get(name, {}).get(row)


def most_typical(rows: Mapping[int, int], similarities: Mapping[int, float], label: int, count: int) -> list[tuple[int, float]]:
    """The ``count`` members of strategy ``label`` (0-based) most similar to its prototype, as (row, similarity)."""
    members = [(row, similarities[row]) for row, own in rows.items() if own == label and np.isfinite(similarities.get(row, np.nan))]
    return sorted(members, key=lambda pair: (-pair[1], pair[0]))[:count]


def least_typical(similarities: Mapping[int, float], count: int, exclude: set[int]) -> list[tuple[int, float]]:
    """The ``count`` members least similar to their own strategy's prototype (rows in ``exclude`` left out)."""
    members = [(row, value) for row, value in similarities.items() if row not in exclude and np.isfinite(value)]
    return sorted(members, key=lambda pair: (pair[1], pair[0]))[:count]


def embedding_points(file: TemplateFile, result: ClassStrategies, where: Mapping[str, int]) -> list[list]:
    """The clustered members' 2-D spectral coordinates as [store row (None when not in the store), x, y, strategy
    (0-based)]; members not clustered (NaN coordinates, assigned to a strategy afterwards) are left out."""
    template = file.templates.get(result.class_name)
    points = np.asarray(result.embedding, dtype=np.float64)
    if template is None or len(points) != len(template.members) or points.ndim != 2 or points.shape[1] < 2:
        return []
    return [[where.get(member.path), float(x), float(y), int(label)]
            for member, (x, y), label in zip(template.members, points[:, :2], result.labels, strict=True)
            if np.isfinite(x) and np.isfinite(y) and int(label) >= 0]
