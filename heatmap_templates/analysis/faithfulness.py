"""Does the model rely on what a heatmap or a template marks? Deletion curves against like-for-like baselines.

For each image: remove the top q % of a *ranking* of its pixels and measure how much the model's
probability for the class it predicted falls, and how accuracy falls, for q in
:data:`DEFAULT_FRACTIONS`. Rankings (registry :data:`RANKINGS`):

- ``heatmap``: the image's own map for its predicted class;
- ``template``: the predicted class's template, moved back into the image's frame (the inverse of its
  registration): the dataset-level test.

Each ranking is removed most-relevant first (MoRF) and least-relevant first (LeRF), as ROAD recommends; a faithful
ranking hurts under MoRF and hardly under LeRF (``morf_minus_lerf``). Its AOPC (the mean drop over the fractions)
is compared, per image and as a ratio with a 95 % bootstrap interval over images, with three baselines of the same
area (:data:`BASELINES`): ``random`` scattered pixels (the classic, and the weakest change: imputation fills them
back), ``smooth`` random smooth regions inside the body (``draws`` per image and fraction), and ``moved``: the
ranked region itself moved to a random place inside the body (fractions up to 0.3, where it fits);
:mod:`heatmap_templates.analysis.deletion_regions` makes them. Only ``smooth`` and ``moved`` compare a region with
a region.

Fixed regions, one point each: everything outside the lungs, the lungs (the image's lung fields,
:func:`~heatmap_templates.templates.lungs.lung_fields`: its own lung segmentation united with the reference lung mask
moved back, so that an opacity segmentation reads as tissue is removed with the lungs), and, like for like with the lungs, random smooth regions of
the lungs' area inside the body and outside the lungs (``lungs_vs_elsewhere``: the difference of the drops).

Removal (registry :data:`REMOVALS`) is by noisy linear imputation by default (ROAD, Rong et al. 2022:
each removed pixel is the weighted mean of its neighbours, solved as one sparse linear system, plus
a little noise), so that removal does not itself create artefacts the model reacts to; ``blur`` and
``constant`` are the simpler classics.

Reference: Y. Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022,
https://arxiv.org/abs/2202.00449; AOPC: W. Samek et al., "Evaluating the visualization of what a deep neural network
has learned", IEEE TNNLS 2017, https://arxiv.org/abs/1509.06321.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np

from heatmap_templates.analysis.deletion_regions import (
    MAX_MOVED_FRACTION,
    body_mask,
    moved_region,
    smooth_random_region,
)
from heatmap_templates.data.preprocess import unit_pixels
from heatmap_templates.errors import HmtError
from heatmap_templates.model.heads import HEADS, predicted_classes
from heatmap_templates.numeric.bootstrap import mean_interval, ratio_of_means_interval
from heatmap_templates.numeric.resample import upsample_maps
from heatmap_templates.registry import Registry
from heatmap_templates.templates.lungs import lung_fields

DEFAULT_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)
DEFAULT_REMOVAL = "road"
DEFAULT_SAMPLE = 100
DEFAULT_DRAWS = 8  # random smooth regions per image and fraction
ROAD_NOISE = 0.01  # standard deviation of the noise added to imputed pixels ([0, 1] image units)

# --------------------------------------------------------------------------- removal


def noisy_linear_imputation(image: np.ndarray, removed: np.ndarray, rng: np.random.Generator, noise: float = ROAD_NOISE) -> np.ndarray:
    """ROAD's noisy linear imputation: every removed pixel is the weighted mean of its 8 neighbours (weight 1/6
    for the 4 direct, 1/12 for the diagonal ones; neighbours outside the image left out), one sparse linear
    system over all removed pixels, then Gaussian noise of ``noise`` on them."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import spsolve

    values = np.asarray(image, dtype=np.float64)
    removed = np.asarray(removed, dtype=bool)
    count = int(removed.sum())
    if count == 0:
        return values.astype(np.float32)
    height, width = values.shape
    index = np.full(values.shape, -1, dtype=np.int64)
    index[removed] = np.arange(count)
    ys, xs = np.nonzero(removed)
    diagonal = np.zeros(count)
    right_side = np.zeros(count)
    rows, columns, entries = [], [], []
    for dy, dx, weight in ((0, 1, 1 / 6), (0, -1, 1 / 6), (1, 0, 1 / 6), (-1, 0, 1 / 6),
                           (1, 1, 1 / 12), (1, -1, 1 / 12), (-1, 1, 1 / 12), (-1, -1, 1 / 12)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        own = np.flatnonzero(inside)
        diagonal[own] += weight
        neighbour = index[ny[inside], nx[inside]]
        unknown = neighbour >= 0
        rows.append(own[unknown])
        columns.append(neighbour[unknown])
        entries.append(np.full(int(unknown.sum()), -weight))
        right_side[own[~unknown]] += weight * values[ny[inside][~unknown], nx[inside][~unknown]]
    lonely = diagonal == 0
    diagonal[lonely] = 1.0
    right_side[lonely] = float(values[~removed].mean()) if (~removed).any() else 0.5
    matrix = csr_matrix((np.concatenate([diagonal, *entries]),
                         (np.concatenate([np.arange(count), *rows]), np.concatenate([np.arange(count), *columns]))),
                        shape=(count, count))
    filled = values.copy()
    filled[removed] = spsolve(matrix, right_side) + rng.normal(0.0, noise, count)
    return np.clip(filled, 0.0, 1.0).astype(np.float32)


def _blur(image: np.ndarray, removed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    blurred = cv2.GaussianBlur(np.asarray(image, np.float32), (0, 0), 0.05 * max(image.shape))
    return np.where(removed, blurred, image).astype(np.float32)


def _constant(image: np.ndarray, removed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.where(removed, float(np.mean(image)), image).astype(np.float32)


REMOVALS: Registry[Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]] = Registry("removal", parameter="removal")
REMOVALS.add("road", noisy_linear_imputation, help="noisy linear imputation from the neighbours (ROAD)")
REMOVALS.add("blur", _blur, help="a strongly blurred copy of the image")
REMOVALS.add("constant", _constant, help="the image's mean gray")


def top_mask(ranking: np.ndarray, fraction: float, tie_breaker: np.ndarray) -> np.ndarray:
    """The top ``fraction`` of pixels by ``ranking`` (ties broken by ``tie_breaker``), exactly round(q N) pixels."""
    count = int(round(fraction * ranking.size))
    mask = np.zeros(ranking.size, bool)
    if count:
        order = np.lexsort((-np.asarray(tie_breaker).ravel(), -np.nan_to_num(np.asarray(ranking, np.float64)).ravel()))
        mask[order[:count]] = True
    return mask.reshape(ranking.shape)


# --------------------------------------------------------------------------- rankings


@dataclass(frozen=True)
class ImageCase:
    """What the rankings of one image need: its pixels, its own map for the predicted class, its alignment, its body."""

    image: np.ndarray  # (H, W) float32 in [0, 1] at the model's input size
    heatmap: np.ndarray  # (H, W) its map for the predicted class
    template: np.ndarray | None  # the predicted class's template in the image's frame (None without a template)
    rng: np.random.Generator
    body: np.ndarray | None = None  # (H, W) bool: where the body is (None: Otsu's threshold of the image)


RANKINGS: Registry[Callable[[ImageCase], np.ndarray | None]] = Registry("deletion ranking", parameter="ranking")
RANKINGS.add("heatmap", lambda case: case.heatmap, help="the image's own heatmap for its predicted class")
RANKINGS.add("template", lambda case: case.template, help="the predicted class's template moved into the image's frame")

BASELINES = ("random", "smooth", "moved")  # scattered pixels; random smooth regions; the ranked region moved


# --------------------------------------------------------------------------- the result


@dataclass
class DeletionResult:
    """Deletion curves per ranking and baseline, the fixed-region points, and the ratios with their intervals.

    Layout 2 (``layout``) adds to layout 1 (curves' means, ``regions``, ``template_vs_random``): per-image AOPC and
    its interval in every curve, LeRF curves of the rankings, the smooth and moved baselines, ``ratios`` and the
    like-for-like region comparison; readers of layout 1 keep working on the keys it had.
    """

    fractions: list[float]
    removal: str
    n_images: int
    draws: int = 8
    curves: dict[str, dict] = field(default_factory=dict)  # ranking or baseline -> curve (MoRF; LeRF inside rankings)
    regions: dict[str, dict] = field(default_factory=dict)  # outside_lungs / lungs / lungs_area_elsewhere -> point
    ratios: dict[str, dict] = field(default_factory=dict)  # "<ranking>_vs_<baseline>" -> value, ci, n
    comparisons: dict[str, dict] = field(default_factory=dict)  # lungs_vs_elsewhere: drop difference, value, ci, n
    body: dict[str, int] = field(default_factory=dict)  # where the body masks came from: given / otsu -> images
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        template_vs_random = self.ratios.get("template_vs_random", {}).get("value")
        return {"layout": 2, "fractions": self.fractions, "removal": self.removal, "n_images": self.n_images,
                "draws": self.draws, "curves": self.curves, "regions": self.regions, "ratios": self.ratios,
                "comparisons": self.comparisons, "body": self.body, "notes": list(self.notes),
                "template_vs_random": template_vs_random}


def _curve(probabilities: np.ndarray, correct: np.ndarray, original: np.ndarray, labelled: np.ndarray,
           fractions: Sequence[float], groups: Sequence | None, seed: int) -> dict:
    """One curve from per-image probabilities (rows, fractions; NaN where an image has no point): the mean
    probability, drop and accuracy per fraction, the deletion area (trapezoid of the mean probability; lower: the
    removal hurts), AOPC (the mean drop over the fractions; higher: the removal hurts) per image and overall with
    its 95 % bootstrap interval over images. An image missing some fractions (a moved region that does not fit)
    has its AOPC over the fractions it has; ``n_per_fraction`` says how many images each point rests on."""
    known = np.isfinite(probabilities)
    rows = known[:, [i for i, f in enumerate(fractions) if f > 0]].any(axis=1) if any(f > 0 for f in fractions) \
        else known.all(axis=1)
    kept_groups = None if groups is None else [g for g, keep in zip(groups, rows, strict=True) if keep]
    probabilities, correct, original, labelled = probabilities[rows], correct[rows], original[rows], labelled[rows]
    drops = original[:, None] - probabilities
    per_image = np.array([row[np.isfinite(row)].mean() for row in drops])
    aopc = mean_interval(per_image, groups=kept_groups, seed=seed)
    counts = np.isfinite(probabilities).sum(axis=0)
    empty = not len(probabilities)

    def column_means(values: np.ndarray) -> list[float | None]:
        """Each column's mean over its finite values; None for a column without any (never NaN in the JSON)."""
        return [float(column[np.isfinite(column)].mean()) if np.isfinite(column).any() else None for column in values.T]

    mean = np.array([np.nan if v is None else v for v in column_means(probabilities)]) if not empty else None
    return {"fractions": [float(f) for f in fractions], "probability": None if empty else column_means(probabilities),
            "drop": None if empty else column_means(drops),
            "accuracy": column_means(np.where(np.isfinite(probabilities), correct, np.nan)[labelled]) if labelled.any() else None,
            "area": None if mean is None or not np.isfinite(mean).all() else float(np.trapezoid(mean, fractions)),
            "aopc": aopc.estimate, "aopc_ci": aopc.ci, "n": int(rows.sum()), "n_per_fraction": [int(c) for c in counts],
            "per_image_aopc": _per_row(per_image, rows)}


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def _per_row(values: np.ndarray, rows: np.ndarray) -> list[float | None]:
    """Per-image values over every image (None where the image has no value), in the images' order."""
    out: list[float | None] = [None] * len(rows)
    for position, value in zip(np.flatnonzero(rows), values, strict=True):
        out[int(position)] = float(value)
    return out


def _per_image(curve: dict) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in curve["per_image_aopc"]], np.float64)


# --------------------------------------------------------------------------- the test


class _Scorer:
    """Scores removals of the images: the probability of each image's predicted class and whether the model is
    right, NaN where an image has no mask."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], cases: Sequence[ImageCase], predicted: np.ndarray,
                 labels: np.ndarray, remove: Callable, decide: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator):
        self.predict, self.cases, self.predicted, self.labels = predict, cases, predicted, labels
        self.remove, self.decide, self.rng = remove, decide, rng
        everyone = np.arange(len(cases))
        self.original, self.original_correct = self._scored(np.stack([case.image for case in cases]), everyone)

    def _scored(self, images: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        output = np.asarray(self.predict(images))
        return output[np.arange(len(rows)), self.predicted[rows]], (np.asarray(self.decide(output)) == self.labels[rows])

    def score(self, masks: Sequence[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
        probability = np.full(len(masks), np.nan)
        correct = np.full(len(masks), np.nan)
        rows = np.array([i for i, mask in enumerate(masks) if mask is not None and mask.any()], dtype=np.int64)
        untouched = [i for i, mask in enumerate(masks) if mask is not None and not mask.any()]
        probability[untouched], correct[untouched] = self.original[untouched], self.original_correct[untouched]
        if len(rows):
            images = np.stack([self.remove(self.cases[i].image, masks[i], self.rng) for i in rows])
            probability[rows], correct[rows] = self._scored(images, rows)
        return probability, correct


def _sweep(scorer: _Scorer, fractions: Sequence[float], masks_at: Callable[[float], Sequence[np.ndarray | None]],
           draws: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(images, fractions) probabilities and correctness, the mean over ``draws`` calls of ``masks_at`` per fraction."""
    probability = np.zeros((len(scorer.cases), len(fractions)))
    correct = np.zeros_like(probability)
    for column, fraction in enumerate(fractions):
        for _ in range(draws):
            p, c = scorer.score(masks_at(fraction))
            probability[:, column] += p / draws
            correct[:, column] += c / draws
    return probability, correct


def _ranked_masks(orders: Sequence[np.ndarray | None], ties: Sequence[np.ndarray], fraction: float, *, least_first: bool = False,
                  move_into: Sequence[np.ndarray] | None = None, rng: np.random.Generator | None = None) -> list[np.ndarray | None]:
    """Each image's top ``fraction`` of its ranking (None without one): most relevant first, or least relevant first,
    or (``move_into``: the bodies) that region moved to a random place inside the body (None where it does not fit)."""
    masks: list[np.ndarray | None] = []
    for i, (order, tie) in enumerate(zip(orders, ties, strict=True)):
        if order is None:
            masks.append(None)
        elif least_first:
            masks.append(top_mask(-np.asarray(order, np.float64), fraction, -tie))
        elif move_into is not None and rng is not None:
            masks.append(moved_region(top_mask(order, fraction, tie), move_into[i], rng))
        else:
            masks.append(top_mask(order, fraction, tie))
    return masks


def deletion_test(predict: Callable[[np.ndarray], np.ndarray], cases: Sequence[ImageCase], predicted: np.ndarray,
                  labels: np.ndarray, lungs: Sequence[np.ndarray | None], *, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  removal: str = DEFAULT_REMOVAL, seed: int = 0, draws: int = DEFAULT_DRAWS, cell: float | None = None,
                  groups: Sequence | None = None,
                  decide: Callable[[np.ndarray], np.ndarray] = lambda p: np.argmax(p, axis=1)) -> DeletionResult:
    """Deletion curves of ``cases`` (one per image) for every ranking (MoRF and LeRF) and baseline, the fixed regions.

    ``predict`` maps (B, H, W) [0, 1] images to class probabilities (B, K); ``predicted`` (N,) is each image's
    predicted class and ``labels`` (N,) its true class (-1 unknown: left out of accuracy); ``decide`` turns
    probabilities into predicted classes (the head's rule; arg-max by default). ``cell``: the CAM cell's side in
    pixels, the smoothness of the random regions (default a 14th of the image's side); ``draws`` random smooth regions
    per image and fraction; ``groups`` (patient ids, one per image) make the intervals resample patients.
    """
    REMOVALS.check(removal)
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0.0 <= f < 1.0 for f in fractions):
        raise HmtError("deletion fractions must lie in [0, 1)")
    if draws < 1:
        raise HmtError(f"the deletion test needs at least one random region per image, got {draws}")
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    result = DeletionResult(fractions, removal, len(cases), draws)
    rng = np.random.default_rng(seed)
    scorer = _Scorer(predict, cases, predicted, labels, REMOVALS[removal], decide, rng)
    shape = cases[0].image.shape
    cell = float(cell) if cell else max(shape) / 14.0
    bodies = [case.body if case.body is not None else body_mask(case.image, lungs[i]) for i, case in enumerate(cases)]
    result.body = {"given": sum(case.body is not None for case in cases), "otsu": sum(case.body is None for case in cases)}
    ties = [rng.random(shape) for _ in cases]
    labelled = labels >= 0

    def curve(probability: np.ndarray, correct: np.ndarray, at: Sequence[float]) -> dict:
        return _curve(probability, correct, scorer.original, labelled, at, groups, seed)

    sweeps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for ranking in RANKINGS.names():
        orders = [RANKINGS[ranking](case) for case in cases]
        if all(order is None for order in orders):
            result.notes.append(f"{ranking}: no image has one (no template of the predicted classes)")
            continue
        sweeps[ranking] = _sweep(scorer, fractions, partial(_ranked_masks, orders, ties))
        lerf = _sweep(scorer, fractions, partial(_ranked_masks, orders, ties, least_first=True))
        result.curves[ranking] = curve(*sweeps[ranking], fractions) | {"lerf": curve(*lerf, fractions)}
        difference = _per_image(result.curves[ranking]) - _per_image(result.curves[ranking]["lerf"])
        result.curves[ranking]["morf_minus_lerf"] = mean_interval(difference, groups=groups, seed=seed).to_dict()
        moved_at = [f for f in fractions if f <= MAX_MOVED_FRACTION]
        moved = _sweep(scorer, moved_at, partial(_ranked_masks, orders, ties, move_into=bodies, rng=rng))
        result.curves[f"moved_{ranking}"] = curve(*moved, moved_at)
        sweeps[f"moved_{ranking}"] = moved

    def scattered(fraction: float) -> list[np.ndarray | None]:
        return [top_mask(rng.random(shape), fraction, tie) for tie in ties]

    def smooth(fraction: float) -> list[np.ndarray | None]:
        return [smooth_random_region(shape, int(round(fraction * np.prod(shape))), cell, body, rng) for body in bodies]

    sweeps["random"] = _sweep(scorer, fractions, scattered)
    result.curves["random"] = curve(*sweeps["random"], fractions)
    sweeps["smooth"] = _sweep(scorer, fractions, smooth, draws=draws)
    result.curves["smooth"] = curve(*sweeps["smooth"], fractions)
    result.ratios = _ratios(result.curves, sweeps, scorer.original, fractions, groups, seed)
    _fixed_regions(result, scorer, lungs, bodies, cell, rng, draws, labelled, groups, seed)
    return result


def _ratios(curves: dict[str, dict], sweeps: dict[str, tuple[np.ndarray, np.ndarray]], original: np.ndarray,
            fractions: Sequence[float], groups: Sequence | None, seed: int) -> dict[str, dict]:
    """Each ranking's AOPC over each baseline's (ratio of the mean per-image AOPCs over the images both have, with
    its interval); against the moved region, both over the fractions and images where the moved region fits."""
    ratios = {}
    for ranking in RANKINGS.names():
        if ranking not in curves:
            continue
        for baseline in ("random", "smooth"):
            ratios[f"{ranking}_vs_{baseline}"] = ratio_of_means_interval(
                _per_image(curves[ranking]), _per_image(curves[baseline]), groups=groups, seed=seed).to_dict()
        moved = curves[f"moved_{ranking}"]
        columns = [fractions.index(f) for f in moved["fractions"]]
        fits = np.isfinite(sweeps[f"moved_{ranking}"][0])  # own drops over the very fractions where the region moved
        own_drops = np.where(fits, original[:, None] - sweeps[ranking][0][:, columns], np.nan)
        own = np.array([row[np.isfinite(row)].mean() if np.isfinite(row).any() else np.nan for row in own_drops])
        ratios[f"{ranking}_vs_moved"] = ratio_of_means_interval(own, _per_image(moved), groups=groups, seed=seed).to_dict() \
            | {"fractions": moved["fractions"]}
    return ratios


def _fixed_regions(result: DeletionResult, scorer: _Scorer, lungs: Sequence[np.ndarray | None], bodies: Sequence[np.ndarray],
                   cell: float, rng: np.random.Generator, draws: int, labelled: np.ndarray, groups: Sequence | None,
                   seed: int) -> None:
    """The lungs, everything outside them, and (like for like with the lungs) random smooth regions of the lungs'
    area inside the body and outside the lungs, ``draws`` per image: one point each, per image and overall."""
    has_lungs = [mask is not None and bool(np.asarray(mask).any()) for mask in lungs]
    if not any(has_lungs):
        result.notes.append("no image has lungs (segmented or moved back): the fixed-region points are skipped")
        return
    shape = scorer.cases[0].image.shape

    def lungs_removed(_: float) -> list[np.ndarray | None]:
        return [np.asarray(m, bool) if keep else None for m, keep in zip(lungs, has_lungs, strict=True)]

    def outside_removed(_: float) -> list[np.ndarray | None]:
        return [~np.asarray(m, bool) if keep else None for m, keep in zip(lungs, has_lungs, strict=True)]

    def elsewhere_removed(_: float) -> list[np.ndarray | None]:
        return [smooth_random_region(shape, int(np.asarray(m).sum()), cell, body & ~np.asarray(m, bool), rng) if keep else None
                for m, body, keep in zip(lungs, bodies, has_lungs, strict=True)]

    regions = {"outside_lungs": outside_removed, "lungs": lungs_removed, "lungs_area_elsewhere": elsewhere_removed}
    drops = {}
    for name, masks_at in regions.items():
        probability, correct = _sweep(scorer, [1.0], masks_at, draws=draws if name == "lungs_area_elsewhere" else 1)
        probability, correct = probability[:, 0], correct[:, 0]
        drops[name] = scorer.original - probability
        known = np.isfinite(probability)
        right = np.where(known & labelled, correct, np.nan)
        drop, accuracy = mean_interval(drops[name], groups=groups, seed=seed), mean_interval(right, groups=groups, seed=seed)
        before = np.where(known & labelled, scorer.original_correct, np.nan)
        result.regions[name] = {
            "probability": float(np.nanmean(probability)), "drop": drop.estimate, "drop_ci": drop.ci,
            "accuracy": accuracy.estimate, "accuracy_ci": accuracy.ci,
            "accuracy_before": float(np.nanmean(before)) if np.isfinite(before).any() else None, "n": int(known.sum()),
            "per_image_drop": [None if not np.isfinite(v) else float(v) for v in drops[name]],
        }
    result.comparisons["lungs_vs_elsewhere"] = mean_interval(drops["lungs"] - drops["lungs_area_elsewhere"], groups=groups,
                                                             seed=seed).to_dict()


def heatmap_at_image_size(raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A class's layer-resolution map upsampled to the image (the store's upsampler)."""
    return upsample_maps(raw, shape)


def run_deletion(comparer, paths: Sequence[str], labels: np.ndarray, *, sample: int = DEFAULT_SAMPLE,
                 removal: str = DEFAULT_REMOVAL, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
                 batch_size: int = 32, progress=None, draws: int = DEFAULT_DRAWS,
                 bodies: Callable[[str], np.ndarray | None] | None = None,
                 groups: Sequence | None = None) -> DeletionResult:
    """The deletion test on an evenly spaced sample of ``sample`` images of a labelled set (``labels``: class index
    per image, -1 unknown), with the comparer's model, CAM engine, registration and templates.

    ``bodies`` gives an image's body mask at input size (the phantom's exact one; None: Otsu's threshold of the
    image); ``groups`` (patient ids, one per path) make the intervals resample patients."""
    from heatmap_templates.data.preprocess import to_model_input
    from heatmap_templates.errors import SkipLog
    from heatmap_templates.explain.heatmaps import iter_model_batches
    from heatmap_templates.progress import NullProgress

    if sample < 1:
        raise HmtError(f"the deletion sample must be at least 1 image, got {sample}")
    progress = progress or NullProgress()
    chosen = np.unique(np.linspace(0, len(paths) - 1, min(sample, len(paths))).astype(np.int64)) if len(paths) else np.zeros(0, np.int64)
    info, engine, registrar = comparer.info, comparer.engine, comparer.registrar
    rng = np.random.default_rng(seed)
    cases, predicted, kept_labels, lungs, kept_groups = [], [], [], [], []
    cell = None
    progress.start(len(chosen), "deletion: heatmaps")
    for batch in iter_model_batches([paths[i] for i in chosen], info.input_size, info.channels, info.preprocessing,
                                    batch_size=batch_size, skip_log=SkipLog(False), intensity=info.intensity):
        if len(batch.positions):
            result = engine.all_classes(batch.inputs)
            for row, position in enumerate(batch.positions):
                target = int(result.targets[row])
                image = unit_pixels(batch.images[row])
                cell = image.shape[0] / result.raw.shape[-2]  # one CAM cell, in pixels
                alignment = registrar.estimate(image)
                name = comparer.class_names[target]
                template = comparer.file.templates.get(name)
                index = int(chosen[int(position)])
                cases.append(ImageCase(image, heatmap_at_image_size(result.raw[row, target], image.shape),
                                       None if template is None else registrar.unwarp(np.asarray(template.mean, np.float32), alignment),
                                       np.random.default_rng(rng.integers(2**63)), None if bodies is None else bodies(paths[index])))
                predicted.append(target)
                kept_labels.append(int(labels[index]))
                kept_groups.append(None if groups is None else groups[index])
                lungs.append(lung_fields(image, registrar.unwarp(comparer.lung_mask.astype(np.float32), alignment),
                                         aligned=alignment.method != "none")[0])
        progress.advance(batch_size)
    progress.finish()
    if not cases:
        raise HmtError("no image of the deletion sample could be read")

    def predict(images: np.ndarray) -> np.ndarray:
        outputs = [engine.predict(to_model_input(images[start:start + batch_size], info.channels, info.preprocessing))
                   for start in range(0, len(images), batch_size)]
        return np.concatenate(outputs)

    multi_label = HEADS[engine.head].multi_label  # accuracy needs one class per image: left out for multi-label models
    return deletion_test(predict, cases, np.array(predicted), np.full(len(cases), -1) if multi_label else np.array(kept_labels),
                         lungs, fractions=fractions, removal=removal, seed=seed, draws=draws, cell=cell,
                         groups=None if groups is None else kept_groups,
                         decide=lambda probabilities: predicted_classes(probabilities, engine.head, engine.threshold))
