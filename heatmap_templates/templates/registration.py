"""Registration of chest images, and of their heatmaps, to one canonical frame.

Templates are averages of heatmaps; heatmaps of differently posed chests only average into a
sharp template once each is moved into a common frame. The transform is estimated on the
image (at the model's input size) and the *same* transform is applied to the image's heatmaps.

Public API
----------
- ``Reference(image, lung_mask)``: the canonical frame, a (H, W) float32 image and its (H, W)
  bool lung mask. ``build_reference(images, iterations=2, method="affine", progress=None)`` builds
  it from data (an iterative mean of aligned images; its lung mask is where at least half of the
  aligned images' lung masks agree); ``reference_from_image(image)`` wraps a given image
  (the CLI's ``--reference image.png``) with its segmented lungs.
- Lung segmentation is :mod:`heatmap_templates.templates.lungs` (``segment_lungs``); the ``lungs`` method
  and the reference's lung mask use it.
- ``Registrar(method, reference)`` with ``method`` in the registry ``REGISTRATIONS``:
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
  downsampled pyramid (32 px up to at most 64 px: a 128 px level doubled the time for 0.05 px
  of pose error on phantoms), started from the identity (images at the
  model's input size are roughly framed, and the pyramid absorbs shifts of several pixels); when
  that fails, ECC is run again from the ``lungs`` similarity as initial guess (if the lungs are found).
- ``lungs``: the image's two lung fields are mapped to the reference's by a similarity transform:
  rotation from the line joining the two lung centroids, scale and translation from the bounding
  box of both lungs in that rotated frame. The reference's lungs are re-segmented from its image
  like every image's (so both sides are measured alike); its ``lung_mask`` is used when that fails.

Measured on phantoms (benchmarks/RESULTS.md): at 128 px ``affine`` is within ~1 px of the true pose
(none: ~4 px) at ~1.3 ms CPU per image; ``lungs`` ~2.5 px (it aligns lung fields, which vary in size).
``Registrar.estimate_many`` estimates many images in threads (OpenCV releases the GIL); the result
does not depend on the number of threads.
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

import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from heatmap_templates.data.preprocess import resize_gray
from heatmap_templates.errors import HmtError
from heatmap_templates.numeric.correlation import correlation
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.registry import Registry
from heatmap_templates.templates.geometry import (
    ECC_FAILED,
    IMPLAUSIBLE,
    LUNGS_MISMATCH,
    NO_LUNGS,
    RegistrationError,
    as_image,
    check_plausible,
    homogeneous,
    invert_affine,
    resize_matrix,
)
from heatmap_templates.templates.lungs import LungFrame, lung_pair, segment_lungs, similarity_to

__all__ = ["REGISTRATIONS", "DEFAULT_REGISTRATION", "DEFAULT_REFERENCE_ITERATIONS", "Reference", "Alignment", "Registrar", "RegistrationError", "NO_LUNGS",
           "ECC_FAILED", "IMPLAUSIBLE", "LUNGS_MISMATCH", "segment_lungs", "build_reference", "reference_from_image",
           "registration_summary"]

DEFAULT_REGISTRATION = "affine"
QUALITY_MARGIN = 0.1
_ECC_MIN_SIDE = 32
_ECC_MAX_SIDE = 64
# At most 15 iterations a level, stopping once the correlation gains less than 5e-4: on real chest X-rays every
# iteration costs the same, and running on to 30 iterations or 1e-4 bought no pose accuracy on phantoms (1.11 / 1.01
# px either way) while a quarter of the registration time went to it (benchmarks/RESULTS.md, "Registration after the
# build speed-up"). At 1e-3 a lower lobe hidden by consolidation lands 1.8 px off (tests/test_registration.py).
_ECC_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 15, 5e-4)
DEFAULT_THREADS = min(8, os.cpu_count() or 1)  # registration threads
# Rounds of registering the sample to its mean. A third round changed neither the pose error on phantoms (0.991 vs 0.985
# px) nor a trained cxr4 model's templates (member consistency within 0.01, leave-one-out medians within 0.004).
DEFAULT_REFERENCE_ITERATIONS = 2
_ECC_GAUSS = 3


@dataclass
class Reference:
    """The canonical frame: a (H, W) float32 image and its (H, W) bool lung mask."""

    image: np.ndarray
    lung_mask: np.ndarray

    def __post_init__(self) -> None:
        self.image = as_image(self.image, "reference image")
        self.lung_mask = np.asarray(self.lung_mask, dtype=bool)
        if self.lung_mask.shape != self.image.shape:
            raise HmtError(f"reference lung mask has shape {self.lung_mask.shape}, the image {self.image.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape


@dataclass(frozen=True)
class Alignment:
    """How one image maps into the reference frame (see the module docstring)."""

    matrix: np.ndarray
    method: str
    quality: float
    fallback_reason: str | None
    image_shape: tuple[int, int] | None = None



# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class RegistrationMethod:
    """One registration method: ``estimate(registrar, image)`` returns the (3, 3) map from an image of the
    reference's size to the reference, or raises RegistrationError; ``fallback`` is the method tried next."""

    estimate: Callable[[Registrar, np.ndarray], np.ndarray]
    fallback: str | None
    requires_reference_lungs: bool = False


REGISTRATIONS: Registry[RegistrationMethod] = Registry("registration method", parameter="registration")


def _identity(registrar: Registrar, image: np.ndarray) -> np.ndarray:
    """No alignment: the image is only resized to the reference frame (the papers' implicit choice).

    Reference: Lucas et al. (2020), https://doi.org/10.1109/BIBE50027.2020.00077 (no registration described).
    """
    return np.eye(3)


def _affine(registrar: Registrar, image: np.ndarray) -> np.ndarray:
    """ECC from the identity (images at model input size are roughly framed); if that fails, from the lungs similarity.

    Reference: Evangelidis & Psarakis (2008), "Parametric image alignment using enhanced correlation coefficient
    maximization", https://doi.org/10.1109/TPAMI.2008.113 (OpenCV's findTransformECC).
    """
    try:
        return registrar.ecc(image, np.eye(3))
    except RegistrationError as first_failure:
        try:
            initial = registrar.lungs_similarity(image)
        except RegistrationError:
            raise first_failure from None
        return registrar.ecc(image, initial)


def _lungs(registrar: Registrar, image: np.ndarray) -> np.ndarray:
    """A similarity transform that maps the segmented lung fields' orientation, box and centre onto the reference's.

    Reference: van Ginneken, Stegmann & Loog (2006), "Segmentation of anatomical structures in chest radiographs",
    https://doi.org/10.1016/j.media.2005.02.002 (lung fields as the landmark of a chest radiograph's frame).
    """
    return registrar.lungs_similarity(image)


REGISTRATIONS.add("none", RegistrationMethod(_identity, None), help="no alignment, only resized to the reference")
REGISTRATIONS.add("affine", RegistrationMethod(_affine, "none"), help="intensity-based ECC affine, falls back to none")
REGISTRATIONS.add("lungs", RegistrationMethod(_lungs, "affine", requires_reference_lungs=True),
                  help="similarity of the segmented lung fields, falls back to affine, then none")


def fallback_chain(method: str) -> tuple[str, ...]:
    """The methods tried in order for ``method``: itself, then its fallbacks (``lungs -> affine -> none``)."""
    chain = [REGISTRATIONS.check(method)]
    while (fallback := REGISTRATIONS[chain[-1]].fallback) is not None:
        chain.append(fallback)
    return tuple(chain)


# --------------------------------------------------------------------------- registrar


class Registrar:
    """Estimates alignments of images to a reference and warps arrays into its frame."""

    def __init__(self, method: str, reference: Reference) -> None:
        entry = REGISTRATIONS[method]
        self.method = method
        self.reference = reference
        self._chain = fallback_chain(method)
        self._reference_lungs: LungFrame | None = None
        if method != "none":
            self._reference_lungs = self._reference_lung_frame(reference, required=entry.requires_reference_lungs)
        self._quality_region = self._lung_region(reference)
        self._levels = self._pyramid(reference.image)
        self._ones = np.ones(reference.shape, np.float32)  # warped to find which pixels come from inside an image
        self._methods_used: Counter[str] = Counter()
        self._fallbacks: Counter[str] = Counter()
        self._counting = threading.Lock()
        # Per thread, the lungs similarity of the image being estimated (or why there is none), computed once
        # and shared by the ``lungs`` method and the ``affine`` initialisation.
        self._current = threading.local()

    @staticmethod
    def _reference_lung_frame(reference: Reference, *, required: bool) -> LungFrame | None:
        """The reference's lungs, segmented like every image's (so that both sides are measured alike); its mask otherwise."""
        try:
            return LungFrame.from_pair(*lung_pair(reference.image))
        except RegistrationError:
            pass
        try:
            return LungFrame.from_mask(reference.lung_mask)
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
    def _pyramid(image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """ECC levels, coarse to fine: (downsampled reference, (3, 3) full -> level coordinate map, its inverse)."""
        levels = []
        factor = 1
        while min(image.shape) / factor >= _ECC_MIN_SIDE:
            size = (max(1, round(image.shape[0] / factor)), max(1, round(image.shape[1] / factor)))
            if max(size) <= _ECC_MAX_SIDE:
                to_level = resize_matrix(image.shape, size)
                levels.append((resize_gray(image, size), to_level, invert_affine(to_level)))
            factor *= 2
        if not levels:  # tiny references: one level at full size
            levels.append((image, np.eye(3), np.eye(3)))
        return levels[::-1]

    # ----------------------------------------------------------------------- estimation

    def estimate(self, image: np.ndarray, *, quality: bool = True) -> Alignment:
        """Estimate the image -> reference transform, falling back along the documented chain (``quality=False``
        leaves the alignment's quality NaN: where only the transform is wanted, it saves a third of the time)."""
        pixels = as_image(image)
        to_reference_size = resize_matrix(pixels.shape, self.reference.shape)
        resized = resize_gray(pixels, self.reference.shape)
        failures: list[str] = []
        self._current.lungs_guess = None
        for method in self._chain:
            try:
                matrix = REGISTRATIONS[method].estimate(self, resized)
            except RegistrationError as error:
                failures.append(f"{method}: {error.reason}")
                continue
            full = (matrix @ to_reference_size)[:2]
            reason = "; ".join(failures) or None
            score = self._quality(resized, matrix) if quality else float("nan")
            alignment = Alignment(full, method, score, reason, pixels.shape)
            with self._counting:
                self._methods_used[method] += 1
                if reason is not None:
                    self._fallbacks[reason] += 1
            return alignment
        raise AssertionError("the fallback chain always ends with 'none'")

    def estimate_many(self, images: Sequence[np.ndarray], threads: int = DEFAULT_THREADS, *, quality: bool = True) -> list[Alignment]:
        """:meth:`estimate` of each image, in order, in up to ``threads`` threads (the same result for any number)."""
        if threads <= 1 or len(images) < 2:
            return [self.estimate(image, quality=quality) for image in images]
        with ThreadPoolExecutor(max_workers=min(threads, len(images))) as pool:
            return list(pool.map(lambda image: self.estimate(image, quality=quality), images))

    def lungs_similarity(self, image: np.ndarray) -> np.ndarray:
        """(3, 3) similarity mapping the image's lung fields onto the reference's (computed once per image)."""
        guess = getattr(self._current, "lungs_guess", None)
        if guess is None:
            try:
                if self._reference_lungs is None:
                    raise RegistrationError(NO_LUNGS, "in the reference")
                guess = similarity_to(LungFrame.from_pair(*lung_pair(image)), self._reference_lungs)
                check_plausible(guess, image.shape, self.reference.shape)
            except RegistrationError as error:
                guess = error
            self._current.lungs_guess = guess
        if isinstance(guess, RegistrationError):
            raise guess
        return guess

    def ecc(self, image: np.ndarray, initial: np.ndarray) -> np.ndarray:
        """Coarse-to-fine ECC (MOTION_AFFINE) from an initial (3, 3) image -> reference map."""
        warp = invert_affine(initial)  # ECC's warp maps reference coordinates to image coordinates
        for level_reference, to_level, from_level in self._levels:
            level_image = resize_gray(image, level_reference.shape)
            level_warp = to_level @ warp @ from_level
            try:
                _, found = cv2.findTransformECC(  # type: ignore[call-overload]  # OpenCV's stubs omit the optional mask
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
            warp = from_level @ homogeneous(found.astype(np.float64)) @ to_level
        if not np.isfinite(warp).all() or abs(warp[0, 0] * warp[1, 1] - warp[0, 1] * warp[1, 0]) < 1e-12:
            raise RegistrationError(IMPLAUSIBLE)
        matrix = invert_affine(warp)
        check_plausible(matrix, image.shape, self.reference.shape)
        return matrix

    def _quality(self, resized: np.ndarray, matrix: np.ndarray) -> float:
        """Normalised cross-correlation of the warped image with the reference in the lung region (0 if undefined)."""
        height, width = self.reference.shape
        warped = cv2.warpAffine(resized, matrix[:2], (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)
        inside = cv2.warpAffine(self._ones, matrix[:2], (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)
        region = self._quality_region & (inside > 0.999)  # only pixels that come from inside the image
        return correlation(warped[region], self.reference.image[region])

    # ----------------------------------------------------------------------- warping

    def warp(self, array: np.ndarray, alignment: Alignment) -> np.ndarray:
        """Move a (H, W) or (..., H, W) array into the reference frame (bilinear, 0 outside)."""
        data = np.asarray(array)
        if data.ndim < 2:
            raise HmtError(f"cannot warp an array of shape {data.shape}; expected (H, W) or (..., H, W)")
        if data.dtype not in (np.float32, np.float64):  # OpenCV warps float32/float64; bool, ints, float16 -> float32
            data = data.astype(np.float32)
        plane_shape = data.shape[-2:]
        matrix = homogeneous(alignment.matrix)
        if alignment.image_shape is not None and tuple(plane_shape) != tuple(alignment.image_shape):
            matrix = matrix @ resize_matrix(plane_shape, alignment.image_shape)
        height, width = self.reference.shape
        planes = data.reshape(-1, *plane_shape)
        out = np.empty((planes.shape[0], height, width), dtype=data.dtype)
        for index, plane in enumerate(planes):
            out[index] = cv2.warpAffine(
                np.ascontiguousarray(plane), matrix[:2], (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0
            )
        return out.reshape(*data.shape[:-2], height, width)

    def unwarp(self, array: np.ndarray, alignment: Alignment) -> np.ndarray:
        """Move a (H, W) array of the reference frame back into the image's frame (the inverse of :meth:`warp`):
        a template or the reference lungs where they fall on one image. 0 outside the reference."""
        data = np.asarray(array, dtype=np.float32)
        if data.shape != self.reference.shape:
            raise HmtError(f"cannot move an array of shape {data.shape} back; the reference frame is {self.reference.shape}")
        height, width = alignment.image_shape or self.reference.shape
        inverse = invert_affine(homogeneous(alignment.matrix))[:2]
        return cv2.warpAffine(data, inverse, (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)

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
        for index, alignment in enumerate(self.estimate_many(images)):
            alignments.append(alignment)
            warped_images.append(self.warp(images[index], alignment))
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


def registration_summary(method: str, alignments: Sequence[Alignment]) -> dict[str, object]:
    """:meth:`Registrar.summary` of a set of alignments made elsewhere (other threads or cluster workers)."""
    methods = Counter(alignment.method for alignment in alignments)
    fallbacks = Counter(alignment.fallback_reason for alignment in alignments if alignment.fallback_reason is not None)
    return {"requested": method, "images": len(alignments), "methods": dict(methods), "fallbacks": dict(fallbacks)}


# --------------------------------------------------------------------------- references


def reference_from_image(image: np.ndarray) -> Reference:
    """A reference from one given image (the CLI's ``--reference image.png``), with its segmented lungs."""
    pixels = as_image(image, "reference image")
    return Reference(pixels, segment_lungs(pixels))


def build_reference(
    images: Sequence[np.ndarray],
    *,
    iterations: int = DEFAULT_REFERENCE_ITERATIONS,
    method: str = "affine",
    progress: Progress | None = None,
    threads: int = DEFAULT_THREADS,
) -> Reference:
    """An iterative mean of aligned images, at the size of the first image, with its lung mask.

    Starts from the mean of the images shifted so that their lung box is centred; each iteration
    registers every image to the current mean (in ``threads`` threads) and re-averages. The frame is
    kept at the images' average pose: the mean of the successful transforms is divided out before
    averaging, so the reference does not drift. ``method="none"`` gives the plain mean. The lung
    mask is where at least half of the images whose lungs were found have lung after warping (a
    blurred mean image is a poor thing to segment); when that is not two lung fields, the mean image
    is segmented. Each image's lungs are segmented once. Raises RegistrationError when neither gives lungs.
    """
    if len(images) == 0:
        raise HmtError("cannot build a registration reference from no images")
    REGISTRATIONS.check(method)
    if iterations < 0:
        raise HmtError(f"iterations must be >= 0, got {iterations}")
    progress = progress or NullProgress()
    shape: tuple[int, int] = as_image(images[0]).shape
    rounds = 0 if method == "none" else iterations
    progress.start(len(images) * (rounds + 1), "building the registration reference")
    frames = _frames(images, shape, threads)
    reference = _average(frames, shape, None, centre=method != "none")
    progress.advance(len(images))
    for _ in range(rounds):
        registrar = Registrar(method, reference)
        matrices = []
        for image, alignment in zip(images, registrar.estimate_many(images, threads, quality=False), strict=True):
            matrix = homogeneous(alignment.matrix) @ invert_affine(resize_matrix(np.shape(image), shape))
            matrices.append((matrix, alignment.method == method))
        progress.advance(len(images))
        successful = [matrix for matrix, ok in matrices if ok]
        correction = invert_affine(np.mean(successful, axis=0)) if successful else np.eye(3)
        corrected = [correction @ matrix if ok else matrix for matrix, ok in matrices]
        reference = _average(frames, shape, corrected, centre=False)
    progress.finish()
    return reference


def _frames(images: Sequence[np.ndarray], shape: tuple[int, int], threads: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Each image resized to ``shape`` with its segmented lungs (None where none are found), in threads."""

    def frame(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        resized = resize_gray(as_image(image), shape)
        try:
            return resized, segment_lungs(resized)
        except RegistrationError:
            return resized, None

    if threads <= 1:
        return [frame(image) for image in images]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(frame, images))


def _average(
    frames: Sequence[tuple[np.ndarray, np.ndarray | None]],
    shape: tuple[int, int],
    matrices: Sequence[np.ndarray] | None,
    *,
    centre: bool,
) -> Reference:
    """Mean image and lung mask of (image, lungs) frames at ``shape``, warped by their (3, 3) maps.

    Without maps, each image is shifted so that its lung box is centred (``centre``) or left as is.
    """
    total = np.zeros(shape, dtype=np.float64)
    lung_total = np.zeros(shape, dtype=np.float64)
    with_lungs = 0
    size = (shape[1], shape[0])
    for index, (resized, lungs) in enumerate(frames):
        if matrices is not None:
            matrix = matrices[index]
        else:
            matrix = _centring(lungs, shape) if centre and lungs is not None else np.eye(3)
        total += cv2.warpAffine(resized, matrix[:2], size, flags=cv2.INTER_LINEAR, borderValue=0.0)
        if lungs is not None:
            lung_total += cv2.warpAffine(lungs.astype(np.float32), matrix[:2], size, flags=cv2.INTER_LINEAR, borderValue=0.0)
            with_lungs += 1
    mean = (total / len(frames)).astype(np.float32)
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
            NO_LUNGS, f"neither the images ({with_lungs} of {len(frames)} with lungs) nor their mean show two lung fields"
        ) from error


def _centring(lungs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(3, 3) shift that centres a lung mask's bounding box."""
    ys, xs = np.nonzero(lungs)
    shift = np.eye(3)
    shift[0, 2] = (shape[1] - 1) / 2 - (xs.min() + xs.max()) / 2
    shift[1, 2] = (shape[0] - 1) / 2 - (ys.min() + ys.max()) / 2
    return shift
