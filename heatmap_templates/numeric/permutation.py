"""Pixel-wise permutation inference for two groups of maps: t-maps, family-wise error, TFCE and FDR.

What neuroimaging does for voxels (SPM, FSL ``randomise``), for heatmaps in one frame:

- statistic per pixel: Welch's t of two independent groups, or the one-sample t of paired differences;
- the null by permutation: group labels shuffled (two groups) or signs of the differences flipped (paired),
  whole *units* (patients) at a time when several maps belong to one patient; every relabelling enumerated
  when there are no more of them than permutations asked for (exact p-values), else a seeded random draw
  with the observed labelling counted in (p = (1 + exceedances) / (1 + draws));
- corrections (registry :data:`CORRECTIONS`): ``maxt``, the max-statistic family-wise error (Westfall and
  Young 1993; Nichols and Holmes 2002); ``tfce``, threshold-free cluster enhancement (Smith and Nichols 2009)
  with the 2-D settings H = 2, E = 1, 4-connectivity and 100 height steps, its maximum as the family-wise
  null; ``fdr``, Benjamini-Hochberg on the uncorrected permutation p-values;
- effect size per pixel: Cohen's d (pooled standard deviation; paired: mean difference over its standard
  deviation).

Memory is bounded: group sums over permutations are computed as matrix products chunked over maps (rows)
and over permutations.

Reference: T. E. Nichols and A. P. Holmes, "Nonparametric permutation tests for functional neuroimaging",
Human Brain Mapping 15 (2002), https://doi.org/10.1002/hbm.1058; S. M. Smith and T. E. Nichols,
"Threshold-free cluster enhancement", NeuroImage 44 (2009), https://doi.org/10.1016/j.neuroimage.2008.03.061;
Y. Benjamini and Y. Hochberg, "Controlling the false discovery rate", JRSS B 57 (1995).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from heatmap_templates.errors import HmtError
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.registry import Registry

DEFAULT_PERMUTATIONS = 5000
DEFAULT_ALPHA = 0.05
TFCE_H, TFCE_E, TFCE_STEPS = 2.0, 1.0, 100
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
_ROW_CHUNK = 512  # maps per matrix product
_PERMUTATION_CHUNK = 256  # permutations per block


@dataclass
class PermutationResult:
    """Per pixel (H, W): the t statistic, Cohen's d, uncorrected and corrected p-values (and the TFCE map with
    ``tfce``); the null's maxima; how many relabellings and whether every one was enumerated."""

    t: np.ndarray
    effect: np.ndarray
    p_uncorrected: np.ndarray
    p: np.ndarray
    correction: str
    tail: str
    permutations: int
    exact: bool
    null_maxima: np.ndarray
    tfce: np.ndarray | None = None


# --------------------------------------------------------------------------- statistics


def _welch(sum_a: np.ndarray, squares_a: np.ndarray, n_a: np.ndarray, sum_b: np.ndarray, squares_b: np.ndarray,
           n_b: np.ndarray) -> np.ndarray:
    """Welch's t from group sums and sums of squares ((..., P) arrays; n broadcast); 0 where both variances are 0."""
    mean_a, mean_b = sum_a / n_a, sum_b / n_b
    var_a = np.maximum(squares_a - sum_a * mean_a, 0.0) / np.maximum(n_a - 1, 1)
    var_b = np.maximum(squares_b - sum_b * mean_b, 0.0) / np.maximum(n_b - 1, 1)
    scale = np.sqrt(var_a / n_a + var_b / n_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 1e-12, (mean_a - mean_b) / scale, 0.0)


def _one_sample(total: np.ndarray, squares: np.ndarray, n: int) -> np.ndarray:
    """One-sample t of the mean against 0 from sums; 0 where the standard deviation is 0."""
    mean = total / n
    variance = np.maximum(squares - total * mean, 0.0) / max(n - 1, 1)
    scale = np.sqrt(variance / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 1e-12, mean / scale, 0.0)


def cohens_d(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Cohen's d per column: (mean a - mean b) / pooled sd; with ``b`` None, mean a / sd a (paired differences)."""
    a = np.asarray(a, np.float64)
    if b is None:
        sd = a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1:])
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sd > 1e-12, a.mean(axis=0) / sd, 0.0)
    b = np.asarray(b, np.float64)
    pooled = ((len(a) - 1) * a.var(axis=0, ddof=1) + (len(b) - 1) * b.var(axis=0, ddof=1)) / max(len(a) + len(b) - 2, 1)
    sd = np.sqrt(pooled)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 1e-12, (a.mean(axis=0) - b.mean(axis=0)) / sd, 0.0)


TAILS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("tail", parameter="tail")
TAILS.add("two-sided", np.abs, help="A differs from B either way")
TAILS.add("greater", lambda t: t, help="A greater than B")
TAILS.add("less", np.negative, help="A less than B")


def tailed(t: np.ndarray, tail: str) -> np.ndarray:
    """The statistic whose large values are evidence under ``tail``."""
    return TAILS[tail](t)


def tfce(values: np.ndarray, *, h: float = TFCE_H, e: float = TFCE_E, steps: int = TFCE_STEPS) -> np.ndarray:
    """Threshold-free cluster enhancement of the positive part of a 2-D map: for each height h_k = k dh
    (k = 1..steps, dh = max / steps) the 4-connected clusters of pixels >= h_k, each pixel adding
    extent^E h_k^H dh of its cluster. 0 where the map is not positive."""
    return tfce_batch(np.asarray(values, np.float64)[None], h=h, e=e, steps=steps)[0]


_STACKED_FOUR = np.zeros((3, 3, 3), bool)
_STACKED_FOUR[1] = FOUR_CONNECTED  # 4-connected within each map, never across maps


def tfce_batch(values: np.ndarray, *, h: float = TFCE_H, e: float = TFCE_E, steps: int = TFCE_STEPS) -> np.ndarray:
    """:func:`tfce` of each map of a (P, H, W) stack, one labelling per height for the whole stack: with each map's
    own step dh_j = max_j / steps, pixel x of map j is above height k when x / dh_j >= k, a condition on the integer
    k shared by every map."""
    values = np.asarray(values, np.float64)
    tops = values.reshape(len(values), -1).max(axis=1, initial=0.0)
    enhanced = np.zeros(values.shape)
    live = tops > 0
    if not live.any():
        return enhanced
    step = np.where(live, tops / steps, 1.0)
    scaled = np.where(live[:, None, None], values / step[:, None, None], 0.0)
    for k in range(1, steps + 1):
        labels, count = ndimage.label(scaled >= k - 1e-9, structure=_STACKED_FOUR)
        if not count:
            break
        sizes = np.bincount(labels.ravel()).astype(np.float64)
        sizes[0] = 0.0
        enhanced += sizes[labels] ** e * ((k * step) ** h * step)[:, None, None]
    return enhanced
def signed_tfce(t: np.ndarray, tail: str) -> np.ndarray:
    """TFCE under ``tail`` of one map or a (P, H, W) stack: of t (greater), of -t (less, returned negative), or both
    signs (two-sided, signed)."""
    stack = np.asarray(t, np.float64)
    single = stack.ndim == 2
    stack = stack[None] if single else stack
    if tail == "greater":
        out = tfce_batch(stack)
    elif tail == "less":
        out = -tfce_batch(-stack)
    else:
        out = tfce_batch(stack) - tfce_batch(-stack)
    return out[0] if single else out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (the FDR q-value of each test), same shape as ``p``."""
    flat = np.asarray(p, np.float64).ravel()
    order = np.argsort(flat)
    ranked = flat[order] * len(flat) / np.arange(1, len(flat) + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(flat)
    out[order] = np.minimum(adjusted, 1.0)
    return out.reshape(np.shape(p))


CORRECTIONS: Registry[str] = Registry("correction", parameter="correction")
CORRECTIONS.add("maxt", "maxt", help="max-statistic family-wise error (Nichols and Holmes 2002)")
CORRECTIONS.add("tfce", "tfce", help="threshold-free cluster enhancement, 2-D H=2 E=1 (Smith and Nichols 2009), family-wise")
CORRECTIONS.add("fdr", "fdr", help="Benjamini-Hochberg false discovery rate on the permutation p-values")


# --------------------------------------------------------------------------- relabellings


def _units(units: Sequence | None, n: int) -> np.ndarray:
    """Unit index per row (each row its own unit without ``units``)."""
    if units is None:
        return np.arange(n)
    ids = list(units)
    if len(ids) != n:
        raise HmtError(f"the permutation test needs one unit (patient) id per map: {len(ids)} ids for {n} maps")
    index: dict = {}
    return np.array([index.setdefault(u, len(index)) for u in ids])


def _label_blocks(in_a: np.ndarray, unit: np.ndarray, permutations: int, rng: np.random.Generator
                  ) -> tuple[Iterator[np.ndarray], int, bool]:
    """Blocks of relabellings (rows: 1 where a map goes to group A), the observed one first; whole units move together.
    Every relabelling when there are at most ``permutations`` + 1 of them."""
    count = int(unit.max()) + 1
    unit_in_a = np.zeros(count, bool)
    unit_in_a[unit[in_a]] = True
    chosen = int(unit_in_a.sum())
    total = math.comb(count, chosen)
    exact = total <= permutations + 1

    def blocks() -> Iterator[np.ndarray]:
        if exact:
            combos = (np.isin(np.arange(count), c) for c in itertools.combinations(range(count), chosen))
            rows = [unit_in_a] + [c for c in combos if not np.array_equal(c, unit_in_a)]
        else:
            rows = [unit_in_a] + [np.isin(np.arange(count), rng.permutation(count)[:chosen]) for _ in range(permutations)]
        for start in range(0, len(rows), _PERMUTATION_CHUNK):
            yield np.stack(rows[start:start + _PERMUTATION_CHUNK])[:, unit].astype(np.float64)

    return blocks(), (total if exact else permutations + 1), exact


def _sign_blocks(unit: np.ndarray, permutations: int, rng: np.random.Generator) -> tuple[Iterator[np.ndarray], int, bool]:
    """Blocks of sign flips (+1 / -1 per map), the observed (all +1) first; one sign per unit."""
    count = int(unit.max()) + 1
    exact = 2 ** count <= permutations + 1

    def blocks() -> Iterator[np.ndarray]:
        if exact:
            rows = [np.array([1 - 2 * ((i >> bit) & 1) for bit in range(count)]) for i in range(2 ** count)]
        else:
            rows = [np.ones(count, int)] + [rng.choice(np.array([-1, 1]), count) for _ in range(permutations)]
        for start in range(0, len(rows), _PERMUTATION_CHUNK):
            yield np.stack(rows[start:start + _PERMUTATION_CHUNK])[:, unit].astype(np.float64)

    return blocks(), (2 ** count if exact else permutations + 1), exact


def _products(weights: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weights @ data, weights**2 @ data**2) in float64, chunked over the rows of ``data``."""
    total = np.zeros((len(weights), data.shape[1]))
    squares = np.zeros_like(total)
    for start in range(0, len(data), _ROW_CHUNK):
        chunk = np.asarray(data[start:start + _ROW_CHUNK], np.float64)
        w = weights[:, start:start + _ROW_CHUNK]
        total += w @ chunk
        squares += (w * w) @ (chunk * chunk)
    return total, squares


# --------------------------------------------------------------------------- the test


def permutation_test(a: np.ndarray, b: np.ndarray | None, shape: tuple[int, int], *, paired: bool = False,
                     units: Sequence | None = None, tail: str = "two-sided", correction: str = "maxt",
                     permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0, margin: float = 0.0,
                     progress: Progress | None = None) -> PermutationResult:
    """Pixel-wise test of maps ``a`` (Na, P) against ``b`` (Nb, P), or of paired differences ``a`` (``paired``,
    ``b`` None) against 0, with ``shape`` = (H, W), P = H * W. ``units`` (one id per map of a then b; paired: per
    difference) are patients moved whole. ``margin`` > 0 tests an interval null (:func:`_interval_null`)."""
    TAILS.check(tail)
    CORRECTIONS.check(correction)
    if permutations < 1:
        raise HmtError(f"$permutations must be at least 1, got {permutations}", parameters=("permutations",))
    if not margin >= 0.0:
        raise HmtError(f"$min_difference must be 0 or more, got {margin}", parameters=("min_difference",))
    if margin > 0.0:
        return _interval_null(a, b, shape, margin, paired=paired, units=units, tail=tail, correction=correction,
                              permutations=permutations, seed=seed, progress=progress)
    a = np.asarray(a, np.float32)
    rng = np.random.default_rng(seed)
    if paired:
        if len(a) < 2:
            raise HmtError(f"a paired contrast needs at least 2 pairs, got {len(a)}")
        blocks, total, exact = _sign_blocks(_units(units, len(a)), permutations, rng)
        data, in_a = a, None
        effect = cohens_d(a, None)
    else:
        if b is None:
            raise HmtError("an unpaired contrast needs two groups")
        b = np.asarray(b, np.float32)
        if len(a) < 2 or len(b) < 2:
            raise HmtError(f"each group needs at least 2 maps, got {len(a)} and {len(b)}")
        data = np.concatenate([a, b])
        in_a = np.arange(len(data)) < len(a)
        unit = _units(units, len(data))
        shared = np.intersect1d(unit[in_a], unit[~in_a])
        if len(shared):
            raise HmtError(f"{len(shared)} unit(s) (patients) have maps in both groups: a two-group permutation test moves "
                           "each patient whole, so each must lie in one group")
        blocks, total, exact = _label_blocks(in_a, unit, permutations, rng)
        effect = cohens_d(a, b)
    values = np.asarray(data, np.float64)
    # Welch's t does not change when every map shifts alike: centred, the sums of squares lose no precision
    centred = values if paired else values - values.mean(axis=0)
    all_sum, all_squares = centred.sum(axis=0), (centred * centred).sum(axis=0)
    progress = progress or NullProgress()
    progress.start(total, f"permutations ({correction})")
    try:
        return _run(blocks, centred, all_sum, all_squares, in_a, total, exact, shape, tail, correction, effect, progress)
    finally:
        progress.finish()


def _run(blocks: Iterator[np.ndarray], centred: np.ndarray, all_sum: np.ndarray, all_squares: np.ndarray,
         in_a: np.ndarray | None, total: int, exact: bool, shape: tuple[int, int], tail: str, correction: str,
         effect: np.ndarray, progress: Progress) -> PermutationResult:
    """Every block of relabellings: the statistic maps, the per-pixel exceedances and the null's maxima."""
    observed: np.ndarray | None = None
    observed_tfce: np.ndarray | None = None
    exceed = np.zeros(centred.shape[1])
    maxima: list[np.ndarray] = []

    def enhance(t: np.ndarray) -> np.ndarray:
        return signed_tfce(t.reshape(shape), tail).ravel()

    for weights in blocks:
        if in_a is None:
            sums, _ = _products(weights, centred)
            t = _one_sample(sums, np.broadcast_to(all_squares, sums.shape), len(centred))
        else:
            sum_a, squares_a = _products(weights, centred)
            n_a = weights.sum(axis=1, keepdims=True)
            t = _welch(sum_a, squares_a, n_a, all_sum - sum_a, all_squares - squares_a, len(centred) - n_a)
        if observed is None:
            observed = t[0].copy()
            if correction == "tfce":
                observed_tfce = enhance(observed)
        statistic = tailed(t, tail)
        exceed += (statistic >= tailed(observed, tail)[None, :] - 1e-12).sum(axis=0)
        if correction == "tfce":
            maxima.append(np.abs(signed_tfce(t.reshape(-1, *shape), tail)).reshape(len(t), -1).max(axis=1))
        else:
            maxima.append(statistic.max(axis=1))
        progress.advance(len(weights))
    assert observed is not None
    null = np.concatenate(maxima)
    p_uncorrected = exceed / total
    if correction == "fdr":
        p = benjamini_hochberg(p_uncorrected)
    else:
        score = np.abs(observed_tfce) if observed_tfce is not None else tailed(observed, tail)
        p = (null[None, :] >= score[:, None] - 1e-12).sum(axis=1) / total
    return PermutationResult(observed.reshape(shape), effect.reshape(shape), p_uncorrected.reshape(shape), p.reshape(shape),
                             correction, tail, total - 1, exact, null,
                             None if observed_tfce is None else observed_tfce.reshape(shape))


def _interval_null(a: np.ndarray, b: np.ndarray | None, shape: tuple[int, int], margin: float, *, paired: bool,
                   units: Sequence | None, tail: str, correction: str, permutations: int, seed: int,
                   progress: Progress | None) -> PermutationResult:
    """Significance beyond a minimum difference (TREAT): H0 "mean a - mean b <= margin" (``greater``), ">= -margin"
    (``less``), or "|mean a - mean b| <= margin" (``two-sided``: both one-sided tests, Bonferroni over the two). Each
    side is the ordinary test of a shifted by the margin (exact at the boundary when the groups differ by a shift,
    conservative inside the null). The t-map and Cohen's d stay those of the unshifted data; p-values, the null's
    maxima and the TFCE map are the tests'.

    Reference: D. J. McCarthy and G. K. Smyth, "Testing significance relative to a fold-change threshold is a TREAT",
    Bioinformatics 25 (2009), https://doi.org/10.1093/bioinformatics/btp053."""
    sides = {"greater": ("greater",), "less": ("less",), "two-sided": ("greater", "less")}[tail]
    a = np.asarray(a, np.float32)
    tests = [permutation_test(a - np.float32(margin if side == "greater" else -margin), b, shape, paired=paired, units=units,
                              tail=side, correction=correction, permutations=permutations, seed=seed, progress=progress)
             for side in sides]
    plain = observed_t(a, None if paired else b)
    if len(tests) == 1:
        test = tests[0]
        p, p_uncorrected, tfce_map = test.p, test.p_uncorrected, test.tfce
    else:
        upper, lower = tests
        use_upper = upper.p <= lower.p
        p = np.minimum(1.0, 2.0 * np.where(use_upper, upper.p, lower.p))
        p_uncorrected = np.minimum(1.0, 2.0 * np.minimum(upper.p_uncorrected, lower.p_uncorrected))
        tfce_map = None if upper.tfce is None or lower.tfce is None else np.where(use_upper, upper.tfce, lower.tfce)
        test = upper
    effect = cohens_d(a, None if paired else b)
    return PermutationResult(plain.reshape(shape), effect.reshape(shape), p_uncorrected, p, correction, tail, test.permutations,
                             test.exact, np.concatenate([t.null_maxima for t in tests]), tfce_map)


def observed_t(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Welch's t of ``a`` against ``b`` per column, or (``b`` None) the one-sample t of ``a`` against 0."""
    a = np.asarray(a, np.float64)
    if b is None:
        return _one_sample(a.sum(axis=0), (a * a).sum(axis=0), len(a))
    b = np.asarray(b, np.float64)
    shift = np.concatenate([a, b]).mean(axis=0)  # Welch's t ignores a common shift; centred, no precision is lost
    a, b = a - shift, b - shift
    return _welch(a.sum(axis=0), (a * a).sum(axis=0), np.float64(len(a)), b.sum(axis=0), (b * b).sum(axis=0), np.float64(len(b)))
