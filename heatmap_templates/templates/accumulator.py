"""Per-class heatmap templates: a streaming, exactly mergeable accumulator over registered maps.

Everything here is pure numpy and memory-bounded: a class template is accumulated batch by
batch, so memory does not grow with the number of member images, and two accumulators built
over disjoint member sets merge into the accumulator of the union (`hmt merge-templates`).
A :class:`ClassAccumulator` normalises each map once and hands it to every statistic of
:data:`~heatmap_templates.templates.statistics.STATISTICS` (mean and std, eigen-heatmaps, median,
bootstrap band, consistency); a finished :class:`ClassTemplate` holds their results.

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

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from heatmap_templates.errors import HmtError
from heatmap_templates.templates.normalisation import DEFAULT_NORMALISATION, NORMALISATIONS, normalise
from heatmap_templates.templates.normalisation import median_range as normalised_range
from heatmap_templates.templates.statistics import STATISTICS, StatisticsConfig, TemplateStatistic

DEFAULT_PCA_SIZE = 32
DEFAULT_COMPONENTS = 8
DEFAULT_BOOTSTRAP_REPLICATES = 100
DEFAULT_MEDIAN_BINS = 64
# Maps held back and given to the statistics together. Each update has a fixed cost (the eigen-heatmaps' 1024 x 1024
# co-moment merge, a pass over the bootstrap sums), so updating per few maps, as a build's batches split among the
# classes do, spent more on that than on the maps (benchmarks/RESULTS.md, "Scale: compact store, template build").
# Not more: each update's temporaries are several times the maps, and at 16 MB they raised a 6000-image build's peak
# memory from 223 to 405 MB for no speed that could be told from noise.
PENDING_BYTES = 4 * 2**20
LOO_EXACT = "exact"
LOO_MERGED = "union of per-file values (each against its own file's template)"
LOO_NOT_COMPUTED = "not computed"
# Others whose centred sum has less than this share of the whole sum's squared norm count as constant: |s - x|^2
# comes from a difference, whose rounding (about 1e-16 of |s|^2) must not pass for a shape.
_CONSTANT_OTHERS = 1e-10


def leave_one_out_correlations(maps: np.ndarray, total: np.ndarray, count: int) -> np.ndarray:
    """corr(x_i, (S - x_i) / (n - 1)) for each map x_i of `maps`, S being the sum over all n members.

    From dot products with the centred sum rather than by forming each member's leave-one-out mean: with x and s
    the centred map and sum, the others' centred sum is s - x, so corr = (x.s - x.x) / sqrt(x.x (s.s - 2 x.s + x.x)).
    One matrix-vector product instead of two standardised copies of the maps (3-7x faster, equal to 1e-15).
    As in :func:`~heatmap_templates.numeric.correlation.pearson`, a constant map, or constant others, give 0.
    """
    if count < 2:
        return np.zeros(len(maps))
    values = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    centred = values - values.mean(axis=1, keepdims=True)
    summed = np.asarray(total, dtype=np.float64).ravel()
    centred_sum = summed - summed.mean()
    with_sum = centred @ centred_sum
    own = np.einsum("ij,ij->i", centred, centred)
    sum_norm = float(centred_sum @ centred_sum)
    others = sum_norm - 2.0 * with_sum + own  # |s - x|^2, by cancellation when the others are (nearly) constant
    others = np.where(others > _CONSTANT_OTHERS * max(sum_norm, 1e-300), others, 0.0)
    denominator = np.sqrt(own * others)
    return np.clip(np.divide(with_sum - own, denominator, out=np.zeros_like(own), where=denominator > 0), -1.0, 1.0)


@dataclass(frozen=True)
class Member:
    """One image that contributed its heatmap to a class template."""

    path: str
    image_sha256: str
    probability: float
    registration_quality: float
    registration_method: str
    registration_matrix: tuple[float, ...] | None = None  # (2, 3) image -> reference map, row-major; None in older files

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

    def leave_one_out(self, maps: np.ndarray, *, normalised: bool = False) -> np.ndarray:
        """Leave-one-out correlations of members' registered maps (normalised here unless ``normalised``)."""
        values = maps if normalised else normalise(maps, self.normalisation)
        return leave_one_out_correlations(values, np.asarray(self.mean, dtype=np.float64) * self.count, self.count)

    def compute_leave_one_out(self, batches: Iterable[np.ndarray], *, normalised: bool = False) -> None:
        """Second pass: the members' maps again, in member order, to fill `loo_correlations`."""
        values = [self.leave_one_out(batch, normalised=normalised) for batch in batches]
        self.record_leave_one_out(np.concatenate(values) if values else np.zeros(0))

    def record_leave_one_out(self, values: np.ndarray) -> None:
        """Keep every member's leave-one-out correlation (in member order), computed by :meth:`leave_one_out`."""
        if len(values) != self.count:
            raise ValueError(f"leave-one-out pass saw {len(values)} maps, the template has {self.count} members")
        self.loo_correlations = np.asarray(values, dtype=np.float64)
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
        NORMALISATIONS.check(normalisation)
        if median and median_range is None:
            median_range = normalised_range(normalisation)
            if median_range is None:
                raise HmtError(f"a per-pixel median needs a known value range; {normalisation!r} maps have none (use minmax or zscore, or no median)")
        self.class_name = class_name
        self.shape = (int(shape[0]), int(shape[1]))
        self.normalisation = normalisation
        self.statistics_config = StatisticsConfig(
            shape=self.shape, pca_size=pca_size, n_components=n_components, bootstrap_replicates=bootstrap_replicates,
            median=median, median_bins=median_bins, median_range=median_range if median else None)
        self._statistics = {name: statistic for name, factory in STATISTICS.items()
                            if (statistic := factory(self.statistics_config)) is not None}
        self.count = 0
        self.members: list[Member] = []
        self._pending: list[np.ndarray] = []  # prepared maps not yet given to the statistics
        self._pending_keys: list[str] = []

    def add(self, maps: np.ndarray, members: Sequence[Member], *, normalised: bool = False,
            run: Callable[..., Iterable] = map) -> None:
        """Add registered maps (N, H, W) of N members; they are normalised here unless ``normalised``
        (already prepared by :func:`heatmap_templates.templates.prepare.prepare_maps` with this normalisation).
        Maps are held back until about :data:`PENDING_BYTES` have come, then given to the statistics together;
        ``run`` maps the statistics' independent updates (a thread pool's ``map`` runs them in parallel)."""
        values = np.asarray(maps)
        if values.ndim != 3 or values.shape[1:] != self.shape:
            raise ValueError(f"expected maps of shape (N, {self.shape[0]}, {self.shape[1]}), got {values.shape}")
        if len(values) != len(members):
            raise ValueError(f"{len(values)} maps but {len(members)} member records")
        for member in members:
            if not (np.isfinite(member.probability) and np.isfinite(member.registration_quality)):
                raise ValueError(f"member {member.path} has a non-finite probability or registration quality")
        self._pending.append(np.array(values) if normalised else normalise(values, self.normalisation))  # a copy either way
        self._pending_keys.extend(member.key for member in members)
        self.count += len(values)
        self.members.extend(members)
        if sum(batch.nbytes for batch in self._pending) >= PENDING_BYTES:
            self.flush(run)

    @property
    def statistics(self) -> dict[str, TemplateStatistic]:
        """The statistics by registry name, with every map added so far."""
        self.flush()
        return self._statistics

    def flush(self, run: Callable[..., Iterable] = map) -> None:
        """Give the maps held back by :meth:`add` to the statistics (every other method does this first)."""
        if not self._pending:
            return
        prepared = np.concatenate(self._pending).astype(np.float64)
        keys = self._pending_keys
        self._pending, self._pending_keys = [], []
        list(run(lambda statistic: statistic.update(prepared, keys), self._statistics.values()))

    def _config(self) -> dict:
        config = self.statistics_config
        return {
            "class_name": self.class_name,
            "shape": list(self.shape),
            "normalisation": self.normalisation,
            "pca_size": max(config.reduced_shape),
            "n_components": config.n_components,
            "bootstrap_replicates": config.bootstrap_replicates,
            "median": config.median,
            "median_bins": config.median_bins,
            "median_range": list(config.median_range) if config.median_range is not None else None,
        }

    def merge(self, other: ClassAccumulator) -> ClassAccumulator:
        """Fold in an accumulator built over other members with the same configuration; returns self."""
        if other._config() != self._config():
            mine, theirs = self._config(), other._config()
            differing = ", ".join(key for key in mine if mine[key] != theirs[key])
            raise HmtError(f"cannot merge templates of class {other.class_name!r} built with different {differing}")
        theirs = other.statistics
        for name, statistic in self.statistics.items():
            statistic.merge(theirs[name])
        self.count += other.count
        self.members.extend(other.members)
        return self

    def state(self) -> AccumulatorState:
        """A copy of everything needed to resume or merge this accumulator exactly."""
        arrays: dict[str, np.ndarray] = {}
        scalars: dict[str, float] = {}
        for statistic in self.statistics.values():
            arrays.update(statistic.arrays())
            scalars.update(statistic.scalars())
        config = self._config() | {"count": self.count} | scalars
        return AccumulatorState(config=config, arrays=arrays, members=list(self.members))

    @classmethod
    def from_state(cls, state: AccumulatorState) -> ClassAccumulator:
        """Rebuild an accumulator from `state()` output (e.g. read back from a templates file)."""
        config = state.config
        stored_range = config.get("median_range")
        accumulator = cls(
            str(config["class_name"]),
            tuple(config["shape"]),
            normalisation=str(config["normalisation"]),
            pca_size=int(config["pca_size"]),
            n_components=int(config["n_components"]),
            bootstrap_replicates=int(config["bootstrap_replicates"]),
            median=bool(config["median"]),
            median_bins=int(config["median_bins"]),
            median_range=tuple(stored_range) if stored_range is not None else None,
        )
        count = int(config["count"])
        for statistic in accumulator._statistics.values():
            statistic.restore(state.arrays, config, count)
        accumulator.count = count
        accumulator.members = list(state.members)
        if len(accumulator.members) != count:
            raise ValueError(f"state of class {accumulator.class_name!r} lists {len(accumulator.members)} members for count {count}")
        return accumulator

    def finalize(self) -> ClassTemplate:
        """The template from what has been added so far (the accumulator stays usable)."""
        results: dict = {"median": None}
        for statistic in self.statistics.values():
            results.update(statistic.results())
        return ClassTemplate(
            class_name=self.class_name,
            normalisation=self.normalisation,
            count=self.count,
            members=list(self.members),
            state=self.state(),
            **results,
        )
