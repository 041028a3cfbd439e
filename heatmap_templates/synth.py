"""Synthetic chest phantom: radiograph-like images with exact lesion ground truth.

The phantom is hmt's offline default data set and its ground truth for "do templates find the
biomarkers?". Every image is drawn in a *canonical* frame (fixed anatomy position, x-ray polarity:
bone and soft tissue bright, air dark), lesions are added there, and image and lesion mask are
then warped together by a random pose (shift, rotation, scale). So the canonical-frame truth is
exact: per-image lesion masks, poses and, per class, the canonical lesion-probability map.

Classes differ only in their lesions: anatomy, pose, contrast and noise are drawn from separate
random streams with the same distribution for every class, so a correct classifier must look at
the lesions. Each image's randomness derives from (seed, class name, index), which makes a data
set deterministic for a seed and a smaller ``n_per_class`` a prefix of a larger one.

Public API: `synthesize_dataset` (the data set on disk), `render_phantom` + `phantom_seed` (one
image in memory, optionally without its lesions), `canonical_lesion_probability`,
`canonical_lung_mask`, `pose_matrix`, `read_poses`, `write_preview_grid`. ``pose_spread``
scales the random pose (2.0: twice the shift, rotation and log-scale range) for experiments in
which registration has more to correct.
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from heatmap_templates.errors import HmtError
from heatmap_templates.progress import NullProgress, Progress

CLASSES: tuple[str, ...] = ("bacteria", "covid", "normal", "virus")
LESION_THRESHOLD = 0.04  # lesion intensity (image units, [0, 1] scale) at which a pixel counts as lesion
MIN_SIZE = 32
MAX_SIZE = 2048
DEFAULT_PROBABILITY_SAMPLES = 200
GROUND_TRUTH_DIR = "ground_truth"
MARKER_FILE = "synth.json"

_BACKGROUND = 0.04  # air outside the body
_IMAGE_STREAM, _PROBABILITY_STREAM = 0, 1
_POSE_COLUMNS = ("dx", "dy", "angle_deg", "scale", "a00", "a01", "a02", "a10", "a11", "a12")
_SUBPIXEL_BITS = 4  # cv2 drawing precision: coordinates in 1/16 pixel
CANONICAL_CHEST_FILE = "canonical_chest.png"
MAX_POSE_SPREAD = 4.0  # at 4x the shift reaches 12 % of the side and rotation 32 degrees


@dataclass(frozen=True)
class Pose:
    """Canonical -> image similarity transform; ``matrix`` is the 2 x 3 array given to cv2.warpAffine.

    Rotation (``angle_deg``, counter-clockwise on screen, cv2 convention) and ``scale`` act about the
    image centre, then the result is shifted by (``dx``, ``dy``) pixels (x right, y down).
    """

    dx: float
    dy: float
    angle_deg: float
    scale: float
    matrix: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Phantom:
    """One rendered phantom: float32 image in [0, 1], boolean lesion masks (image and canonical frame),
    this image's own lung fields in the image frame (the truth for lung segmentation), and the pose.

    ``canonical_image`` is the same drawing before the pose warp, with the image's exposure
    (contrast, brightness, gamma) but without detector blur and noise: what the image looks like
    in the canonical frame.
    """

    image: np.ndarray
    lesion_mask: np.ndarray
    canonical_lesion_mask: np.ndarray
    lung_mask: np.ndarray
    pose: Pose
    label: str
    canonical_image: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class SynthSummary:
    """What `synthesize_dataset` wrote."""

    out_dir: Path
    classes: tuple[str, ...]
    n_per_class: int
    size: int
    seed: int
    counts: dict[str, int]
    lesion_pixel_fraction: dict[str, float]  # mean fraction of image pixels inside the lesion mask
    seconds: float

    def to_json(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "classes": list(self.classes),
            "n_per_class": self.n_per_class,
            "size": self.size,
            "seed": self.seed,
            "counts": self.counts,
            "lesion_pixel_fraction": self.lesion_pixel_fraction,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class _Lung:
    """One lung field in normalised canonical coordinates (x = column / size, y = row / size)."""

    side: int  # -1: image left (patient's right lung), +1: image right (patient's left lung)
    apex_x: float
    apex_y: float
    lateral_x: float
    widest_y: float
    costophrenic_y: float
    dome_y: float
    medial_x: float
    medial_base_y: float


@dataclass(frozen=True)
class _Anatomy:
    lungs: tuple[_Lung, _Lung]
    heart_center: tuple[float, float]
    heart_axes: tuple[float, float]
    heart_angle_deg: float
    body_half_width: float
    soft_tissue: float  # brightness of the body
    lung_darkening: float  # how much darker the aerated lungs are than soft tissue
    rib_brightness: float
    rib_spacing: float
    first_rib_y: float


# --------------------------------------------------------------------------------------------
# seeding


def phantom_seed(seed: int, label: str, index: int) -> np.random.SeedSequence:
    """The seed of image ``index`` of class ``label``: independent of which other classes are made."""
    return np.random.SeedSequence([seed, zlib.crc32(label.encode()), _IMAGE_STREAM, index])


def _streams(seed_sequence: np.random.SeedSequence) -> dict[str, np.random.Generator]:
    """Separate generators so that anatomy, pose and noise do not depend on the class's lesions.

    Spawns from a fresh copy: ``SeedSequence.spawn`` advances its object, so reusing the caller's
    would give a different image on every call.
    """
    fresh = np.random.SeedSequence(seed_sequence.entropy, spawn_key=seed_sequence.spawn_key, pool_size=seed_sequence.pool_size)
    anatomy, lesions, pose, noise = fresh.spawn(4)
    return {
        "anatomy": np.random.default_rng(anatomy),
        "lesions": np.random.default_rng(lesions),
        "pose": np.random.default_rng(pose),
        "noise": np.random.default_rng(noise),
    }


# --------------------------------------------------------------------------------------------
# anatomy


def _nominal_anatomy() -> _Anatomy:
    """The mean anatomy; its lung fields define the canonical lung mask."""
    return _sample_anatomy(None)


def _sample_anatomy(rng: np.random.Generator | None) -> _Anatomy:
    """Anatomy with mild variability (lung size and shape, heart size); ``rng=None`` gives the mean."""

    def jitter(spread: float) -> float:
        return 0.0 if rng is None else float(rng.uniform(-spread, spread))

    lung_width = 1.0 + jitter(0.06)
    lung_height = 1.0 + jitter(0.06)
    apex_y = 0.15 + jitter(0.015)
    lungs = []
    for side in (-1, 1):
        lateral = 0.5 + side * 0.35 * lung_width + jitter(0.01)
        medial = 0.5 + side * (0.065 + jitter(0.01))
        costophrenic = apex_y + 0.60 * lung_height + jitter(0.015)
        # The right hemidiaphragm (image left) usually sits a little higher.
        dome = costophrenic - 0.07 - (0.015 if side < 0 else 0.0) + jitter(0.012)
        lungs.append(
            _Lung(
                side=side,
                apex_x=0.5 + side * 0.17 * lung_width + jitter(0.01),
                apex_y=apex_y + jitter(0.008),
                lateral_x=lateral,
                widest_y=apex_y + 0.30 * lung_height + jitter(0.02),
                costophrenic_y=costophrenic,
                dome_y=dome,
                medial_x=medial,
                medial_base_y=dome + 0.03 + jitter(0.01),
            )
        )
    heart_scale = 1.0 + jitter(0.1)
    return _Anatomy(
        lungs=(lungs[0], lungs[1]),
        heart_center=(0.55 + jitter(0.015), apex_y + 0.48 * lung_height + jitter(0.015)),
        heart_axes=(0.16 * heart_scale, 0.12 * heart_scale),
        heart_angle_deg=-18.0 + jitter(6.0),
        body_half_width=0.43 + jitter(0.015),
        soft_tissue=0.58 + jitter(0.04),
        lung_darkening=0.36 + jitter(0.05),
        rib_brightness=0.08 + jitter(0.02),
        rib_spacing=0.062 * lung_height + jitter(0.003),
        first_rib_y=apex_y + 0.005 + jitter(0.01),
    )


def _lung_outline(lung: _Lung) -> np.ndarray:
    """Closed outline (N, 2) of a lung field in normalised coordinates, clockwise from the apex."""
    s = lung.side
    # Apex to widest point: a quarter ellipse.
    t = np.linspace(0.0, np.pi / 2, 24)
    upper_lateral = np.stack(
        [lung.apex_x + (lung.lateral_x - lung.apex_x) * np.sin(t), lung.widest_y - (lung.widest_y - lung.apex_y) * np.cos(t)], 1
    )
    # Widest point down to the costophrenic angle: the chest wall, gently curving inwards.
    t = np.linspace(0.0, 1.0, 16)[1:]
    lower_lateral = np.stack(
        [lung.lateral_x - s * 0.025 * t**2, lung.widest_y + (lung.costophrenic_y - lung.widest_y) * t], 1
    )
    # Diaphragm dome: quadratic Bezier from the costophrenic angle to the medial base.
    start = np.array([lung.lateral_x - s * 0.025, lung.costophrenic_y])
    end = np.array([lung.medial_x, lung.medial_base_y])
    control = np.array([0.5 * (start[0] + end[0]) + s * 0.03, 2 * lung.dome_y - 0.5 * (start[1] + end[1])])
    t = np.linspace(0.0, 1.0, 24)[1:, None]
    dome = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    # Medial border (mediastinum) up to below the apex, then a quarter ellipse back to the apex.
    top_medial_y = lung.apex_y + 0.10
    t = np.linspace(0.0, 1.0, 12)[1:]
    medial = np.stack([np.full_like(t, lung.medial_x) + s * 0.01 * np.sin(np.pi * t), lung.medial_base_y + (top_medial_y - lung.medial_base_y) * t], 1)
    t = np.linspace(0.0, np.pi / 2, 12)[1:-1]
    upper_medial = np.stack(
        [lung.medial_x + (lung.apex_x - lung.medial_x) * np.sin(t), top_medial_y - (top_medial_y - lung.apex_y) * np.sin(t)], 1
    )
    return np.concatenate([upper_lateral, lower_lateral, dome, medial, upper_medial])


def _fill(shape_size: int, outline: np.ndarray) -> np.ndarray:
    """Anti-aliased filled polygon (float32 in [0, 1]) from a normalised outline."""
    canvas = np.zeros((shape_size, shape_size), np.uint8)
    points = np.round(outline * shape_size * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(canvas, [points], 255, lineType=cv2.LINE_AA, shift=_SUBPIXEL_BITS)
    return canvas.astype(np.float32) / 255.0


def _ellipse(size: int, center: tuple[float, float], axes: tuple[float, float], angle_deg: float) -> np.ndarray:
    """Anti-aliased filled ellipse (float32 in [0, 1]), normalised centre and semi-axes."""
    canvas = np.zeros((size, size), np.uint8)
    scale = size * (1 << _SUBPIXEL_BITS)
    cv2.ellipse(
        canvas,
        (round(center[0] * scale), round(center[1] * scale)),
        (max(1, round(axes[0] * scale)), max(1, round(axes[1] * scale))),
        angle_deg, 0, 360, 255, -1, cv2.LINE_AA, _SUBPIXEL_BITS,
    )
    return canvas.astype(np.float32) / 255.0


def _heart(anatomy: _Anatomy, size: int) -> np.ndarray:
    return _ellipse(size, anatomy.heart_center, anatomy.heart_axes, anatomy.heart_angle_deg)


def _lung_fields(anatomy: _Anatomy, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks of the image-left and image-right lung fields, minus the heart shadow."""
    not_heart = 1.0 - _heart(anatomy, size)
    left, right = (_fill(size, _lung_outline(lung)) * not_heart for lung in anatomy.lungs)
    return left, right


def canonical_lung_mask(size: int) -> np.ndarray:
    """Boolean lung-field mask of the mean anatomy in the canonical frame (the registration target)."""
    _check_size(size)
    left, right = _lung_fields(_nominal_anatomy(), size)
    return (left + right) >= 0.5


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a cells x cells random grid upsampled smoothly."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC) / 2.0, -1.5, 1.5)


def _blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigmaX=max(sigma_px, 0.3), borderType=cv2.BORDER_REPLICATE)


def _profile(step: np.ndarray, sigma_px: float) -> np.ndarray:
    """A blurred 1-D (row or column vector) boolean profile, for separable image terms."""
    return _blur(step.astype(np.float32), sigma_px).reshape(step.shape)


def _polyline_canvas(size: int, curves: list[np.ndarray], weights: Sequence[float], thickness: int) -> np.ndarray:
    """Float canvas in [0, 1] with each normalised curve drawn at its weight.

    Plain (not anti-aliased) lines: every caller blurs the canvas, and thick anti-aliased lines
    cost about three times as much.
    """
    canvas = np.zeros((size, size), np.uint8)
    scale = size * (1 << _SUBPIXEL_BITS)
    for curve, weight in zip(curves, weights):
        points = np.round(curve * scale).astype(np.int32)
        cv2.polylines(canvas, [points], False, round(255 * weight), max(1, thickness), cv2.LINE_8, _SUBPIXEL_BITS)
    return canvas.astype(np.float32) / 255.0


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates (float32, read-only) of a size x size image."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


def _hila(anatomy: _Anatomy) -> list[tuple[float, float]]:
    """The two hilar points, just lateral to the mediastinum at mid-lung height."""
    return [(lung.medial_x + lung.side * 0.045, 0.5 * (lung.apex_y + lung.costophrenic_y) + 0.02) for lung in anatomy.lungs]


def _render_anatomy(anatomy: _Anatomy, lungs: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Lesion-free canonical radiograph (float32, not yet clipped)."""
    px = size / 256.0
    # Terms that vary along one axis only are built as 1-D profiles and broadcast (much cheaper).
    coordinates = (np.arange(size, dtype=np.float32) + 0.5) / size
    rows, columns = coordinates[:, None], coordinates[None, :]
    image = np.full((size, size), _BACKGROUND, np.float32)

    # Body: torso with shoulders and neck, a little denser towards the abdomen.
    hw = anatomy.body_half_width
    torso = np.array([[0.5 - 0.08, -0.05], [0.5 - 0.08, 0.06], [0.5 - hw + 0.06, 0.10], [0.5 - hw, 0.18], [0.5 - hw - 0.01, 0.60],
                      [0.5 - hw + 0.02, 1.05], [0.5 + hw - 0.02, 1.05], [0.5 + hw + 0.01, 0.60], [0.5 + hw, 0.18],
                      [0.5 + hw - 0.06, 0.10], [0.5 + 0.08, 0.06], [0.5 + 0.08, -0.05]])
    body = _blur(_fill(size, torso), 3.0 * px)
    lateral_falloff = 1.0 - 0.15 * np.clip(np.abs(columns - 0.5) / hw, 0, 1) ** 4  # thinner tissue at the edges
    image += body * (anatomy.soft_tissue * lateral_falloff + (0.08 * np.clip(rows - 0.6, 0, 1) - _BACKGROUND))

    # Spine: a brighter column behind the mediastinum; heart: slightly denser than soft tissue.
    spine = _profile(rows > 0.02, 2.5 * px) * _profile(np.abs(columns - 0.5) < 0.035, 2.5 * px)
    image += 0.07 * spine * body + 0.03 * _blur(_heart(anatomy, size), 4.0 * px)

    # Trachea: a darker air column down the midline to the carina.
    trachea = _profile(rows < anatomy.lungs[0].apex_y + 0.22, 1.5 * px) * _profile(np.abs(columns - 0.5) < 0.016, 1.5 * px)
    image -= 0.12 * trachea * body

    # Aerated lungs: darker, slightly brighter at the bases and towards the mediastinum.
    soft_lungs = _blur(lungs, 1.6 * px)
    lung_shading = anatomy.lung_darkening * (1.0 - 0.25 * np.clip((rows - 0.35) / 0.4, 0, 1)) * (1 + 0.06 * _smooth_noise(rng, size, 5))
    image -= soft_lungs * lung_shading

    # Vascular markings: faint tapering branches from the hila (every class has them).
    vessels = []
    weights = []
    for (hx, hy), lung in zip(_hila(anatomy), anatomy.lungs):
        for _ in range(9):
            angle = np.deg2rad(rng.uniform(-75, 80))
            length = rng.uniform(0.10, 0.22)
            t = np.linspace(0, 1, 8)[:, None]
            bend = rng.uniform(-0.15, 0.15)
            direction = np.array([lung.side * np.cos(angle), np.sin(angle)])
            normal = np.array([-direction[1], direction[0]])
            vessels.append(np.array([hx, hy]) + t * length * direction + (t * (1 - t)) * bend * length * normal)
            weights.append(rng.uniform(0.5, 1.0))
    markings = _blur(_polyline_canvas(size, vessels, weights, max(1, round(1.5 * px))), 1.2 * px)
    image += 0.07 * markings * soft_lungs

    # Ribs, confined to the thoracic cage: posterior arcs from the spine (flat, then curving down at
    # the chest wall) and fainter anterior arcs sloping down towards the sternum.
    ribs, rib_weights = [], []
    for side in (-1, 1):
        for k in range(10):
            y0 = anatomy.first_rib_y + k * anatomy.rib_spacing * (1 + 0.025 * k)
            t = np.linspace(0, 1, 20)
            x = 0.5 + side * (0.03 + (hw - 0.03) * t)
            y = y0 - 0.03 * np.sin(np.pi * t * 0.8) + 0.13 * t**2.5
            ribs.append(np.stack([x, y], 1))
            rib_weights.append(1.0)
            x = 0.5 + side * (hw - 0.03 - (hw - 0.16) * t)
            y = y0 + 0.09 + 0.10 * t**0.8
            ribs.append(np.stack([x, y], 1))
            rib_weights.append(0.45)
    cage = np.clip(_blur(cv2.dilate(lungs, np.ones((max(3, round(9 * px)),) * 2, np.uint8)), 5.0 * px) * 1.4, 0, 1)
    rib_canvas = _blur(_polyline_canvas(size, ribs, rib_weights, round(4.0 * px)), 1.1 * px)
    image += anatomy.rib_brightness * rib_canvas * cage * (0.5 + 0.5 * soft_lungs)

    # Clavicles: gently S-shaped bright bars over the lung apices.
    clavicles = []
    for lung in anatomy.lungs:
        t = np.linspace(0, 1, 16)
        x = 0.5 + lung.side * (0.05 + 0.30 * t)
        y = lung.apex_y + 0.035 - 0.05 * t + 0.012 * np.sin(2 * np.pi * t)
        clavicles.append(np.stack([x, y], 1))
    image += 0.13 * _blur(_polyline_canvas(size, clavicles, [1.0, 1.0], round(6 * px)), 1.2 * px)
    return image


# --------------------------------------------------------------------------------------------
# lesions


def _row_extent(mask: np.ndarray, row: int) -> tuple[int, int] | None:
    columns = np.flatnonzero(mask[row] >= 0.5)
    return (int(columns[0]), int(columns[-1])) if columns.size else None


def _covid_lesions(anatomy: _Anatomy, lung_fields: tuple[np.ndarray, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """Bilateral, peripheral, lower-zone ground-glass opacities: hazy blobs along the outer lung edge."""
    ys, xs = _grid(size)
    lesion = np.zeros((size, size), np.float32)
    for lung, field_mask in zip(anatomy.lungs, lung_fields):
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
    texture = 0.75 + 0.25 * _smooth_noise(rng, size, 24)  # patchy, ground-glass
    return np.minimum(lesion, 0.22) * texture


def _lobe_mask(lung: _Lung, lobe: str, size: int) -> np.ndarray:
    """Region of a lobe within a lung field's bounding rows, split by simplified fissures."""
    ys, xs = (grid / size for grid in _grid(size))
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


def _bacteria_lesions(anatomy: _Anatomy, lung_fields: tuple[np.ndarray, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
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
    ys, xs = _grid(size)
    rx, ry = rng.uniform(0.08, 0.15) * size, rng.uniform(0.08, 0.14) * size
    distance = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2) + 0.35 * _smooth_noise(rng, size, 10)
    blob = _blur((distance < 1.0).astype(np.float32), 1.0 * px)
    consolidation = _blur(blob * region, 0.8 * px)
    # Air bronchograms: a few darker branching lines within the opacity, running from the hilum.
    hx, hy = _hila(anatomy)[lung_index]
    bronchi = []
    for _ in range(int(rng.integers(0, 4))):
        target = np.array([cx, cy]) / size + rng.normal(0, 0.03, 2)
        t = np.linspace(0.3, 1.3, 8)[:, None]
        bronchi.append(np.array([hx, hy]) + t * (target - np.array([hx, hy])))
    air = _blur(_polyline_canvas(size, bronchi, [1.0] * len(bronchi), max(1, round(1.5 * px))), 0.7 * px)
    density = rng.uniform(0.3, 0.42) * (1 + 0.1 * _smooth_noise(rng, size, 16))
    return consolidation * density * (1.0 - 0.45 * air)


def _virus_lesions(anatomy: _Anatomy, lung_fields: tuple[np.ndarray, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """Bilateral perihilar interstitial opacities: streaks radiating from the hila plus peribronchial haze."""
    px = size / 256.0
    ys, xs = (grid / size for grid in _grid(size))
    streaks = []
    weights = []
    haze = np.zeros((size, size), np.float32)
    for (hx, hy), lung in zip(_hila(anatomy), anatomy.lungs):
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
    lines = _blur(_polyline_canvas(size, streaks, weights, max(1, round(2.0 * px))), 0.9 * px)
    return rng.uniform(0.2, 0.28) * lines + haze


_LESION_PROCESSES = {"covid": _covid_lesions, "bacteria": _bacteria_lesions, "virus": _virus_lesions}


def _lesion_intensity(label: str, anatomy: _Anatomy, lung_fields: tuple[np.ndarray, np.ndarray], size: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Canonical lesion intensity (float32 >= 0), confined to this image's lungs and the canonical lungs."""
    if label == "normal":
        return np.zeros((size, size), np.float32)
    raw = _LESION_PROCESSES[label](anatomy, lung_fields, size, rng)
    # Confining to the mean lungs too (slightly shrunk) keeps every lesion inside the canonical lung mask.
    allowed = (lung_fields[0] + lung_fields[1]) * _allowed_lesion_region(size)
    return (raw * allowed).astype(np.float32)


@lru_cache(maxsize=8)
def _allowed_lesion_region(size: int) -> np.ndarray:
    """The canonical lung mask shrunk by one pixel: lesions stay inside it under any rounding."""
    region = cv2.erode(canonical_lung_mask(size).astype(np.float32), np.ones((3, 3), np.uint8))
    region.flags.writeable = False
    return region


# --------------------------------------------------------------------------------------------
# pose and rendering


def pose_matrix(dx: float, dy: float, angle_deg: float, scale: float, size: int) -> np.ndarray:
    """The 2 x 3 canonical -> image matrix: rotate and scale about the centre, then shift."""
    centre = ((size - 1) / 2.0, (size - 1) / 2.0)
    matrix = cv2.getRotationMatrix2D(centre, angle_deg, scale)
    matrix[:, 2] += (dx, dy)
    return matrix


def _sample_pose(rng: np.random.Generator, size: int, spread: float = 1.0) -> Pose:
    """Random pose; ``spread`` multiplies the shift and rotation ranges and the exponent of the scale
    (so its log range), and 1.0 gives exactly the same numbers as an unscaled draw."""
    dx, dy = rng.uniform(-0.03, 0.03, 2) * size * spread
    angle = float(rng.uniform(-8.0, 8.0) * spread)
    scale = float(rng.uniform(0.9, 1.1) ** spread)
    return Pose(float(dx), float(dy), angle, scale, pose_matrix(float(dx), float(dy), angle, scale, size))


def _warp_mask(canonical: np.ndarray, pose: Pose) -> np.ndarray:
    """Boolean image-frame mask of a [0, 1] canonical mask (bilinear, then >= 0.5)."""
    size = canonical.shape[0]
    return cv2.warpAffine(canonical, pose.matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) >= 0.5


def _check_label(label: str) -> None:
    if label not in CLASSES:
        raise HmtError(f"unknown phantom class {label!r}; expected one of {', '.join(CLASSES)}")


def _check_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise HmtError(f"phantom size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")


def _check_pose_spread(pose_spread: float) -> None:
    if not 0.0 <= pose_spread <= MAX_POSE_SPREAD:
        raise HmtError(f"pose spread must be between 0 and {MAX_POSE_SPREAD:g}, got {pose_spread}")


def render_phantom(seed: np.random.SeedSequence | int | Sequence[int], label: str, size: int = 256, *,
                   include_lesions: bool = True, pose_spread: float = 1.0) -> Phantom:
    """Render one phantom of class ``label``.

    ``include_lesions=False`` renders the identical image without its lesions (same anatomy, pose
    and noise), which is what makes the lesion ground truth checkable. ``pose_spread`` scales the
    random pose (see `synthesize_dataset`).
    """
    _check_label(label)
    _check_size(size)
    _check_pose_spread(pose_spread)
    seed_sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    rng = _streams(seed_sequence)
    px = size / 256.0

    anatomy = _sample_anatomy(rng["anatomy"])
    lung_fields = _lung_fields(anatomy, size)
    canonical = _render_anatomy(anatomy, lung_fields[0] + lung_fields[1], size, rng["anatomy"])
    lesion = _lesion_intensity(label, anatomy, lung_fields, size, rng["lesions"])
    canonical_mask = lesion >= LESION_THRESHOLD
    if include_lesions:
        canonical = canonical + lesion

    pose = _sample_pose(rng["pose"], size, pose_spread)
    image = cv2.warpAffine(canonical, pose.matrix, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=_BACKGROUND)
    mask = _warp_mask(canonical_mask.astype(np.float32), pose)
    lungs = _warp_mask(lung_fields[0] + lung_fields[1], pose)

    # Acquisition: exposure (contrast, brightness, gamma), detector blur and noise, in the image frame.
    noise_rng = rng["noise"]
    contrast, brightness, gamma = noise_rng.uniform(0.85, 1.15), noise_rng.uniform(-0.05, 0.05), noise_rng.uniform(0.85, 1.15)
    image = np.clip((image - 0.4) * contrast + 0.4 + brightness, 0.0, 1.0) ** gamma
    canonical_image = (np.clip((canonical - 0.4) * contrast + 0.4 + brightness, 0.0, 1.0) ** gamma).astype(np.float32)
    image = _blur(image.astype(np.float32), noise_rng.uniform(0.5, 1.0) * px)
    image += noise_rng.normal(0.0, noise_rng.uniform(0.008, 0.022), (size, size)).astype(np.float32)
    image += 0.02 * _smooth_noise(noise_rng, size, 6)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return Phantom(image=image, lesion_mask=mask, canonical_lesion_mask=canonical_mask, lung_mask=lungs, pose=pose, label=label,
                   canonical_image=canonical_image)


def canonical_lesion_probability(label: str, size: int = 256, n_samples: int = DEFAULT_PROBABILITY_SAMPLES,
                                 seed: int = 0) -> np.ndarray:
    """Monte Carlo estimate of P(pixel is lesion) in the canonical frame for class ``label``.

    Samples the anatomy and lesion process exactly as `render_phantom` does (without pose, which
    does not act in the canonical frame); ``normal`` is all zeros. float32 in [0, 1].
    """
    _check_label(label)
    _check_size(size)
    if n_samples < 1:
        raise HmtError(f"n_samples must be at least 1, got {n_samples}")
    total = np.zeros((size, size), np.float32)
    if label == "normal":
        return total
    for index in range(n_samples):
        rng = _streams(np.random.SeedSequence([seed, zlib.crc32(label.encode()), _PROBABILITY_STREAM, index]))
        anatomy = _sample_anatomy(rng["anatomy"])
        lesion = _lesion_intensity(label, anatomy, _lung_fields(anatomy, size), size, rng["lesions"])
        total += lesion >= LESION_THRESHOLD
    return total / n_samples


# --------------------------------------------------------------------------------------------
# data set


def _validate(n_per_class: int, size: int, seed: int, classes: Sequence[str], pose_spread: float) -> tuple[str, ...]:
    if n_per_class < 1:
        raise HmtError(f"n_per_class must be at least 1, got {n_per_class}")
    _check_size(size)
    _check_pose_spread(pose_spread)
    if seed < 0:
        raise HmtError(f"seed must be a non-negative integer, got {seed}")
    chosen = tuple(classes)
    if not chosen:
        raise HmtError("no phantom classes chosen")
    for label in chosen:
        _check_label(label)
    if len(set(chosen)) != len(chosen):
        raise HmtError(f"phantom classes repeat: {', '.join(chosen)}")
    return chosen


def _prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir``, or clear a previous synth output there; refuse anything else non-empty."""
    if out_dir.exists() and not out_dir.is_dir():
        raise HmtError(f"{out_dir}: exists and is not a folder")
    if not out_dir.exists():
        out_dir.mkdir(parents=True)
        return
    if not any(out_dir.iterdir()):
        return
    marker = out_dir / GROUND_TRUTH_DIR / MARKER_FILE
    if not marker.is_file():
        raise HmtError(f"{out_dir}: folder is not empty and is not a previous `hmt synth` output; choose a new or empty folder")
    try:
        previous = json.loads(marker.read_text())
        previous_classes = [label for label in previous["classes"] if label in CLASSES]
    except (ValueError, KeyError, TypeError) as error:
        raise HmtError(f"{marker}: cannot read the previous synth record ({error}); remove the folder by hand") from error
    # Remove only what a previous run wrote, so a stale larger set does not survive a smaller one.
    for label in previous_classes:
        for folder in (out_dir / label, out_dir / GROUND_TRUTH_DIR / "masks" / label):
            if folder.is_dir():
                for path in folder.iterdir():
                    if re.fullmatch(rf"{re.escape(label)}_\d+\.png", path.name):
                        path.unlink()
                if not any(folder.iterdir()):
                    folder.rmdir()
    masks = out_dir / GROUND_TRUTH_DIR / "masks"
    if masks.is_dir() and not any(masks.iterdir()):
        masks.rmdir()
    for path in (out_dir / GROUND_TRUTH_DIR).glob("lesion_probability_*.npy"):
        path.unlink()


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise HmtError(f"{path}: could not write the PNG file")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


_README = """# Phantom ground truth

Written by `hmt synth` (heatmap_templates.synth): {n} images per class, {size} x {size} px, seed {seed},
classes {classes}, pose spread {pose_spread:g} (1 = shifts up to 3 % of the side, rotations up to 8 degrees,
scales 0.9 to 1.1; the spread multiplies the shift and rotation ranges and the exponent of the scale).
Re-running with the same arguments reproduces every file bit for bit.

- `../<class>/<class>_NNNN.png`: the 8-bit grayscale images (x-ray polarity: bone and tissue bright, air dark).
- `../manifest.csv`: `path,label,patient_id` for every image (each image is its own patient).
- `masks/<class>/<class>_NNNN.png`: each image's lesion mask in the image frame (255 = lesion; all 0 for `normal`).
- `poses.csv`: `path,label,dx,dy,angle_deg,scale,a00,a01,a02,a10,a11,a12,patient_id`. The image is the canonical
  drawing warped by `cv2.warpAffine(canonical, [[a00, a01, a02], [a10, a11, a12]], (size, size))`: rotation by
  `angle_deg` (counter-clockwise on screen) and `scale` about the image centre ((size - 1) / 2), then a shift of
  (`dx`, `dy`) pixels (x right, y down). Invert the matrix (`cv2.invertAffineTransform`) to map an image back.
- `lesion_probability_<class>.npy`: float32 (size, size) in [0, 1], the probability that a canonical-frame pixel is
  lesion, a Monte Carlo estimate over {samples} draws of the class's lesion process (all zeros for `normal`).
- `canonical_lungs.png`: the lung fields of the mean anatomy in the canonical frame (255 = lung).
- `canonical_chest.png`: 8-bit mean of all images in the canonical frame, i.e. before the pose warp (with each
  image's exposure, without detector blur and noise). The natural registration reference for templates that are
  compared with `lesion_probability_<class>.npy`: registered to it, heatmaps land in the canonical frame.
- `synth.json`: the arguments of the run; it also marks the folder as a synth output that `hmt synth` may replace.

Lesions: `covid` bilateral peripheral lower-zone ground-glass opacities; `bacteria` one dense lobar consolidation
(random lobe, air bronchograms); `virus` bilateral perihilar streaky interstitial opacities; `normal` none.
A pixel is lesion where the added lesion intensity is at least {threshold} (on the [0, 1] image scale).
"""


@dataclass(frozen=True)
class _Written:
    """What one worker wrote for one image: its poses.csv row and lesion pixel count, and (on the
    first image of a chunk only) the sum of the chunk's canonical-frame images."""

    label: str
    index: int
    pose_row: list[str]
    mask_pixels: int
    canonical_sum: np.ndarray | None = None


def _render_and_write(out: Path, label: str, indices: Sequence[int], seed: int, size: int,
                      pose_spread: float = 1.0) -> list[_Written]:
    """Render images ``indices`` of class ``label`` and write each image and its lesion mask."""
    written = []
    canonical_sum = np.zeros((size, size), np.float64)
    for index in indices:
        name = f"{label}_{index:04d}.png"
        phantom = render_phantom(phantom_seed(seed, label, index), label, size, pose_spread=pose_spread)
        canonical_sum += phantom.canonical_image
        _write_png(out / label / name, _to_uint8(phantom.image))
        _write_png(out / GROUND_TRUTH_DIR / "masks" / label / name, phantom.lesion_mask.astype(np.uint8) * 255)
        pose = phantom.pose
        row = [f"{label}/{name}", label, *(repr(float(value)) for value in (pose.dx, pose.dy, pose.angle_deg, pose.scale)),
               *(repr(float(value)) for value in pose.matrix.ravel()), f"{label}_{index:04d}"]
        written.append(_Written(label, index, row, int(phantom.lesion_mask.sum())))
    if written:
        written[0] = _Written(written[0].label, written[0].index, written[0].pose_row, written[0].mask_pixels, canonical_sum)
    return written


def _write_probability(path: Path, label: str, size: int, samples: int, seed: int) -> None:
    np.save(path, canonical_lesion_probability(label, size, samples, seed))


def _default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def synthesize_dataset(out_dir: str | Path, *, n_per_class: int, size: int = 256, seed: int = 0,
                       classes: Sequence[str] = CLASSES, progress: Progress | None = None,
                       probability_samples: int = DEFAULT_PROBABILITY_SAMPLES, workers: int | None = None,
                       pose_spread: float = 1.0) -> SynthSummary:
    """Write a class-per-folder phantom data set with its ground truth (layout in ground_truth/README.md).

    ``out_dir`` must be new, empty, or a previous synth output (which is replaced). ``workers``
    processes share the work (default: the CPU count, at most 8); every image has its own seed,
    so the files are identical for any number of workers. ``pose_spread`` (0 to 4) multiplies
    the random pose's shift and rotation ranges and its log-scale range: 1.0 is the default pose
    distribution, larger values give registration more to correct, 0 puts every chest in the
    canonical frame.
    """
    started = time.perf_counter()
    chosen = _validate(n_per_class, size, seed, classes, pose_spread)
    if probability_samples < 1:
        raise HmtError(f"probability_samples must be at least 1, got {probability_samples}")
    workers = _default_workers() if workers is None else workers
    if workers < 1:
        raise HmtError(f"workers must be at least 1, got {workers}")
    out = Path(out_dir)
    _prepare_out_dir(out)
    truth = out / GROUND_TRUTH_DIR
    for label in chosen:
        (out / label).mkdir(exist_ok=True)
        (truth / "masks" / label).mkdir(parents=True, exist_ok=True)
    progress = progress or NullProgress()
    progress.start(len(chosen) * n_per_class, "synthesising phantoms")

    chunk = 16
    image_jobs = [(label, range(first, min(first + chunk, n_per_class))) for label in chosen for first in range(0, n_per_class, chunk)]
    probability_jobs = [(truth / f"lesion_probability_{label}.npy", label) for label in chosen]
    written: list[_Written] = []
    if workers == 1:
        for label, indices in image_jobs:
            written += _render_and_write(out, label, indices, seed, size, pose_spread)
            progress.advance(len(indices))
        for path, label in probability_jobs:
            _write_probability(path, label, size, probability_samples, seed)
    else:
        # Spawned (not forked) workers: the caller may hold threads, e.g. TensorFlow's.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            probability_futures = [pool.submit(_write_probability, path, label, size, probability_samples, seed)
                                   for path, label in probability_jobs]
            image_futures = [pool.submit(_render_and_write, out, label, indices, seed, size, pose_spread)
                             for label, indices in image_jobs]
            for future in as_completed(image_futures):
                batch = future.result()
                written += batch
                progress.advance(len(batch))
            for future in probability_futures:
                future.result()
    progress.finish()

    order = {label: position for position, label in enumerate(chosen)}
    written.sort(key=lambda item: (order[item.label], item.index))
    with open(out / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", "patient_id"])
        writer.writerows([item.pose_row[0], item.label, item.pose_row[-1]] for item in written)
    with open(truth / "poses.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", *_POSE_COLUMNS, "patient_id"])
        writer.writerows(item.pose_row for item in written)
    _write_png(truth / "canonical_lungs.png", canonical_lung_mask(size).astype(np.uint8) * 255)
    # Summed in a fixed order (class, then index), so the mean is the same for any number of workers.
    canonical_total = np.zeros((size, size), np.float64)
    for item in written:
        if item.canonical_sum is not None:
            canonical_total += item.canonical_sum
    _write_png(truth / CANONICAL_CHEST_FILE, _to_uint8(canonical_total / len(written)))
    (truth / "README.md").write_text(_README.format(n=n_per_class, size=size, seed=seed, classes=", ".join(chosen),
                                                    samples=probability_samples, threshold=LESION_THRESHOLD,
                                                    pose_spread=pose_spread))
    record = {"generator": "hmt synth", "n_per_class": n_per_class, "size": size, "seed": seed, "classes": list(chosen),
              "probability_samples": probability_samples, "lesion_threshold": LESION_THRESHOLD, "pose_spread": pose_spread}
    (truth / MARKER_FILE).write_text(json.dumps(record, indent=2) + "\n")
    lesion_fraction = {label: sum(item.mask_pixels for item in written if item.label == label) / (n_per_class * size * size)
                       for label in chosen}
    return SynthSummary(out, chosen, n_per_class, size, seed, {label: n_per_class for label in chosen}, lesion_fraction,
                        time.perf_counter() - started)


def read_poses(out_dir: str | Path) -> dict[str, Pose]:
    """Poses of a synth output keyed by relative image path (``<class>/<class>_NNNN.png``)."""
    path = Path(out_dir) / GROUND_TRUTH_DIR / "poses.csv"
    if not path.is_file():
        raise HmtError(f"{path}: missing; not a `hmt synth` output")
    poses = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            matrix = np.array([float(row[key]) for key in _POSE_COLUMNS[4:]]).reshape(2, 3)
            poses[row["path"]] = Pose(float(row["dx"]), float(row["dy"]), float(row["angle_deg"]), float(row["scale"]), matrix)
    return poses


# --------------------------------------------------------------------------------------------
# preview


def write_preview_grid(out_dir: str | Path, path: str | Path, n_examples: int = 4) -> Path:
    """Grid PNG of a synth output: one row per class, examples with their lesion contour, then the probability map."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    marker = out / GROUND_TRUTH_DIR / MARKER_FILE
    if not marker.is_file():
        raise HmtError(f"{out}: not a `hmt synth` output (no {GROUND_TRUTH_DIR}/{MARKER_FILE})")
    record = json.loads(marker.read_text())
    classes = record["classes"]
    shown = max(1, min(n_examples, record["n_per_class"]))
    lungs = cv2.imread(str(out / GROUND_TRUTH_DIR / "canonical_lungs.png"), cv2.IMREAD_GRAYSCALE)

    figure = Figure(figsize=(2.0 * (shown + 1), 2.1 * len(classes)), dpi=90)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(classes), shown + 1, squeeze=False)
    for row, label in enumerate(classes):
        for column in range(shown):
            name = f"{label}_{column:04d}.png"
            image = cv2.imread(str(out / label / name), cv2.IMREAD_GRAYSCALE)
            mask = cv2.imread(str(out / GROUND_TRUTH_DIR / "masks" / label / name), cv2.IMREAD_GRAYSCALE)
            axis = axes[row, column]
            axis.imshow(image, cmap="gray", vmin=0, vmax=255)
            if mask.any():
                axis.contour(mask > 127, levels=[0.5], colors="#ff3b30", linewidths=0.8)
            axis.set_title(name, fontsize=7)
        probability = np.load(out / GROUND_TRUTH_DIR / f"lesion_probability_{label}.npy")
        axis = axes[row, shown]
        axis.imshow(probability, cmap="magma", vmin=0, vmax=max(float(probability.max()), 1e-6))
        axis.contour(lungs > 127, levels=[0.5], colors="#4fc3f7", linewidths=0.6)
        axis.set_title(f"P(lesion) canonical, max {probability.max():.2f}", fontsize=7)
        axes[row, 0].set_ylabel(label, fontsize=10)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"hmt synth phantoms: {record['size']} px, seed {record['seed']} (red: lesion mask)", fontsize=9)
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target)
    return target
