"""Regions for deletion baselines that compare like with like: the body, random smooth regions, a moved region.

Removing scattered pixels is the weakest change an image can suffer: imputation fills each one back from its
neighbours almost perfectly, while any contiguous region changes the image 4-5x more per pixel wherever it lies.
So a ranking's deletion is compared here with removals of the *same kind of region*:

- :func:`smooth_random_region`: a random smooth blob set of a given area inside the body: Gaussian noise blurred
  with a sigma of one CAM cell (the scale at which the maps themselves vary), its top pixels kept;
- :func:`moved_region`: the ranked region itself (same shape and area) moved to a random position where it lies
  wholly inside the body and overlaps its own place by less than half;
- :func:`body_mask`: where a chest is: the phantom's exact mask when the data set has one, else an Otsu threshold
  of the image (largest component, holes filled, the lungs added: air inside the chest is body).

Reference: Y. Rong, T. Leemann, V. Borisov, G. Kasneci and E. Kasneci, "A Consistent and Efficient Evaluation
Strategy for Attribution Methods" (ROAD), ICML 2022, https://arxiv.org/abs/2202.00449 (information leaks through
the removal's shape; MoRF and LeRF).
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage, signal

MAX_MOVED_FRACTION = 0.3  # a moved region is tried for removal fractions up to this share of the image
MOVED_OVERLAP = 0.5  # a moved region overlaps its own place by less than this share of its area


def body_mask(image: np.ndarray, lungs: np.ndarray | None = None) -> np.ndarray:
    """The body in a [0, 1] chest image: Otsu's threshold, the largest bright component, holes filled, the lungs
    (when given) added; the whole frame when the threshold finds nothing."""
    pixels = np.round(np.clip(np.asarray(image, np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    _, bright = cv2.threshold(pixels, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bright.astype(np.uint8), connectivity=8)
    if count < 2:
        return np.ones(pixels.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    body = ndimage.binary_fill_holes(labels == largest)
    if lungs is not None:
        body = ndimage.binary_fill_holes(body | np.asarray(lungs, bool))
    return np.asarray(body, bool)


def smooth_random_region(shape: tuple[int, int], count: int, cell: float, allowed: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
    """Exactly ``count`` pixels: the top of Gaussian noise blurred with sigma ``cell`` pixels, taken from the
    ``allowed`` pixels first (and, only when ``count`` exceeds them, from the rest, again by the noise)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(float(cell), 0.5), mode="reflect")
    noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-12)  # in [0, 1]
    ranking = np.where(np.asarray(allowed, bool), noise + 2.0, noise).ravel()
    mask = np.zeros(ranking.size, bool)
    if count > 0:
        mask[np.argsort(-ranking, kind="stable")[:count]] = True
    return mask.reshape(shape)


def moved_region(region: np.ndarray, body: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """``region`` shifted to a random position where every pixel lies inside ``body`` (and the frame) and it covers
    less than half of its own place; None when no such position exists (the region does not fit)."""
    region = np.asarray(region, bool)
    area = int(region.sum())
    if area == 0:
        return region.copy()
    height, width = region.shape
    ys, xs = np.nonzero(region)
    top, left = ys.min(), xs.min()
    crop = region[top:ys.max() + 1, left:xs.max() + 1].astype(np.float64)
    outside = np.ones((height + 2 * crop.shape[0], width + 2 * crop.shape[1]))
    outside[crop.shape[0]:crop.shape[0] + height, crop.shape[1]:crop.shape[1] + width] = ~np.asarray(body, bool)
    # misses[a, b]: region pixels outside the body with the crop's corner at (a - crop_h, b - crop_w) of the frame
    misses = signal.correlate(outside, crop, mode="valid", method="fft")
    inside = np.zeros((height + 2 * crop.shape[0], width + 2 * crop.shape[1]))
    inside[crop.shape[0]:crop.shape[0] + height, crop.shape[1]:crop.shape[1] + width] = region
    overlap = signal.correlate(inside, crop, mode="valid", method="fft")
    valid = (misses < 0.5) & (overlap < MOVED_OVERLAP * area - 0.5)
    candidates = np.argwhere(valid)
    if not len(candidates):
        return None
    a, b = candidates[rng.integers(len(candidates))]
    corner_y, corner_x = int(a) - crop.shape[0], int(b) - crop.shape[1]
    moved = np.zeros_like(region)
    moved[corner_y:corner_y + crop.shape[0], corner_x:corner_x + crop.shape[1]] = crop > 0.5
    return moved
