"""Registration of chest images, and of their heatmaps, to one canonical frame.

Templates are averages of heatmaps; heatmaps of differently posed chests only average into a
sharp template once each is moved into a common frame. The transform is estimated on the
image (at the model's input size) and the *same* transform is applied to the image's heatmaps.

Public API
----------
- ``Reference(image, lung_mask)``: the canonical frame, a (H, W) float32 image and its (H, W)
  bool lung mask. ``build_reference(images, iterations=3, method="affine", progress=None)`` builds
  it from data (an iterative mean of aligned images; its lung mask is where at least half of the
  aligned images' lung masks agree); ``reference_from_image(image)`` wraps a given image
  (``--reference image.png``) with its segmented lungs.
- ``segment_lungs(image) -> (H, W) bool``: classical lung-field segmentation, at most at 128 px:
  smoothing, Otsu threshold of the dark regions of the central chest, opening, then a seeded
  watershed (one seed per lung at the deepest dark point near its expected place, against the dark
  band along the image border = air outside the body, and clearly bright tissue), closing and hole
  filling inside each lung's basin; a candidate that reaches the image edge without a brighter
  chest wall in between is outside air. One plausible field is required on each side (size,
  height, position, balance). Raises ``RegistrationError`` (an ``HmtError``) when there is none.
  Real CXRs: it declines on about a quarter of cxr4 (tightly cropped pediatric images mostly);
  the ``lungs`` method then falls back, counted.
- ``Registrar(method, reference)`` with ``method`` in ``METHODS``:
  ``.estimate(image) -> Alignment``; ``.warp(array, alignment)`` moves a (H, W) or (..., H, W)
  array into the reference frame (bilinear, 0 outside the image); ``.register_batch(images,
  heatmaps)`` does both for many images; ``.summary()`` counts the methods actually used and
  the fallbacks with their reasons.
- ``Alignment(matrix, method, quality, fallback_reason, image_shape)``: ``matrix`` is a (2, 3)
  float64 affine map from *image pixel coordinates* (x = column, y = row, pixel centres at
  integers, OpenCV's convention) to reference pixel coordinates; ``method`` is the method that
  produced it; ``quality`` the normalised cross-correlation of the warped image with the reference
  over the reference's lung region (its lung box, enlarged by ``QUALITY_MARGIN`` of the image size);
  ``fallback_reason`` is ``None`` unless a method failed; ``image_shape`` is the (H, W) the matrix's
  input coordinates refer to. Arrays of another size (a heatmap at another resolution, an image
  of another size than the reference) are handled by scaling, so the matrix always refers to the
  image as given.

Methods and fallback chain
--------------------------
- ``none``: the identity (only rescaled to the reference size).
- ``affine``: intensity-based alignment: OpenCV ECC (``MOTION_AFFINE``) coarse to fine on a
  downsampled pyramid (32 px up to at most 128 px), started from the identity (images at the
  model's input size are roughly framed, and the pyramid absorbs shifts of several pixels); when
  that fails, ECC is run again from the ``lungs`` similarity as initial guess (if the lungs are found).
- ``lungs``: the image's two lung fields are mapped to the reference's by a similarity transform:
  rotation from the line joining the two lung centroids, scale and translation from the bounding
  box of both lungs in that rotated frame. The reference's lungs are re-segmented from its image
  like every image's (so both sides are measured alike); its ``lung_mask`` is used when that fails.

Measured on phantoms (benchmarks/RESULTS.md): at 128 px ``affine`` is within ~1 px of the true pose
(none: ~4 px) at ~7 ms CPU per image; ``lungs`` ~2.5 px (it aligns lung fields, which vary in size).
- Fallbacks: ``lungs -> affine -> none`` and ``affine -> none``. A method fails when no plausible
  lungs are found, when ECC does not converge (``cv2.error``) or when the transform is implausible
  (scale outside [1/3, 3], one axis scaled twice as much as the other, a reflection, or the
  reference centre mapping outside the image); ``lungs`` also declines when the mapped lung areas
  differ from the reference's by more than 30 % (lesions or a poor segmentation hiding part of a
  lung). Each fallback is recorded in ``Alignment.fallback_reason`` (e.g. ``"lungs: no plausible
  lung fields; affine: ECC did not converge"``) and counted in ``Registrar.summary()``, which
  returns ``{"requested", "images", "methods": {method: n}, "fallbacks": {reason: n}}``.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from heatmap_templates.errors import HmtError
from heatmap_templates.preprocess import resize_gray
from heatmap_templates.progress import NullProgress, Progress

METHODS = ("none", "affine", "lungs")
FALLBACK_CHAIN = {"none": ("none",), "affine": ("affine", "none"), "lungs": ("lungs", "affine", "none")}
QUALITY_MARGIN = 0.1

# Fallback reasons are fixed phrases so that summary() can count them.
NO_LUNGS = "no plausible lung fields"
ECC_FAILED = "ECC did not converge"
IMPLAUSIBLE = "implausible transform"
LUNGS_MISMATCH = "lung fields do not match the reference"

_MAX_SCALE = 3.0
_MAX_ANISOTROPY = 2.0  # ratio of the largest to the smallest axis scale
_ECC_MIN_SIDE = 32
_ECC_MAX_SIDE = 128
_ECC_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-4)
_ECC_GAUSS = 3
_SEGMENT_SIDE = 128  # lungs are segmented at most at this size (short side): enough detail, bounded cost
_LUNG_AREA_TOLERANCE = 1.3  # mapped lung areas may differ from the reference's by this factor
_OUTSIDE_BAND = 0.06  # border band (fraction of the image side) where dark regions count as outside air


class RegistrationError(HmtError):
    """A registration step failed; ``reason`` is one of the fixed phrases counted by summaries."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        self.reason = reason
        super().__init__(reason if detail is None else f"{reason}: {detail}")


@dataclass
class Reference:
    """The canonical frame: a (H, W) float32 image and its (H, W) bool lung mask."""

    image: np.ndarray
    lung_mask: np.ndarray

    def __post_init__(self) -> None:
        self.image = _as_image(self.image, "reference image")
        self.lung_mask = np.asarray(self.lung_mask, dtype=bool)
        if self.lung_mask.shape != self.image.shape:
            raise HmtError(f"reference lung mask has shape {self.lung_mask.shape}, the image {self.image.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]


@dataclass(frozen=True)
class Alignment:
    """How one image maps into the reference frame (see the module docstring)."""

    matrix: np.ndarray
    method: str
    quality: float
    fallback_reason: str | None
    image_shape: tuple[int, int] | None = None


# --------------------------------------------------------------------------- geometry helpers


def _as_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate a (H, W) finite image and return it as float32."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 2 or min(array.shape) < 8:
        raise HmtError(f"{what} must be a 2-D grayscale array of at least 8x8 pixels, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise HmtError(f"{what} contains NaN or infinite values")
    return array


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    """(2, 3) affine -> (3, 3)."""
    out = np.eye(3)
    out[:2] = matrix
    return out


def _resize_matrix(src_shape: tuple[int, int], dst_shape: tuple[int, int]) -> np.ndarray:
    """(3, 3) map from pixel coordinates of a (H, W) array to those of its resized copy (cv2.resize convention)."""
    sy = dst_shape[0] / src_shape[0]
    sx = dst_shape[1] / src_shape[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def _check_plausible(matrix: np.ndarray, image_shape: tuple[int, int], reference_shape: tuple[int, int]) -> None:
    """Reject reflections, extreme or very anisotropic scales, and transforms that put the reference centre outside the image."""
    if not np.isfinite(matrix).all():
        raise RegistrationError(IMPLAUSIBLE)
    linear = matrix[:2, :2]
    singular_values = np.linalg.svd(linear, compute_uv=False)
    if (
        np.linalg.det(linear) <= 0
        or singular_values.max() > _MAX_SCALE
        or singular_values.min() < 1.0 / _MAX_SCALE
        or singular_values.max() > _MAX_ANISOTROPY * singular_values.min()
    ):
        raise RegistrationError(IMPLAUSIBLE)
    centre = np.array([(reference_shape[1] - 1) / 2, (reference_shape[0] - 1) / 2, 1.0])
    x, y, _ = np.linalg.solve(matrix, centre)
    if not (0 <= x <= image_shape[1] - 1 and 0 <= y <= image_shape[0] - 1):
        raise RegistrationError(IMPLAUSIBLE)


# --------------------------------------------------------------------------- lung segmentation


def _ellipse(size: int) -> np.ndarray:
    size = max(3, size | 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _lung_pair(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    for marker, (y, x) in zip((2, 3), seeds):
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
    left, right = _lung_pair(_as_image(image))
    return left | right


@dataclass(frozen=True)
class _LungFrame:
    """What the ``lungs`` method compares: lung centroids and areas, and the convex hull of the lung pixels."""

    left_centroid: np.ndarray
    right_centroid: np.ndarray
    areas: np.ndarray  # (2,) pixels, left and right lung
    points: np.ndarray  # (N, 2) x, y: hull vertices, which have the same bounding box as all pixels in any rotation

    @classmethod
    def from_pair(cls, left: np.ndarray, right: np.ndarray) -> _LungFrame:
        centroids, areas, outlines = [], [], []
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
    def from_mask(cls, mask: np.ndarray) -> _LungFrame:
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


def _similarity_to(source: _LungFrame, target: _LungFrame) -> np.ndarray:
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


# --------------------------------------------------------------------------- registrar


class Registrar:
    """Estimates alignments of images to a reference and warps arrays into its frame."""

    def __init__(self, method: str, reference: Reference) -> None:
        if method not in METHODS:
            raise HmtError(f"unknown registration method {method!r}; expected one of {', '.join(METHODS)}")
        self.method = method
        self.reference = reference
        self._chain = FALLBACK_CHAIN[method]
        self._reference_lungs: _LungFrame | None = None
        if method != "none":
            self._reference_lungs = self._reference_lung_frame(reference, required=method == "lungs")
        self._quality_region = self._lung_region(reference)
        self._levels = self._pyramid(reference.image)
        self._ones = np.ones(reference.shape, np.float32)  # warped to find which pixels come from inside an image
        self._methods_used: Counter[str] = Counter()
        self._fallbacks: Counter[str] = Counter()
        # The lungs similarity of the image being estimated (or why there is none), computed once and
        # shared by the ``lungs`` method and the ``affine`` initialisation.
        self._lungs_guess: np.ndarray | RegistrationError | None = None

    @staticmethod
    def _reference_lung_frame(reference: Reference, *, required: bool) -> _LungFrame | None:
        """The reference's lungs, segmented like every image's (so that both sides are measured alike); its mask otherwise."""
        try:
            return _LungFrame.from_pair(*_lung_pair(reference.image))
        except RegistrationError:
            pass
        try:
            return _LungFrame.from_mask(reference.lung_mask)
        except HmtError:
            if required:
                raise
            return None

    @staticmethod
    def _lung_region(reference: Reference) -> np.ndarray:
        """The reference's lung box enlarged by QUALITY_MARGIN (the whole image when it has no lungs)."""
        region = np.zeros(reference.shape, dtype=bool)
        ys, xs = np.nonzero(reference.lung_mask)
        if len(ys) == 0:
            region[:] = True
            return region
        margin = int(round(QUALITY_MARGIN * min(reference.shape)))
        region[max(0, ys.min() - margin) : ys.max() + margin + 1, max(0, xs.min() - margin) : xs.max() + margin + 1] = True
        return region

    @staticmethod
    def _pyramid(image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """ECC levels, coarse to fine: (downsampled reference, (3, 3) full -> level coordinate map)."""
        levels = []
        factor = 1
        while min(image.shape) / factor >= _ECC_MIN_SIDE:
            size = (max(1, round(image.shape[0] / factor)), max(1, round(image.shape[1] / factor)))
            if max(size) <= _ECC_MAX_SIDE:
                levels.append((resize_gray(image, size), _resize_matrix(image.shape, size)))
            factor *= 2
        if not levels:  # tiny references: one level at full size
            levels.append((image, np.eye(3)))
        return levels[::-1]

    # ----------------------------------------------------------------------- estimation

    def estimate(self, image: np.ndarray) -> Alignment:
        """Estimate the image -> reference transform, falling back along the documented chain."""
        pixels = _as_image(image)
        to_reference_size = _resize_matrix(pixels.shape, self.reference.shape)
        resized = resize_gray(pixels, self.reference.shape)
        failures: list[str] = []
        self._lungs_guess = None
        for method in self._chain:
            try:
                matrix = self._estimate_with(method, resized)
            except RegistrationError as error:
                failures.append(f"{method}: {error.reason}")
                continue
            full = (matrix @ to_reference_size)[:2]
            reason = "; ".join(failures) or None
            alignment = Alignment(full, method, self._quality(resized, matrix), reason, pixels.shape)  # type: ignore[arg-type]
            self._methods_used[method] += 1
            if reason is not None:
                self._fallbacks[reason] += 1
            return alignment
        raise AssertionError("the fallback chain always ends with 'none'")

    def _estimate_with(self, method: str, image: np.ndarray) -> np.ndarray:
        """(3, 3) map from an image of the reference's size to the reference, by one method."""
        if method == "none":
            return np.eye(3)
        if method == "lungs":
            return self._estimate_lungs(image)
        return self._estimate_affine(image)

    def _estimate_lungs(self, image: np.ndarray) -> np.ndarray:
        if self._lungs_guess is None:
            try:
                if self._reference_lungs is None:
                    raise RegistrationError(NO_LUNGS, "in the reference")
                matrix = _similarity_to(_LungFrame.from_pair(*_lung_pair(image)), self._reference_lungs)
                _check_plausible(matrix, image.shape, self.reference.shape)  # type: ignore[arg-type]
                self._lungs_guess = matrix
            except RegistrationError as error:
                self._lungs_guess = error
        if isinstance(self._lungs_guess, RegistrationError):
            raise self._lungs_guess
        return self._lungs_guess

    def _estimate_affine(self, image: np.ndarray) -> np.ndarray:
        """ECC from the identity (images at model input size are roughly framed); if that fails, from the lungs similarity."""
        try:
            return self._ecc(image, np.eye(3))
        except RegistrationError as first_failure:
            try:
                initial = self._estimate_lungs(image)
            except RegistrationError:
                raise first_failure from None
            return self._ecc(image, initial)

    def _ecc(self, image: np.ndarray, initial: np.ndarray) -> np.ndarray:
        """Coarse-to-fine ECC (MOTION_AFFINE) from an initial (3, 3) image -> reference map."""
        warp = np.linalg.inv(initial)  # ECC's warp maps reference coordinates to image coordinates
        for level_reference, to_level in self._levels:
            level_image = resize_gray(image, level_reference.shape)
            level_warp = to_level @ warp @ np.linalg.inv(to_level)
            try:
                _, found = cv2.findTransformECC(
                    level_reference,
                    level_image,
                    level_warp[:2].astype(np.float32),
                    cv2.MOTION_AFFINE,
                    _ECC_CRITERIA,
                    None,
                    _ECC_GAUSS,
                )
            except cv2.error as error:
                raise RegistrationError(ECC_FAILED) from error
            warp = np.linalg.inv(to_level) @ _homogeneous(found.astype(np.float64)) @ to_level
        if not np.isfinite(warp).all() or abs(np.linalg.det(warp)) < 1e-12:
            raise RegistrationError(IMPLAUSIBLE)
        matrix = np.linalg.inv(warp)
        _check_plausible(matrix, image.shape, self.reference.shape)  # type: ignore[arg-type]
        return matrix

    def _quality(self, resized: np.ndarray, matrix: np.ndarray) -> float:
        """Normalised cross-correlation of the warped image with the reference in the lung region (0 if undefined)."""
        height, width = self.reference.shape
        warped = cv2.warpAffine(resized, matrix[:2], (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)
        inside = cv2.warpAffine(self._ones, matrix[:2], (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)
        region = self._quality_region & (inside > 0.999)  # only pixels that come from inside the image
        return _ncc(warped[region], self.reference.image[region])

    # ----------------------------------------------------------------------- warping

    def warp(self, array: np.ndarray, alignment: Alignment) -> np.ndarray:
        """Move a (H, W) or (..., H, W) array into the reference frame (bilinear, 0 outside)."""
        data = np.asarray(array)
        if data.ndim < 2:
            raise HmtError(f"cannot warp an array of shape {data.shape}; expected (H, W) or (..., H, W)")
        if data.dtype not in (np.float32, np.float64):  # OpenCV warps float32/float64; bool, ints, float16 -> float32
            data = data.astype(np.float32)
        plane_shape = data.shape[-2:]
        matrix = _homogeneous(alignment.matrix)
        if alignment.image_shape is not None and tuple(plane_shape) != tuple(alignment.image_shape):
            matrix = matrix @ _resize_matrix(plane_shape, alignment.image_shape)  # type: ignore[arg-type]
        height, width = self.reference.shape
        planes = data.reshape(-1, *plane_shape)
        out = np.empty((planes.shape[0], height, width), dtype=data.dtype)
        for index, plane in enumerate(planes):
            out[index] = cv2.warpAffine(
                np.ascontiguousarray(plane), matrix[:2], (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0
            )
        return out.reshape(*data.shape[:-2], height, width)

    def register_batch(
        self,
        images: Sequence[np.ndarray],
        heatmaps: Sequence[np.ndarray] | None = None,
        *,
        progress: Progress | None = None,
    ) -> tuple[list[Alignment], np.ndarray, np.ndarray | None]:
        """Estimate each image's alignment and warp the image and its heatmap(s) into the reference frame.

        Returns the alignments, the registered images (N, H, W) and the registered heatmaps
        (N, ..., H, W), or None when no heatmaps were given.
        """
        if heatmaps is not None and len(heatmaps) != len(images):
            raise HmtError(f"got {len(images)} images but {len(heatmaps)} heatmaps")
        progress = progress or NullProgress()
        progress.start(len(images), f"registering ({self.method})")
        alignments: list[Alignment] = []
        warped_images: list[np.ndarray] = []
        warped_heatmaps: list[np.ndarray] = []
        for index, image in enumerate(images):
            alignment = self.estimate(image)
            alignments.append(alignment)
            warped_images.append(self.warp(image, alignment))
            if heatmaps is not None:
                warped_heatmaps.append(self.warp(heatmaps[index], alignment))
            progress.advance()
        progress.finish()
        height, width = self.reference.shape
        stacked_images = np.stack(warped_images) if warped_images else np.zeros((0, height, width), np.float32)
        stacked_heatmaps = None
        if heatmaps is not None:
            stacked_heatmaps = np.stack(warped_heatmaps) if warped_heatmaps else np.zeros((0, height, width), np.float32)
        return alignments, stacked_images, stacked_heatmaps

    def summary(self) -> dict[str, object]:
        """Counts so far: images, the methods actually used, and fallbacks by reason."""
        return {
            "requested": self.method,
            "images": sum(self._methods_used.values()),
            "methods": dict(self._methods_used),
            "fallbacks": dict(self._fallbacks),
        }


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally shaped arrays; 0 when either is constant."""
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    if a.size < 2 or a.std() < 1e-6 or b.std() < 1e-6:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


# --------------------------------------------------------------------------- references


def reference_from_image(image: np.ndarray) -> Reference:
    """A reference from one given image (``--reference image.png``), with its segmented lungs."""
    pixels = _as_image(image, "reference image")
    return Reference(pixels, segment_lungs(pixels))


def build_reference(
    images: Sequence[np.ndarray],
    *,
    iterations: int = 3,
    method: str = "affine",
    progress: Progress | None = None,
) -> Reference:
    """An iterative mean of aligned images, at the size of the first image, with its lung mask.

    Starts from the mean of the images shifted so that their lung box is centred; each iteration
    registers every image to the current mean and re-averages. The frame is kept at the images'
    average pose: the mean of the successful transforms is divided out before averaging, so the
    reference does not drift. ``method="none"`` gives the plain mean. The lung mask is where at
    least half of the images whose lungs were found have lung after warping (a blurred mean image
    is a poor thing to segment); when that is not two lung fields, the mean image is segmented.
    Raises RegistrationError when neither gives lungs.
    """
    if len(images) == 0:
        raise HmtError("cannot build a registration reference from no images")
    if method not in METHODS:
        raise HmtError(f"unknown registration method {method!r}; expected one of {', '.join(METHODS)}")
    if iterations < 0:
        raise HmtError(f"iterations must be >= 0, got {iterations}")
    progress = progress or NullProgress()
    shape: tuple[int, int] = _as_image(images[0]).shape  # type: ignore[assignment]
    rounds = 0 if method == "none" else iterations
    progress.start(len(images) * (2 * rounds + 1), "building the registration reference")
    reference = _average(images, shape, None, centre=method != "none", progress=progress)
    for _ in range(rounds):
        registrar = Registrar(method, reference)
        matrices = []
        for image in images:
            alignment = registrar.estimate(image)
            matrix = _homogeneous(alignment.matrix) @ np.linalg.inv(_resize_matrix(np.shape(image), shape))
            matrices.append((matrix, alignment.method == method))
            progress.advance()
        successful = [matrix for matrix, ok in matrices if ok]
        correction = np.linalg.inv(np.mean(successful, axis=0)) if successful else np.eye(3)
        corrected = [correction @ matrix if ok else matrix for matrix, ok in matrices]
        reference = _average(images, shape, corrected, centre=False, progress=progress)
    progress.finish()
    return reference


def _average(
    images: Sequence[np.ndarray],
    shape: tuple[int, int],
    matrices: Sequence[np.ndarray] | None,
    *,
    centre: bool,
    progress: Progress,
) -> Reference:
    """Mean image and lung mask of the images resized to ``shape`` and warped by their (3, 3) maps.

    Without maps, each image is shifted so that its lung box is centred (``centre``) or left as is.
    Streams over the images: memory does not grow with their number.
    """
    total = np.zeros(shape, dtype=np.float64)
    lung_total = np.zeros(shape, dtype=np.float64)
    with_lungs = 0
    for index, image in enumerate(images):
        resized = resize_gray(_as_image(image), shape)
        try:
            lungs: np.ndarray | None = segment_lungs(resized)
        except RegistrationError:
            lungs = None
        if matrices is not None:
            matrix = matrices[index]
        else:
            matrix = _centring(lungs, shape) if centre and lungs is not None else np.eye(3)
        size = (shape[1], shape[0])
        total += cv2.warpAffine(resized, matrix[:2], size, flags=cv2.INTER_LINEAR, borderValue=0.0)
        if lungs is not None:
            lung_total += cv2.warpAffine(lungs.astype(np.float32), matrix[:2], size, flags=cv2.INTER_LINEAR, borderValue=0.0)
            with_lungs += 1
        progress.advance()
    mean = (total / len(images)).astype(np.float32)
    if with_lungs:
        agreed = (lung_total >= 0.5 * with_lungs).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(agreed, connectivity=8)
        if count >= 3:
            largest = 1 + np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1][:2]
            areas = stats[largest, cv2.CC_STAT_AREA]
            if areas.min() >= 0.2 * areas.max():
                return Reference(mean, np.isin(labels, largest))
    try:
        return Reference(mean, segment_lungs(mean))
    except RegistrationError as error:
        raise RegistrationError(
            NO_LUNGS, f"neither the images ({with_lungs} of {len(images)} with lungs) nor their mean show two lung fields"
        ) from error


def _centring(lungs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(3, 3) shift that centres a lung mask's bounding box."""
    ys, xs = np.nonzero(lungs)
    shift = np.eye(3)
    shift[0, 2] = (shape[1] - 1) / 2 - (xs.min() + xs.max()) / 2
    shift[1, 2] = (shape[0] - 1) / 2 - (ys.min() + ys.max()) / 2
    return shift
