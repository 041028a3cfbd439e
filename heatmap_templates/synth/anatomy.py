"""The phantom's anatomy: a radiograph-like chest drawn in the canonical frame, without lesions.

Every image's anatomy varies mildly (lung size and shape, heart size, exposure of tissues), drawn
from its own random stream; ``nominal_anatomy`` is the mean, whose lung fields define the
canonical lung mask that registration and the ground truth use.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from heatmap_templates.errors import HmtError

MIN_SIZE = 32
MAX_SIZE = 2048
BACKGROUND = 0.04  # air outside the body
_SUBPIXEL_BITS = 4  # cv2 drawing precision: coordinates in 1/16 pixel


def check_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise HmtError(f"phantom size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")


@dataclass(frozen=True)
class Lung:
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
class Anatomy:
    lungs: tuple[Lung, Lung]
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
# anatomy


def nominal_anatomy() -> Anatomy:
    """The mean anatomy; its lung fields define the canonical lung mask."""
    return sample_anatomy(None)


def sample_anatomy(rng: np.random.Generator | None) -> Anatomy:
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
            Lung(
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
    return Anatomy(
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


def _lung_outline(lung: Lung) -> np.ndarray:
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


def _heart(anatomy: Anatomy, size: int) -> np.ndarray:
    return _ellipse(size, anatomy.heart_center, anatomy.heart_axes, anatomy.heart_angle_deg)


def draw_lung_fields(anatomy: Anatomy, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks of the image-left and image-right lung fields, minus the heart shadow."""
    not_heart = 1.0 - _heart(anatomy, size)
    left, right = (_fill(size, _lung_outline(lung)) * not_heart for lung in anatomy.lungs)
    return left, right


def canonical_lung_mask(size: int) -> np.ndarray:
    """Boolean lung-field mask of the mean anatomy in the canonical frame (the registration target)."""
    check_size(size)
    left, right = draw_lung_fields(nominal_anatomy(), size)
    return (left + right) >= 0.5


def canonical_body_mask(size: int) -> np.ndarray:
    """Boolean body mask (torso, shoulders, neck) of the mean anatomy in the canonical frame."""
    check_size(size)
    return draw_body(nominal_anatomy(), size) >= 0.5


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a cells x cells random grid upsampled smoothly."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC) / 2.0, -1.5, 1.5)


def blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigmaX=max(sigma_px, 0.3), borderType=cv2.BORDER_REPLICATE)


def _profile(step: np.ndarray, sigma_px: float) -> np.ndarray:
    """A blurred 1-D (row or column vector) boolean profile, for separable image terms."""
    return blur(step.astype(np.float32), sigma_px).reshape(step.shape)


def polyline_canvas(size: int, curves: list[np.ndarray], weights: Sequence[float], thickness: int) -> np.ndarray:
    """Float canvas in [0, 1] with each normalised curve drawn at its weight.

    Plain (not anti-aliased) lines: every caller blurs the canvas, and thick anti-aliased lines
    cost about three times as much.
    """
    canvas = np.zeros((size, size), np.uint8)
    scale = size * (1 << _SUBPIXEL_BITS)
    for curve, weight in zip(curves, weights, strict=True):
        points = np.round(curve * scale).astype(np.int32)
        cv2.polylines(canvas, [points], False, round(255 * weight), max(1, thickness), cv2.LINE_8, _SUBPIXEL_BITS)
    return canvas.astype(np.float32) / 255.0


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates (float32, read-only) of a size x size image."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


def hila(anatomy: Anatomy) -> list[tuple[float, float]]:
    """The two hilar points, just lateral to the mediastinum at mid-lung height."""
    return [(lung.medial_x + lung.side * 0.045, 0.5 * (lung.apex_y + lung.costophrenic_y) + 0.02) for lung in anatomy.lungs]


def draw_body(anatomy: Anatomy, size: int) -> np.ndarray:
    """The body (torso with shoulders and neck) in the canonical frame, anti-aliased, float32 in [0, 1]."""
    hw = anatomy.body_half_width
    torso = np.array([[0.5 - 0.08, -0.05], [0.5 - 0.08, 0.06], [0.5 - hw + 0.06, 0.10], [0.5 - hw, 0.18], [0.5 - hw - 0.01, 0.60],
                      [0.5 - hw + 0.02, 1.05], [0.5 + hw - 0.02, 1.05], [0.5 + hw + 0.01, 0.60], [0.5 + hw, 0.18],
                      [0.5 + hw - 0.06, 0.10], [0.5 + 0.08, 0.06], [0.5 + 0.08, -0.05]])
    return _fill(size, torso)


def render_anatomy(anatomy: Anatomy, lungs: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Lesion-free canonical radiograph (float32, not yet clipped)."""
    px = size / 256.0
    # Terms that vary along one axis only are built as 1-D profiles and broadcast (much cheaper).
    coordinates = (np.arange(size, dtype=np.float32) + 0.5) / size
    rows, columns = coordinates[:, None], coordinates[None, :]
    image = np.full((size, size), BACKGROUND, np.float32)

    # Body: torso with shoulders and neck, a little denser towards the abdomen.
    hw = anatomy.body_half_width
    body = blur(draw_body(anatomy, size), 3.0 * px)
    lateral_falloff = 1.0 - 0.15 * np.clip(np.abs(columns - 0.5) / hw, 0, 1) ** 4  # thinner tissue at the edges
    image += body * (anatomy.soft_tissue * lateral_falloff + (0.08 * np.clip(rows - 0.6, 0, 1) - BACKGROUND))

    # Spine: a brighter column behind the mediastinum; heart: slightly denser than soft tissue.
    spine = _profile(rows > 0.02, 2.5 * px) * _profile(np.abs(columns - 0.5) < 0.035, 2.5 * px)
    image += 0.07 * spine * body + 0.03 * blur(_heart(anatomy, size), 4.0 * px)

    # Trachea: a darker air column down the midline to the carina.
    trachea = _profile(rows < anatomy.lungs[0].apex_y + 0.22, 1.5 * px) * _profile(np.abs(columns - 0.5) < 0.016, 1.5 * px)
    image -= 0.12 * trachea * body

    # Aerated lungs: darker, slightly brighter at the bases and towards the mediastinum.
    soft_lungs = blur(lungs, 1.6 * px)
    lung_shading = anatomy.lung_darkening * (1.0 - 0.25 * np.clip((rows - 0.35) / 0.4, 0, 1)) * (1 + 0.06 * smooth_noise(rng, size, 5))
    image -= soft_lungs * lung_shading

    # Vascular markings: faint tapering branches from the hila (every class has them).
    vessels = []
    weights = []
    for (hx, hy), lung in zip(hila(anatomy), anatomy.lungs, strict=True):
        for _ in range(9):
            angle = np.deg2rad(rng.uniform(-75, 80))
            length = rng.uniform(0.10, 0.22)
            t = np.linspace(0, 1, 8)[:, None]
            bend = rng.uniform(-0.15, 0.15)
            direction = np.array([lung.side * np.cos(angle), np.sin(angle)])
            normal = np.array([-direction[1], direction[0]])
            vessels.append(np.array([hx, hy]) + t * length * direction + (t * (1 - t)) * bend * length * normal)
            weights.append(rng.uniform(0.5, 1.0))
    markings = blur(polyline_canvas(size, vessels, weights, max(1, round(1.5 * px))), 1.2 * px)
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
    cage = np.clip(blur(cv2.dilate(lungs, np.ones((max(3, round(9 * px)),) * 2, np.uint8)), 5.0 * px) * 1.4, 0, 1)
    rib_canvas = blur(polyline_canvas(size, ribs, rib_weights, round(4.0 * px)), 1.1 * px)
    image += anatomy.rib_brightness * rib_canvas * cage * (0.5 + 0.5 * soft_lungs)

    # Clavicles: gently S-shaped bright bars over the lung apices.
    clavicles = []
    for lung in anatomy.lungs:
        t = np.linspace(0, 1, 16)
        x = 0.5 + lung.side * (0.05 + 0.30 * t)
        y = lung.apex_y + 0.035 - 0.05 * t + 0.012 * np.sin(2 * np.pi * t)
        clavicles.append(np.stack([x, y], 1))
    image += 0.13 * blur(polyline_canvas(size, clavicles, [1.0, 1.0], round(6 * px)), 1.2 * px)
    return image
