"""The phantom's lesion processes: one per disease class, drawn in the canonical frame.

A process takes the image's anatomy, its two lung fields, the size and a random stream, and
returns lesion intensity (float32 >= 0, image units on the [0, 1] scale). ``normal`` has none.
Adding a phantom class is registering one process here.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from heatmap_templates.registry import Registry
from heatmap_templates.synth.anatomy import (
    Anatomy,
    Lung,
    blur,
    canonical_lung_mask,
    grid,
    hila,
    polyline_canvas,
    smooth_noise,
)

LESIONS: Registry = Registry("phantom class", parameter="classes")


def _row_extent(mask: np.ndarray, row: int) -> tuple[int, int] | None:
    columns = np.flatnonzero(mask[row] >= 0.5)
    return (int(columns[0]), int(columns[-1])) if columns.size else None


def _covid_lesions(anatomy: Anatomy, lung_fields: tuple[np.ndarray, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """Bilateral, peripheral, lower-zone ground-glass opacities: hazy blobs along the outer lung edge."""
    ys, xs = grid(size)
    lesion = np.zeros((size, size), np.float32)
    for lung, field_mask in zip(anatomy.lungs, lung_fields, strict=True):
        for _ in range(int(rng.integers(2, 5))):
            y_norm = rng.uniform(0.52, 0.92) * (lung.costophrenic_y - lung.apex_y) + lung.apex_y
            row = min(size - 1, int(y_norm * size))
            extent = _row_extent(field_mask, row)
            if extent is None:
                continue
            lateral_edge = extent[0] if lung.side < 0 else extent[1]
            cx = lateral_edge - lung.side * rng.uniform(0.01, 0.06) * size
            sx, sy = rng.uniform(0.035, 0.06) * size, rng.uniform(0.05, 0.09) * size
            lesion += rng.uniform(0.1, 0.17) * np.exp(-0.5 * (((xs - cx) / sx) ** 2 + ((ys - row) / sy) ** 2))
    texture = 0.75 + 0.25 * smooth_noise(rng, size, 24)  # patchy, ground-glass
    return np.minimum(lesion, 0.22) * texture


def _lobe_mask(lung: Lung, lobe: str, size: int) -> np.ndarray:
    """Region of a lobe within a lung field's bounding rows, split by simplified fissures."""
    ys, xs = (grid / size for grid in grid(size))
    height = lung.costophrenic_y - lung.apex_y
    # Fissures slope down laterally, as the major fissure projects on a frontal view.
    lateralness = np.clip((xs - lung.medial_x) * lung.side / abs(lung.lateral_x - lung.medial_x), 0, 1)
    if lung.side < 0:  # patient's right lung: upper, middle, lower lobes
        horizontal = lung.apex_y + 0.45 * height
        oblique = lung.apex_y + (0.52 + 0.22 * lateralness) * height
        if lobe == "upper":
            region = ys < horizontal
        elif lobe == "middle":
            region = (ys >= horizontal) & (ys < oblique) & (lateralness < 0.75)
        else:
            region = (ys >= oblique) | ((ys >= horizontal) & (lateralness >= 0.75))
    else:  # patient's left lung: upper (with lingula) and lower lobes
        oblique = lung.apex_y + (0.45 + 0.25 * lateralness) * height
        region = ys < oblique if lobe == "upper" else ys >= oblique
    return region.astype(np.float32)


LOBES: tuple[tuple[int, str], ...] = ((0, "upper"), (0, "middle"), (0, "lower"), (1, "upper"), (1, "lower"))


def _bacteria_lesions(anatomy: Anatomy, lung_fields: tuple[np.ndarray, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """One dense lobar consolidation in a random lobe, bounded by its fissure, with air bronchograms."""
    px = size / 256.0
    lung_index, lobe = LOBES[int(rng.integers(len(LOBES)))]
    lung = anatomy.lungs[lung_index]
    region = _lobe_mask(lung, lobe, size) * lung_fields[lung_index]
    rows, cols = np.nonzero(region >= 0.5)
    if rows.size == 0:
        return np.zeros((size, size), np.float32)
    pick = int(rng.integers(rows.size))
    cy, cx = rows[pick], cols[pick]
    ys, xs = grid(size)
    rx, ry = rng.uniform(0.08, 0.15) * size, rng.uniform(0.08, 0.14) * size
    distance = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2) + 0.35 * smooth_noise(rng, size, 10)
    blob = blur((distance < 1.0).astype(np.float32), 1.0 * px)
    consolidation = blur(blob * region, 0.8 * px)
    # Air bronchograms: a few darker branching lines within the opacity, running from the hilum.
    hx, hy = hila(anatomy)[lung_index]
    bronchi = []
    for _ in range(int(rng.integers(0, 4))):
        target = np.array([cx, cy]) / size + rng.normal(0, 0.03, 2)
        t = np.linspace(0.3, 1.3, 8)[:, None]
        bronchi.append(np.array([hx, hy]) + t * (target - np.array([hx, hy])))
    air = blur(polyline_canvas(size, bronchi, [1.0] * len(bronchi), max(1, round(1.5 * px))), 0.7 * px)
    density = rng.uniform(0.3, 0.42) * (1 + 0.1 * smooth_noise(rng, size, 16))
    return consolidation * density * (1.0 - 0.45 * air)


def _virus_lesions(anatomy: Anatomy, lung_fields: tuple[np.ndarray, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """Bilateral perihilar interstitial opacities: streaks radiating from the hila plus peribronchial haze."""
    px = size / 256.0
    ys, xs = (grid / size for grid in grid(size))
    streaks = []
    weights = []
    haze = np.zeros((size, size), np.float32)
    for (hx, hy), lung in zip(hila(anatomy), anatomy.lungs, strict=True):
        for _ in range(int(rng.integers(9, 16))):
            angle = np.deg2rad(rng.uniform(-60, 70))
            direction = np.array([lung.side * np.cos(angle), np.sin(angle)])
            start = np.array([hx, hy]) + rng.uniform(-0.01, 0.03) * direction + rng.normal(0, 0.012, 2)
            length = rng.uniform(0.07, 0.17)
            t = np.linspace(0, 1, 6)[:, None]
            wobble = rng.normal(0, 0.01, (6, 2)) * t
            streaks.append(start + t * length * direction + wobble)
            weights.append(rng.uniform(0.6, 1.0))
        sigma = rng.uniform(0.06, 0.09)
        haze += rng.uniform(0.05, 0.09) * np.exp(-0.5 * ((xs - hx - lung.side * 0.03) ** 2 + (ys - hy) ** 2) / sigma**2)
    lines = blur(polyline_canvas(size, streaks, weights, max(1, round(2.0 * px))), 0.9 * px)
    return rng.uniform(0.2, 0.28) * lines + haze


# Registered in alphabetical order, the order of the phantom's classes.
LESIONS.add("bacteria", _bacteria_lesions, help="one dense lobar consolidation with air bronchograms")
LESIONS.add("covid", _covid_lesions, help="bilateral peripheral lower-zone ground-glass opacities")
LESIONS.add("normal", None, help="no lesion")
LESIONS.add("virus", _virus_lesions, help="bilateral perihilar streaky interstitial opacities")
CLASSES: tuple[str, ...] = LESIONS.names()


def lesion_intensity(label: str, anatomy: Anatomy, lung_fields: tuple[np.ndarray, np.ndarray], size: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Canonical lesion intensity (float32 >= 0), confined to this image's lungs and the canonical lungs."""
    process = LESIONS[label]
    if process is None:
        return np.zeros((size, size), np.float32)
    raw = process(anatomy, lung_fields, size, rng)
    # Confining to the mean lungs too (slightly shrunk) keeps every lesion inside the canonical lung mask.
    allowed = (lung_fields[0] + lung_fields[1]) * _allowed_lesion_region(size)
    return (raw * allowed).astype(np.float32)


@lru_cache(maxsize=8)
def _allowed_lesion_region(size: int) -> np.ndarray:
    """The canonical lung mask shrunk by one pixel: lesions stay inside it under any rounding."""
    region = cv2.erode(canonical_lung_mask(size).astype(np.float32), np.ones((3, 3), np.uint8))
    region.flags.writeable = False
    return region
