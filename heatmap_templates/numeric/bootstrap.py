"""A 95 % interval for any number computed over images: the percentile bootstrap, by patient when known.

One helper for every number hmt reports as evidence (deletion AOPC and its ratios, region drops, and the
evidence issue's accuracies, AUCs and energies): resample the images (or, with ``groups``, whole patients,
so that several images of one patient move together), recompute the number, and take the 2.5th and 97.5th
percentiles of the resampled values. Resamples where the number is undefined (NaN: an AUC without positives,
a ratio over a zero denominator) are dropped and counted, not silently replaced. Seeded: the same call gives
the same interval.

Reference: B. Efron and R. J. Tibshirani, *An Introduction to the Bootstrap*, Chapman & Hall, 1993, ch. 13
(percentile intervals) and the cluster bootstrap of A. C. Davison and D. V. Hinkley, *Bootstrap Methods and their
Application*, Cambridge, 1997, sec. 3.8; `scipy.stats.bootstrap`
(https://docs.scipy.org/doc/scipy/reference/generated/scipy.stats.bootstrap.html) computes the same percentile
interval without groups or dropped resamples (the tests compare the two).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from heatmap_templates.errors import HmtError

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A number, its percentile-bootstrap interval, the sample size it rests on and the resamples dropped."""

    estimate: float | None
    low: float | None
    high: float | None
    n: int  # rows (images) the estimate rests on
    groups: int  # independent units resampled (patients; equal to n without patient ids)
    dropped: int = 0  # resamples where the number was undefined
    resamples: int = DEFAULT_RESAMPLES

    @property
    def ci(self) -> list[float | None]:
        return [self.low, self.high]

    def to_dict(self) -> dict:
        """JSON form: ``value``, ``ci`` [low, high], ``n`` (and ``groups`` and ``dropped`` when they say something)."""
        record: dict = {"value": self.estimate, "ci": self.ci, "n": self.n}
        if self.groups != self.n:
            record["groups"] = self.groups
        if self.dropped:
            record["dropped_resamples"] = self.dropped
        return record


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def bootstrap_interval(statistic: Callable[..., float], *samples: np.ndarray | Sequence[float],
                       groups: Sequence | np.ndarray | None = None, resamples: int = DEFAULT_RESAMPLES,
                       confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> Interval:
    """The percentile-bootstrap interval of ``statistic(*samples)``.

    ``samples`` share their first axis (one row per image; paired: row i of each belongs to image i) and are
    resampled together; ``groups`` (one id per row, e.g. patient ids) resamples whole groups instead of rows.
    ``statistic`` returns a float, NaN where it is undefined (such resamples are dropped and counted; an estimate
    that is itself undefined gives no interval).
    """
    arrays = [np.asarray(sample) for sample in samples]
    if not arrays:
        raise HmtError("the bootstrap needs at least one sample")
    n = len(arrays[0])
    if any(len(array) != n for array in arrays):
        raise HmtError(f"bootstrap samples must have the same number of rows, got {[len(a) for a in arrays]}")
    if not 0.0 < confidence < 1.0:
        raise HmtError(f"the confidence level must lie in (0, 1), got {confidence}")
    if resamples < 1:
        raise HmtError(f"the bootstrap needs at least one resample, got {resamples}")
    members = _group_members(groups, n)
    if n == 0:
        return Interval(None, None, None, 0, 0, 0, resamples)
    estimate = float(statistic(*arrays))
    if not np.isfinite(estimate):
        return Interval(None, None, None, n, len(members), 0, resamples)
    if len(members) < 2:  # one image (or patient) has no spread to resample: no interval
        return Interval(estimate, None, None, n, len(members), 0, resamples)
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for r in range(resamples):
        chosen = rng.integers(0, len(members), len(members))
        rows = chosen if groups is None else np.concatenate([members[g] for g in chosen])
        values[r] = statistic(*(array[rows] for array in arrays))
    kept = values[np.isfinite(values)]
    if not len(kept):
        return Interval(estimate, None, None, n, len(members), resamples, resamples)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(kept, [tail, 100.0 - tail])
    return Interval(estimate, _finite(low), _finite(high), n, len(members), int(resamples - len(kept)), resamples)


def _group_members(groups: Sequence | np.ndarray | None, n: int) -> list[np.ndarray]:
    """Row indices of each group (each row its own group without ``groups``), groups in order of first appearance."""
    if groups is None:
        return [np.array([i]) for i in range(n)]
    ids = list(groups)
    if len(ids) != n:
        raise HmtError(f"bootstrap groups must give one id per row: {len(ids)} ids for {n} rows")
    rows: dict = {}
    for i, group in enumerate(ids):
        rows.setdefault(group, []).append(i)
    return [np.array(r) for r in rows.values()]


def mean_interval(values: np.ndarray | Sequence[float], *, groups: Sequence | None = None, seed: int = 0,
                  resamples: int = DEFAULT_RESAMPLES) -> Interval:
    """The mean of ``values`` (NaN rows left out) with its bootstrap interval."""
    values = np.asarray(values, np.float64)
    keep = np.isfinite(values)
    kept_groups = None if groups is None else [g for g, k in zip(groups, keep, strict=True) if k]
    return bootstrap_interval(np.mean, values[keep], groups=kept_groups, seed=seed, resamples=resamples)


def ratio_of_means_interval(numerator: np.ndarray | Sequence[float], denominator: np.ndarray | Sequence[float], *,
                            groups: Sequence | None = None, seed: int = 0, resamples: int = DEFAULT_RESAMPLES) -> Interval:
    """mean(numerator) / mean(denominator) over the rows where both are known (paired), with its interval; resamples
    whose denominator mean is not positive are undefined (dropped and counted)."""
    top, bottom = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    keep = np.isfinite(top) & np.isfinite(bottom)
    kept_groups = None if groups is None else [g for g, k in zip(groups, keep, strict=True) if k]

    def ratio(a: np.ndarray, b: np.ndarray) -> float:
        below = float(np.mean(b))
        return float(np.mean(a)) / below if below > 0 else float("nan")

    return bootstrap_interval(ratio, top[keep], bottom[keep], groups=kept_groups, seed=seed, resamples=resamples)
