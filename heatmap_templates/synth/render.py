"""Rendering one phantom: anatomy and lesions in the canonical frame, a random pose, then acquisition.

Classes differ only in their lesions: anatomy, pose, contrast and noise are drawn from separate
random streams with the same distribution for every class, so a correct classifier must look at
the lesions. Each image's randomness derives from (seed, class name, index).
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from heatmap_templates.errors import HmtError
from heatmap_templates.synth.anatomy import (
    BACKGROUND,
    blur,
    check_size,
    draw_body,
    draw_lung_fields,
    render_anatomy,
    sample_anatomy,
    smooth_noise,
)
from heatmap_templates.synth.lesions import LESIONS, lesion_intensity
from heatmap_templates.synth.shortcuts import burn_in

LESION_THRESHOLD = 0.04  # lesion intensity (image units, [0, 1] scale) at which a pixel counts as lesion
DEFAULT_PROBABILITY_SAMPLES = 200
DEFAULT_POSE_SPREAD = 1.0  # the default pose distribution
MAX_POSE_SPREAD = 4.0  # at 4x the shift reaches 12 % of the side and rotation 32 degrees
_IMAGE_STREAM, _PROBABILITY_STREAM = 0, 1


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
    finding_masks: dict[str, np.ndarray] | None = field(default=None, repr=False)  # multi-label: per finding, image frame
    shortcut_mask: np.ndarray | None = field(default=None, repr=False)  # the planted shortcut's pixels, image frame
    body_mask: np.ndarray | None = field(default=None, repr=False)  # the body (torso, shoulders, neck), image frame


def phantom_seed(seed: int, label: str, index: int) -> np.random.SeedSequence:
    """The seed of image ``index`` of class ``label``: independent of which other classes are made."""
    return np.random.SeedSequence([seed, zlib.crc32(label.encode()), _IMAGE_STREAM, index])


def streams(seed_sequence: np.random.SeedSequence) -> dict[str, np.random.Generator]:
    """Separate generators so that anatomy, pose and noise do not depend on the class's lesions.

    Spawns from a fresh copy: ``SeedSequence.spawn`` advances its object, so reusing the caller's
    would give a different image on every call.
    """
    fresh = np.random.SeedSequence(seed_sequence.entropy, spawn_key=seed_sequence.spawn_key, pool_size=seed_sequence.pool_size)
    anatomy, lesions, pose, noise, shortcut = fresh.spawn(5)  # children depend on their position only: adding one keeps the rest
    return {
        "anatomy": np.random.default_rng(anatomy),
        "lesions": np.random.default_rng(lesions),
        "pose": np.random.default_rng(pose),
        "noise": np.random.default_rng(noise),
        "shortcut": np.random.default_rng(shortcut),
    }




def pose_matrix(dx: float, dy: float, angle_deg: float, scale: float, size: int) -> np.ndarray:
    """The 2 x 3 canonical -> image matrix: rotate and scale about the centre, then shift."""
    centre = ((size - 1) / 2.0, (size - 1) / 2.0)
    matrix = cv2.getRotationMatrix2D(centre, angle_deg, scale)
    matrix[:, 2] += np.array((dx, dy))
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


def check_pose_spread(pose_spread: float) -> None:
    if not 0.0 <= pose_spread <= MAX_POSE_SPREAD:
        raise HmtError(f"pose spread must be between 0 and {MAX_POSE_SPREAD:g}, got {pose_spread}")


def render_phantom(seed: np.random.SeedSequence | int | Sequence[int], label: str, size: int = 256, *,
                   include_lesions: bool = True, pose_spread: float = DEFAULT_POSE_SPREAD,
                   findings: Sequence[str] | None = None, shortcut: str | None = None, lesion_scale: float = 1.0) -> Phantom:
    """Render one phantom of class ``label``, or with every lesion type in ``findings`` at once (multi-label).

    ``include_lesions=False`` renders the identical image without its lesions (same anatomy, pose
    and noise), which is what makes the lesion ground truth checkable. ``pose_spread`` scales the
    random pose (see `synthesize_dataset`). With ``findings``, each finding's lesions come from a
    random stream of their own and ``finding_masks`` holds each finding's mask in the image frame.
    ``shortcut`` (a :data:`~heatmap_templates.synth.shortcuts.SHORTCUTS` style) burns that cue into the image
    (on the detector: it does not follow the pose); the image is otherwise identical. ``lesion_scale`` (0 to 1)
    multiplies the lesions' intensity (faint lesions; 0: none), and the lesion masks follow the scaled lesions.
    """
    LESIONS.check(label)
    for finding in findings or ():
        LESIONS.check(finding)
    check_size(size)
    check_pose_spread(pose_spread)
    if not 0.0 <= lesion_scale <= 1.0:
        raise HmtError(f"lesion scale must be between 0 and 1, got {lesion_scale}")
    seed_sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    rng = streams(seed_sequence)
    px = size / 256.0

    anatomy = sample_anatomy(rng["anatomy"])
    lung_fields = draw_lung_fields(anatomy, size)
    canonical = render_anatomy(anatomy, lung_fields[0] + lung_fields[1], size, rng["anatomy"])
    if findings is None:
        lesion = lesion_intensity(label, anatomy, lung_fields, size, rng["lesions"])
        per_finding: dict[str, np.ndarray] = {}
    else:
        base_seed = int(rng["lesions"].integers(2**63))
        per_finding = {name: lesion_intensity(name, anatomy, lung_fields, size,
                                              np.random.default_rng([base_seed, zlib.crc32(name.encode())]))
                       for name in sorted(findings)}
        lesion = np.minimum(sum(per_finding.values(), np.zeros((size, size), np.float32)), 0.45)
    lesion = (lesion * lesion_scale).astype(np.float32)
    per_finding = {name: (values * lesion_scale).astype(np.float32) for name, values in per_finding.items()}
    canonical_mask = lesion >= LESION_THRESHOLD
    if include_lesions:
        canonical = canonical + lesion

    pose = _sample_pose(rng["pose"], size, pose_spread)
    image: np.ndarray = cv2.warpAffine(canonical, pose.matrix, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND)
    mask = _warp_mask(canonical_mask.astype(np.float32), pose)
    lungs = _warp_mask(lung_fields[0] + lung_fields[1], pose)

    # Acquisition: exposure (contrast, brightness, gamma), detector blur and noise, in the image frame.
    noise_rng = rng["noise"]
    contrast, brightness, gamma = noise_rng.uniform(0.85, 1.15), noise_rng.uniform(-0.05, 0.05), noise_rng.uniform(0.85, 1.15)
    image = np.clip((image - 0.4) * contrast + 0.4 + brightness, 0.0, 1.0) ** gamma
    shortcut_mask = None
    if shortcut is not None:
        image, shortcut_mask = burn_in(image.astype(np.float32), shortcut, rng["shortcut"])
    canonical_image = (np.clip((canonical - 0.4) * contrast + 0.4 + brightness, 0.0, 1.0) ** gamma).astype(np.float32)
    image = blur(image.astype(np.float32), noise_rng.uniform(0.5, 1.0) * px)
    image += noise_rng.normal(0.0, noise_rng.uniform(0.008, 0.022), (size, size)).astype(np.float32)
    image += 0.02 * smooth_noise(noise_rng, size, 6)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    finding_masks = {name: _warp_mask((values >= LESION_THRESHOLD).astype(np.float32), pose) for name, values in per_finding.items()}
    return Phantom(image=image, lesion_mask=mask, canonical_lesion_mask=canonical_mask, lung_mask=lungs, pose=pose, label=label,
                   canonical_image=canonical_image, finding_masks=finding_masks if findings is not None else None,
                   shortcut_mask=shortcut_mask, body_mask=_warp_mask(draw_body(anatomy, size), pose))


def canonical_lesion_probability(label: str, size: int = 256, n_samples: int = DEFAULT_PROBABILITY_SAMPLES,
                                 seed: int = 0) -> np.ndarray:
    """Monte Carlo estimate of P(pixel is lesion) in the canonical frame for class ``label``.

    Samples the anatomy and lesion process exactly as `render_phantom` does (without pose, which
    does not act in the canonical frame); ``normal`` is all zeros. float32 in [0, 1].
    """
    LESIONS.check(label)
    check_size(size)
    if n_samples < 1:
        raise HmtError(f"n_samples must be at least 1, got {n_samples}")
    total = np.zeros((size, size), np.float32)
    if LESIONS[label] is None:
        return total
    for index in range(n_samples):
        rng = streams(np.random.SeedSequence([seed, zlib.crc32(label.encode()), _PROBABILITY_STREAM, index]))
        anatomy = sample_anatomy(rng["anatomy"])
        lesion = lesion_intensity(label, anatomy, draw_lung_fields(anatomy, size), size, rng["lesions"])
        total += lesion >= LESION_THRESHOLD
    return total / n_samples
