"""Registration: lung segmentation, pose recovery by each method, warping of heatmaps, fallbacks."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from heatmap_templates import synth
from heatmap_templates.errors import HmtError
from heatmap_templates.templates import geometry, lungs, registration
from heatmap_templates.templates.registration import (
    ECC_FAILED,
    LUNGS_MISMATCH,
    NO_LUNGS,
    REGISTRATIONS,
    Alignment,
    Reference,
    Registrar,
    RegistrationError,
    build_reference,
    reference_from_image,
    segment_lungs,
)

SIZE = 128


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def _mean_displacement(matrix: np.ndarray, points: np.ndarray) -> float:
    """Mean distance points move under a (3, 3) map that should be the identity."""
    moved = points @ matrix[:2, :2].T + matrix[:2, 2]
    return float(np.linalg.norm(moved - points, axis=1).mean())


def _lung_points(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.column_stack([xs, ys]).astype(np.float64)


def _ellipse_chest(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A minimal chest: a bright body with two dark elliptical lungs, and the lung mask."""
    image = np.full((size, size), 0.05, np.float32)
    centre = size / 2
    cv2.ellipse(image, (int(centre), int(centre * 1.05)), (int(size * 0.40), int(size * 0.45)), 0, 0, 360, 0.75, -1)
    lungs = np.zeros((size, size), np.uint8)
    cv2.ellipse(lungs, (int(centre - size * 0.18), int(centre)), (int(size * 0.12), int(size * 0.25)), 5, 0, 360, 1, -1)
    cv2.ellipse(lungs, (int(centre + size * 0.18), int(centre)), (int(size * 0.11), int(size * 0.24)), -5, 0, 360, 1, -1)
    image[lungs > 0] = 0.25
    return cv2.GaussianBlur(image, (0, 0), 1.5), lungs > 0


@pytest.fixture(scope="module")
def phantom() -> synth.Phantom:
    return synth.render_phantom(0, "normal", SIZE)


@pytest.fixture(scope="module")
def phantom_reference(phantom: synth.Phantom) -> Reference:
    return reference_from_image(phantom.image)


POSES = [(3.0, -4.0, 7.0, 1.06), (-5.0, 3.0, -6.0, 0.93), (3.0, 5.0, 3.0, 1.0)]


@pytest.mark.parametrize("method", ["affine", "lungs"])
@pytest.mark.parametrize("pose", POSES)
def test_known_similarity_is_recovered_on_the_phantom(method, pose, phantom, phantom_reference) -> None:
    warp = synth.pose_matrix(*pose, SIZE)  # reference -> test image
    moved = cv2.warpAffine(phantom.image, warp, (SIZE, SIZE), borderValue=float(phantom.image[0, 0]))
    registrar = Registrar(method, phantom_reference)
    alignment = registrar.estimate(moved)
    assert alignment.method == method and alignment.fallback_reason is None
    composed = _homogeneous(alignment.matrix) @ _homogeneous(warp)
    assert _mean_displacement(composed, _lung_points(phantom_reference.lung_mask)) < 1.5
    unregistered = _mean_displacement(_homogeneous(warp), _lung_points(phantom_reference.lung_mask))
    assert unregistered > 4  # the test pose is a real displacement
    assert alignment.quality > 0.9


@pytest.mark.parametrize("method", ["affine", "lungs"])
def test_known_affine_warp_of_an_ellipse_chest_is_recovered(method) -> None:
    image, lungs = _ellipse_chest()
    warp = synth.pose_matrix(-4.0, 5.0, -8.0, 1.08, SIZE)
    alignment = Registrar(method, Reference(image, lungs)).estimate(cv2.warpAffine(image, warp, (SIZE, SIZE), borderValue=0.05))
    composed = _homogeneous(alignment.matrix) @ _homogeneous(warp)
    assert alignment.method == method
    assert _mean_displacement(composed, _lung_points(lungs)) < 1.5


def test_affine_handles_a_shear_the_lungs_similarity_cannot(phantom, phantom_reference) -> None:
    warp = np.array([[1.05, 0.08, -6.0], [0.02, 0.95, 4.0]])
    moved = cv2.warpAffine(phantom.image, warp, (SIZE, SIZE), borderValue=float(phantom.image[0, 0]))
    alignment = Registrar("affine", phantom_reference).estimate(moved)
    composed = _homogeneous(alignment.matrix) @ _homogeneous(warp)
    assert _mean_displacement(composed, _lung_points(phantom_reference.lung_mask)) < 1.0


def test_images_of_another_size_are_registered_by_scaling(phantom, phantom_reference) -> None:
    warp = synth.pose_matrix(4.0, -3.0, 5.0, 1.0, SIZE)
    moved = cv2.warpAffine(phantom.image, warp, (SIZE, SIZE), borderValue=float(phantom.image[0, 0]))
    large = cv2.resize(moved, (2 * SIZE, 2 * SIZE), interpolation=cv2.INTER_LINEAR)
    registrar = Registrar("affine", phantom_reference)
    alignment = registrar.estimate(large)
    assert alignment.image_shape == (2 * SIZE, 2 * SIZE)
    to_large = geometry.resize_matrix((SIZE, SIZE), (2 * SIZE, 2 * SIZE))
    composed = _homogeneous(alignment.matrix) @ to_large @ _homogeneous(warp)
    assert _mean_displacement(composed, _lung_points(phantom_reference.lung_mask)) < 1.5
    assert registrar.warp(large, alignment).shape == (SIZE, SIZE)


def test_segment_lungs_finds_two_lungs_on_phantoms() -> None:
    for index, label in enumerate(synth.CLASSES):
        sample = synth.render_phantom(index, label, SIZE)
        mask = segment_lungs(sample.image)
        count, _ = cv2.connectedComponents(mask.astype(np.uint8))
        assert count - 1 == 2, label
        truth = cv2.warpAffine(synth.canonical_lung_mask(SIZE).astype(np.float32), sample.pose.matrix, (SIZE, SIZE)) > 0.5
        inside = (mask & truth).sum() / mask.sum()
        assert inside > 0.9, label  # what it finds is lung
        if label == "normal":
            assert (mask & truth).sum() / truth.sum() > 0.75  # and it finds most of the lungs


def test_lung_fields_keep_the_consolidation_segmentation_leaves_out(phantom_reference) -> None:
    """Segmentation finds aerated lung, so a dense bacterial consolidation falls outside it; the lung fields (united
    with the reference's lungs moved back by affine registration) hold it, and stay the phantom's true lung fields."""
    from heatmap_templates.templates.lungs import lung_fields

    registrar = Registrar("affine", phantom_reference)
    left_out, kept, dice = [], [], []
    for index in range(6):
        sample = synth.render_phantom(index, "bacteria", SIZE)
        moved = registrar.unwarp(phantom_reference.lung_mask.astype(np.float32), registrar.estimate(sample.image))
        fields, source = lung_fields(sample.image, moved)
        assert source == "segmentation+reference" and fields is not None
        assert np.array_equal(fields, segment_lungs(sample.image) | (moved >= 0.5))  # the union, nothing more
        lesion = sample.lesion_mask
        left_out.append((lesion & ~segment_lungs(sample.image)).sum() / lesion.sum())
        kept.append((lesion & fields).sum() / lesion.sum())
        dice.append(2 * (fields & sample.lung_mask).sum() / (fields.sum() + sample.lung_mask.sum()))
    assert np.mean(left_out) > 0.5, "the case this rule is for: segmentation leaves most of a consolidation out"
    assert np.mean(kept) > 0.9 and min(dice) > 0.9, (kept, dice)
    fields, source = lung_fields(np.full((SIZE, SIZE), 0.5, np.float32), moved)  # segmentation declines: the reference
    assert source == "reference" and fields is not None and np.array_equal(fields, moved >= 0.5)
    assert lung_fields(np.full((SIZE, SIZE), 0.5, np.float32), None) == (None, "none")
    # registration fell back to none: an unaligned reference is kept out of a segmentation, used only where it declines
    fields, source = lung_fields(sample.image, moved, aligned=False)
    assert source == "segmentation" and fields is not None and np.array_equal(fields, segment_lungs(sample.image))
    assert lung_fields(np.full((SIZE, SIZE), 0.5, np.float32), moved, aligned=False)[1] == "unaligned reference"


def test_segment_lungs_raises_without_lungs() -> None:
    with pytest.raises(RegistrationError) as caught:
        segment_lungs(np.full((SIZE, SIZE), 0.5, np.float32))
    assert caught.value.reason == NO_LUNGS
    assert isinstance(caught.value, HmtError)
    body_only = np.full((SIZE, SIZE), 0.05, np.float32)
    cv2.ellipse(body_only, (SIZE // 2, SIZE // 2), (SIZE // 3, SIZE // 3), 0, 0, 360, 0.7, -1)
    with pytest.raises(RegistrationError):
        segment_lungs(body_only)


def test_heatmap_warp_follows_the_image(phantom, phantom_reference) -> None:
    warp = synth.pose_matrix(-6.0, 4.0, -7.0, 1.05, SIZE)
    moved = cv2.warpAffine(phantom.image, warp, (SIZE, SIZE))
    registrar = Registrar("lungs", phantom_reference)
    alignment = registrar.estimate(moved)
    # A heatmap peaked on a point of the moved image peaks where that point lands in the reference.
    peak_in_reference = np.array([40.0, 60.0])
    peak_in_image = warp[:, :2] @ peak_in_reference + warp[:, 2]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    heatmap = np.exp(-((xx - peak_in_image[0]) ** 2 + (yy - peak_in_image[1]) ** 2) / (2 * 3.0**2)).astype(np.float32)
    warped = registrar.warp(heatmap, alignment)
    row, column = np.unravel_index(np.argmax(warped), warped.shape)
    assert np.hypot(column - peak_in_reference[0], row - peak_in_reference[1]) <= 1.5
    # A (K, H, W) stack is warped plane by plane with the same transform as the image.
    stack = np.stack([moved, heatmap, 2 * heatmap])
    warped_stack = registrar.warp(stack, alignment)
    assert warped_stack.shape == (3, SIZE, SIZE) and warped_stack.dtype == np.float32
    np.testing.assert_allclose(warped_stack[0], registrar.warp(moved, alignment), atol=1e-6)
    np.testing.assert_allclose(warped_stack[2], 2 * warped, atol=1e-5)
    # A heatmap at another resolution lands in the same place.
    half = cv2.resize(heatmap, (SIZE // 2, SIZE // 2), interpolation=cv2.INTER_AREA)
    row_half, column_half = np.unravel_index(np.argmax(registrar.warp(half, alignment)), (SIZE, SIZE))
    assert np.hypot(column_half - column, row_half - row) <= 2.0


def test_none_is_the_identity(phantom, phantom_reference) -> None:
    registrar = Registrar("none", phantom_reference)
    alignment = registrar.estimate(phantom.image)
    np.testing.assert_array_equal(alignment.matrix, np.eye(3)[:2])
    assert alignment.method == "none" and alignment.fallback_reason is None
    np.testing.assert_allclose(registrar.warp(phantom.image, alignment), phantom.image, atol=1e-6)
    smaller = cv2.resize(phantom.image, (SIZE // 2, SIZE // 2), interpolation=cv2.INTER_AREA)
    rescaled = registrar.warp(smaller, registrar.estimate(smaller))
    assert rescaled.shape == (SIZE, SIZE)
    inner = (slice(2, -2), slice(2, -2))  # the half-pixel border is outside the smaller image
    np.testing.assert_allclose(rescaled[inner], cv2.resize(smaller, (SIZE, SIZE))[inner], atol=1e-4)


def test_no_lungs_falls_back_and_is_reported(phantom_reference) -> None:
    registrar = Registrar("lungs", phantom_reference)
    constant = np.full((SIZE, SIZE), 0.4, np.float32)
    alignment = registrar.estimate(constant)
    assert alignment.method == "none"
    assert alignment.fallback_reason == f"lungs: {NO_LUNGS}; affine: {ECC_FAILED}"
    assert alignment.quality == 0.0  # a constant image has no correlation, and never NaN
    summary = registrar.summary()
    assert summary["images"] == 1 and summary["methods"] == {"none": 1}
    assert summary["fallbacks"] == {alignment.fallback_reason: 1}


def test_ecc_non_convergence_falls_back_to_none(monkeypatch, phantom, phantom_reference) -> None:
    def diverge(*args, **kwargs):
        raise cv2.error("The algorithm stopped before its convergence")

    monkeypatch.setattr(registration.cv2, "findTransformECC", diverge)
    registrar = Registrar("affine", phantom_reference)
    alignment = registrar.estimate(phantom.image)
    assert alignment.method == "none" and alignment.fallback_reason == f"affine: {ECC_FAILED}"
    registrar.estimate(phantom.image)
    assert registrar.summary()["fallbacks"] == {f"affine: {ECC_FAILED}": 2}


def test_lungs_hidden_by_consolidation_fall_back_to_affine(phantom, phantom_reference) -> None:
    image = phantom.image.copy()
    left = lungs.lung_pair(image)[0]
    ys, _ = np.nonzero(left)
    lower = left.copy()
    lower[: int(ys.min() + 0.45 * (ys.max() - ys.min()))] = False
    consolidation = cv2.GaussianBlur(cv2.dilate(lower.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(np.float32), (0, 0), 2)
    image = np.clip(image + 0.3 * consolidation, 0, 1)  # a consolidated lower lobe
    registrar = Registrar("lungs", phantom_reference)
    alignment = registrar.estimate(image)
    assert alignment.method == "affine"
    assert alignment.fallback_reason == f"lungs: {LUNGS_MISMATCH}"
    assert _mean_displacement(_homogeneous(alignment.matrix), _lung_points(phantom_reference.lung_mask)) < 1.5


def test_register_batch_and_build_reference() -> None:
    samples = [synth.render_phantom(index, label, 64) for index in range(3) for label in synth.CLASSES]
    images = [sample.image for sample in samples]
    reference = build_reference(images, iterations=2, method="affine")
    assert reference.image.shape == (64, 64) and reference.image.dtype == np.float32
    count, _ = cv2.connectedComponents(reference.lung_mask.astype(np.uint8))
    assert count - 1 == 2
    heatmaps = [np.stack([sample.lesion_mask, sample.lesion_mask]).astype(np.float32) for sample in samples]
    results = {}
    for method in REGISTRATIONS:
        registrar = Registrar(method, reference)
        alignments, registered, warped_heatmaps = registrar.register_batch(images, heatmaps)
        assert registered.shape == (len(images), 64, 64) and warped_heatmaps.shape == (len(images), 2, 64, 64)
        assert all(isinstance(alignment, Alignment) for alignment in alignments)
        assert registrar.summary()["images"] == len(images)
        results[method] = np.mean([alignment.quality for alignment in alignments])
    assert results["affine"] > results["none"]
    assert results["lungs"] > results["none"]


def test_user_errors() -> None:
    image, lungs = _ellipse_chest(64)
    with pytest.raises(HmtError, match="unknown registration method"):
        Registrar("elastic", Reference(image, lungs))
    with pytest.raises(HmtError, match="lung mask has shape"):
        Reference(image, lungs[:32])
    with pytest.raises(HmtError, match="no images"):
        build_reference([])
    with pytest.raises(HmtError, match="NaN"):
        Registrar("none", Reference(image, lungs)).estimate(np.full((64, 64), np.nan, np.float32))
    with pytest.raises(HmtError, match="two lung fields"):
        Registrar("lungs", Reference(np.full((64, 64), 0.5, np.float32), np.zeros((64, 64), bool)))


def test_build_reference_without_lungs_fails_clearly_and_none_is_the_plain_mean(phantom) -> None:
    flat = [np.full((64, 64), value, np.float32) for value in (0.2, 0.4)]
    with pytest.raises(RegistrationError, match="neither the images .0 of 2 with lungs. nor their mean"):
        build_reference(flat, method="affine")
    images = [phantom.image, cv2.flip(phantom.image, 1)]
    reference = build_reference(images, method="none")
    np.testing.assert_allclose(reference.image, (images[0] + images[1]) / 2, atol=1e-6)
    assert reference.lung_mask.any()


def test_closed_form_inverse_and_plausibility_match_numpys_linear_algebra() -> None:
    """invert_affine and check_plausible's closed-form singular values against np.linalg.inv / svd / solve."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        matrix = np.eye(3)
        matrix[:2] = rng.normal(size=(2, 3)) * [0.8, 0.8, 8.0] + [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
        np.testing.assert_allclose(geometry.invert_affine(matrix), np.linalg.inv(matrix), rtol=1e-9, atol=1e-9)
        singular = np.linalg.svd(matrix[:2, :2], compute_uv=False)
        x, y, _ = np.linalg.solve(matrix, [31.5, 31.5, 1.0])
        expected = (np.linalg.det(matrix[:2, :2]) > 0 and 1 / 3 <= singular.min() and singular.max() <= 3
                    and singular.max() <= 2 * singular.min() and 0 <= x <= 63 and 0 <= y <= 63)
        try:
            geometry.check_plausible(matrix, (64, 64), (64, 64))
            plausible = True
        except geometry.RegistrationError:
            plausible = False
        assert plausible == expected
    with pytest.raises(geometry.RegistrationError):
        geometry.invert_affine(np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 1.0]]))
