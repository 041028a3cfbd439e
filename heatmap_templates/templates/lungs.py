"""Classical lung-field segmentation of chest images, and the lung frame the ``lungs`` registration compares.

``segment_lungs(image) -> (H, W) bool``: at most at 128 px, smoothing, Otsu threshold of the dark
regions of the central chest, opening, then a seeded watershed (one seed per lung at the deepest
dark point near its expected place, against the dark band along the image border = air outside
the body, and clearly bright tissue), closing and hole filling inside each lung's basin; a
candidate that reaches the image edge without a brighter chest wall in between is outside air.
One plausible field is required on each side (size, height, position, balance). Raises
``RegistrationError`` (an ``HmtError``) when there is none. Real CXRs: it declines on about a
quarter of cxr4 (tightly cropped pediatric images mostly); the ``lungs`` method then falls back.

``lung_fields(image, reference lungs moved into it)``: "the lungs" of an image wherever hmt needs them (the deletion
test's lung region, the attention prior's masks): segmentation, which finds aerated lung and so leaves dense opacities
out, united with the registered reference's lung fields.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from heatmap_templates.data.preprocess import resize_gray
from heatmap_templates.errors import HmtError
from heatmap_templates.templates.geometry import LUNGS_MISMATCH, NO_LUNGS, RegistrationError, as_image

_SEGMENT_SIDE = 128  # lungs are segmented at most at this size (short side): enough detail, bounded cost
_LUNG_AREA_TOLERANCE = 1.3  # mapped lung areas may differ from the reference's by this factor
_OUTSIDE_BAND = 0.06  # border band (fraction of the image side) where dark regions count as outside air


def _ellipse(size: int) -> np.ndarray:
    size = max(3, size | 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def lung_pair(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the left-hand and right-hand (in the image) lung, segmented at most at _SEGMENT_SIDE px."""
    side = min(image.shape)
    if side <= _SEGMENT_SIDE:
        return _segment_pair(image)
    small_shape = (round(image.shape[0] * _SEGMENT_SIDE / side), round(image.shape[1] * _SEGMENT_SIDE / side))
    pair = _segment_pair(resize_gray(image, small_shape))
    size = (image.shape[1], image.shape[0])
    return tuple(cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) > 0.5 for mask in pair)  # type: ignore[return-value]


def _segment_pair(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment the lung fields; return the masks of the left-hand and right-hand (in the image) lung.

    Dark regions are thresholded (Otsu on the central chest, so that air and labels outside the
    body do not pull the threshold) and opened. Lungs of tightly cropped images often touch the
    dark air outside the body, so instead of only dropping border-touching regions, a seeded
    watershed (OpenCV's, which grows regions across weak edges first) splits them at the chest
    wall: one seed per lung (the deepest dark point near each expected lung position) against the
    border-connected dark band along the image edge and against clearly bright tissue.
    """
    height, width = image.shape
    side = min(height, width)
    smooth = cv2.GaussianBlur(image, (0, 0), sigmaX=side / 80)
    top, bottom, left, right = int(0.15 * height), int(0.85 * height), int(0.15 * width), int(0.85 * width)
    low, high = np.percentile(smooth[top:bottom:2, left:right:2], [1, 99])
    if high - low < 1e-3:
        raise RegistrationError(NO_LUNGS, "the image has no contrast")
    scaled = np.clip((smooth - low) / (high - low) * 255.0, 0, 255).astype(np.uint8)
    threshold, _ = cv2.threshold(scaled[top:bottom, left:right], 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = cv2.morphologyEx((scaled <= threshold).astype(np.uint8), cv2.MORPH_OPEN, _ellipse(int(0.05 * side)))

    markers = np.zeros((height, width), dtype=np.int32)
    _, labels = cv2.connectedComponents(dark, connectivity=8)
    border_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    band = max(1, int(_OUTSIDE_BAND * side))
    edge = np.ones((height, width), dtype=bool)
    edge[band:-band, band:-band] = False
    markers[edge & np.isin(labels, border_labels[border_labels > 0])] = 1
    markers[[0, -1], :] = 1
    markers[:, [0, -1]] = 1
    # Clearly bright tissue (mediastinum, abdomen, soft tissue; not the fainter rib shadows) floods its
    # own basin, so that a lung's basin cannot run around the body into the air outside it.
    markers[scaled > (int(threshold) + 255) // 2] = 4

    framed = dark.copy()
    framed[[0, -1], :] = 0
    framed[:, [0, -1]] = 0
    depth = cv2.distanceTransform(framed, cv2.DIST_L2, 3)
    rows = np.exp(-0.5 * ((np.arange(height) / height - 0.45) / 0.25) ** 2)
    seeds = []
    for marker, centre in ((2, 0.3), (3, 0.7)):
        columns = np.exp(-0.5 * ((np.arange(width) / width - centre) / 0.15) ** 2)
        y, x = np.unravel_index(np.argmax(depth * np.outer(rows, columns)), depth.shape)
        if depth[y, x] < 1:
            raise RegistrationError(NO_LUNGS)
        cv2.circle(markers, (int(x), int(y)), max(1, int(depth[y, x] / 2)), marker, thickness=-1)
        seeds.append((y, x))
    basins = cv2.watershed(cv2.cvtColor(scaled, cv2.COLOR_GRAY2BGR), markers)

    # Closing inside each basin bridges the bright rib shadows that cut a lung into stripes.
    closing = _ellipse(int(0.05 * side))
    lungs = []
    for marker, (y, x) in zip((2, 3), seeds, strict=True):
        basin = basins == marker
        bridged = cv2.morphologyEx((basin & (dark > 0)).astype(np.uint8), cv2.MORPH_CLOSE, closing) & basin
        _, parts = cv2.connectedComponents(bridged.astype(np.uint8), connectivity=8)
        lungs.append(_fill_holes(parts == parts[y, x]))
    if not (_walled_off(lungs[0], dark, lateral_is_left=True) and _walled_off(lungs[1], dark, lateral_is_left=False)):
        raise RegistrationError(NO_LUNGS, "a lung candidate is air outside the body")
    if not _plausible_lungs(lungs[0], lungs[1]):
        raise RegistrationError(NO_LUNGS)
    return lungs[0], lungs[1]


def _walled_off(lung: np.ndarray, dark: np.ndarray, *, lateral_is_left: bool) -> bool:
    """True when, on at least a fifth of the lung's rows, brighter tissue (the chest wall) lies between it and the image edge.

    Air outside the body reaches the image edge through dark pixels only.
    """
    rows = np.flatnonzero(lung.any(axis=1))
    if len(rows) == 0:
        return False
    bright = (dark[rows] == 0).astype(np.int32)
    if lateral_is_left:
        lateral_edge = np.argmax(lung[rows], axis=1)  # first lung column in each row
        wall = np.cumsum(bright, axis=1)[np.arange(len(rows)), lateral_edge] > 0
    else:
        lateral_edge = lung.shape[1] - 1 - np.argmax(lung[rows, ::-1], axis=1)  # last lung column
        wall = np.cumsum(bright[:, ::-1], axis=1)[np.arange(len(rows)), lung.shape[1] - 1 - lateral_edge] > 0
    return bool(wall.mean() >= 0.2)


def _plausible_lungs(left: np.ndarray, right: np.ndarray) -> bool:
    """Lung-like size, position and balance: not at the border, one each side, neither tiny."""
    height, width = left.shape
    areas = []
    for mask, on_left in ((left, True), (right, False)):
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            return False
        touches_border = ys.min() == 0 or xs.min() == 0 or ys.max() == height - 1 or xs.max() == width - 1
        area = len(ys) / mask.size
        if touches_border or not (0.015 <= area <= 0.35) or ys.max() - ys.min() < 0.15 * height:
            return False
        if not (0.15 * height <= ys.mean() <= 0.85 * height) or (xs.mean() < width / 2) != on_left:
            return False
        areas.append(area)
    return min(areas) >= 0.2 * max(areas) and not (left & right).any()


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every hole filled (outer contours drawn filled; faster than scipy's fill)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros(mask.shape, dtype=np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled > 0


def segment_lungs(image: np.ndarray) -> np.ndarray:
    """Segment the two lung fields of a grayscale chest image; raises RegistrationError if none are plausible."""
    left, right = lung_pair(as_image(image))
    return left | right


LUNG_FIELD_SOURCES = ("segmentation+reference", "segmentation", "reference", "unaligned reference", "none")


def lung_fields(image: np.ndarray, reference_lungs_in_image: np.ndarray | None, *,
                aligned: bool = True) -> tuple[np.ndarray | None, str]:
    """An image's lung fields and where they came from (:data:`LUNG_FIELD_SOURCES`): its segmented lungs united with
    the reference's lung mask moved into the image (``reference_lungs_in_image``, values >= 0.5 inside; None when not
    at hand); either alone where the other is missing or segmentation declines. ``aligned=False`` (the registration
    fell back to ``none``: the reference only resized) keeps an unaligned reference out of a segmentation's mask and
    uses it, said so, only where segmentation declines.

    Why the union: segmentation finds the *aerated* lung, and a dense opacity reads as soft tissue, so the lesion a
    class is about falls outside it (on the phantom: 89 % of a bacterial consolidation's pixels, 25-31 % of covid's and
    virus's), while the registered reference has the anatomical fields, opacities included, but only as well as an
    affine map fits. United: Dice 0.96 with the phantom's true lung fields in every class, 0.2-1.2 % of lesion pixels
    outside (benchmarks/bench_lung_fields.py)."""
    reference = None if reference_lungs_in_image is None else np.asarray(reference_lungs_in_image) >= 0.5
    try:
        segmented = segment_lungs(image)
    except RegistrationError:
        if reference is None:
            return None, "none"
        return reference, "reference" if aligned else "unaligned reference"
    if reference is None or not aligned:
        return segmented, "segmentation"
    return segmented | reference, "segmentation+reference"


@dataclass(frozen=True)
class LungFrame:
    """What the ``lungs`` method compares: lung centroids and areas, and the convex hull of the lung pixels."""

    left_centroid: np.ndarray
    right_centroid: np.ndarray
    areas: np.ndarray  # (2,) pixels, left and right lung
    points: np.ndarray  # (N, 2) x, y: hull vertices, which have the same bounding box as all pixels in any rotation

    @classmethod
    def from_pair(cls, left: np.ndarray, right: np.ndarray) -> LungFrame:
        centroids: list[np.ndarray] = []
        areas: list[float] = []
        outlines: list[np.ndarray] = []
        for mask in (left, right):
            pixels = mask.astype(np.uint8)
            moments = cv2.moments(pixels, binaryImage=True)
            if moments["m00"] == 0:
                raise RegistrationError(NO_LUNGS)
            centroids.append(np.array([moments["m10"], moments["m01"]]) / moments["m00"])
            areas.append(moments["m00"])
            contours, _ = cv2.findContours(pixels, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            outlines.extend(contour.reshape(-1, 2) for contour in contours)
        hull = cv2.convexHull(np.concatenate(outlines).astype(np.float32)).reshape(-1, 2)
        return cls(centroids[0], centroids[1], np.array(areas, dtype=np.float64), hull.astype(np.float64))

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> LungFrame:
        """From a union lung mask (e.g. a reference's): its two largest components, left and right."""
        count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        if count < 3:
            raise HmtError("the reference lung mask does not have two lung fields; the 'lungs' method needs them")
        largest = 1 + np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1][:2]
        left_label, right_label = sorted(largest, key=lambda label: centroids[label][0])
        return cls.from_pair(labels == left_label, labels == right_label)

    @property
    def angle(self) -> float:
        dx, dy = self.right_centroid - self.left_centroid
        return float(np.arctan2(dy, dx))


def similarity_to(source: LungFrame, target: LungFrame) -> np.ndarray:
    """(3, 3) similarity mapping ``source`` lungs onto ``target`` lungs (rotation, isotropic scale, shift)."""
    rotation = target.angle - source.angle
    cos, sin = np.cos(rotation), np.sin(rotation)
    rotate = np.array([[cos, -sin], [sin, cos]])
    rotated = source.points @ rotate.T
    src_low, src_high = rotated.min(axis=0), rotated.max(axis=0) + 1
    dst_low, dst_high = target.points.min(axis=0), target.points.max(axis=0) + 1
    scale = float(np.sqrt(np.prod(dst_high - dst_low) / np.prod(src_high - src_low)))
    shift = (dst_low + dst_high) / 2 - scale * (src_low + src_high) / 2
    # Lesions or a poor segmentation can hide part of a lung, which skews centroids and box; the
    # mapped lung areas must then disagree with the reference's, and the method declines.
    area_ratios = source.areas * scale**2 / target.areas
    if area_ratios.min() < 1 / _LUNG_AREA_TOLERANCE or area_ratios.max() > _LUNG_AREA_TOLERANCE:
        raise RegistrationError(LUNGS_MISMATCH)
    matrix = np.eye(3)
    matrix[:2, :2] = scale * rotate
    matrix[:2, 2] = shift
    return matrix
