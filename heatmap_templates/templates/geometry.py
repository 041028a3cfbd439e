"""Geometry shared by registration and lung segmentation: affine maps in pixel coordinates and their checks.

Matrices map pixel coordinates (x = column, y = row, pixel centres at integers: OpenCV's
convention); (2, 3) affines are made (3, 3) to compose. A registration step that fails raises
:class:`RegistrationError` with one of the fixed reason phrases, so summaries can count them.
"""
from __future__ import annotations

import numpy as np

from heatmap_templates.errors import HmtError

# Fallback reasons are fixed phrases so that summaries can count them.
NO_LUNGS = "no plausible lung fields"
ECC_FAILED = "ECC did not converge"
IMPLAUSIBLE = "implausible transform"
LUNGS_MISMATCH = "lung fields do not match the reference"

_MAX_SCALE = 3.0
_MAX_ANISOTROPY = 2.0  # ratio of the largest to the smallest axis scale


class RegistrationError(HmtError):
    """A registration step failed; ``reason`` is one of the fixed phrases counted by summaries."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        self.reason = reason
        super().__init__(reason if detail is None else f"{reason}: {detail}")



def as_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate a (H, W) finite image and return it as float32."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 2 or min(array.shape) < 8:
        raise HmtError(f"{what} must be a 2-D grayscale array of at least 8x8 pixels, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise HmtError(f"{what} contains NaN or infinite values")
    return array


def homogeneous(matrix: np.ndarray) -> np.ndarray:
    """(2, 3) affine -> (3, 3)."""
    out = np.eye(3)
    out[:2] = matrix
    return out


def resize_matrix(src_shape: tuple[int, int], dst_shape: tuple[int, int]) -> np.ndarray:
    """(3, 3) map from pixel coordinates of a (H, W) array to those of its resized copy (cv2.resize convention)."""
    sy = dst_shape[0] / src_shape[0]
    sx = dst_shape[1] / src_shape[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The (3, 3) inverse of a (3, 3) affine map, in closed form (3 us where ``np.linalg.inv`` takes 6-10 us, which
    registration calls several times an image while it holds the GIL). Raises RegistrationError when singular."""
    (a, b, tx), (c, d, ty) = matrix[0].tolist(), matrix[1].tolist()
    det = a * d - b * c
    if not det or not np.isfinite(det):
        raise RegistrationError(IMPLAUSIBLE)
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    return np.array([[ia, ib, -(ia * tx + ib * ty)], [ic, id_, -(ic * tx + id_ * ty)], [0.0, 0.0, 1.0]])


def check_plausible(matrix: np.ndarray, image_shape: tuple[int, int], reference_shape: tuple[int, int]) -> None:
    """Reject reflections, extreme or very anisotropic scales, and transforms that put the reference centre outside the image."""
    (a, b, tx), (c, d, ty) = matrix[0].tolist(), matrix[1].tolist()
    if not all(np.isfinite((a, b, c, d, tx, ty))):
        raise RegistrationError(IMPLAUSIBLE)
    det = a * d - b * c
    # The 2 x 2 part's singular values in closed form: s1^2 + s2^2 = a^2 + b^2 + c^2 + d^2 and s1 s2 = |det|.
    squares = a * a + b * b + c * c + d * d
    gap = np.sqrt(max(squares * squares - 4.0 * det * det, 0.0))
    largest, smallest = np.sqrt((squares + gap) / 2.0), np.sqrt(max(squares - gap, 0.0) / 2.0)
    if det <= 0 or largest > _MAX_SCALE or smallest < 1.0 / _MAX_SCALE or largest > _MAX_ANISOTROPY * smallest:
        raise RegistrationError(IMPLAUSIBLE)
    inverse = invert_affine(matrix)
    centre_x, centre_y = (reference_shape[1] - 1) / 2, (reference_shape[0] - 1) / 2
    x = inverse[0, 0] * centre_x + inverse[0, 1] * centre_y + inverse[0, 2]
    y = inverse[1, 0] * centre_x + inverse[1, 1] * centre_y + inverse[1, 2]
    if not (0 <= x <= image_shape[1] - 1 and 0 <= y <= image_shape[0] - 1):
        raise RegistrationError(IMPLAUSIBLE)
