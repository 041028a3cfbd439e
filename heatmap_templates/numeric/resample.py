"""Resampling maps between resolutions, as fixed linear maps (matrices), so they commute with means.

``downsample`` averages by pixel overlap (area); ``upsample`` is bilinear with half-pixel centres
and clamped edges, the convention of ``tf.image.resize(..., "bilinear")`` and OpenCV. Both are
(target, source) matrices applied along rows and columns: exact, deterministic, no TensorFlow.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _area_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) matrix averaging source pixels by their overlap with each target pixel."""
    edges = np.arange(target + 1) * (source / target)
    starts, ends = edges[:-1, None], edges[1:, None]
    pixels = np.arange(source)[None, :]
    overlap = np.clip(np.minimum(ends, pixels + 1) - np.maximum(starts, pixels), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _linear_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) bilinear interpolation matrix with pixel-centre alignment."""
    positions = np.clip((np.arange(target) + 0.5) * (source / target) - 0.5, 0.0, source - 1)
    lower = np.floor(positions).astype(int)
    upper = np.minimum(lower + 1, source - 1)
    fraction = positions - lower
    matrix = np.zeros((target, source))
    matrix[np.arange(target), lower] += 1.0 - fraction
    matrix[np.arange(target), upper] += fraction
    return matrix


def downsample(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average (..., H, W) maps to (..., h, w) (a linear map, so it commutes with means)."""
    array = np.asarray(maps, dtype=np.float64)
    rows = _area_matrix(array.shape[-2], shape[0])
    cols = _area_matrix(array.shape[-1], shape[1])
    return rows @ array @ cols.T


def upsample(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize (..., h, w) maps to (..., H, W) (float64)."""
    array = np.asarray(maps, dtype=np.float64)
    rows = _linear_matrix(array.shape[-2], shape[0])
    cols = _linear_matrix(array.shape[-1], shape[1])
    return rows @ array @ cols.T


def upsample_maps(raw: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """CAM maps (..., h, w) at layer resolution -> (..., H, W) float32 at the image size: the one upsampler of
    stored maps (build, compare and every check), equal to ``tf.image.resize(..., "bilinear")`` within 1e-6."""
    array = np.asarray(raw, dtype=np.float32)
    height, width = int(shape[0]), int(shape[1])
    if array.shape[-2:] == (height, width):
        return array
    rows = _linear_matrix(array.shape[-2], height).astype(np.float32)
    cols = _linear_matrix(array.shape[-1], width).astype(np.float32)
    return np.matmul(np.matmul(rows, array), cols.T)
