"""Template mathematics: normalisation, streaming statistics against numpy on the full data, merges."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from heatmap_templates.errors import HmtError
from heatmap_templates.numeric.correlation import similarity_matrix
from heatmap_templates.numeric.resample import downsample, upsample, upsample_maps
from heatmap_templates.templates.accumulator import LOO_EXACT, ClassAccumulator, Member, leave_one_out_correlations
from heatmap_templates.templates.normalisation import NORMALISATIONS, normalise
from heatmap_templates.templates.statistics import (
    BootstrapBand,
    PairwiseCorrelation,
    PixelHistogram,
    RunningCovariance,
    RunningStats,
    bootstrap_weights,
    principal_components,
)

SHAPE = (24, 20)


def _members(n: int, start: int = 0) -> list[Member]:
    return [Member(f"img_{i}.png", f"{i:064x}", 0.9, 0.8, "affine") for i in range(start, start + n)]


def _maps(n: int, seed: int = 0) -> np.ndarray:
    """Blobs at varying positions plus noise: correlated, like real class heatmaps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    centres = rng.normal([12, 10], 2.0, size=(n, 2))
    blobs = np.exp(-((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2) / 18.0)
    return (blobs * rng.uniform(0.5, 3.0, size=(n, 1, 1)) + rng.uniform(0, 0.3, size=(n, *SHAPE))).astype(np.float32)


# ----------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("method", NORMALISATIONS.names())
def test_normalise_zero_and_constant_maps_give_zeros_not_nan(method: str) -> None:
    maps = np.stack([np.zeros(SHAPE), np.full(SHAPE, 3.5)]).astype(np.float32)
    out = normalise(maps, method)
    assert out.dtype == np.float32 and out.shape == maps.shape
    expected = maps if method == "none" else np.zeros_like(maps)
    np.testing.assert_array_equal(out, expected)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, (2, 5, 4), elements=st.floats(allow_nan=True, allow_infinity=True, width=64)),
    st.sampled_from(NORMALISATIONS.names()),
)
def test_normalise_never_returns_nan_or_inf(maps: np.ndarray, method: str) -> None:
    assert np.isfinite(normalise(maps, method)).all()


@pytest.mark.parametrize("method", NORMALISATIONS.names())
def test_normalise_leaves_its_input_alone(method: str) -> None:
    """normalise works in place on a copy of its own: a caller's float64 maps (no conversion needed) are untouched."""
    maps = np.random.default_rng(2).normal(size=(3, *SHAPE))
    maps[0, 1, 1] = np.nan
    before = maps.copy()
    normalise(maps, method)
    normalise(maps[1], method)
    np.testing.assert_array_equal(maps, before)


def test_normalise_methods_on_negative_and_nonfinite_values() -> None:
    rng = np.random.default_rng(1)
    maps = rng.normal(-2.0, 1.5, size=(3, *SHAPE))
    maps[0, 0, 0] = np.nan
    minmax = normalise(maps, "minmax")
    assert np.isfinite(minmax).all()
    np.testing.assert_allclose(minmax.reshape(3, -1).min(1), 0.0, atol=1e-7)
    np.testing.assert_allclose(minmax.reshape(3, -1).max(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.abs(normalise(maps, "sum")).reshape(3, -1).sum(1), 1.0, rtol=1e-5)
    z = normalise(maps, "zscore").reshape(3, -1)
    np.testing.assert_allclose(z.mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(1), 1.0, rtol=1e-5)
    single = normalise(maps[1], "minmax")
    np.testing.assert_array_equal(single, minmax[1])
    with pytest.raises(HmtError, match="unknown normalisation"):
        normalise(maps, "softmax")


# ----------------------------------------------------------------------------- statistics


def test_welford_chan_match_numpy_and_merge_of_halves_equals_one_pass() -> None:
    data = np.random.default_rng(2).normal(100.0, 3.0, size=(57, 6, 5))  # large offset: stability matters
    one_pass = RunningStats((6, 5))
    for start in range(0, 57, 8):
        one_pass.update(data[start : start + 8])
    first, second = RunningStats((6, 5)), RunningStats((6, 5))
    first.update(data[:20])
    second.update(data[20:])
    first.merge(second)
    np.testing.assert_allclose(one_pass.mean, data.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(one_pass.variance, data.var(0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(first.mean, one_pass.mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(first.m2, one_pass.m2, rtol=1e-10)
    assert first.count == one_pass.count == 57


def test_covariance_and_pca_match_numpy_linalg() -> None:
    samples = np.random.default_rng(3).normal(size=(40, 12)) @ np.random.default_rng(4).normal(size=(12, 12))
    running, merged = RunningCovariance(12), RunningCovariance(12)
    for start in range(0, 40, 7):
        running.update(samples[start : start + 7])
    other = RunningCovariance(12)
    merged.update(samples[:15])
    other.update(samples[15:])
    merged.merge(other)
    reference = np.cov(samples, rowvar=False)
    np.testing.assert_allclose(running.covariance, reference, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(merged.covariance, reference, rtol=1e-10, atol=1e-10)
    values, components, ratio = principal_components(running.covariance, 4)
    true_values, true_vectors = np.linalg.eigh(reference)
    np.testing.assert_allclose(values, true_values[::-1][:4], rtol=1e-9)
    for component, vector in zip(components, true_vectors[:, ::-1][:, :4].T, strict=True):
        assert abs(abs(component @ vector) - 1.0) < 1e-9
        assert component[np.argmax(np.abs(component))] > 0  # sign convention
    np.testing.assert_allclose(ratio, values / np.trace(reference), rtol=1e-10)


@pytest.mark.parametrize("samples", [400, 5])  # full rank, and fewer samples than components (zero eigenvalues)
def test_top_components_by_lanczos_match_lapacks_full_decomposition(samples: int) -> None:
    """principal_components takes ARPACK's Lanczos path for 8 of 256; LAPACK's full eigh is the reference."""
    rng = np.random.default_rng(5)
    data = rng.normal(size=(samples, 20)) @ rng.normal(size=(20, 256)) + 0.1 * rng.normal(size=(samples, 256))
    covariance = np.cov(data, rowvar=False)
    values, components, _ = principal_components(covariance, 8)
    true_values, true_vectors = scipy.linalg.eigh(covariance)
    np.testing.assert_allclose(values, np.clip(true_values[::-1][:8], 0.0, None), rtol=1e-9, atol=1e-9)
    for value, component, vector in zip(values, components, true_vectors[:, ::-1][:, :8].T, strict=True):
        if value > 1e-9:  # the zero eigenvalues' vectors are any basis of the null space
            assert abs(abs(component @ vector) - 1.0) < 1e-8


def test_maps_held_back_give_the_statistics_of_updates_batch_by_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """add() holds maps back until PENDING_BYTES; updating after every add must give the same template, and a
    caller reusing its array after add must not change what was added."""
    maps, members = _maps(30, seed=11), _members(30)
    held = _build(maps, members).finalize()
    monkeypatch.setattr("heatmap_templates.templates.accumulator.PENDING_BYTES", 0)
    each = _build(maps, members).finalize()
    for name in ("mean", "std", "median", "band_low", "band_high", "eigenvalues", "components"):
        np.testing.assert_allclose(getattr(held, name), getattr(each, name), rtol=1e-9, atol=1e-12, err_msg=name)
    monkeypatch.undo()
    reused = normalise(maps[:7])
    accumulator = ClassAccumulator("covid", SHAPE, pca_size=8, n_components=4, bootstrap_replicates=40)
    accumulator.add(reused, members[:7], normalised=True)
    reused[:] = 0.0
    np.testing.assert_allclose(accumulator.finalize().mean, normalise(maps[:7]).mean(0), atol=1e-7)


def test_downsample_is_area_average_and_upsample_preserves_constants() -> None:
    image = np.arange(16.0).reshape(4, 4)
    np.testing.assert_allclose(downsample(image, (2, 2)), [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_allclose(upsample(np.full((3, 3), 2.0), (7, 5)), 2.0)


@pytest.mark.parametrize(("source", "target"), [((7, 7), (224, 224)), ((14, 14), (224, 224)), ((16, 16), (128, 128)),
                                                ((5, 3), (71, 40)), ((4, 4), (4, 4))])
def test_the_stores_upsampler_matches_tensorflow_bilinear_resize(source: tuple[int, int], target: tuple[int, int]) -> None:
    """Maps are stored at layer resolution and upsampled on read; the result must be what TensorFlow's resize gave."""
    import tensorflow as tf

    raw = np.random.default_rng(8).gamma(1.0, size=(3, 2, *source)).astype(np.float32)
    expected = tf.image.resize(raw.reshape(-1, *source)[..., None], target, method="bilinear").numpy()[..., 0]
    ours = upsample_maps(raw, target)
    assert ours.dtype == np.float32 and ours.shape == (3, 2, *target)
    np.testing.assert_allclose(ours.reshape(-1, *target), expected, rtol=0, atol=1e-6 * raw.max())


def test_histogram_median_is_within_one_bin_of_numpy_and_merges() -> None:
    values = np.random.default_rng(5).beta(2.0, 5.0, size=(41, 6, 7))
    histogram, part = PixelHistogram((6, 7), 64, (0.0, 1.0)), PixelHistogram((6, 7), 64, (0.0, 1.0))
    histogram.update(values[:30])
    part.update(values[30:])
    histogram.merge(part)
    assert np.abs(histogram.median() - np.median(values, axis=0)).max() <= 1.0 / 64
    whole = PixelHistogram((6, 7), 64, (0.0, 1.0))
    whole.update(values)
    np.testing.assert_array_equal(whole.counts, histogram.counts)


def test_bootstrap_sums_equal_the_weighted_sums_by_hand() -> None:
    """The in-place BLAS update gives sum_i w_bi x_i, each member's weights from its key, over several updates;
    no replicates is a band of zeros, not an error."""
    maps = _maps(23).astype(np.float32)
    keys = [m.key for m in _members(23)]
    band = BootstrapBand(SHAPE, 7)
    for start, stop in ((0, 5), (5, 6), (6, 23)):
        band.update(maps[start:stop], keys[start:stop])
    weights = np.stack([bootstrap_weights(key, 7) for key in keys])
    np.testing.assert_allclose(band.sums, weights.T @ maps.reshape(23, -1).astype(np.float64), rtol=1e-13)
    assert band.sums.flags["C_CONTIGUOUS"]
    empty = BootstrapBand(SHAPE, 0)
    empty.update(maps, keys)
    assert empty.sums.shape == (0, maps[0].size) and not empty.band()[0].any()


def test_bootstrap_is_deterministic_and_merge_equals_union() -> None:
    maps = _maps(30).reshape(30, -1)
    keys = [m.key for m in _members(30)]
    union, again, first, second = (BootstrapBand(SHAPE, 50) for _ in range(4))
    union.update(maps, keys)
    again.update(maps, keys)
    first.update(maps[:11], keys[:11])
    second.update(maps[11:], keys[11:])
    first.merge(second)
    np.testing.assert_array_equal(union.band()[0], again.band()[0])
    np.testing.assert_allclose(first.sums, union.sums, rtol=1e-12)
    np.testing.assert_array_equal(first.weights, union.weights)
    low, high = union.band()
    mean = maps.mean(0).reshape(SHAPE)
    assert (low <= high).all() and (low < mean).mean() > 0.9 and (high > mean).mean() > 0.9


def test_pairwise_and_leave_one_out_correlations_match_brute_force() -> None:
    maps = _maps(15).reshape(15, -1).astype(np.float64)
    maps[3] = 0.7  # a constant map correlates 0 with everything
    pairwise = PairwiseCorrelation(maps.shape[1])
    pairwise.update(maps[:6])
    rest = PairwiseCorrelation(maps.shape[1])
    rest.update(maps[6:])
    pairwise.merge(rest)
    correlations = np.nan_to_num(np.corrcoef(maps))
    brute = (correlations.sum() - np.trace(correlations)) / (15 * 14)
    assert pairwise.value == pytest.approx(brute, abs=1e-12)
    loo = leave_one_out_correlations(maps, maps.sum(0), 15)
    for i in range(15):
        others = np.delete(maps, i, axis=0).mean(0)
        expected = 0.0 if i == 3 else np.corrcoef(maps[i], others)[0, 1]
        assert loo[i] == pytest.approx(expected, abs=1e-12)
    assert PairwiseCorrelation(4).value is None


def test_leave_one_out_correlations_of_degenerate_classes() -> None:
    """Others that are constant (a class of two, one map flat; a class whose other members are all the same flat
    map) give 0, like a constant map: exactly, although |s - x|^2 then comes from a difference of large numbers
    (whose rounding gave up to 1e-7 in 21 of 50 such classes before it was cut off)."""
    shaped = _maps(1).reshape(1, -1).astype(np.float64) * 1000.0
    pair = np.concatenate([shaped, np.full_like(shaped, 0.3)])
    assert leave_one_out_correlations(pair, pair.sum(0), 2) == pytest.approx([0.0, 0.0], abs=1e-12)
    rng = np.random.default_rng(1)
    for _ in range(20):
        shape = rng.random(shaped.shape) * rng.choice([1.0, 10.0, 1000.0])
        many = np.concatenate([shape, np.full((int(rng.integers(1, 40)), shaped.shape[1]), rng.random())])
        loo = leave_one_out_correlations(many, many.sum(0), len(many))
        assert loo[0] == 0.0
        assert loo[1:] == pytest.approx(np.zeros(len(many) - 1), abs=1e-12)  # a flat map: its centred copy is rounding
    assert leave_one_out_correlations(shaped, shaped[0], 1) == pytest.approx([0.0])


def test_similarity_matrix_is_pearson() -> None:
    a, b, c = _maps(3)
    matrix = similarity_matrix([a, b, c])
    np.testing.assert_allclose(matrix, np.corrcoef(np.stack([a, b, c]).reshape(3, -1)), atol=1e-6)


# ----------------------------------------------------------------------------- class accumulator


def _build(maps: np.ndarray, members: list[Member], batch: int = 7, **options) -> ClassAccumulator:
    accumulator = ClassAccumulator("covid", SHAPE, pca_size=8, n_components=4, bootstrap_replicates=40, **options)
    for start in range(0, len(maps), batch):
        accumulator.add(maps[start : start + batch], members[start : start + batch])
    return accumulator


def test_class_template_matches_direct_computation() -> None:
    maps, members = _maps(33), _members(33)
    template = _build(maps, members).finalize()
    normalised = normalise(maps).astype(np.float64)
    assert template.count == 33 and template.members == members
    np.testing.assert_allclose(template.mean, normalised.mean(0), atol=1e-12)
    np.testing.assert_allclose(template.std, normalised.std(0, ddof=1), atol=1e-12)
    reduced = downsample(normalised, (8, 8)).reshape(33, -1)
    true_values = np.linalg.eigvalsh(np.cov(reduced, rowvar=False))[::-1][:4]
    np.testing.assert_allclose(template.eigenvalues, true_values, rtol=1e-9)
    assert template.components.shape == (4, *SHAPE) and template.components_reduced.shape == (4, 8, 8)
    assert np.abs(template.median - np.median(normalised, axis=0)).max() <= 1.0 / 64
    template.compute_leave_one_out(maps[start : start + 10] for start in range(0, 33, 10))
    assert template.loo_method == LOO_EXACT
    np.testing.assert_allclose(template.loo_correlations, leave_one_out_correlations(normalised, normalised.sum(0), 33), atol=1e-12)
    with pytest.raises(ValueError, match="saw 10 maps"):
        template.compute_leave_one_out([maps[:10]])


def test_merge_and_state_round_trip_equal_the_union_build() -> None:
    maps, members = _maps(40, seed=7), _members(40)
    union = _build(maps, members).finalize()
    first = _build(maps[:17], members[:17])
    second = ClassAccumulator.from_state(_build(maps[17:], members[17:], batch=5).state())
    merged = ClassAccumulator.from_state(first.state()).merge(second).finalize()
    assert merged.count == union.count and merged.members == union.members
    for name in ("mean", "std", "median", "band_low", "band_high", "eigenvalues", "explained_variance_ratio", "components"):
        np.testing.assert_allclose(getattr(merged, name), getattr(union, name), rtol=1e-9, atol=1e-10, err_msg=name)
    assert merged.mean_pairwise_correlation == pytest.approx(union.mean_pairwise_correlation, abs=1e-12)


def test_same_inputs_give_bit_identical_templates() -> None:
    maps, members = _maps(20, seed=9), _members(20)
    one, two = _build(maps, members).finalize(), _build(maps, members).finalize()
    for name in ("mean", "std", "median", "components", "band_low", "band_high", "eigenvalues"):
        assert np.array_equal(getattr(one, name), getattr(two, name)), name


def test_accumulator_rejects_bad_input_and_incompatible_merges() -> None:
    accumulator = ClassAccumulator("covid", SHAPE)
    with pytest.raises(ValueError, match="expected maps of shape"):
        accumulator.add(np.zeros((2, 5, 5)), _members(2))
    with pytest.raises(ValueError, match="member records"):
        accumulator.add(np.zeros((2, *SHAPE)), _members(1))
    with pytest.raises(ValueError, match="non-finite"):
        accumulator.add(np.zeros((1, *SHAPE)), [Member("a.png", "", float("nan"), 0.5, "none")])
    with pytest.raises(HmtError, match="median needs a known value range"):
        ClassAccumulator("covid", SHAPE, normalisation="sum")
    with pytest.raises(HmtError, match="normalisation"):
        accumulator.merge(ClassAccumulator("covid", SHAPE, normalisation="zscore"))
    empty = ClassAccumulator("covid", SHAPE).finalize()
    assert empty.count == 0 and len(empty.components) == 0 and np.isfinite(empty.band_low).all()
