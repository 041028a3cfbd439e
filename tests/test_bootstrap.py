"""The shared bootstrap helper against SciPy's bootstrap, hand-computed cases, patients resampled whole."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from heatmap_templates.errors import HmtError
from heatmap_templates.numeric.bootstrap import bootstrap_interval, mean_interval, ratio_of_means_interval


def test_the_percentile_interval_of_a_mean_matches_scipy() -> None:
    values = np.random.default_rng(0).normal(3.0, 2.0, 60)
    ours = mean_interval(values, resamples=20000, seed=1)
    theirs = stats.bootstrap((values,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                             rng=np.random.default_rng(2)).confidence_interval
    assert ours.estimate == pytest.approx(values.mean())
    # Two Monte Carlo estimates of the same percentiles: equal within their simulation error (about 1 % of the sd here)
    assert ours.low == pytest.approx(theirs.low, abs=0.03) and ours.high == pytest.approx(theirs.high, abs=0.03)
    assert ours.n == 60 and ours.dropped == 0 and ours.to_dict() == {"value": ours.estimate, "ci": [ours.low, ours.high], "n": 60}


def test_the_interval_is_exact_on_cases_computed_by_hand() -> None:
    constant = mean_interval([0.25] * 9)
    assert (constant.estimate, constant.low, constant.high) == (0.25, 0.25, 0.25)
    # Two values: a resample's mean is 0 (both rows 0), 0.5 or 1; P(mean = 0) = P(mean = 1) = 1/4 > 2.5 %
    two = mean_interval([0.0, 1.0], resamples=4000)
    assert (two.low, two.high) == (0.0, 1.0)


def test_patients_move_together() -> None:
    """With groups, a resample holds both images of a patient or neither: its mean over [1, 1, 3, 3] is 1, 2 or 3 and
    never 1.5 or 2.5, which row resampling gives."""
    seen: list[float] = []

    def recorded_mean(values: np.ndarray) -> float:
        seen.append(float(values.mean()))
        return float(values.mean())

    values = np.array([1.0, 1.0, 3.0, 3.0])
    grouped = bootstrap_interval(recorded_mean, values, groups=["a", "a", "b", "b"], resamples=500)
    assert set(seen) <= {1.0, 2.0, 3.0} and grouped.groups == 2 and grouped.n == 4
    assert grouped.to_dict()["groups"] == 2
    seen.clear()
    bootstrap_interval(recorded_mean, values, resamples=500)
    assert {1.5, 2.5} <= set(seen)


def test_undefined_resamples_are_dropped_and_counted() -> None:
    """A statistic undefined on some resamples (an AUC-like number without positives) keeps the defined ones."""
    labels = np.array([1, 0, 0, 0, 0, 0])

    def share_of_positives_defined(rows: np.ndarray) -> float:
        return float(rows.mean()) if rows.any() else float("nan")

    result = bootstrap_interval(share_of_positives_defined, labels, resamples=1000, seed=3)
    # P(no positive in 6 draws) = (5/6)^6 = 0.335
    assert 0.28 < result.dropped / 1000 < 0.39 and result.low is not None and result.low >= 1 / 6
    assert result.to_dict()["dropped_resamples"] == result.dropped


def test_same_seed_same_interval_and_bad_calls_refused() -> None:
    values = np.random.default_rng(5).random(30)
    assert mean_interval(values, seed=7) == mean_interval(values, seed=7)
    assert mean_interval(values, seed=7) != mean_interval(values, seed=8)
    with pytest.raises(HmtError, match="same number of rows"):
        bootstrap_interval(lambda a, b: 0.0, np.zeros(3), np.zeros(4))
    with pytest.raises(HmtError, match="one id per row"):
        bootstrap_interval(np.mean, np.zeros(3), groups=["a"])
    empty = mean_interval([])
    assert empty.estimate is None and empty.n == 0


def test_ratio_of_means_pairs_rows_and_leaves_out_unknown_ones() -> None:
    top = np.array([2.0, 4.0, np.nan, 6.0])
    bottom = np.array([1.0, 1.0, 5.0, 2.0])
    ratio = ratio_of_means_interval(top, bottom, resamples=200)
    assert ratio.estimate == pytest.approx(12.0 / 4.0) and ratio.n == 3
    assert 2.0 <= ratio.low <= ratio.estimate <= ratio.high <= 4.0  # every resample's ratio lies between 2 and 4
    assert ratio_of_means_interval([1.0], [0.0]).estimate is None  # undefined: no interval
