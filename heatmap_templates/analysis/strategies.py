"""Strategies within a class: clusters of its members' heatmaps (Spectral Relevance Analysis on templates).

A template is one mean; a model that recognises a class in several ways (by the lesions in some
images, by a burned-in marker in others) gives a mean that shows none of them. Following SpRAy
(Lapuschkin et al., "Unmasking Clever Hans predictors", 2019; CoRelAy/ViRelAy), each class's
members are clustered by their heatmaps, here the registered, normalised maps the template was
built from, so that position differences of the chest do not split a strategy:

1. the member maps, prepared exactly as the build prepared them (the stored registration matrices
   are reused), area-downsampled to ``resolution`` px;
2. an affinity graph: each map's ``neighbours`` nearest maps by ``1 - similarity`` (a
   :data:`~heatmap_templates.analysis.similarity.SIMILARITIES` measure), symmetrised;
3. the spectral embedding of its normalised graph Laplacian; the (relative) eigengap of the
   Laplacian's smallest eigenvalues picks the number of strategies K (at most ``max_k``; 1 when no gap
   stands out, :func:`eigengap_k`), or K is given;
4. k-means on the row-normalised first K eigenvectors (scikit-learn), seeded: deterministic.

Per strategy: its members, a prototype (mean and standard deviation through the template
statistics) and its consistency (mean pairwise correlation of its members). The stability of the
clustering is the adjusted Rand index (scikit-learn) between the clustering and the clusterings of
bootstrap resamples of the members. Classes with more than ``max_clustered`` members are clustered
on an evenly spaced sample; the other members join the strategy whose prototype they resemble most.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from heatmap_templates.analysis.similarity import DEFAULT_SIMILARITY, SIMILARITIES, similarity_scores
from heatmap_templates.errors import HmtError
from heatmap_templates.numeric.resample import downsample
from heatmap_templates.store.records import ClassStrategies, Strategy
from heatmap_templates.templates.statistics import Consistency, MeanStd, StatisticsConfig

DEFAULT_MAX_K = 6
DEFAULT_RESOLUTION = 32  # px of the maps that are clustered
DEFAULT_STABILITY_RESAMPLES = 20
MAX_CLUSTERED = 2000  # members clustered directly; more are assigned to the nearest prototype
MIN_STRATEGY_MEMBERS = 3  # fewer members cannot be clustered


@dataclass(frozen=True)
class StrategySettings:
    """How strategies are found; recorded with them."""

    k: int | None = None  # None: chosen by the eigengap
    max_k: int = DEFAULT_MAX_K
    neighbours: int | None = None  # None: about the square root of the member count
    resolution: int = DEFAULT_RESOLUTION
    similarity: str = DEFAULT_SIMILARITY
    seed: int = 0
    stability_resamples: int = DEFAULT_STABILITY_RESAMPLES
    max_clustered: int = MAX_CLUSTERED

    def validate(self) -> None:
        SIMILARITIES.check(self.similarity)
        if self.max_k < 1 or (self.k is not None and not 1 <= self.k <= max(self.max_k, self.k)):
            raise HmtError(f"the number of strategies must be at least 1 (k {self.k}, at most {self.max_k})")
        if self.resolution < 4 or self.stability_resamples < 0 or self.max_clustered < 4:
            raise HmtError("strategies need a resolution of at least 4 px, resamples >= 0 and at least 4 clustered members")
        if self.neighbours is not None and self.neighbours < 1:
            raise HmtError(f"neighbours must be at least 1, got {self.neighbours}")

    def to_dict(self) -> dict:
        return {"k": self.k, "max_k": self.max_k, "neighbours": self.neighbours, "resolution": self.resolution,
                "similarity": self.similarity, "seed": self.seed, "stability_resamples": self.stability_resamples,
                "max_clustered": self.max_clustered}


def _neighbour_count(settings: StrategySettings, n: int) -> int:
    return min(n - 1, settings.neighbours or max(3, int(round(math.sqrt(n)))))


def pairwise_similarity(maps: np.ndarray, method: str, lung_mask: np.ndarray | None = None) -> np.ndarray:
    """(N, N) similarity of every map with every other by a registered measure (symmetrised)."""
    columns = [similarity_scores(maps, maps[j], method, lung_mask) for j in range(len(maps))]
    matrix = np.stack(columns, axis=1).astype(np.float64)
    return (matrix + matrix.T) / 2.0


def affinity_graph(similarity: np.ndarray, neighbours: int) -> np.ndarray:
    """Symmetric 0/1 k-nearest-neighbour affinity (N, N) from a similarity matrix (no self loops)."""
    from sklearn.neighbors import kneighbors_graph

    distance = np.clip(1.0 - similarity, 0.0, None)
    np.fill_diagonal(distance, 0.0)
    graph = kneighbors_graph(distance, n_neighbors=neighbours, metric="precomputed", mode="connectivity", include_self=False)
    dense = graph.toarray()
    return np.maximum(dense, dense.T)


def spectral_embedding(affinity: np.ndarray, dimensions: int) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues (d,), eigenvectors (N, d)) of the smallest eigenpairs of the symmetric normalised Laplacian."""
    from scipy.sparse.csgraph import laplacian

    lap = laplacian(affinity, normed=True)
    values, vectors = np.linalg.eigh(np.asarray(lap))
    dimensions = min(dimensions, len(values))
    vectors = vectors[:, :dimensions]
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(dimensions)])  # deterministic signs
    return np.clip(values[:dimensions], 0.0, None), vectors * np.where(signs == 0, 1.0, signs)


MIN_RELATIVE_GAP = 0.5  # below it no split stands out: one strategy


def eigengap_k(eigenvalues: np.ndarray, max_k: int) -> int:
    """The number of clusters from the smallest Laplacian eigenvalues: K (2..max_k) where the relative gap
    (lambda_{K+1} - lambda_K) / lambda_{K+1} is largest, i.e. the first K eigenvalues are near zero next to the
    following one; 1 when no relative gap reaches :data:`MIN_RELATIVE_GAP`. (The absolute gap tends to grow with K
    on nearest-neighbour graphs and picks too many clusters.)"""
    values = np.asarray(eigenvalues[:max_k + 1], dtype=np.float64)
    if len(values) < 3:
        return 1
    following = np.maximum(values[2:], 1e-9)
    relative = (values[2:] - values[1:-1]) / following  # k = 2 .. len - 1
    best = int(np.argmax(relative))
    return best + 2 if relative[best] >= MIN_RELATIVE_GAP else 1


def cluster_embedding(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means (scikit-learn) on the row-normalised first ``k`` eigenvectors (Ng, Jordan and Weiss); labels (N,)."""
    from sklearn.cluster import KMeans

    if k == 1:
        return np.zeros(len(vectors), dtype=np.int64)
    rows = vectors[:, :k]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows / np.where(norms > 0, norms, 1.0)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(rows)
    return _relabel_by_size(labels)


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Clusters renumbered largest first (ties by first member), so the numbering is deterministic."""
    names, counts = np.unique(labels, return_counts=True)
    first = {name: int(np.flatnonzero(labels == name)[0]) for name in names}
    order = sorted(names, key=lambda name: (-counts[list(names).index(name)], first[name]))
    mapping = {name: position for position, name in enumerate(order)}
    return np.array([mapping[label] for label in labels], dtype=np.int64)


def _cluster(maps: np.ndarray, settings: StrategySettings, k: int | None, lung_mask: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(labels, eigenvalues, 2-D embedding, K) of maps (N, h, w)."""
    n = len(maps)
    affinity = affinity_graph(pairwise_similarity(maps, settings.similarity, lung_mask), _neighbour_count(settings, n))
    values, vectors = spectral_embedding(affinity, max(settings.max_k, k or 1) + 1)
    chosen = k if k is not None else eigengap_k(values, min(settings.max_k, n - 1))
    chosen = max(1, min(chosen, n))
    return cluster_embedding(vectors, chosen, settings.seed), values, vectors[:, 1:3], chosen


def stability(maps: np.ndarray, labels: np.ndarray, k: int, settings: StrategySettings,
              lung_mask: np.ndarray | None) -> dict:
    """Adjusted Rand index between the clustering and the clusterings (same K) of bootstrap resamples of the maps,
    compared on the resampled members (mean, standard deviation, resamples, and ``ari_ci``: the 2.5th and 97.5th
    percentiles of the resamples' indices, their spread)."""
    from sklearn.metrics import adjusted_rand_score

    if k == 1 or settings.stability_resamples == 0 or len(maps) < 4:
        return {"mean_ari": None, "std_ari": None, "resamples": 0, "ari_ci": None}
    rng = np.random.default_rng(settings.seed)
    scores = []
    for _ in range(settings.stability_resamples):
        chosen = np.unique(rng.choice(len(maps), size=len(maps), replace=True))  # a bootstrap's distinct members
        if len(chosen) <= k:
            continue
        resampled, _, _, _ = _cluster(maps[chosen], settings, k, lung_mask)
        scores.append(adjusted_rand_score(labels[chosen], resampled))
    if not scores:
        return {"mean_ari": None, "std_ari": None, "resamples": 0, "ari_ci": None}
    return {"mean_ari": float(np.mean(scores)), "std_ari": float(np.std(scores)), "resamples": len(scores),
            "ari_ci": [float(v) for v in np.percentile(scores, [2.5, 97.5])]}


class _Prototypes:
    """Streaming prototype (mean, std) and consistency of each cluster through the template statistics."""

    def __init__(self, k: int, shape: tuple[int, int]) -> None:
        config = StatisticsConfig(shape=(int(shape[0]), int(shape[1])), pca_size=1, n_components=1, bootstrap_replicates=0, median=False,
                                  median_bins=1, median_range=None)
        self.moments = [MeanStd(config) for _ in range(k)]
        self.consistency = [Consistency(config) for _ in range(k)]

    def add(self, maps: np.ndarray, labels: np.ndarray) -> None:
        for j in np.unique(labels):
            chosen = np.asarray(maps[labels == j], dtype=np.float64)
            keys: Sequence[str] = [""] * len(chosen)
            self.moments[j].update(chosen, keys)
            self.consistency[j].update(chosen, keys)

    def results(self, j: int) -> tuple[np.ndarray, np.ndarray, float | None]:
        moments = self.moments[j].results()
        return moments["mean"], moments["std"], self.consistency[j].results()["mean_pairwise_correlation"]


def cluster_members(class_name: str, small: np.ndarray, member_paths: Sequence[str], settings: StrategySettings | None = None,
                    small_lungs: np.ndarray | None = None) -> ClassStrategies:
    """The clustering of one class from its members' downsampled prepared maps (N, r, r), in member order;
    the strategies' prototypes are left empty (see :func:`add_prototypes`)."""
    settings = settings or StrategySettings()
    settings.validate()
    small = np.asarray(small, dtype=np.float32)
    if len(small) != len(member_paths):
        raise HmtError(f"{len(small)} maps but {len(member_paths)} member paths")
    if len(small) < MIN_STRATEGY_MEMBERS:
        raise HmtError(f"class {class_name!r} has {len(small)} members; strategies need at least {MIN_STRATEGY_MEMBERS}")
    clustered = np.arange(len(small))
    if len(small) > settings.max_clustered:
        clustered = np.linspace(0, len(small) - 1, settings.max_clustered).astype(np.int64)
    labels_sample, eigenvalues, embedding_sample, k = _cluster(small[clustered], settings, settings.k, small_lungs)
    labels = np.full(len(small), -1, dtype=np.int64)
    labels[clustered] = labels_sample
    embedding = np.full((len(small), 2), np.nan)
    embedding[clustered, :embedding_sample.shape[1]] = embedding_sample
    if len(clustered) < len(small):  # the others join the strategy whose (downsampled) centre they resemble most
        centres = np.stack([small[clustered][labels_sample == j].mean(axis=0) for j in range(k)])
        rest = np.flatnonzero(labels < 0)
        scores = np.stack([similarity_scores(small[rest], centre, settings.similarity, small_lungs) for centre in centres], axis=1)
        labels[rest] = np.argmax(scores, axis=1)
    typicality = np.zeros(len(small))
    for j in range(k):  # each member's similarity to its strategy's (downsampled) centre: the most typical first in galleries
        members = np.flatnonzero(labels == j)
        typicality[members] = similarity_scores(small[members], small[members].mean(axis=0), settings.similarity, small_lungs)
    empty = np.zeros((0, 0))
    strategies = [Strategy(int((labels == j).sum()), [member_paths[int(i)] for i in np.flatnonzero(labels == j)], empty, empty, None)
                  for j in range(k)]
    return ClassStrategies(
        class_name=class_name, k=k, chosen_by="given" if settings.k is not None else "eigengap",
        eigenvalues=eigenvalues[:settings.max_k + 1], labels=labels, embedding=embedding,
        stability=stability(small[clustered], labels_sample, k, settings, small_lungs),
        strategies=strategies, settings=settings.to_dict() | {"clustered_members": int(len(clustered)),
                                                               "neighbours_used": _neighbour_count(settings, len(clustered))},
        typicality=typicality,
    )


def add_prototypes(result: ClassStrategies, batches: Iterable[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int]) -> ClassStrategies:
    """Fill each strategy's prototype and consistency from (member positions, full-size prepared maps) batches."""
    prototypes = _Prototypes(result.k, shape)
    for positions, maps in batches:
        prototypes.add(np.asarray(maps), result.labels[positions])
    for j, strategy in enumerate(result.strategies):
        strategy.mean, strategy.std, strategy.consistency = prototypes.results(j)
    return result


def find_strategies(class_name: str, maps: np.ndarray, member_paths: Sequence[str], settings: StrategySettings | None = None,
                    lung_mask: np.ndarray | None = None) -> ClassStrategies:
    """The strategies of one class from its members' prepared maps (N, H, W) held in memory, in member order."""
    settings = settings or StrategySettings()
    maps = np.asarray(maps, dtype=np.float32)
    small = downsample(maps, (settings.resolution, settings.resolution)).astype(np.float32)
    small_lungs = None
    if lung_mask is not None:
        small_lungs = downsample(np.asarray(lung_mask, np.float32), (settings.resolution, settings.resolution)) >= 0.5
    result = cluster_members(class_name, small, member_paths, settings, small_lungs)
    return add_prototypes(result, [(np.arange(len(maps)), maps)], maps.shape[1:])


def closest_strategy(maps: np.ndarray, strategies: ClassStrategies, similarity: str = DEFAULT_SIMILARITY,
                     lung_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(index of the most similar strategy (N,), similarity to it (N,)) of prepared maps (N, H, W) of the class."""
    scores = np.stack([similarity_scores(maps, strategy.mean, similarity, lung_mask) for strategy in strategies.strategies], axis=1)
    return np.argmax(scores, axis=1), scores.max(axis=1)
