"""Per-class heatmap templates: normalisation and streaming, exactly mergeable statistics.

Everything here is pure numpy and memory-bounded: a class template is accumulated batch by
batch, so memory does not grow with the number of member images, and two accumulators built
over disjoint member sets merge into the accumulator of the union (`hmt merge-templates`).

What a `ClassAccumulator` keeps, all float64 and merged exactly (up to rounding):

- mean and variance per pixel: Welford within a batch, Chan et al. between batches and files;
- eigen-heatmaps: the scatter (co-moment) matrix of the maps area-downsampled to
  `pca_size` x `pca_size`, merged with Chan's co-moment formula and eigendecomposed at the end;
- optional per-pixel median: per-pixel histograms over a fixed value range (approximate, see
  `PixelHistogram`);
- bootstrap band: Poisson bootstrap, member weights drawn from an RNG seeded by the member's
  image hash, so a merge equals the build over the union;
- mean pairwise correlation: the running sum of standardised maps.

Leave-one-out correlations need every member map against the *final* template, so they are a
second pass (`ClassTemplate.compute_leave_one_out`); a merge cannot recompute them without the
maps and keeps the union of the per-file values instead (`loo_method`).

Typical use (what `hmt build-templates` does)::

    acc = ClassAccumulator("covid", (224, 224), normalisation="minmax")
    for maps, members in batches:          # registered maps (N, H, W) for that class
        acc.add(maps, members)
    template = acc.finalize()
    template.compute_leave_one_out(maps for maps, _ in batches_again)   # optional second pass
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from heatmap_templates.errors import HmtError

NORMALISATIONS = ("minmax", "sum", "zscore", "none")
DEFAULT_NORMALISATION = "minmax"
DEFAULT_PCA_SIZE = 32
DEFAULT_COMPONENTS = 8
DEFAULT_BOOTSTRAP_REPLICATES = 100
DEFAULT_MEDIAN_BINS = 64
LOO_EXACT = "exact"
LOO_MERGED = "union of per-file values (each against its own file's template)"
LOO_NOT_COMPUTED = "not computed"


# --------------------------------------------------------------------------- normalisation


def normalise(maps: np.ndarray, method: str = DEFAULT_NORMALISATION) -> np.ndarray:
    """Normalise each map of `maps` ((H, W) or (N, H, W)) independently; returns float32.

    `minmax` scales to [0, 1]; `sum` divides by the total absolute mass (unit mass for
    non-negative maps); `zscore` gives zero mean and unit standard deviation; `none` only
    converts (clipped to the float32 range). Non-finite pixels count as 0, and a constant or all-zero map (no localisation)
    becomes all zeros in every method but `none`, so NaN never comes out.
    """
    if method not in NORMALISATIONS:
        raise HmtError(f"unknown normalisation {method!r}; choose one of {', '.join(NORMALISATIONS)}")
    array = np.asarray(maps, dtype=np.float64)
    if array.ndim not in (2, 3):
        raise ValueError(f"normalise expects (H, W) or (N, H, W) maps, got shape {array.shape}")
    flat = np.where(np.isfinite(array), array, 0.0).reshape(1 if array.ndim == 2 else array.shape[0], -1)
    if flat.size == 0 or method == "none":
        largest = np.finfo(np.float32).max
        return np.clip(flat, -largest, largest).reshape(array.shape).astype(np.float32)
    # Every method but `none` is scale-invariant: scaling by the largest magnitude first keeps
    # squares and differences of huge values finite.
    magnitude = np.abs(flat).max(axis=1, keepdims=True)
    flat = np.divide(flat, magnitude, out=np.zeros_like(flat), where=magnitude > 0)
    low = flat.min(axis=1, keepdims=True)
    spread = flat.max(axis=1, keepdims=True) - low
    if method == "minmax":
        out = np.divide(flat - low, spread, out=np.zeros_like(flat), where=spread > 0)
    elif method == "sum":
        mass = np.abs(flat).sum(axis=1, keepdims=True)
        out = np.divide(flat, mass, out=np.zeros_like(flat), where=(mass > 0) & (spread > 0))
    elif method == "zscore":
        centred = flat - flat.mean(axis=1, keepdims=True)
        spread = np.sqrt((centred**2).mean(axis=1, keepdims=True))
        out = np.divide(centred, spread, out=np.zeros_like(flat), where=spread > 0)
    return out.reshape(array.shape).astype(np.float32)


def default_median_range(normalisation: str) -> tuple[float, float] | None:
    """Histogram range for the per-pixel median: known for `minmax` and (clipped) `zscore` maps only."""
    return {"minmax": (0.0, 1.0), "zscore": (-4.0, 4.0)}.get(normalisation)


# --------------------------------------------------------------------------- resampling


def _area_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) matrix averaging source pixels by their overlap with each target pixel."""
    edges = np.arange(target + 1) * (source / target)
    starts, ends = edges[:-1, None], edges[1:, None]
    pixels = np.arange(source)[None, :]
    overlap = np.clip(np.minimum(ends, pixels + 1) - np.maximum(starts, pixels), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _linear_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) bilinear interpolation matrix with pixel-centre alignment."""
    positions = np.clip((np.arange(target) + 0.5) * (source / target) - 0.5, 0.0, source - 1)
    lower = np.floor(positions).astype(int)
    upper = np.minimum(lower + 1, source - 1)
    fraction = positions - lower
    matrix = np.zeros((target, source))
    matrix[np.arange(target), lower] += 1.0 - fraction
    matrix[np.arange(target), upper] += fraction
    return matrix


def downsample(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average (..., H, W) maps to (..., h, w) (a linear map, so it commutes with means)."""
    array = np.asarray(maps, dtype=np.float64)
    rows = _area_matrix(array.shape[-2], shape[0])
    cols = _area_matrix(array.shape[-1], shape[1])
    return rows @ array @ cols.T


def upsample(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize (..., h, w) maps to (..., H, W)."""
    array = np.asarray(maps, dtype=np.float64)
    rows = _linear_matrix(array.shape[-2], shape[0])
    cols = _linear_matrix(array.shape[-1], shape[1])
    return rows @ array @ cols.T


# --------------------------------------------------------------------------- streaming statistics


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
    # Only the top k eigenpairs: several times cheaper than a full decomposition of a 1024 x 1024 matrix.
    values, vectors = scipy.linalg.eigh(symmetric, subset_by_index=(dim - k, dim - 1))
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    components = vectors[:, order].T
    largest = components[np.arange(len(components)), np.argmax(np.abs(components), axis=1)]
    components = components * np.where(largest < 0, -1.0, 1.0)[:, None]
    total = float(np.clip(np.trace(symmetric), 0.0, None))
    ratio = values / total if total > 0 else np.zeros_like(values)
    return values, components, ratio


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
        flat = (np.arange(values.shape[1]) * self.bins)[None, :] + indices
        self.counts += np.bincount(flat.ravel(), minlength=self.counts.size).reshape(self.counts.shape).astype(np.uint32)

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
        self.sums += weights.T @ values
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
        means = self.sums[used] / self.weights[used, None]
        lo, hi = np.percentile(means, [low, high], axis=0)
        return lo.reshape(self.shape), hi.reshape(self.shape)


def standardise_rows(values: np.ndarray) -> np.ndarray:
    """Rows with zero mean and unit norm (constant rows become zeros), so dot products are Pearson r."""
    centred = values - values.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred**2).sum(axis=1, keepdims=True))
    return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of (N, ...) arrays (a row against a constant row gives 0)."""
    left = standardise_rows(np.asarray(a, dtype=np.float64).reshape(len(a), -1))
    right = standardise_rows(np.asarray(b, dtype=np.float64).reshape(len(b), -1))
    return np.clip((left * right).sum(axis=1), -1.0, 1.0)


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


def leave_one_out_correlations(maps: np.ndarray, total: np.ndarray, count: int) -> np.ndarray:
    """corr(x_i, (S - x_i) / (n - 1)) for each map x_i of `maps`, S being the sum over all n members."""
    if count < 2:
        return np.zeros(len(maps))
    values = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    others = (np.asarray(total, dtype=np.float64).reshape(1, -1) - values) / (count - 1)
    return pearson(values, others)


def similarity_matrix(means: Sequence[np.ndarray]) -> np.ndarray:
    """(K, K) Pearson correlation between class templates, in the order given."""
    if not len(means):
        return np.zeros((0, 0))
    z = standardise_rows(np.stack([np.asarray(m, dtype=np.float64).ravel() for m in means]))
    matrix = np.clip(z @ z.T, -1.0, 1.0)
    constant = ~z.any(axis=1)
    matrix[np.diag_indices_from(matrix)] = np.where(constant, 0.0, 1.0)
    return matrix


# --------------------------------------------------------------------------- class templates


@dataclass(frozen=True)
class Member:
    """One image that contributed its heatmap to a class template."""

    path: str
    image_sha256: str
    probability: float
    registration_quality: float
    registration_method: str

    @property
    def key(self) -> str:
        """Identity used for bootstrap seeds and duplicate checks: the content hash, else the path."""
        return self.image_sha256 or self.path


@dataclass
class AccumulatorState:
    """Everything a `ClassAccumulator` holds: scalar config, float64/uint32 arrays, the members."""

    config: dict
    arrays: dict[str, np.ndarray]
    members: list[Member]


@dataclass
class ClassTemplate:
    """The finished template of one class and its consistency statistics."""

    class_name: str
    normalisation: str
    count: int
    mean: np.ndarray
    std: np.ndarray
    median: np.ndarray | None
    components: np.ndarray
    components_reduced: np.ndarray
    eigenvalues: np.ndarray
    explained_variance_ratio: np.ndarray
    band_low: np.ndarray
    band_high: np.ndarray
    mean_pairwise_correlation: float | None
    members: list[Member]
    loo_correlations: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loo_method: str = LOO_NOT_COMPUTED
    state: AccumulatorState | None = None

    def leave_one_out(self, maps: np.ndarray) -> np.ndarray:
        """Leave-one-out correlations of members' maps (raw registered maps, normalised here)."""
        values = normalise(maps, self.normalisation)
        return leave_one_out_correlations(values, np.asarray(self.mean, dtype=np.float64) * self.count, self.count)

    def compute_leave_one_out(self, batches: Iterable[np.ndarray]) -> None:
        """Second pass: the members' maps again, in member order, to fill `loo_correlations`."""
        values = [self.leave_one_out(batch) for batch in batches]
        result = np.concatenate(values) if values else np.zeros(0)
        if len(result) != self.count:
            raise ValueError(f"leave-one-out pass saw {len(result)} maps, the template has {self.count} members")
        self.loo_correlations = result
        self.loo_method = LOO_EXACT


class ClassAccumulator:
    """Streaming, mergeable builder of one class template (see the module docstring)."""

    def __init__(
        self,
        class_name: str,
        shape: tuple[int, int],
        *,
        normalisation: str = DEFAULT_NORMALISATION,
        pca_size: int = DEFAULT_PCA_SIZE,
        n_components: int = DEFAULT_COMPONENTS,
        bootstrap_replicates: int = DEFAULT_BOOTSTRAP_REPLICATES,
        median: bool = True,
        median_bins: int = DEFAULT_MEDIAN_BINS,
        median_range: tuple[float, float] | None = None,
    ) -> None:
        if normalisation not in NORMALISATIONS:
            raise HmtError(f"unknown normalisation {normalisation!r}; choose one of {', '.join(NORMALISATIONS)}")
        if median and median_range is None:
            median_range = default_median_range(normalisation)
            if median_range is None:
                raise HmtError(f"a per-pixel median needs a known value range; {normalisation!r} maps have none (use minmax or zscore, or no median)")
        self.class_name = class_name
        self.shape = (int(shape[0]), int(shape[1]))
        self.normalisation = normalisation
        self.reduced_shape = (min(pca_size, self.shape[0]), min(pca_size, self.shape[1]))
        self.n_components = n_components
        pixels = self.shape[0] * self.shape[1]
        self.stats = RunningStats(self.shape)
        self.covariance = RunningCovariance(self.reduced_shape[0] * self.reduced_shape[1])
        self.histogram = PixelHistogram(self.shape, median_bins, median_range) if median else None
        self.bootstrap = BootstrapBand(self.shape, bootstrap_replicates)
        self.pairwise = PairwiseCorrelation(pixels)
        self.members: list[Member] = []

    @property
    def count(self) -> int:
        return self.stats.count

    def add(self, maps: np.ndarray, members: Sequence[Member]) -> None:
        """Add registered maps (N, H, W) of N members; they are normalised here."""
        values = np.asarray(maps)
        if values.ndim != 3 or values.shape[1:] != self.shape:
            raise ValueError(f"expected maps of shape (N, {self.shape[0]}, {self.shape[1]}), got {values.shape}")
        if len(values) != len(members):
            raise ValueError(f"{len(values)} maps but {len(members)} member records")
        for member in members:
            if not (np.isfinite(member.probability) and np.isfinite(member.registration_quality)):
                raise ValueError(f"member {member.path} has a non-finite probability or registration quality")
        normalised = normalise(values, self.normalisation).astype(np.float64)
        self.stats.update(normalised)
        self.covariance.update(downsample(normalised, self.reduced_shape).reshape(len(normalised), -1))
        if self.histogram is not None:
            self.histogram.update(normalised)
        self.bootstrap.update(normalised, [member.key for member in members])
        self.pairwise.update(normalised)
        self.members.extend(members)

    def _config(self) -> dict:
        return {
            "class_name": self.class_name,
            "shape": list(self.shape),
            "normalisation": self.normalisation,
            "pca_size": max(self.reduced_shape),
            "n_components": self.n_components,
            "bootstrap_replicates": self.bootstrap.replicates,
            "median": self.histogram is not None,
            "median_bins": self.histogram.bins if self.histogram is not None else DEFAULT_MEDIAN_BINS,
            "median_range": list(self.histogram.value_range) if self.histogram is not None else None,
        }

    def merge(self, other: ClassAccumulator) -> ClassAccumulator:
        """Fold in an accumulator built over other members with the same configuration; returns self."""
        if other._config() != self._config():
            mine, theirs = self._config(), other._config()
            differing = ", ".join(key for key in mine if mine[key] != theirs[key])
            raise HmtError(f"cannot merge templates of class {other.class_name!r} built with different {differing}")
        self.stats.merge(other.stats)
        self.covariance.merge(other.covariance)
        if self.histogram is not None and other.histogram is not None:
            self.histogram.merge(other.histogram)
        self.bootstrap.merge(other.bootstrap)
        self.pairwise.merge(other.pairwise)
        self.members.extend(other.members)
        return self

    def state(self) -> AccumulatorState:
        """A copy of everything needed to resume or merge this accumulator exactly."""
        arrays = {
            "stats_mean": self.stats.mean.copy(),
            "stats_m2": self.stats.m2.copy(),
            "pca_mean": self.covariance.mean.copy(),
            "pca_comoment": self.covariance.comoment.copy(),
            "bootstrap_sums": self.bootstrap.sums.copy(),
            "bootstrap_weights": self.bootstrap.weights.copy(),
            "pairwise_total": self.pairwise.total.copy(),
        }
        if self.histogram is not None:
            arrays["median_histogram"] = self.histogram.counts.copy()
        config = self._config() | {"count": self.count, "pairwise_squared_norms": self.pairwise.squared_norms}
        return AccumulatorState(config=config, arrays=arrays, members=list(self.members))

    @classmethod
    def from_state(cls, state: AccumulatorState) -> ClassAccumulator:
        """Rebuild an accumulator from `state()` output (e.g. read back from a templates file)."""
        config = state.config
        median_range = config.get("median_range")
        accumulator = cls(
            str(config["class_name"]),
            tuple(config["shape"]),
            normalisation=str(config["normalisation"]),
            pca_size=int(config["pca_size"]),
            n_components=int(config["n_components"]),
            bootstrap_replicates=int(config["bootstrap_replicates"]),
            median=bool(config["median"]),
            median_bins=int(config["median_bins"]),
            median_range=tuple(median_range) if median_range is not None else None,
        )
        count = int(config["count"])
        arrays = state.arrays
        accumulator.stats.count = count
        accumulator.stats.mean = np.array(arrays["stats_mean"], dtype=np.float64)
        accumulator.stats.m2 = np.array(arrays["stats_m2"], dtype=np.float64)
        accumulator.covariance.count = count
        accumulator.covariance.mean = np.array(arrays["pca_mean"], dtype=np.float64)
        accumulator.covariance.comoment = np.array(arrays["pca_comoment"], dtype=np.float64)
        accumulator.bootstrap.sums = np.array(arrays["bootstrap_sums"], dtype=np.float64)
        accumulator.bootstrap.weights = np.array(arrays["bootstrap_weights"], dtype=np.float64)
        accumulator.pairwise.count = count
        accumulator.pairwise.total = np.array(arrays["pairwise_total"], dtype=np.float64)
        accumulator.pairwise.squared_norms = float(config["pairwise_squared_norms"])
        if accumulator.histogram is not None:
            accumulator.histogram.counts = np.array(arrays["median_histogram"], dtype=np.uint32)
        accumulator.members = list(state.members)
        if len(accumulator.members) != count:
            raise ValueError(f"state of class {accumulator.class_name!r} lists {len(accumulator.members)} members for count {count}")
        return accumulator

    def finalize(self) -> ClassTemplate:
        """The template from what has been added so far (the accumulator stays usable)."""
        k = min(self.n_components, self.covariance.mean.size)
        eigenvalues, reduced, ratio = principal_components(self.covariance.covariance, k)
        # Components of (numerically) zero variance span an arbitrary null space: drop them.
        meaningful = eigenvalues > 1e-10 * (eigenvalues[0] if len(eigenvalues) else 0.0)
        eigenvalues, reduced, ratio = eigenvalues[meaningful], reduced[meaningful], ratio[meaningful]
        reduced = reduced.reshape(len(reduced), *self.reduced_shape)
        band_low, band_high = self.bootstrap.band()
        return ClassTemplate(
            class_name=self.class_name,
            normalisation=self.normalisation,
            count=self.count,
            mean=self.stats.mean.copy(),
            std=self.stats.std,
            median=self.histogram.median() if self.histogram is not None else None,
            components=upsample(reduced, self.shape),
            components_reduced=reduced,
            eigenvalues=eigenvalues,
            explained_variance_ratio=ratio,
            band_low=band_low,
            band_high=band_high,
            mean_pairwise_correlation=self.pairwise.value,
            members=list(self.members),
            state=self.state(),
        )
