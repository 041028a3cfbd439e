"""Which images join a class template: the include rules, over a heatmap store's labels and predictions.

A rule maps the store's per-image arrays and one class index to a boolean mask of members.
The papers' rule is ``correct``: images of the class that the model classified correctly.
Adding a rule is registering one function here.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from heatmap_templates.registry import Registry

DEFAULT_INCLUDE = "correct"
IncludeRule = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]  # labels, predicted, correct, class -> mask
INCLUDES: Registry[IncludeRule] = Registry("include rule", parameter="include")


@INCLUDES.register("correct", help="true class, correctly classified (the papers' rule)")
def _correct(labels: np.ndarray, predicted: np.ndarray, correct: np.ndarray, class_index: int) -> np.ndarray:
    return (labels == class_index) & correct


@INCLUDES.register("all", help="true class, whatever the prediction")
def _all(labels: np.ndarray, predicted: np.ndarray, correct: np.ndarray, class_index: int) -> np.ndarray:
    return labels == class_index


@INCLUDES.register("predicted", help="predicted as the class, whatever the label")
def _predicted(labels: np.ndarray, predicted: np.ndarray, correct: np.ndarray, class_index: int) -> np.ndarray:
    return predicted == class_index


def member_indices(reader, class_index: int, include: str = DEFAULT_INCLUDE) -> np.ndarray:  # noqa: ANN001 (HeatmapReader)
    """Store indices of the images whose map for ``class_index`` joins its template under ``include``."""
    rule = INCLUDES[include]
    return np.flatnonzero(rule(reader.labels, reader.predicted, reader.correct, class_index))
