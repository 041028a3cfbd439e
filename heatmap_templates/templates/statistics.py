"""Per-class statistics of a template: streaming, exactly mergeable, each a small object in a registry.

Following captum's ``Stat``/``Summarizer`` shape, a template statistic (:class:`TemplateStatistic`)
has ``update`` (a batch of normalised maps and their members' keys), ``merge`` (another
accumulator's, built over other members), ``results`` (the fields it fills in a finished
template) and ``arrays``/``restore`` (its exact state, to and from the templates file). The
class accumulator (:mod:`heatmap_templates.templates.accumulator`) loops over :data:`STATISTICS`.

The numerical building blocks, all float64 and merged exactly (up to rounding):

- mean and variance per pixel: Welford within a batch, Chan et al. between batches and files;
- eigen-heatmaps: the scatter (co-moment) matrix of the maps area-downsampled to
  ``pca_size`` x ``pca_size``, merged with Chan's co-moment formula and eigendecomposed at the end;
- optional per-pixel median: per-pixel histograms over a fixed value range (approximate, see
  :class:`PixelHistogram`);
- bootstrap band: Poisson bootstrap, member weights drawn from an RNG seeded by the member's
  image hash, so a merge equals the build over the union;
- mean pairwise correlation: the running sum of standardised maps.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from heatmap_templates.numeric.correlation import standardise_rows
from heatmap_templates.numeric.resample import downsample, upsample
from heatmap_templates.registry import Registry


class RunningStats:
    """Count, mean and sum of squared deviations (M2) per element; Welford per batch, Chan to merge."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.count = 0
        self.mean = np.zeros(shape, dtype=np.float64)
        self.m2 = np.zeros(shape, dtype=np.float64)

    def update(self, batch: np.ndarray) -> None:
        """Add a batch of shape (N, *shape)."""
        values = np.asarray(batch, dtype=np.float64)
        if values.shape[1:] != self.mean.shape:
            raise ValueError(f"batch elements have shape {values.shape[1:]}, expected {self.mean.shape}")
        if len(values) == 0:
            return
        batch_mean = values.mean(axis=0)
        self._combine(len(values), batch_mean, ((values - batch_mean) ** 2).sum(axis=0))

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold `other` into this one (Chan et al.); returns self."""
        if other.mean.shape != self.mean.shape:
            raise ValueError(f"cannot merge statistics of shape {other.mean.shape} into {self.mean.shape}")
        if other.count:
            self._combine(other.count, other.mean, other.m2)
        return self

    def _combine(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        """Sample variance (ddof=1); zeros for fewer than two samples."""
        if self.count < 2:
            return np.zeros_like(self.m2)
        return np.maximum(self.m2, 0.0) / (self.count - 1)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.variance)


class RunningCovariance:
    """Mean vector and co-moment (scatter) matrix of d-dimensional samples, mergeable with Chan's formula."""

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.comoment = np.zeros((dim, dim), dtype=np.float64)

    def update(self, batch: np.ndarray) -> None:
        """Add samples of shape (N, d)."""
        values = np.asarray(batch, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.mean):
            raise ValueError(f"expected samples of shape (N, {len(self.mean)}), got {values.shape}")
        if len(values) == 0:
            return
        batch_mean = values.mean(axis=0)
        centred = values - batch_mean
        self._combine(len(values), batch_mean, centred.T @ centred)

    def merge(self, other: RunningCovariance) -> RunningCovariance:
        if other.mean.shape != self.mean.shape:
            raise ValueError(f"cannot merge covariances of dimension {len(other.mean)} into {len(self.mean)}")
        if other.count:
            self._combine(other.count, other.mean, other.comoment)
        return self

    def _combine(self, count: int, mean: np.ndarray, comoment: np.ndarray) -> None:
        total = self.count + count
        delta = mean - self.mean
        self.comoment = self.comoment + comoment + np.outer(delta, delta) * (self.count * count / total)
        self.mean = self.mean + delta * (count / total)
        self.count = total

    @property
    def covariance(self) -> np.ndarray:
        """Sample covariance (ddof=1); zeros for fewer than two samples."""
        if self.count < 2:
            return np.zeros_like(self.comoment)
        return self.comoment / (self.count - 1)


def principal_components(covariance: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k eigenpairs of a covariance matrix: (eigenvalues (k,), components (k, d), explained ratio (k,)).

    Sign convention: each component's largest-magnitude entry is positive, so results are
    deterministic. Rounding-level negative eigenvalues are clipped to 0.
    """
    symmetric = (covariance + covariance.T) / 2.0
    dim = symmetric.shape[0]
    k = min(k, dim)
    if k == 0:
        return np.zeros(0), np.zeros((0, dim)), np.zeros(0)
    values, vectors = _top_eigenpairs(symmetric, k)
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    components = vectors[:, order].T
    largest = components[np.arange(len(components)), np.argmax(np.abs(components), axis=1)]
    components = components * np.where(largest < 0, -1.0, 1.0)[:, None]
    total = float(np.clip(np.trace(symmetric), 0.0, None))
    ratio = values / total if total > 0 else np.zeros_like(values)
    return values, components, ratio


def _top_eigenpairs(symmetric: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenpairs of a symmetric matrix, in any order.

    Lanczos (ARPACK, from a fixed random start vector, to machine precision) needs only products with the matrix: 6x
    faster than LAPACK's tridiagonal reduction for 8 of 1024 (16 vs 100 ms; eigenvalues within 1e-11). LAPACK
    where Lanczos does not apply (k close to the dimension, a zero matrix) or does not converge.
    """
    dim = symmetric.shape[0]
    if 4 * k < dim and np.any(symmetric):
        try:
            return scipy.sparse.linalg.eigsh(  # type: ignore[call-overload]  # scipy-stubs match no overload for v0 here
                np.asarray(symmetric, dtype=np.float64), k=k, which="LA",
                v0=np.random.default_rng(0).standard_normal(dim), tol=0.0)
        except scipy.sparse.linalg.ArpackError:
            pass
    return scipy.linalg.eigh(symmetric, subset_by_index=(dim - k, dim - 1))


class PixelHistogram:
    """Per-pixel value histograms over [low, high] for an approximate, mergeable per-pixel median.

    The median is read from the cumulative histogram with linear interpolation inside the bin,
    so its error is at most one bin width ((high - low) / bins; 1/64 for minmax maps with the
    defaults). Values outside [low, high] are counted in the end bins.
    """

    def __init__(self, shape: tuple[int, int], bins: int, value_range: tuple[float, float]) -> None:
        if bins < 1 or not value_range[1] > value_range[0]:
            raise ValueError(f"bad histogram: {bins} bins over {value_range}")
        self.shape = tuple(shape)
        self.bins = bins
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.counts = np.zeros((int(np.prod(shape)), bins), dtype=np.uint32)

    def update(self, maps: np.ndarray) -> None:
        """Add maps of shape (N, H, W)."""
        values = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
        low, high = self.value_range
        indices = np.clip(((values - low) / (high - low) * self.bins).astype(np.int64), 0, self.bins - 1)
        flat_counts = self.counts.reshape(-1)  # a view: each map adds one count per pixel, so no index repeats
        pixel_starts = np.arange(values.shape[1]) * self.bins
        for row in indices:
            flat_counts[pixel_starts + row] += 1

    def merge(self, other: PixelHistogram) -> PixelHistogram:
        if (other.shape, other.bins, other.value_range) != (self.shape, self.bins, self.value_range):
            raise ValueError("cannot merge histograms with different shapes, bins or ranges")
        self.counts += other.counts
        return self

    def median(self) -> np.ndarray:
        """Approximate per-pixel median (H, W); zeros while empty."""
        total = int(self.counts[0].sum()) if len(self.counts) else 0
        if total == 0:
            return np.zeros(self.shape)
        cumulative = np.cumsum(self.counts, axis=1, dtype=np.int64)
        half = total / 2.0
        bin_index = np.argmax(cumulative >= half, axis=1)
        rows = np.arange(len(cumulative))
        before = np.where(bin_index > 0, cumulative[rows, np.maximum(bin_index - 1, 0)], 0)
        in_bin = self.counts[rows, bin_index].astype(np.float64)
        fraction = np.divide(half - before, in_bin, out=np.zeros_like(in_bin), where=in_bin > 0)
        low, high = self.value_range
        width = (high - low) / self.bins
        return (low + (bin_index + fraction) * width).reshape(self.shape)


def bootstrap_weights(member_key: str, replicates: int) -> np.ndarray:
    """Poisson(1) weights of one member in replicates 0..B-1, from an RNG seeded by the member key.

    Weight b is the b-th draw of a generator seeded with the SHA-256 of the key (the image
    hash), so it depends only on (member, b): the same member gets the same weights in every
    build, which is what makes a merge equal to the build over the union.
    """
    seed = int.from_bytes(hashlib.sha256(member_key.encode("utf-8")).digest()[:16], "big")
    return np.random.default_rng(seed).poisson(1.0, size=replicates).astype(np.float64)


class BootstrapBand:
    """Streaming Poisson bootstrap of the template mean: per-replicate weighted sums and weights."""

    def __init__(self, shape: tuple[int, int], replicates: int) -> None:
        self.shape = tuple(shape)
        self.replicates = replicates
        self.sums = np.zeros((replicates, int(np.prod(shape))), dtype=np.float64)
        self.weights = np.zeros(replicates, dtype=np.float64)

    def update(self, maps: np.ndarray, member_keys: Sequence[str]) -> None:
        values = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
        weights = np.stack([bootstrap_weights(key, self.replicates) for key in member_keys]) if len(member_keys) else np.zeros((0, self.replicates))
        if len(values) and self.replicates:
            # sums += weights.T @ values, accumulated by BLAS in place: a few maps against B x H x W sums is bound by
            # memory, and the product's temporary (as large as the sums, 40 MB at 224 px) tripled the traffic.
            # sums.T is the Fortran-ordered (pixels, B) matrix that GEMM updates without a copy (sums stay C-ordered).
            self.sums = scipy.linalg.blas.dgemm(1.0, values.T, weights, beta=1.0, c=self.sums.T, overwrite_c=True).T
        self.weights += weights.sum(axis=0)

    def merge(self, other: BootstrapBand) -> BootstrapBand:
        if (other.shape, other.replicates) != (self.shape, self.replicates):
            raise ValueError("cannot merge bootstrap bands with different shapes or replicate counts")
        self.sums += other.sums
        self.weights += other.weights
        return self

    def band(self, low: float = 2.5, high: float = 97.5) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel percentiles over replicate means (replicates that drew no member are skipped)."""
        used = self.weights > 0
        if not used.any():
            zeros = np.zeros(self.shape)
            return zeros, zeros.copy()
        # Pixels as rows: the percentiles' partitions then run over contiguous memory (a third faster).
        means = np.ascontiguousarray((self.sums[used] / self.weights[used, None]).T)
        lo, hi = np.percentile(means, [low, high], axis=1)
        return lo.reshape(self.shape), hi.reshape(self.shape)


class PairwiseCorrelation:
    """Mean pairwise Pearson correlation of all members from the running sum of standardised maps.

    With z_i the standardised maps and S their sum, sum over i != j of z_i . z_j is
    ||S||^2 - sum ||z_i||^2; dividing by n (n - 1) gives the mean. Constant maps have z = 0
    and so count as correlation 0 with every other map.
    """

    def __init__(self, size: int) -> None:
        self.count = 0
        self.total = np.zeros(size, dtype=np.float64)
        self.squared_norms = 0.0

    def update(self, maps: np.ndarray) -> None:
        z = standardise_rows(np.asarray(maps, dtype=np.float64).reshape(len(maps), -1))
        self.total += z.sum(axis=0)
        self.squared_norms += float((z**2).sum())
        self.count += len(z)

    def merge(self, other: PairwiseCorrelation) -> PairwiseCorrelation:
        self.total += other.total
        self.squared_norms += other.squared_norms
        self.count += other.count
        return self

    @property
    def value(self) -> float | None:
        """The mean pairwise correlation, or None with fewer than two members."""
        if self.count < 2:
            return None
        pairs = float(self.total @ self.total) - self.squared_norms
        return float(np.clip(pairs / (self.count * (self.count - 1)), -1.0, 1.0))


# --------------------------------------------------------------------------- template statistics


@dataclass(frozen=True)
class StatisticsConfig:
    """What a class accumulator's statistics are configured with (recorded in the templates file)."""

    shape: tuple[int, int]
    pca_size: int
    n_components: int
    bootstrap_replicates: int
    median: bool
    median_bins: int
    median_range: tuple[float, float] | None

    @property
    def reduced_shape(self) -> tuple[int, int]:
        return min(self.pca_size, self.shape[0]), min(self.pca_size, self.shape[1])


class TemplateStatistic(Protocol):
    """One per-class statistic (see the module docstring); ``arrays`` keys are its datasets in the file."""

    def update(self, maps: np.ndarray, keys: Sequence[str]) -> None: ...

    def merge(self, other: Any) -> None: ...

    def results(self) -> dict[str, Any]: ...

    def arrays(self) -> dict[str, np.ndarray]: ...

    def scalars(self) -> dict[str, float]: ...

    def restore(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any], count: int) -> None: ...


StatisticFactory = Callable[[StatisticsConfig], "TemplateStatistic | None"]
STATISTICS: Registry[StatisticFactory] = Registry("template statistic", parameter="statistic")


class MeanStd:
    """Per-pixel mean and standard deviation (the template and its spread).

    Reference: Welford (1962), https://doi.org/10.1080/00401706.1962.10490022, per batch; Chan, Golub & LeVeque
    (1979), "Updating formulae and a pairwise algorithm for computing sample variances", to merge.
    """

    def __init__(self, config: StatisticsConfig) -> None:
        self.stats = RunningStats(config.shape)

    def update(self, maps: np.ndarray, keys: Sequence[str]) -> None:
        self.stats.update(maps)

    def merge(self, other: MeanStd) -> None:
        self.stats.merge(other.stats)

    def results(self) -> dict[str, Any]:
        return {"mean": self.stats.mean.copy(), "std": self.stats.std}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"stats_mean": self.stats.mean.copy(), "stats_m2": self.stats.m2.copy()}

    def scalars(self) -> dict[str, float]:
        return {}

    def restore(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any], count: int) -> None:
        self.stats.count = count
        self.stats.mean = np.array(arrays["stats_mean"], dtype=np.float64)
        self.stats.m2 = np.array(arrays["stats_m2"], dtype=np.float64)


class EigenHeatmaps:
    """Eigen-heatmaps: principal components of the area-downsampled maps (the papers' eigenfaces).

    Reference: Turk & Pentland (1991), "Eigenfaces for recognition", https://doi.org/10.1162/jocn.1991.3.1.71.
    """

    def __init__(self, config: StatisticsConfig) -> None:
        self.shape = config.shape
        self.reduced_shape = config.reduced_shape
        self.n_components = config.n_components
        self.covariance = RunningCovariance(self.reduced_shape[0] * self.reduced_shape[1])

    def update(self, maps: np.ndarray, keys: Sequence[str]) -> None:
        self.covariance.update(downsample(maps, self.reduced_shape).reshape(len(maps), -1))

    def merge(self, other: EigenHeatmaps) -> None:
        self.covariance.merge(other.covariance)

    def results(self) -> dict[str, Any]:
        k = min(self.n_components, self.covariance.mean.size)
        eigenvalues, reduced, ratio = principal_components(self.covariance.covariance, k)
        # Components of (numerically) zero variance span an arbitrary null space: drop them.
        meaningful = eigenvalues > 1e-10 * (eigenvalues[0] if len(eigenvalues) else 0.0)
        eigenvalues, reduced, ratio = eigenvalues[meaningful], reduced[meaningful], ratio[meaningful]
        reduced = reduced.reshape(len(reduced), *self.reduced_shape)
        return {"components": upsample(reduced, self.shape), "components_reduced": reduced,
                "eigenvalues": eigenvalues, "explained_variance_ratio": ratio}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"pca_mean": self.covariance.mean.copy(), "pca_comoment": self.covariance.comoment.copy()}

    def scalars(self) -> dict[str, float]:
        return {}

    def restore(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any], count: int) -> None:
        self.covariance.count = count
        self.covariance.mean = np.array(arrays["pca_mean"], dtype=np.float64)
        self.covariance.comoment = np.array(arrays["pca_comoment"], dtype=np.float64)


class PixelMedian:
    """Approximate per-pixel median from mergeable per-pixel histograms (only for bounded normalisations).

    Reference: Tibshirani (2008), "Fast computation of the median by successive binning", https://arxiv.org/abs/0806.3301.
    """

    def __init__(self, config: StatisticsConfig) -> None:
        assert config.median_range is not None  # the factory creates it only with a range
        self.histogram = PixelHistogram(config.shape, config.median_bins, config.median_range)

    def update(self, maps: np.ndarray, keys: Sequence[str]) -> None:
        self.histogram.update(maps)

    def merge(self, other: PixelMedian) -> None:
        self.histogram.merge(other.histogram)

    def results(self) -> dict[str, Any]:
        return {"median": self.histogram.median()}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"median_histogram": self.histogram.counts.copy()}

    def scalars(self) -> dict[str, float]:
        return {}

    def restore(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any], count: int) -> None:
        self.histogram.counts = np.array(arrays["median_histogram"], dtype=np.uint32)


class Band:
    """Bootstrap confidence band of the template mean (2.5th and 97.5th percentiles per pixel).

    Reference: Hanley & MacGibbon (2006), "Creating non-parametric bootstrap samples using Poisson frequencies",
    https://doi.org/10.1016/j.cmpb.2006.04.006; Efron & Tibshirani (1993), An Introduction to the Bootstrap.
    """

    def __init__(self, config: StatisticsConfig) -> None:
        self.bootstrap = BootstrapBand(config.shape, config.bootstrap_replicates)

    def update(self, maps: np.ndarray, keys: Sequence[str]) -> None:
        self.bootstrap.update(maps, keys)

    def merge(self, other: Band) -> None:
        self.bootstrap.merge(other.bootstrap)

    def results(self) -> dict[str, Any]:
        low, high = self.bootstrap.band()
        return {"band_low": low, "band_high": high}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"bootstrap_sums": self.bootstrap.sums.copy(), "bootstrap_weights": self.bootstrap.weights.copy()}

    def scalars(self) -> dict[str, float]:
        return {}

    def restore(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any], count: int) -> None:
        self.bootstrap.sums = np.array(arrays["bootstrap_sums"], dtype=np.float64)
        self.bootstrap.weights = np.array(arrays["bootstrap_weights"], dtype=np.float64)


class Consistency:
    """Mean pairwise Pearson correlation of the members' maps.

    Reference: Lucas et al. (2020), https://doi.org/10.1109/BIBE50027.2020.00077 (templates consistent within a
    class); Pearson (1895), https://doi.org/10.1098/rspl.1895.0041.
    """

    def __init__(self, config: StatisticsConfig) -> None:
        self.pairwise = PairwiseCorrelation(config.shape[0] * config.shape[1])

    def update(self, maps: np.ndarray, keys: Sequence[str]) -> None:
        self.pairwise.update(maps)

    def merge(self, other: Consistency) -> None:
        self.pairwise.merge(other.pairwise)

    def results(self) -> dict[str, Any]:
        return {"mean_pairwise_correlation": self.pairwise.value}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"pairwise_total": self.pairwise.total.copy()}

    def scalars(self) -> dict[str, float]:
        return {"pairwise_squared_norms": self.pairwise.squared_norms}

    def restore(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any], count: int) -> None:
        self.pairwise.count = count
        self.pairwise.total = np.array(arrays["pairwise_total"], dtype=np.float64)
        self.pairwise.squared_norms = float(scalars["pairwise_squared_norms"])


STATISTICS.add("mean_std", MeanStd, help="per-pixel mean (the template) and standard deviation")
STATISTICS.add("eigen", EigenHeatmaps, help="eigen-heatmaps (PCA of the downsampled maps)")
def _median_if_asked(config: StatisticsConfig) -> PixelMedian | None:
    """The per-pixel median when the build asks for one (bounded normalisations only).

    Reference: Tibshirani (2008), "Fast computation of the median by successive binning", https://arxiv.org/abs/0806.3301.
    """
    return PixelMedian(config) if config.median else None


STATISTICS.add("median", _median_if_asked, help="per-pixel median")
STATISTICS.add("band", Band, help="Poisson bootstrap band of the mean")
STATISTICS.add("consistency", Consistency, help="mean pairwise correlation of the members")
