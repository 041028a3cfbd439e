"""Per-map normalisations: how each registered heatmap is scaled before it joins a template.

A normalisation is a function over maps flattened to rows (N, P) float64 with non-finite pixels
already set to 0; it may work in place on them (a fresh copy), since every pass over fresh memory counts in a
template build. A scale-invariant one (every one but ``none``) receives rows divided by their
largest magnitude, so squares and differences of huge values stay finite; a constant or all-zero
map (no localisation) must come out as zeros, so NaN never leaves this module. ``median_range``
is the value range of normalised maps, which the per-pixel median histogram needs (None: unbounded).
Adding a normalisation is registering one :class:`Normalisation` here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from heatmap_templates.registry import Registry

DEFAULT_NORMALISATION = "minmax"


@dataclass(frozen=True)
class Normalisation:
    """One normalisation (see the module docstring)."""

    function: Callable[[np.ndarray], np.ndarray]
    scale_invariant: bool = True
    median_range: tuple[float, float] | None = None


NORMALISATIONS: Registry[Normalisation] = Registry("normalisation", parameter="normalisation")


def _divide_rows(flat: np.ndarray, divisors: np.ndarray) -> np.ndarray:
    """``flat`` divided in place by each row's divisor, where it is positive; rows whose divisor is not positive
    must be zeros already (they stay zeros)."""
    return np.divide(flat, np.where(divisors > 0, divisors, 1.0), out=flat)


def _minmax(flat: np.ndarray) -> np.ndarray:
    low = flat.min(axis=1, keepdims=True)
    spread = flat.max(axis=1, keepdims=True) - low
    flat -= low  # a constant row becomes zeros
    return _divide_rows(flat, spread)


def _sum(flat: np.ndarray) -> np.ndarray:
    spread = flat.max(axis=1, keepdims=True) - flat.min(axis=1, keepdims=True)
    mass = np.abs(flat).sum(axis=1, keepdims=True)
    return np.divide(flat, mass, out=np.zeros_like(flat), where=(mass > 0) & (spread > 0))


def _zscore(flat: np.ndarray) -> np.ndarray:
    centred = flat - flat.mean(axis=1, keepdims=True)
    spread = np.sqrt((centred**2).mean(axis=1, keepdims=True))
    return np.divide(centred, spread, out=np.zeros_like(flat), where=spread > 0)


def _none(flat: np.ndarray) -> np.ndarray:
    largest = np.finfo(np.float32).max
    return np.clip(flat, -largest, largest)


NORMALISATIONS.add("minmax", Normalisation(_minmax, median_range=(0.0, 1.0)), help="each map scaled to [0, 1]")
NORMALISATIONS.add("sum", Normalisation(_sum), help="each map divided by its total absolute mass")
NORMALISATIONS.add("zscore", Normalisation(_zscore, median_range=(-4.0, 4.0)), help="zero mean, unit standard deviation")
NORMALISATIONS.add("none", Normalisation(_none, scale_invariant=False), help="raw CAM values")


def normalise(maps: np.ndarray, method: str = DEFAULT_NORMALISATION) -> np.ndarray:
    """Normalise each map independently.

    ``minmax`` scales to [0, 1]; ``sum`` divides by the total absolute mass (unit mass for
    non-negative maps); ``zscore`` gives zero mean and unit standard deviation; ``none`` only
    converts (clipped to the float32 range). Non-finite pixels count as 0, and a constant or
    all-zero map becomes all zeros in every method but ``none``, so NaN never comes out.

    Parameters
    ----------
    maps : (H, W) or (N, H, W) array
    method : str
        A :data:`NORMALISATIONS` name.

    Returns
    -------
    ndarray, float32, the shape of ``maps``
    """
    entry = NORMALISATIONS[method]
    array = np.array(maps, dtype=np.float64)  # a copy of our own, worked on in place
    if array.ndim not in (2, 3):
        raise ValueError(f"normalise expects (H, W) or (N, H, W) maps, got shape {array.shape}")
    flat = array.reshape(1 if array.ndim == 2 else array.shape[0], -1)
    if flat.size == 0:
        return _none(flat).reshape(array.shape).astype(np.float32)
    finite = np.isfinite(flat)
    if not finite.all():
        flat[~finite] = 0.0
    if entry.scale_invariant:
        magnitude = np.maximum(flat.max(axis=1, keepdims=True), -flat.min(axis=1, keepdims=True))
        _divide_rows(flat, magnitude)  # an all-zero row is the only one without magnitude
    return entry.function(flat).reshape(array.shape).astype(np.float32)


def median_range(method: str) -> tuple[float, float] | None:
    """Histogram range for the per-pixel median of maps normalised by ``method`` (None: unbounded)."""
    return NORMALISATIONS[method].median_range
