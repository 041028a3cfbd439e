"""Which images join a class template: the include rules, over a heatmap store's labels and predictions.

A rule maps three boolean vectors about one class (or finding) k, one entry per image, to a mask
of members: ``is_class`` (the true label is k; for multi-label data, finding k is positive),
``predicted`` (the model predicts k; for multi-label data, finding k's probability reaches the
threshold) and ``correct`` (the image's decision is right; for multi-label data, finding k's).
The papers' rule is ``correct``: images of the class that the model classified correctly (for a
finding: positive and predicted positive). Adding a rule is registering one function here.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from heatmap_templates.registry import Registry

DEFAULT_INCLUDE = "correct"
IncludeRule = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # is_class, predicted, correct -> mask
INCLUDES: Registry[IncludeRule] = Registry("include rule", parameter="include")


@INCLUDES.register("correct", help="true class, correctly classified (the papers' rule); for a finding: positive and predicted positive")
def _correct(is_class: np.ndarray, predicted: np.ndarray, correct: np.ndarray) -> np.ndarray:
    return is_class & correct


@INCLUDES.register("all", help="true class (positive finding), whatever the prediction")
def _all(is_class: np.ndarray, predicted: np.ndarray, correct: np.ndarray) -> np.ndarray:
    return is_class


@INCLUDES.register("predicted", help="predicted as the class (finding predicted positive), whatever the label")
def _predicted(is_class: np.ndarray, predicted: np.ndarray, correct: np.ndarray) -> np.ndarray:
    return predicted


def class_view(labels: np.ndarray, predicted: np.ndarray, correct: np.ndarray, class_index: int) -> tuple[np.ndarray, ...]:
    """(is_class, predicted, correct) boolean vectors about one class, from single-label (N,) or multi-label (N, K) arrays."""
    if np.ndim(labels) == 2:
        return labels[:, class_index] == 1, predicted[:, class_index] == 1, correct[:, class_index].astype(bool)
    return labels == class_index, predicted == class_index, np.asarray(correct, dtype=bool)


def member_indices(reader, class_index: int, include: str = DEFAULT_INCLUDE) -> np.ndarray:
    """Store indices of the images whose map for ``class_index`` joins its template under ``include``."""
    rule = INCLUDES[include]
    return np.flatnonzero(rule(*class_view(reader.labels, reader.predicted, reader.correct, class_index)))
