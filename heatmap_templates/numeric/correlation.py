"""Pearson correlation, defined once: rows standardised to zero mean and unit norm, so dot products are r.

Registration (its quality score), the template statistics (consistency, leave-one-out), the
similarity registry and the templates file's class-similarity matrix all use these functions;
they sit below every stage so that none of those imports reaches up to the analysis wing.
Reference: Pearson (1895), the product-moment coefficient; https://en.wikipedia.org/wiki/Pearson_correlation_coefficient
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def standardise_rows(values: np.ndarray) -> np.ndarray:
    """Rows with zero mean and unit norm (constant rows become zeros), so dot products are Pearson r."""
    centred = values - values.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", centred, centred))[:, None]
    # In place, by 1 where a row has no norm (it is all zeros then): no second array of the rows' size to allocate.
    return np.divide(centred, np.where(norms > 0, norms, 1.0), out=centred)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of (N, ...) arrays (a row against a constant row gives 0)."""
    left = standardise_rows(np.asarray(a, dtype=np.float64).reshape(len(a), -1))
    right = standardise_rows(np.asarray(b, dtype=np.float64).reshape(len(b), -1))
    return np.clip((left * right).sum(axis=1), -1.0, 1.0)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally shaped arrays (0 when either is constant)."""
    return float(pearson(np.asarray(a)[None], np.asarray(b)[None])[0])


def similarity_matrix(means: Sequence[np.ndarray]) -> np.ndarray:
    """(K, K) Pearson correlation between maps (e.g. class templates), in the order given."""
    if not len(means):
        return np.zeros((0, 0))
    z = standardise_rows(np.stack([np.asarray(m, dtype=np.float64).ravel() for m in means]))
    matrix = np.clip(z @ z.T, -1.0, 1.0)
    constant = ~z.any(axis=1)
    matrix[np.diag_indices_from(matrix)] = np.where(constant, 0.0, 1.0)
    return matrix
