"""Does the model rely on what a heatmap or a template marks? Deletion curves with debiased removal.

For each image: remove the top q % of a *ranking* of its pixels and measure how much the model's
probability for the class it predicted falls, and how accuracy falls, for q in
:data:`DEFAULT_FRACTIONS`. Rankings (registry :data:`RANKINGS`):

- ``heatmap``: the image's own map for its predicted class;
- ``template``: the predicted class's template, moved back into the image's frame (the inverse of its
  registration): the dataset-level test: if deleting the template's region hurts far more than
  deleting random pixels, the template marks what the model uses;
- ``random``: a seeded random ranking, the baseline.

And two fixed regions, one point each: everything outside the lungs, and the lungs (the image's own
lung segmentation where it succeeds, else the reference lung mask moved back).

Removal (registry :data:`REMOVALS`) is by noisy linear imputation by default (ROAD, Rong et al. 2022:
each removed pixel is the weighted mean of its neighbours, solved as one sparse linear system, plus
a little noise), so that removal does not itself create artefacts the model reacts to; ``blur`` and
``constant`` are the simpler classics.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from heatmap_templates.data.preprocess import unit_pixels
from heatmap_templates.errors import HmtError
from heatmap_templates.model.heads import HEADS, predicted_classes
from heatmap_templates.numeric.resample import upsample_maps
from heatmap_templates.registry import Registry
from heatmap_templates.templates.geometry import RegistrationError
from heatmap_templates.templates.lungs import segment_lungs

DEFAULT_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)
DEFAULT_REMOVAL = "road"
DEFAULT_SAMPLE = 100
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
    """What the rankings of one image need: its pixels, its own map for the predicted class, its alignment."""

    image: np.ndarray  # (H, W) float32 in [0, 1] at the model's input size
    heatmap: np.ndarray  # (H, W) its map for the predicted class
    template: np.ndarray | None  # the predicted class's template in the image's frame (None without a template)
    rng: np.random.Generator


RANKINGS: Registry[Callable[[ImageCase], np.ndarray | None]] = Registry("deletion ranking", parameter="ranking")
RANKINGS.add("heatmap", lambda case: case.heatmap, help="the image's own heatmap for its predicted class")
RANKINGS.add("template", lambda case: case.template, help="the predicted class's template moved into the image's frame")
RANKINGS.add("random", lambda case: case.rng.random(case.image.shape), help="a random order (the baseline)")


# --------------------------------------------------------------------------- the test


@dataclass
class DeletionResult:
    """Deletion curves per ranking and the fixed-region points (means over the images, with counts)."""

    fractions: list[float]
    removal: str
    n_images: int
    curves: dict[str, dict] = field(default_factory=dict)  # ranking -> probability, drop, accuracy (per fraction), areas
    regions: dict[str, dict] = field(default_factory=dict)  # outside_lungs / lungs -> probability, drop, accuracy
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"fractions": self.fractions, "removal": self.removal, "n_images": self.n_images, "curves": self.curves,
                "regions": self.regions, "notes": list(self.notes),
                "template_vs_random": _ratio(self.curves.get("template"), self.curves.get("random"))}


def _ratio(template: dict | None, random: dict | None) -> float | None:
    """How many times more the template's deletion lowers the probability than random deletion (mean drop, AOPC)."""
    if not template or not random or not random.get("aopc"):
        return None
    return float(template["aopc"] / random["aopc"]) if random["aopc"] > 0 else None


def _summary(probabilities: np.ndarray, original: np.ndarray, correct: np.ndarray | None, fractions: Sequence[float]) -> dict:
    """Curves (mean over images per fraction) and areas: the deletion area (trapezoid of the mean probability over
    the fractions; lower: the ranking marks what the model uses) and AOPC (the mean drop over the fractions)."""
    mean = probabilities.mean(axis=0)
    drops = (original[:, None] - probabilities).mean(axis=0)
    return {"probability": [float(v) for v in mean], "drop": [float(v) for v in drops],
            "accuracy": None if correct is None else [float(v) for v in correct.mean(axis=0)],
            "area": float(np.trapezoid(mean, fractions)), "aopc": float(drops.mean())}


def deletion_test(predict: Callable[[np.ndarray], np.ndarray], cases: Sequence[ImageCase], predicted: np.ndarray,
                  labels: np.ndarray, lungs: Sequence[np.ndarray | None], *, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  removal: str = DEFAULT_REMOVAL, seed: int = 0,
                  decide: Callable[[np.ndarray], np.ndarray] = lambda p: np.argmax(p, axis=1)) -> DeletionResult:
    """Deletion curves of ``cases`` (one per image) for every ranking, and the fixed regions.

    ``predict`` maps (B, H, W) [0, 1] images to class probabilities (B, K); ``predicted`` (N,) is each
    image's predicted class and ``labels`` (N,) its true class (-1 unknown: left out of accuracy);
    ``decide`` turns probabilities into predicted classes (the head's rule; arg-max by default).
    """
    REMOVALS.check(removal)
    remove = REMOVALS[removal]
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0.0 <= f < 1.0 for f in fractions):
        raise HmtError("deletion fractions must lie in [0, 1)")
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    result = DeletionResult(fractions, removal, len(cases))
    rng = np.random.default_rng(seed)
    known = labels >= 0

    def scored(images: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probability of each image's predicted class, whether the model is right) for images of ``rows``."""
        output = np.asarray(predict(images))
        return output[np.arange(len(rows)), predicted[rows]], np.asarray(decide(output)) == labels[rows]

    for ranking in RANKINGS.names():
        orders = [RANKINGS[ranking](case) for case in cases]
        rows = np.array([i for i, order in enumerate(orders) if order is not None], dtype=np.int64)
        if not len(rows):
            result.notes.append(f"{ranking}: no image has one (no template of the predicted classes)")
            continue
        ties = {i: rng.random(cases[i].image.shape) for i in rows}
        original, _ = scored(np.stack([cases[i].image for i in rows]), rows)
        probabilities = np.zeros((len(rows), len(fractions)))
        correct = np.zeros((len(rows), len(fractions)), bool)
        for column, fraction in enumerate(fractions):
            images = np.stack([remove(cases[i].image, top_mask(orders[i], fraction, ties[i]), rng) if fraction else cases[i].image
                               for i in rows])
            probabilities[:, column], correct[:, column] = scored(images, rows)
        labelled = known[rows]
        result.curves[ranking] = _summary(probabilities, original, correct[labelled] if labelled.any() else None, fractions) \
            | {"n": int(len(rows))}
    rows = np.array([i for i, mask in enumerate(lungs) if mask is not None and mask.any()], dtype=np.int64)
    if len(rows):
        base, base_correct = scored(np.stack([cases[i].image for i in rows]), rows)
        labelled = known[rows]
        for name, region in (("outside_lungs", np.logical_not), ("lungs", np.asarray)):
            probability, right = scored(np.stack([remove(cases[i].image, region(lungs[i]), rng) for i in rows]), rows)
            result.regions[name] = {
                "probability": float(probability.mean()), "drop": float((base - probability).mean()),
                "accuracy": float(right[labelled].mean()) if labelled.any() else None,
                "accuracy_before": float(base_correct[labelled].mean()) if labelled.any() else None, "n": int(len(rows)),
            }
    else:
        result.notes.append("no image has lungs (segmented or moved back): the fixed-region points are skipped")
    return result


def image_lungs(image: np.ndarray, reference_lungs_in_image: np.ndarray | None) -> np.ndarray | None:
    """The image's own lung segmentation where it succeeds, else the reference lung mask moved into the image."""
    try:
        return segment_lungs(image)
    except RegistrationError:
        return None if reference_lungs_in_image is None else reference_lungs_in_image >= 0.5


def heatmap_at_image_size(raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A class's layer-resolution map upsampled to the image (the store's upsampler)."""
    return upsample_maps(raw, shape)


def run_deletion(comparer, paths: Sequence[str], labels: np.ndarray, *, sample: int = DEFAULT_SAMPLE,
                 removal: str = DEFAULT_REMOVAL, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
                 batch_size: int = 32, progress=None) -> DeletionResult:
    """The deletion test on an evenly spaced sample of ``sample`` images of a labelled set (``labels``: class index
    per image, -1 unknown), with the comparer's model, CAM engine, registration and templates."""
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
    cases, predicted, kept_labels, lungs = [], [], [], []
    progress.start(len(chosen), "deletion: heatmaps")
    for batch in iter_model_batches([paths[i] for i in chosen], info.input_size, info.channels, info.preprocessing,
                                    batch_size=batch_size, skip_log=SkipLog(False), intensity=info.intensity):
        if len(batch.positions):
            result = engine.all_classes(batch.inputs)
            for row, position in enumerate(batch.positions):
                target = int(result.targets[row])
                image = unit_pixels(batch.images[row])
                alignment = registrar.estimate(image)
                name = comparer.class_names[target]
                template = comparer.file.templates.get(name)
                cases.append(ImageCase(image, heatmap_at_image_size(result.raw[row, target], image.shape),
                                       None if template is None else registrar.unwarp(np.asarray(template.mean, np.float32), alignment),
                                       np.random.default_rng(rng.integers(2**63))))
                predicted.append(target)
                kept_labels.append(int(labels[chosen[int(position)]]))
                lungs.append(image_lungs(image, registrar.unwarp(comparer.lung_mask.astype(np.float32), alignment)))
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
                         lungs, fractions=fractions, removal=removal, seed=seed,
                         decide=lambda probabilities: predicted_classes(probabilities, engine.head, engine.threshold))
