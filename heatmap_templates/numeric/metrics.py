"""Quality measures over plain numpy arrays: classification metrics and the papers' binary readings.

Every function here is pure (arrays in, numbers or dicts of numbers out) and never returns NaN:
a ratio with an empty denominator is 0.0, and an AUC that is undefined (one class absent) is None.
Other stages add their own measures (localisation, lung-field energy) as further functions.
The reports give their accuracies, AUCs and F1s a 95 % interval (``<key>_ci``, None where the number is undefined)
from the shared bootstrap (:mod:`heatmap_templates.numeric.bootstrap`) through :class:`RowResampler`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from heatmap_templates.errors import HmtError
from heatmap_templates.numeric.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, Interval, bootstrap_interval

__all__ = [
    "confusion_matrix",
    "precision_recall_f1",
    "roc_auc",
    "RowResampler",
    "auc_interval",
    "interval_ci",
    "add_interval",
    "one_vs_rest_auc",
    "binary_metrics",
    "binary_readings",
    "classification_report",
    "multilabel_report",
    "is_covid_class",
    "is_normal_class",
    "lung_field_energy",
    "pixel_auc",
    "percentile_rank",
    "localisation_auc",
]


def _safe_ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, or 0.0 when the denominator is 0 (no NaN ever leaves this module)."""
    return float(numerator) / float(denominator) if denominator else 0.0


def _check_labels(y_true: np.ndarray, num_classes: int, what: str = "labels") -> np.ndarray:
    labels = np.asarray(y_true)
    if labels.ndim != 1:
        raise HmtError(f"{what} must be a 1-D array of class indices, got shape {labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise HmtError(f"{what} must lie in 0..{num_classes - 1}")
    return labels


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts; row = true class, column = predicted class."""
    true = _check_labels(y_true, num_classes, "true labels")
    pred = _check_labels(y_pred, num_classes, "predicted labels")
    if true.shape != pred.shape:
        raise HmtError(f"{true.size} true labels but {pred.size} predictions")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true, pred), 1)
    return matrix


def precision_recall_f1(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 from a confusion matrix (0.0 where undefined)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positive = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    precision = np.array([_safe_ratio(tp, n) for tp, n in zip(true_positive, predicted, strict=True)])
    recall = np.array([_safe_ratio(tp, n) for tp, n in zip(true_positive, actual, strict=True)])
    f1 = np.array([_safe_ratio(2 * p * r, p + r) for p, r in zip(precision, recall, strict=True)])
    return precision, recall, f1


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve by the Mann-Whitney U statistic; ties count one half.

    AUC = (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with tied scores
    given their average rank. Returns None when either class is absent (the AUC is undefined).
    """
    values = np.asarray(scores, dtype=np.float64).ravel()
    is_positive = np.asarray(positive, dtype=bool).ravel()
    if values.shape != is_positive.shape:
        raise HmtError(f"{values.size} scores but {is_positive.size} labels")
    if not np.all(np.isfinite(values)):
        raise HmtError("scores for an ROC AUC must be finite numbers")
    n_positive = int(is_positive.sum())
    n_negative = int(is_positive.size - n_positive)
    if n_positive == 0 or n_negative == 0:
        return None
    from scipy.stats import rankdata  # scipy.stats costs ~1 s to import; only AUCs need it

    ranks = rankdata(values, method="average")
    u_statistic = ranks[is_positive].sum() - n_positive * (n_positive + 1) / 2.0
    return float(u_statistic / (n_positive * n_negative))


# --------------------------------------------------------------------------- 95 % intervals of the reports' numbers


def _tie_index(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """Each score's position among the distinct scores (ties share one), and how many distinct scores there are."""
    values, inverse = np.unique(np.asarray(scores, np.float64), return_inverse=True)
    return inverse.ravel(), len(values)


def _weighted_auc(ties: tuple[np.ndarray, int], positive: np.ndarray, weights: np.ndarray) -> float:
    """ROC AUC with row weights: the sum over (positive i, negative j) of w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) over
    W_pos W_neg, which for a resample's draw counts is the resample's own Mann-Whitney AUC; NaN when a class weighs 0."""
    inverse, size = ties
    on_positive = np.bincount(inverse, weights=weights * positive, minlength=size)
    on_negative = np.bincount(inverse, weights=weights * ~positive, minlength=size)
    total_positive, total_negative = on_positive.sum(), on_negative.sum()
    if total_positive <= 0 or total_negative <= 0:
        return float("nan")
    below = np.cumsum(on_negative) - on_negative
    # elementwise products and sums, not ``@``: a threaded BLAS call costs more than this whole function on a busy machine
    return float(np.sum(on_positive * (below + 0.5 * on_negative)) / (total_positive * total_negative))


def _weighted_share(hits: np.ndarray, weights: np.ndarray) -> float:
    total = weights.sum()
    return float(np.sum(weights * hits) / total) if total > 0 else float("nan")


def _weighted_f1(decided: np.ndarray, actual: np.ndarray, weights: np.ndarray) -> float:
    """F1 = 2 tp / (2 tp + fp + fn) of weighted rows (0.0 without a positive decision or truth, as binary_metrics)."""
    tp, fp, fn = (float(np.sum(weights * (decided & actual))), float(np.sum(weights * (decided & ~actual))),
                  float(np.sum(weights * (~decided & actual))))
    return _safe_ratio(2 * tp, 2 * tp + fp + fn)


def _mean_defined(values: Sequence[float]) -> float:
    defined = [value for value in values if np.isfinite(value)]
    return float(np.mean(defined)) if defined else float("nan")


class RowResampler:
    """Percentile-bootstrap 95 % intervals of several numbers computed over the same rows (images), from the same
    resamples (:func:`~heatmap_templates.numeric.bootstrap.bootstrap_interval`, whole groups with ``groups``, seeded).

    A resample is handed to a statistic as weights on the original rows (how often it drew each row), so that a
    resample's AUC or confusion matrix needs neither a copy of the rows nor a new ranking: the same value as the
    statistic of the resampled rows, in O(N)."""

    def __init__(self, n: int, groups: Sequence | None = None, seed: int = 0, resamples: int = DEFAULT_RESAMPLES) -> None:
        self.n, self.groups, self.seed, self.resamples = int(n), groups, seed, resamples

    def of(self, statistic: Callable[[np.ndarray], float]) -> Interval:
        """The interval of ``statistic(weights)`` (weights (N,): 1.0 each for the data themselves; NaN: undefined)."""
        def resampled(rows: np.ndarray) -> float:
            return statistic(np.bincount(rows, minlength=self.n).astype(np.float64))

        return bootstrap_interval(resampled, np.arange(self.n), groups=self.groups, seed=self.seed, resamples=self.resamples)

    def share(self, hits: np.ndarray, rows: np.ndarray | None = None) -> Interval:
        """A share (accuracy) of boolean ``hits`` over the rows (or the masked ``rows`` of every resample)."""
        values, keep = np.asarray(hits, np.float64), _mask(rows, self.n)
        return self.of(lambda weights: _weighted_share(values[keep], weights[keep]))

    def auc(self, scores: np.ndarray, positive: np.ndarray, rows: np.ndarray | None = None) -> Interval:
        """ROC AUC of ``scores`` for ``positive`` (over the masked ``rows``); resamples lacking a class are dropped."""
        keep = _mask(rows, self.n)
        ties, actual = _tie_index(np.asarray(scores)[keep]), np.asarray(positive, bool)[keep]
        return self.of(lambda weights: _weighted_auc(ties, actual, weights[keep]))


def _mask(rows: np.ndarray | None, n: int) -> np.ndarray:
    return np.ones(n, bool) if rows is None else np.asarray(rows, bool)


def auc_interval(scores: np.ndarray | Sequence[float], positive: np.ndarray | Sequence[bool], *, groups: Sequence | None = None,
                 seed: int = 0, resamples: int = DEFAULT_RESAMPLES) -> Interval:
    """:func:`roc_auc` with its percentile-bootstrap 95 % interval over rows (whole ``groups``); resamples without a
    positive or a negative are dropped and counted."""
    values = np.asarray(scores, np.float64).ravel()
    return RowResampler(len(values), groups, seed, resamples).auc(values, np.asarray(positive, bool).ravel())


def interval_ci(interval: Interval) -> list[float | None] | None:
    """An interval's [low, high] as a report keeps it beside its number: None where the number is undefined."""
    return None if interval.estimate is None else interval.ci


def add_interval(record: dict, key: str, interval: Interval) -> dict:
    """``record[<key>_ci]`` beside ``record[key]``, and ``<key>_dropped_resamples`` when some resamples were undefined."""
    record[f"{key}_ci"] = interval_ci(interval)
    if interval.dropped and interval.estimate is not None:
        record[f"{key}_dropped_resamples"] = interval.dropped
    return record


def _bootstrap_record(n: int, groups: Sequence | None, resamples: int = DEFAULT_RESAMPLES) -> dict:
    """How a report's intervals were computed."""
    return {"confidence": DEFAULT_CONFIDENCE, "resamples": resamples, "method": "percentile bootstrap",
            "unit": "image" if groups is None else "patient", "units": n if groups is None else len(set(groups))}


def one_vs_rest_auc(probabilities: np.ndarray, y_true: np.ndarray) -> list[float | None]:
    """ROC AUC of each class's probability for separating that class from all others."""
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = _check_labels(y_true, probs.shape[1])
    return [roc_auc(probs[:, k], labels == k) for k in range(probs.shape[1])]


def binary_metrics(predicted_positive: np.ndarray, actual_positive: np.ndarray) -> dict[str, float | int]:
    """Accuracy, sensitivity, specificity, precision and F1 of a yes/no decision."""
    predicted = np.asarray(predicted_positive, dtype=bool).ravel()
    actual = np.asarray(actual_positive, dtype=bool).ravel()
    tp = int(np.sum(predicted & actual))
    tn = int(np.sum(~predicted & ~actual))
    fp = int(np.sum(predicted & ~actual))
    fn = int(np.sum(~predicted & actual))
    sensitivity = _safe_ratio(tp, tp + fn)
    precision = _safe_ratio(tp, tp + fp)
    return {
        "accuracy": _safe_ratio(tp + tn, actual.size),
        "sensitivity": sensitivity,
        "specificity": _safe_ratio(tn, tn + fp),
        "precision": precision,
        "f1": _safe_ratio(2 * precision * sensitivity, precision + sensitivity),
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
    }


def is_covid_class(name: str) -> bool:
    """True for the usual spellings of the COVID-19 class (covid, COVID-19, covid_19, covid19)."""
    return name.lower().replace("-", "").replace("_", "") in {"covid", "covid19"}


def is_normal_class(name: str) -> bool:
    """True for the 'normal' (no finding) class."""
    return name.lower() == "normal"


def _reading(probabilities: np.ndarray, labels: np.ndarray, positive_classes: list[int], positive_name: str,
             resampler: RowResampler | None = None) -> dict:
    """One binary reading of a K-class output, by summed probabilities and by the mapped arg-max.

    Summed: the probability of the positive group is the sum of its classes' softmax outputs and
    the image is called positive when that sum exceeds 0.5 (a tie at exactly 0.5 is negative).
    Arg-max: the image is positive when the K-class prediction falls in the positive group.
    """
    in_group = np.zeros(probabilities.shape[1], dtype=bool)
    in_group[positive_classes] = True
    actual = in_group[labels]
    positive_probability = probabilities[:, in_group].sum(axis=1)
    summed = {**binary_metrics(positive_probability > 0.5, actual), "auc": roc_auc(positive_probability, actual)}
    argmax = binary_metrics(in_group[probabilities.argmax(axis=1)], actual)
    if resampler is not None:  # 95 % intervals of the accuracies and the AUC
        add_interval(summed, "accuracy", resampler.share((positive_probability > 0.5) == actual))
        add_interval(summed, "auc", resampler.auc(positive_probability, actual))
        add_interval(argmax, "accuracy", resampler.share(in_group[probabilities.argmax(axis=1)] == actual))
    return {
        "positive": positive_name,
        "n_positive": int(actual.sum()),
        "n_negative": int((~actual).sum()),
        "summed_probability": summed,
        "argmax": argmax,
    }


def binary_readings(probabilities: np.ndarray, y_true: np.ndarray, class_names: list[str], *,
                    resampler: RowResampler | None = None) -> dict[str, dict]:
    """The first paper's binary readings of a multi-class output, when the classes allow them.

    ``covid_vs_noncovid`` (positive: covid) when a covid class exists, and ``normal_vs_abnormal``
    (positive: abnormal, i.e. every class but normal) when a normal class exists; each computed
    both by summing softmax probabilities and by mapping the arg-max (see ``_reading``); with a ``resampler`` over the
    rows, the accuracies and the AUC get their 95 % intervals (``accuracy_ci``, ``auc_ci``).
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise HmtError(f"probabilities must have shape (N, {len(class_names)}), got {probs.shape}")
    labels = _check_labels(y_true, len(class_names))
    readings: dict[str, dict] = {}
    covid = [k for k, name in enumerate(class_names) if is_covid_class(name)]
    if covid and len(covid) < len(class_names):
        readings["covid_vs_noncovid"] = _reading(probs, labels, covid, "covid", resampler)
    normal = [k for k, name in enumerate(class_names) if is_normal_class(name)]
    if normal and len(normal) < len(class_names):
        abnormal = [k for k in range(len(class_names)) if k not in normal]
        readings["normal_vs_abnormal"] = _reading(probs, labels, abnormal, "abnormal", resampler)
    return readings


def classification_report(probabilities: np.ndarray, y_true: np.ndarray, class_names: list[str], *,
                          predicted: np.ndarray | None = None, groups: Sequence | None = None, seed: int = 0) -> dict:
    """Everything `hmt evaluate` reports, as a JSON-ready dict.

    Keys: ``n``, ``accuracy``, ``class_names``, ``confusion_matrix`` (rows true, columns predicted),
    ``per_class`` ({name: precision, recall, f1, support, auc}), ``macro`` (mean precision, recall,
    F1 over classes present in the data; mean AUC over classes where it is defined) and
    ``binary_readings``. ``predicted`` are the model's decisions (default: the most probable class;
    a one-output sigmoid model decides at its threshold).

    Intervals (:func:`_classification_intervals`): ``accuracy_ci``, each class's ``auc_ci`` (and ``n``, the images
    its one-vs-rest AUC rests on), ``macro`` ``f1_ci`` and ``auc_ci``, the binary readings' accuracies and AUC
    (``accuracy_ci``, ``auc_ci``), 95 % percentile bootstrap over the images,
    whole patients with ``groups`` (one id per image), seeded by ``seed``; ``bootstrap`` says how.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise HmtError(f"probabilities must have shape (N, {len(class_names)}), got {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise HmtError("the model produced non-finite probabilities")
    labels = _check_labels(y_true, len(class_names))
    if predicted is not None:
        predictions = _check_labels(predicted, len(class_names), "predicted labels")
    else:
        predictions = probs.argmax(axis=1) if probs.shape[0] else np.zeros(0, dtype=np.int64)
    matrix = confusion_matrix(labels, predictions, len(class_names))
    precision, recall, f1 = precision_recall_f1(matrix)
    aucs = one_vs_rest_auc(probs, labels)
    support = matrix.sum(axis=1)
    present = support > 0
    defined_aucs = [auc for auc in aucs if auc is not None]
    resampler = RowResampler(labels.size, groups, seed)
    report: dict = {
        "n": int(labels.size),
        "accuracy": _safe_ratio(np.trace(matrix), labels.size),
        "class_names": list(class_names),
        "confusion_matrix": matrix.tolist(),
        "per_class": {
            name: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
                "auc": aucs[k],
            }
            for k, name in enumerate(class_names)
        },
        "macro": {
            "precision": float(precision[present].mean()) if present.any() else 0.0,
            "recall": float(recall[present].mean()) if present.any() else 0.0,
            "f1": float(f1[present].mean()) if present.any() else 0.0,
            "auc": float(np.mean(defined_aucs)) if defined_aucs else None,
        },
        "binary_readings": binary_readings(probs, labels, class_names, resampler=resampler),
    }
    return _classification_intervals(report, probs, labels, predictions, resampler)


def _classification_intervals(report: dict, probs: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                              resampler: RowResampler) -> dict:
    """``report`` with the intervals of its accuracy, per-class and macro AUCs and macro F1 (every number recomputed
    on each resample as on the data; resamples where one is undefined, e.g. a class absent, dropped and counted)."""
    k = probs.shape[1]
    add_interval(report, "accuracy", resampler.share(labels == predictions))
    positives = [labels == j for j in range(k)]
    ties = [_tie_index(probs[:, j]) for j in range(k)]
    for j, name in enumerate(report["class_names"]):
        report["per_class"][name]["n"] = int(labels.size)
        add_interval(report["per_class"][name], "auc", resampler.auc(probs[:, j], positives[j]))

    def macro_f1(weights: np.ndarray) -> float:
        matrix = np.bincount(labels * k + predictions, weights=weights, minlength=k * k).reshape(k, k)
        present = matrix.sum(axis=1) > 0
        return float(precision_recall_f1(matrix)[2][present].mean()) if present.any() else 0.0

    add_interval(report["macro"], "f1", resampler.of(macro_f1))
    add_interval(report["macro"], "auc", resampler.of(
        lambda weights: _mean_defined([_weighted_auc(ties[j], positives[j], weights) for j in range(k)])))
    report["macro"]["n"] = int(labels.size)
    report["bootstrap"] = _bootstrap_record(labels.size, resampler.groups, resampler.resamples)
    return report


def multilabel_report(probabilities: np.ndarray, findings: np.ndarray, names: list[str], threshold: float = 0.5, *,
                      groups: Sequence | None = None, seed: int = 0) -> dict:
    """Per-finding metrics of a multi-label model, each over the images where that finding is known.

    ``findings`` (N, L): 1 positive, 0 negative, -1 unknown (left out). Per finding: ``n`` known,
    ``positives``, ``auc`` (None when undefined) and the decision at ``threshold`` (accuracy,
    sensitivity, specificity, precision, F1). ``macro`` averages the defined AUCs and the F1s.
    Intervals: each finding's ``auc_ci`` and ``accuracy_ci``, ``macro`` ``auc_ci`` and ``f1_ci``: 95 % percentile
    bootstrap over the images (whole patients with ``groups``), each finding over its known images of a resample.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    values = np.asarray(findings)
    if probs.ndim != 2 or probs.shape[1] != len(names) or values.shape != probs.shape:
        raise HmtError(f"probabilities {probs.shape} and findings {values.shape} must both be (N, {len(names)})")
    if not np.all(np.isfinite(probs)):
        raise HmtError("the model produced non-finite probabilities")
    per_finding = {}
    for k, name in enumerate(names):
        known = values[:, k] >= 0
        actual = values[known, k] == 1
        decision = binary_metrics(probs[known, k] >= threshold, actual)
        per_finding[name] = {"n": int(known.sum()), "positives": int(actual.sum()),
                             "auc": roc_auc(probs[known, k], actual) if known.any() else None, **decision}
    aucs = [row["auc"] for row in per_finding.values() if row["auc"] is not None]
    report: dict = {
        "n": int(len(probs)),
        "multi_label": True,
        "class_names": list(names),
        "threshold": float(threshold),
        "per_finding": per_finding,
        "macro": {"auc": float(np.mean(aucs)) if aucs else None,
                  "f1": float(np.mean([row["f1"] for row in per_finding.values()])) if per_finding else 0.0},
    }
    return _multilabel_intervals(report, probs, values, threshold, RowResampler(len(probs), groups, seed))


def _multilabel_intervals(report: dict, probs: np.ndarray, values: np.ndarray, threshold: float, resampler: RowResampler) -> dict:
    """``report`` with each finding's AUC and accuracy interval and the macro AUC's and F1's, over resampled images."""
    known = values >= 0
    actual, decided = values == 1, probs >= threshold
    for k, row in enumerate(report["per_finding"].values()):
        add_interval(row, "auc", resampler.auc(probs[:, k], actual[:, k], known[:, k]))
        add_interval(row, "accuracy", resampler.share(decided[:, k] == actual[:, k], known[:, k]))
    findings = range(values.shape[1])
    ties = [_tie_index(probs[known[:, k], k]) for k in findings]
    add_interval(report["macro"], "auc", resampler.of(lambda weights: _mean_defined(
        [_weighted_auc(ties[k], actual[known[:, k], k], weights[known[:, k]]) for k in findings])))
    add_interval(report["macro"], "f1", resampler.of(lambda weights: float(np.mean(
        [_weighted_f1(decided[known[:, k], k], actual[known[:, k], k], weights[known[:, k]]) for k in findings]))
        if len(findings) else 0.0))
    report["macro"]["n"] = int(len(probs))
    report["bootstrap"] = _bootstrap_record(len(probs), resampler.groups, resampler.resamples)
    return report


# --------------------------------------------------------------------------- heatmaps against masks (compare stage)


def lung_field_energy(maps: np.ndarray, lung_mask: np.ndarray) -> np.ndarray | float:
    """Share of each map's mass that lies inside ``lung_mask``: (H, W) -> float, (N, H, W) -> (N,).

    Mass is the positive part of the map (negative values, e.g. of z-scored maps, carry no
    attention). A map without positive mass (all zero: no localisation) gets the mask's area
    fraction, the share a uniform map would have, so it neither helps nor hurts a class's average
    and no NaN comes out. Compare the result with that area fraction: a model that looks at the
    lungs scores well above it, one that looks at borders, markers or body habitus scores below.
    """
    array = np.asarray(maps, dtype=np.float64)
    mask = np.asarray(lung_mask, dtype=bool)
    if array.ndim not in (2, 3) or array.shape[-2:] != mask.shape:
        raise HmtError(f"maps of shape {array.shape} do not match a lung mask of shape {mask.shape}")
    flat = np.clip(np.where(np.isfinite(array), array, 0.0), 0.0, None).reshape(-1, mask.size)
    total = flat.sum(axis=1)
    inside = flat[:, mask.ravel()].sum(axis=1)
    area_share = float(mask.mean()) if mask.size else 0.0
    energy = np.where(total > 0, inside / np.where(total > 0, total, 1.0), area_share)
    return float(energy[0]) if array.ndim == 2 else energy


def pixel_auc(score_map: np.ndarray, truth_map: np.ndarray, threshold: float = 0.5) -> float | None:
    """ROC AUC of ``score_map`` used as a per-pixel classifier of ``truth_map > threshold``.

    E.g. a class template against a ground-truth lesion map: 1.0 when every lesion pixel scores
    above every other pixel, 0.5 for no localisation. None when the truth has no positive or no
    negative pixel (undefined); non-finite scores count as 0.
    """
    scores = np.asarray(score_map, dtype=np.float64)
    truth = np.asarray(truth_map, dtype=np.float64)
    if scores.shape != truth.shape:
        raise HmtError(f"score map of shape {scores.shape} does not match a truth map of shape {truth.shape}")
    return roc_auc(np.where(np.isfinite(scores), scores, 0.0), truth > threshold)


def percentile_rank(value: float, distribution: np.ndarray) -> float:
    """Percentage (0-100) of ``distribution`` below ``value``, ties counting one half.

    Where a similarity falls within a class's leave-one-out correlations.
    """
    values = np.asarray(distribution, dtype=np.float64).ravel()
    if not values.size:
        raise HmtError("a percentile rank needs a non-empty distribution")
    below = np.count_nonzero(values < value)
    equal = np.count_nonzero(values == value)
    return float(100.0 * (below + 0.5 * equal) / values.size)


# --------------------------------------------------------------------------- templates against ground truth


def localisation_auc(score_map: np.ndarray, truth_probability: np.ndarray, lung_mask: np.ndarray, *,
                     threshold_fraction: float = 0.25) -> dict[str, float | None]:
    """Does a map (a class template) find the lesions of a truth map? Pixel ROC AUC over the frame and inside the lungs.

    All three arrays share one shape. Positives are pixels whose truth probability is at least
    ``threshold_fraction`` x the truth's largest value (relative, since a one-lobe-of-several
    class like bacteria never reaches high absolute probabilities). Returns ``auc_frame`` and
    ``auc_lungs`` (None when the truth has no positive pixel, or no negative one).
    """
    if not 0.0 < threshold_fraction <= 1.0:
        raise HmtError(f"threshold_fraction must be in (0, 1], got {threshold_fraction}")
    scores = np.asarray(score_map, dtype=np.float64)
    truth = np.asarray(truth_probability, dtype=np.float64)
    lungs = np.asarray(lung_mask, dtype=bool)
    if not scores.shape == truth.shape == lungs.shape:
        raise HmtError(f"map {scores.shape}, truth {truth.shape} and lung mask {lungs.shape} must have one shape")
    scores = np.where(np.isfinite(scores), scores, 0.0)
    peak = float(truth.max()) if truth.size else 0.0
    positive = truth >= threshold_fraction * peak if peak > 0 else np.zeros(truth.shape, bool)
    return {"auc_frame": roc_auc(scores, positive), "auc_lungs": roc_auc(scores[lungs], positive[lungs])}


# --------------------------------------------------------------------------- localisation against annotations

DEFAULT_TOP_FRACTION = 0.1  # the top-q share of a map's pixels that counts as its "region" for IoU


def _map_and_mask(score_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(score_map, dtype=np.float64)
    region = np.asarray(mask, dtype=bool)
    if scores.shape != region.shape:
        raise HmtError(f"map {scores.shape} and annotation {region.shape} must have one shape")
    return np.where(np.isfinite(scores), scores, -np.inf), region


def pointing_game(score_map: np.ndarray, mask: np.ndarray) -> bool | None:
    """Is the map's maximum inside the annotation? (Zhang et al. 2018.) Ties: any maximum inside counts.
    None for an empty annotation or a map without a finite value."""
    scores, region = _map_and_mask(score_map, mask)
    if not region.any() or not np.isfinite(scores).any():
        return None
    return bool(region[scores == scores.max()].any())


def energy_pointing_game(score_map: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the map's positive mass inside the annotation (Wang et al. 2020, Score-CAM's energy-based
    pointing game). None for an empty annotation or a map without positive mass."""
    scores, region = _map_and_mask(score_map, mask)
    positive = np.clip(np.where(np.isfinite(scores), scores, 0.0), 0.0, None)
    if not region.any() or positive.sum() <= 0:
        return None
    return float(positive[region].sum() / positive.sum())


def otsu_region(score_map: np.ndarray) -> np.ndarray:
    """The map's pixels above its Otsu threshold (scikit-image), the usual binarisation of a saliency map."""
    from skimage.filters import threshold_otsu

    scores = np.nan_to_num(np.asarray(score_map, dtype=np.float64))
    if scores.max() <= scores.min():
        return np.zeros(scores.shape, bool)
    return scores > threshold_otsu(scores)


def top_region(score_map: np.ndarray, fraction: float = DEFAULT_TOP_FRACTION) -> np.ndarray:
    """The map's top ``fraction`` of pixels (ties at the cut included)."""
    if not 0.0 < fraction <= 1.0:
        raise HmtError(f"the top fraction must be in (0, 1], got {fraction}")
    scores = np.nan_to_num(np.asarray(score_map, dtype=np.float64), nan=-np.inf)
    count = max(1, int(round(fraction * scores.size)))
    cut = np.partition(scores.ravel(), scores.size - count)[scores.size - count]
    return scores >= cut


def iou(region: np.ndarray, mask: np.ndarray) -> float | None:
    """Intersection over union of two boolean masks (None when both are empty)."""
    a, b = np.asarray(region, bool), np.asarray(mask, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else None


def localisation_scores(score_map: np.ndarray, mask: np.ndarray, *, top_fraction: float = DEFAULT_TOP_FRACTION) -> dict:
    """Every localisation measure of one map against one annotation mask: pixel ROC AUC, pointing game,
    energy-based pointing game, IoU of the Otsu-thresholded map and of its top ``top_fraction`` pixels."""
    scores, region = _map_and_mask(score_map, mask)
    finite = np.where(np.isfinite(scores), scores, 0.0)
    return {
        "pixel_auc": roc_auc(finite, region),
        "pointing_game": pointing_game(finite, region),
        "energy_pointing_game": energy_pointing_game(finite, region),
        "iou_otsu": iou(otsu_region(finite), region),
        f"iou_top_{int(round(top_fraction * 100))}": iou(top_region(finite, top_fraction), region),
    }
