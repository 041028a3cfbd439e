"""What a classifier learns for each kind of labels: targets, loss, class weights and the report, per head kind.

- exclusive classes (softmax head): one-hot targets, categorical cross-entropy, balanced class weights;
- two classes in one sigmoid (``hmt train --binary POS[:NEG]``): the positive class against every
  other class of the data set, binary cross-entropy, balanced class weights, decided at a threshold;
- findings (independent sigmoids, ``hmt train --multi-label``): binary cross-entropy per finding,
  each weighted by its negatives-to-positives ratio, unknown findings left out of the loss and the
  evaluation.

Labels are class indices (N,) for the first two and finding values (N, L) (1, 0, -1 unknown) for
the third, the form the heatmap store keeps too.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from heatmap_templates.data.datasets import UNKNOWN, Dataset, Sample
from heatmap_templates.errors import HmtError
from heatmap_templates.model.heads import (
    BINARY_HEAD,
    DEFAULT_THRESHOLD,
    EXCLUSIVE_HEAD,
    HEADS,
    MULTI_LABEL_HEAD,
    predicted_classes,
)
from heatmap_templates.numeric.metrics import classification_report, multilabel_report


@dataclass
class Objective:
    """One training objective (see the module docstring)."""

    head: str  # heads.HEADS kind of the model's output layer
    class_names: list[str]
    negatives: list[str] = field(default_factory=list)  # data-set classes grouped into the negative class (binary)

    @property
    def multi_label(self) -> bool:
        return HEADS[self.head].multi_label

    @property
    def single_output(self) -> bool:
        """One sigmoid unit for two classes: its targets and loss are the positive class's alone."""
        return bool(HEADS[self.head].single_output)

    def labels(self, samples: Sequence[Sample]) -> np.ndarray:
        """Class indices (N,) int64 (-1: a class the model does not know), or findings (N, L) int8."""
        if self.multi_label:
            return np.array([sample.findings for sample in samples], dtype=np.int8).reshape(len(samples), len(self.class_names))
        return np.array([label_index(sample.label, self.class_names, self.negatives) for sample in samples], dtype=np.int64)

    def targets(self, labels: np.ndarray) -> np.ndarray:
        """What the loss compares the outputs with: one-hot (N, K), positive (N, 1), or findings (N, L) with -1 kept."""
        if self.multi_label:
            return labels.astype(np.float32)
        if self.single_output:
            return (labels == 1).astype(np.float32)[:, None]
        return np.eye(len(self.class_names), dtype=np.float32)[labels]

    def class_weight(self, train_labels: np.ndarray) -> dict[int, float] | None:
        """Balanced class weights (scikit-learn's ``n / (K n_k)``); None for findings, weighted inside the loss."""
        return None if self.multi_label else balanced_class_weights(train_labels, len(self.class_names))

    def loss_and_metrics(self, train_labels: np.ndarray, label_smoothing: float = 0.0) -> tuple[object, list]:
        """The Keras loss and metrics (the metric is logged as ``accuracy`` for every head). ``label_smoothing``
        moves each target that share of the way towards uniform (Szegedy et al. 2016): 1 - s + s/K for the true class."""
        import keras

        if self.multi_label:
            known = train_labels >= 0
            positives = ((train_labels == 1) & known).sum(axis=0)
            negatives = ((train_labels == 0) & known).sum(axis=0)
            weights = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0).astype(np.float32)
            return masked_binary_crossentropy(weights, label_smoothing), [masked_accuracy]
        if self.single_output:
            return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing), ["accuracy"]
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing), ["accuracy"]

    def missing(self, train_labels: np.ndarray) -> list[str]:
        """Classes (findings) without a single positive training image."""
        if self.multi_label:
            return [name for k, name in enumerate(self.class_names) if not np.any(train_labels[:, k] == 1)]
        return [name for k, name in enumerate(self.class_names) if not np.any(train_labels == k)]

    def report(self, probabilities: np.ndarray, labels: np.ndarray, threshold: float = DEFAULT_THRESHOLD, *,
               groups: Sequence | None = None) -> dict:
        """The evaluation report: classification metrics, or per-finding metrics for a multi-label model; its 95 %
        intervals resample the images, whole patients with ``groups`` (one id per image, e.g.
        :func:`~heatmap_templates.data.datasets.patient_groups`)."""
        if self.multi_label:
            return multilabel_report(probabilities, labels, self.class_names, threshold, groups=groups)
        return classification_report(probabilities, labels, self.class_names,
                                     predicted=predicted_classes(probabilities, self.head, threshold), groups=groups)

    def counts(self, labels: np.ndarray) -> dict[str, int]:
        """Images per class, or positive images per finding."""
        if self.multi_label:
            return {name: int(np.sum(labels[:, k] == 1)) for k, name in enumerate(self.class_names)}
        return {name: int(np.sum(labels == k)) for k, name in enumerate(self.class_names)}


def objective_for(dataset: Dataset, binary: str | None = None) -> Objective:
    """The objective of training on ``dataset``: its findings, one class against the rest (``binary`` is
    ``POS`` or ``POS:NEG``, the negative class named ``not-POS`` by default), or its exclusive classes."""
    if dataset.multi_label:
        if binary:
            raise HmtError("$binary trains one class against the rest of a class-labelled data set; this one is multi-label",
                           parameters=("binary",))
        return Objective(MULTI_LABEL_HEAD, list(dataset.class_names))
    if binary:
        positive, _, negative = binary.partition(":")
        positive, negative = positive.strip(), (negative.strip() or f"not-{positive.strip()}")
        if positive not in dataset.class_names:
            raise HmtError(f"$binary: {positive!r} is not a class of the data set ({', '.join(dataset.class_names)})",
                           parameters=("binary",))
        if negative == positive:
            raise HmtError(f"$binary: the negative class needs a name of its own, got {negative!r}", parameters=("binary",))
        return Objective(BINARY_HEAD, [negative, positive], [name for name in dataset.class_names if name != positive])
    return Objective(EXCLUSIVE_HEAD, list(dataset.class_names))


def label_index(label: str, class_names: Sequence[str], negatives: Sequence[str] = ()) -> int:
    """The model's class index of a data set's label: its position, the negative class (index 0) for a class grouped
    into it by a one-against-the-rest model, or -1 when the model does not know it."""
    if label in class_names:
        return list(class_names).index(label)
    return 0 if label in negatives else UNKNOWN


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """n / (K * n_k) for each class present (scikit-learn's 'balanced'), so rare classes weigh more."""
    counts = np.bincount(labels, minlength=num_classes)
    present = counts > 0
    return {int(k): float(labels.size / (present.sum() * counts[k])) for k in range(num_classes) if present[k]}


def masked_binary_crossentropy(positive_weights: np.ndarray, label_smoothing: float = 0.0):
    """Binary cross-entropy per finding, positives weighted by ``positive_weights`` (L,), unknown targets (-1) left out;
    with ``label_smoothing`` s the targets are 1 - s/2 and s/2 (Keras's convention for two outcomes)."""
    import keras

    weights = keras.ops.convert_to_tensor(positive_weights, "float32")

    def loss(y_true, y_pred):
        known = keras.ops.cast(y_true >= 0, "float32")
        positive = keras.ops.cast(y_true > 0.5, "float32")
        probability = keras.ops.clip(keras.ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
        target = positive * (1.0 - label_smoothing) + 0.5 * label_smoothing
        cross_entropy = -(target * keras.ops.log(probability) + (1.0 - target) * keras.ops.log(1.0 - probability))
        per_finding = cross_entropy * (positive * weights + (1.0 - positive))
        return keras.ops.sum(per_finding * known, axis=-1) / keras.ops.maximum(keras.ops.sum(known, axis=-1), 1.0)

    return loss


def masked_accuracy(y_true, y_pred):
    """Share of known findings decided right at 0.5."""
    import keras

    known = keras.ops.cast(y_true >= 0, "float32")
    right = keras.ops.cast(keras.ops.equal(y_pred >= 0.5, y_true > 0.5), "float32")
    return keras.ops.sum(right * known) / keras.ops.maximum(keras.ops.sum(known), 1.0)


masked_accuracy.__name__ = "accuracy"  # logged like every other head's accuracy
