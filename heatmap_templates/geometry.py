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


def check_plausible(matrix: np.ndarray, image_shape: tuple[int, int], reference_shape: tuple[int, int]) -> None:
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
