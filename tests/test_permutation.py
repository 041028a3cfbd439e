"""Pixel-wise permutation inference against SciPy and brute-force enumeration (issue 28)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from heatmap_templates.errors import HmtError
from heatmap_templates.numeric.permutation import benjamini_hochberg, cohens_d, permutation_test, tfce


def _groups(seed: int, n_a: int, n_b: int, pixels: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, (n_a, pixels)) * rng.uniform(0.5, 2.0, pixels)
    b = rng.normal(0.0, 1.0, (n_b, pixels))
    a[:, :2] += shift
    return a.astype(np.float32), b.astype(np.float32)


def test_welch_and_paired_t_equal_scipys() -> None:
    a, b = _groups(0, 7, 9, 6)
    result = permutation_test(a, b, (2, 3), permutations=10)
    expected = stats.ttest_ind(a.astype(np.float64), b.astype(np.float64), equal_var=False).statistic
    np.testing.assert_allclose(result.t.ravel(), expected, rtol=1e-5)
    differences = a[:6] - b[:6]
    paired = permutation_test(differences, None, (2, 3), paired=True, permutations=10)
    np.testing.assert_allclose(paired.t.ravel(), stats.ttest_1samp(differences.astype(np.float64), 0.0).statistic, rtol=1e-5)


def _brute_max_t(a: np.ndarray, b: np.ndarray, tail: str) -> np.ndarray:
    """Max-T p-values by enumerating every relabelling with SciPy's Welch t."""
    data = np.concatenate([a, b]).astype(np.float64)
    transform = {"two-sided": np.abs, "greater": lambda t: t, "less": lambda t: -t}[tail]
    observed = transform(stats.ttest_ind(a.astype(np.float64), b.astype(np.float64), equal_var=False).statistic)
    maxima = []
    for chosen in itertools.combinations(range(len(data)), len(a)):
        mask = np.isin(np.arange(len(data)), chosen)
        maxima.append(transform(stats.ttest_ind(data[mask], data[~mask], equal_var=False).statistic).max())
    maxima = np.array(maxima)
    return np.array([(maxima >= value - 1e-9).mean() for value in observed])


@pytest.mark.parametrize("tail", ["two-sided", "greater", "less"])
def test_max_t_p_values_equal_a_brute_force_enumeration(tail: str) -> None:
    a, b = _groups(1, 3, 4, 5, shift=1.5)
    result = permutation_test(a, b, (1, 5), tail=tail, permutations=100)  # 35 relabellings: all enumerated
    assert result.exact and result.permutations == 34
    np.testing.assert_allclose(result.p.ravel(), _brute_max_t(a, b, tail), atol=1e-12)


def test_paired_sign_flips_equal_a_brute_force_enumeration_and_patients_flip_together() -> None:
    differences = np.random.default_rng(2).normal(0.4, 1.0, (5, 4)).astype(np.float32)
    result = permutation_test(differences, None, (2, 2), paired=True, permutations=100)
    maxima = []
    for signs in itertools.product((1, -1), repeat=5):
        maxima.append(np.abs(stats.ttest_1samp(differences * np.array(signs)[:, None], 0.0).statistic).max())
    observed = np.abs(stats.ttest_1samp(differences.astype(np.float64), 0.0).statistic)
    expected = [(np.array(maxima) >= value - 1e-9).mean() for value in observed]
    assert result.exact and result.permutations == 31
    np.testing.assert_allclose(result.p.ravel(), expected, atol=1e-6)
    by_patient = permutation_test(differences, None, (2, 2), paired=True, units=["a", "a", "b", "c", "c"], permutations=100)
    assert by_patient.permutations == 7  # three patients: 2^3 sign patterns


def test_whole_patients_move_together_between_groups() -> None:
    a, b = _groups(3, 4, 4, 3, shift=1.0)
    units = ["p1", "p1", "p2", "p3", "p4", "p5", "p5", "p6"]  # 3 patients in group a, 3 in b
    result = permutation_test(a, b, (1, 3), units=units, permutations=100)
    assert result.exact and result.permutations == 19  # C(6, 3) - 1
    data = np.concatenate([a, b]).astype(np.float64)
    unit_index = np.array([0, 0, 1, 2, 3, 4, 4, 5])
    observed = np.abs(stats.ttest_ind(a.astype(np.float64), b.astype(np.float64), equal_var=False).statistic)
    maxima = []
    for chosen in itertools.combinations(range(6), 3):
        mask = np.isin(unit_index, chosen)
        maxima.append(np.abs(stats.ttest_ind(data[mask], data[~mask], equal_var=False).statistic).max())
    np.testing.assert_allclose(result.p.ravel(), [(np.array(maxima) >= v - 1e-9).mean() for v in observed], atol=1e-12)


def test_tfce_equals_a_hand_computed_case() -> None:
    """Heights h_k = k * dh, dh = 2 / 100: pixel (0, 0) (value 1) lies in the 2-pixel cluster {(0, 0), (0, 1)} for
    h <= 1; pixel (0, 1) (value 2) also in the 1-pixel cluster above 1; the diagonal pixel (1, 2) is not connected
    (4-connectivity) and forms its own 1-pixel cluster up to its value 0.5."""
    values = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.5]])
    dh = 2.0 / 100
    heights = dh * np.arange(1, 101)
    low = heights[heights <= 1.0 + 1e-12]
    high = heights[heights > 1.0 + 1e-12]
    expected = np.zeros((2, 3))
    expected[0, 0] = np.sum(2 * low ** 2 * dh)
    expected[0, 1] = np.sum(2 * low ** 2 * dh) + np.sum(1 * high ** 2 * dh)
    expected[1, 2] = np.sum(1 * heights[heights <= 0.5 + 1e-12] ** 2 * dh)
    np.testing.assert_allclose(tfce(values), expected, rtol=1e-9)
    assert not tfce(-values).any()


def test_fdr_equals_scipy_and_cohens_d_the_textbook_formula() -> None:
    p = np.random.default_rng(4).uniform(0, 0.2, (4, 5))
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p.ravel()).reshape(4, 5))
    a, b = np.array([[1.0], [2.0], [3.0]]), np.array([[2.0], [4.0], [6.0], [8.0]])
    pooled = np.sqrt((2 * 1.0 + 3 * np.var([2, 4, 6, 8], ddof=1)) / 5)
    assert cohens_d(a, b)[0] == pytest.approx((2.0 - 5.0) / pooled)
    assert cohens_d(np.array([[1.0], [3.0]]), None)[0] == pytest.approx(2.0 / np.sqrt(2.0))


@pytest.mark.parametrize("correction", ["maxt", "tfce", "fdr"])
def test_a_planted_difference_is_found_and_a_null_is_not(correction: str) -> None:
    rng = np.random.default_rng(5)
    shape = (8, 8)
    planted = np.zeros(shape)
    planted[2:5, 3:6] = 1.0
    a = (rng.normal(0, 1, (30, 64)) + 1.2 * planted.ravel()).astype(np.float32)
    b = rng.normal(0, 1, (30, 64)).astype(np.float32)
    found = permutation_test(a, b, shape, correction=correction, permutations=400, seed=1)
    significant = found.p < 0.05
    assert not found.exact and found.permutations == 400 and found.p.min() >= 1 / 401
    near = np.zeros(shape, bool)
    near[1:6, 2:7] = True  # the planted square and one pixel around it (TFCE lends support to a cluster's rim)
    assert significant[planted > 0].mean() >= 0.6
    if correction == "fdr":  # controls the share of false discoveries, not their presence
        assert significant[~near].sum() <= 0.25 * significant.sum()
    else:  # family-wise: no pixel away from the planted difference
        assert not significant[~near].any()
    null = permutation_test(b[:15], b[15:], shape, correction=correction, permutations=400, seed=2)
    assert not (null.p < 0.05).any()
    assert (found.effect[planted > 0] > 0.6).all()


def test_bad_calls_are_refused_with_one_line() -> None:
    a, b = _groups(6, 3, 3, 4)
    with pytest.raises(HmtError, match="at least 2 maps"):
        permutation_test(a[:1], b, (2, 2))
    with pytest.raises(HmtError, match="tail"):
        permutation_test(a, b, (2, 2), tail="sideways")
    with pytest.raises(HmtError, match="correction"):
        permutation_test(a, b, (2, 2), correction="bonferroni")
    with pytest.raises(HmtError, match="one unit"):
        permutation_test(a, b, (2, 2), units=["x"])


def test_a_patient_in_both_groups_is_refused() -> None:
    """Moving patients whole cannot reach a split that puts one patient in both groups: refused, not mis-tested."""
    a, b = _groups(7, 3, 3, 4)
    with pytest.raises(HmtError, match="both groups"):
        permutation_test(a, b, (2, 2), units=["p1", "p2", "p3", "p3", "p4", "p5"])


def _brute_interval_max_t(a: np.ndarray, b: np.ndarray, margin: float, tail: str) -> np.ndarray:
    """TREAT max-T p-values by brute force: every relabelling of (a - margin, b) for ``greater``, of (a + margin, b)
    for ``less``; two-sided: twice the smaller of the two sides' p (Bonferroni), at most 1."""
    def side(shift: float, sign: int) -> np.ndarray:
        data = np.concatenate([a.astype(np.float64) - shift, b.astype(np.float64)])
        observed = sign * stats.ttest_ind(data[:len(a)], data[len(a):], equal_var=False).statistic
        maxima = []
        for chosen in itertools.combinations(range(len(data)), len(a)):
            mask = np.isin(np.arange(len(data)), chosen)
            maxima.append((sign * stats.ttest_ind(data[mask], data[~mask], equal_var=False).statistic).max())
        return np.array([(np.array(maxima) >= value - 1e-9).mean() for value in observed])
    if tail == "greater":
        return side(margin, 1)
    if tail == "less":
        return side(-margin, -1)
    return np.minimum(1.0, 2.0 * np.minimum(side(margin, 1), side(-margin, -1)))


@pytest.mark.parametrize("tail", ["two-sided", "greater", "less"])
def test_an_interval_null_equals_a_brute_force_enumeration_of_the_shifted_groups(tail: str) -> None:
    a, b = _groups(7, 3, 4, 5, shift=2.5)
    a[:, 2:4] -= 5.0  # some pixels far below b, for the lower side
    result = permutation_test(a, b, (1, 5), tail=tail, permutations=100, margin=0.75)
    np.testing.assert_allclose(result.p.ravel(), _brute_interval_max_t(a, b, 0.75, tail), atol=1e-12)
    plain = stats.ttest_ind(a.astype(np.float64), b.astype(np.float64), equal_var=False).statistic
    np.testing.assert_allclose(result.t.ravel(), plain, rtol=1e-5)  # the t-map and d stay the unshifted data's
    np.testing.assert_allclose(result.effect, cohens_d(a, b).reshape(1, 5), rtol=1e-6)


@pytest.mark.parametrize("correction", ["maxt", "tfce"])
def test_an_interval_null_keeps_a_large_difference_and_drops_a_small_broad_one(correction: str) -> None:
    """A small difference everywhere (0.15) and a large one in a square (0.6), 150 maps a group: 'not equal' flags the
    whole frame; 'more than 0.3' only the square."""
    rng = np.random.default_rng(8)
    shape = (8, 8)
    planted = np.zeros(shape)
    planted[2:5, 3:6] = 1.0
    a = (rng.normal(0, 0.2, (150, 64)) + 0.15 + 0.45 * planted.ravel()).astype(np.float32)
    b = rng.normal(0, 0.2, (150, 64)).astype(np.float32)
    everywhere = permutation_test(a, b, shape, tail="greater", correction=correction, permutations=300, seed=1)
    assert (everywhere.p < 0.05).mean() > 0.9
    beyond = permutation_test(a, b, shape, tail="greater", correction=correction, permutations=300, seed=1, margin=0.3)
    significant = beyond.p < 0.05
    near = np.zeros(shape, bool)
    near[1:6, 2:7] = True
    assert significant[planted > 0].all() and not significant[~near].any()
    boundary = permutation_test(b + 0.3, b[::-1].copy(), shape, tail="greater", correction=correction, permutations=300,
                                seed=2, margin=0.3)  # a difference of exactly the margin is not beyond it
    assert not (boundary.p < 0.05).any()


def test_a_negative_minimum_difference_is_refused() -> None:
    a, b = _groups(9, 3, 3, 4)
    with pytest.raises(HmtError, match="min_difference.* must be 0 or more"):
        permutation_test(a, b, (2, 2), margin=-0.1)
