"""The attention prior: training that penalises explanation mass outside a per-image mask (the lungs).

A model can be right for the wrong reasons: a marker, a border, the body's habitus tell a class apart as well as the
lungs do in a data set, and the templates show it. Training with ``attention_prior="lungs[:WEIGHT]"`` adds, to the
objective's loss, ``WEIGHT`` times a penalty (registry :data:`ATTENTION_PRIORS`) on the explanations of *every*
class (not only the true one, so the choice never depends on the label) outside the image's mask:

- ``cam``: the share of each class's *absolute* Grad-CAM mass at the CAM layer (``|sum_k mean(dS_c/dA_k) A_k|``,
  ``S_c`` the class logit) that lies outside the mask, averaged over images and classes, in [0, 1] and scale-free, so a
  model cannot lower it by shrinking its maps. Absolute, not the positive part that ``hmt heatmaps`` and
  ``lung_field_energy`` read (``relu``): with the positive part a model escaped the penalty by turning its maps
  negative (94 % of maps all-negative in a trial), while the absolute mass counts evidence against a class outside
  the lungs too; the instruments that verify it (templates, Score-CAM, deletion) read the usual maps. Its second
  derivatives run only through the head, so a step costs little more than a plain one.
- ``rrr``: Right for the Right Reasons, the squared input gradient of the summed log-probabilities outside the mask
  (per image, summed over pixels); its second derivatives run through the whole network (about three times a plain
  step) and its scale depends on the input's.

The mask comes from above (the model wing knows no segmentation): a :class:`MaskSource` gives each training image's
mask (``heatmap_templates.analysis.prior_masks``: each image's lung fields, hmt's lung segmentation united with the
reference's lungs moved back, or the user's mask files) and the image with its outside removed, for ``outside_lungs_augment``. The masks
travel as a channel of the training rows, so the augmentation moves them with their images
(:func:`heatmap_templates.model.input_pipeline.prior_pipeline`).

Reference: A. S. Ross, M. C. Hughes, F. Doshi-Velez, "Right for the Right Reasons: Training Differentiable Models by
Constraining their Explanations", IJCAI 2017, https://arxiv.org/abs/1703.03717; the CAM form: P. Schramowski et al.,
"Making deep neural networks right for the right scientific reasons by interacting with their explanations", Nature
Machine Intelligence 2020, https://arxiv.org/abs/2001.05371 (RRR on Grad-CAM).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from heatmap_templates.data.datasets import Sample
from heatmap_templates.data.disk_arrays import DiskArray
from heatmap_templates.errors import HmtError
from heatmap_templates.model.evaluation import predict_probabilities
from heatmap_templates.model.heads import HEADS, predicted_classes
from heatmap_templates.model.input_pipeline import prior_pipeline
from heatmap_templates.model.layers import output_layer, resolve_layer, wrapped_call
from heatmap_templates.model.model_file import ModelInfo
from heatmap_templates.registry import Registry

PRIOR_REGIONS = ("lungs",)
DEFAULT_PRIOR_PENALTY = "cam"
DEFAULT_PRIOR_WEIGHT = 1.0  # the weight when none is given and none is chosen
WEIGHT_GRID = (0.3, 1.0, 3.0)  # the weights `lungs` (no weight) tries, chosen on the validation split
SHARE_EPSILON = 1e-6  # added to a map's mass: a map without mass has no outside share
CHUNK = 256  # images per mask chunk


class MaskSource(Protocol):
    """Each training image's mask, computed above the model wing and handed down as data."""

    def prepare(self, images: np.ndarray | DiskArray) -> None:
        """See every training image (N, H, W) uint8 once before the chunks: e.g. a reference frame built from an
        even sample of all of them rather than from the first chunk, which a class-ordered split fills with one class."""
        ...

    def masks(self, samples: Sequence[Sample], images: np.ndarray) -> np.ndarray:
        """(n, H, W) bool masks (True inside) of one chunk of ``images`` (n, H, W) uint8 at input size, in order."""
        ...

    def remove_outside(self, image: np.ndarray, outside: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(H, W) [0, 1] image with its ``outside`` pixels removed (imputed)."""
        ...

    def summary(self) -> dict:
        """Where the masks came from (counts per class and source), for the model's metadata."""
        ...


@dataclass(frozen=True)
class PriorSetting:
    """``attention_prior`` parsed: the region kept and the weight (None: chosen on the validation split)."""

    region: str
    weight: float | None


def parse_attention_prior(text: str) -> PriorSetting:
    """``"lungs"`` or ``"lungs:WEIGHT"`` -> :class:`PriorSetting`; HmtError for anything else."""
    region, _, weight = text.partition(":")
    if region not in PRIOR_REGIONS:
        raise HmtError(f"$attention_prior takes {' or '.join(PRIOR_REGIONS)}[:WEIGHT], got {text!r}",
                       parameters=("attention_prior",))
    if not weight:
        return PriorSetting(region, None)
    try:
        value = float(weight)
    except ValueError:
        value = -1.0
    if not (value >= 0 and np.isfinite(value)):
        raise HmtError(f"the weight of $attention_prior must be a number >= 0, got {weight!r}", parameters=("attention_prior",))
    return PriorSetting(region, value)


# --------------------------------------------------------------------------- penalties


def outside_share(cams, outside):
    """Share of each class's map mass outside the mask: cams (N, K, h, w) >= 0 (absolute CAMs), outside (N, h, w) in [0, 1]
    (the part of each cell outside the mask) -> (N, K); 0 for a map without mass."""
    import tensorflow as tf

    mass = tf.reduce_sum(cams, axis=[2, 3])
    return tf.reduce_sum(cams * outside[:, None], axis=[2, 3]) / (mass + SHARE_EPSILON)


def _at_layer(outside, activations):
    """The outside-mask share of each cell of the CAM layer's grid (area average of the input-size mask)."""
    import tensorflow as tf

    size = tf.shape(activations)[1:3]
    return tf.image.resize(tf.cast(outside, tf.float32)[..., None], size, method="area")[..., 0]


class ModelTap:
    """One training forward pass that also records the CAM layer's activations (watched by a tape) and the output
    layer's logits, by wrapping the two layers' ``call`` while the step is traced (as the CAM engine does)."""

    def __init__(self, model, cam_layer: str | None, head: str) -> None:
        if cam_layer is None:
            raise HmtError("the attention prior needs a model with a convolutional (CAM) layer")
        self.model = model
        self.head = head
        self.layer = resolve_layer(model, cam_layer)[1]
        self.output = output_layer(model)

    def __call__(self, images, tape, training: bool = True) -> tuple[Any, Any, Any]:
        """(activations A, logits (N, units), outputs (N, units)) of one forward pass; ``tape`` watches A."""
        record: dict[str, list] = {"activations": [], "logits": []}
        with ExitStack() as stack:
            stack.enter_context(wrapped_call(self.layer, _recorder(record["activations"], tape)))
            stack.enter_context(wrapped_call(self.output, _logit_recorder(self.output, record["logits"])))
            outputs = self.model(images, training=training)
        if len(record["activations"]) != 1:
            raise HmtError("the CAM layer must run once per forward pass for the attention prior")
        return record["activations"][0], record["logits"][0], outputs


def _recorder(into: list, tape) -> Callable[[Callable], Callable]:
    def factory(original: Callable) -> Callable:
        def call(*args: Any, **kwargs: Any):
            output = original(*args, **kwargs)
            tape.watch(output)
            into.append(output)
            return output

        return call

    return factory


def _logit_recorder(layer, into: list) -> Callable[[Callable], Callable]:
    """Record the output layer's pre-activation (the logits) and return its activation of them."""
    import keras

    def factory(original: Callable) -> Callable:
        def call(*args: Any, **kwargs: Any):
            activation = layer.activation
            layer.activation = keras.activations.linear
            try:
                logits = original(*args, **kwargs)
            finally:
                layer.activation = activation
            into.append(logits)
            return activation(logits)

        return call

    return factory


def cam_energy_penalty(tap: ModelTap, images, outside, training: bool = True):
    """Outside-mask share of every class's absolute Grad-CAM mass at the CAM layer, averaged: (outputs, penalty).

    Reference: P. Schramowski et al. 2020, "Making deep neural networks right for the right scientific reasons by
    interacting with their explanations", https://arxiv.org/abs/2001.05371 (RRR on Grad-CAM); Grad-CAM: Selvaraju et
    al. 2017, https://arxiv.org/abs/1610.02391
    """
    import tensorflow as tf

    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        activations, logits, outputs = tap(images, tape, training)
        class_logits = HEADS[tap.head].class_logits(tf.cast(logits, tf.float32))
        scores = [tf.reduce_sum(class_logits[:, k]) for k in range(int(class_logits.shape[-1]))]
    values = tf.cast(activations, tf.float32)
    cams = []
    for score in scores:
        gradient = tape.gradient(score, activations, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        weights = tf.reduce_mean(tf.cast(gradient, tf.float32), axis=[1, 2])
        cams.append(tf.abs(tf.einsum("nhwc,nc->nhw", values, weights)))
    del tape
    share = outside_share(tf.stack(cams, axis=1), _at_layer(outside, activations))
    return outputs, tf.reduce_mean(share)


def input_gradient_penalty(tap: ModelTap, images, outside, training: bool = True):
    """Right for the Right Reasons: the squared input gradient of the summed log-probabilities outside the mask,
    summed over pixels and channels, averaged over images: (outputs, penalty).

    Reference: Ross, Hughes & Doshi-Velez 2017, "Right for the Right Reasons: Training Differentiable Models by
    Constraining their Explanations", https://arxiv.org/abs/1703.03717
    """
    import tensorflow as tf

    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(images)
        outputs = tap.model(images, training=training)
        probabilities = HEADS[tap.head].probabilities(tf.cast(outputs, tf.float32))
        total = tf.reduce_sum(tf.math.log(tf.clip_by_value(probabilities, 1e-7, 1.0)))
    gradient = tape.gradient(total, images)
    return outputs, tf.reduce_mean(tf.reduce_sum(tf.square(gradient) * tf.cast(outside, tf.float32)[..., None], axis=[1, 2, 3]))


@dataclass(frozen=True)
class AttentionPrior:
    """One penalty: ``penalty(tap, images, outside (N, H, W), training) -> (outputs, scalar penalty)``."""

    penalty: Callable


ATTENTION_PRIORS: Registry[AttentionPrior] = Registry("attention prior penalty", parameter="prior_penalty")
ATTENTION_PRIORS.add("cam", AttentionPrior(cam_energy_penalty),
                     help="share of every class's Grad-CAM mass outside the mask at the CAM layer")
ATTENTION_PRIORS.add("rrr", AttentionPrior(input_gradient_penalty),
                     help="Right for the Right Reasons: squared input gradient of the summed log-probabilities outside the mask")


# --------------------------------------------------------------------------- training with it


def prior_model(model, penalty: str, weight: float, head: str, cam_layer: str | None):
    """A Keras model around ``model`` (sharing its weights) whose training step adds ``weight`` times the
    ``penalty`` to the loss; it trains on ((input, outside share (N, H, W)), target) batches and validates on plain
    (input, target) ones. The logged ``loss`` is the objective's alone (comparable with ``val_loss``), the penalty is
    logged as ``prior_penalty``."""
    import keras
    import tensorflow as tf

    tap = ModelTap(model, cam_layer, head)
    compute = ATTENTION_PRIORS[penalty].penalty

    class PriorModel(keras.Model):
        def __init__(self) -> None:
            super().__init__(name=f"{model.name}_prior")
            self.inner = model
            self.penalty_mean = keras.metrics.Mean(name="prior_penalty")

        def call(self, inputs, training=None):
            return self.inner(inputs, training=training)

        def train_step(self, data):
            (images, outside), y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            with tf.GradientTape() as tape:
                outputs, value = compute(tap, images, outside, True)
                loss = self.compute_loss(x=images, y=y, y_pred=outputs, sample_weight=sample_weight, training=True)
                total = loss + weight * value
            variables = self.trainable_variables
            self.optimizer.apply(tape.gradient(total, variables), variables)
            for metric in self.metrics:
                if metric.name == "loss":
                    metric.update_state(loss, sample_weight=tf.shape(images)[0])
            self.penalty_mean.update_state(value)
            return self.compute_metrics(images, y, outputs, sample_weight=sample_weight)

    return PriorModel()


def penalty_on(model, penalty: str, head: str, cam_layer: str | None, batches) -> float:
    """The mean penalty of ``model`` (inference mode) over ``batches`` of ((model input (B, H, W, C), outside share
    (B, H, W)), target), one batch in memory at a time: how a weight is judged on the validation split."""
    import tensorflow as tf

    tap = ModelTap(model, cam_layer, head)
    compute = ATTENTION_PRIORS[penalty].penalty
    total, count = 0.0, 0
    for (inputs, outside), _ in batches:
        value = compute(tap, tf.cast(inputs, tf.float32), tf.cast(outside, tf.float32), False)[1]
        total += float(value) * int(inputs.shape[0])
        count += int(inputs.shape[0])
    return total / max(1, count)


def prior_rows(samples: Sequence[Sample], images: np.ndarray | DiskArray, source: MaskSource, *, impute: bool,
               seed: int, to_disk: Path | None) -> np.ndarray | DiskArray:
    """The prior's training rows (N, H, W, 2 or 3) uint8: image, mask (255 inside) and, with ``impute``, the image with
    everything outside the mask removed by the source's removal (seeded per image); in a DiskArray at ``to_disk``."""
    channels = 3 if impute else 2
    rows: np.ndarray | DiskArray
    rows = DiskArray(to_disk, (*images.shape[1:], channels), np.uint8) if to_disk is not None else \
        np.zeros((len(images), *images.shape[1:], channels), np.uint8)
    source.prepare(images)
    for start in range(0, len(images), CHUNK):
        pictures = np.asarray(images[start:start + CHUNK])
        masks = np.asarray(source.masks(samples[start:start + CHUNK], pictures), dtype=bool)
        if masks.shape != pictures.shape:
            raise HmtError(f"the mask source gave masks of shape {masks.shape} for images of shape {pictures.shape}")
        stack = [pictures, np.where(masks, 255, 0).astype(np.uint8)]
        if impute:
            stack.append(np.stack([_removed(picture, mask, source, seed, start + index)
                                   for index, (picture, mask) in enumerate(zip(pictures, masks, strict=True))]))
        chunk = np.stack(stack, axis=-1)
        if isinstance(rows, DiskArray):
            rows.append(chunk)
        else:
            rows[start:start + len(chunk)] = chunk
    return rows


def _removed(picture: np.ndarray, mask: np.ndarray, source: MaskSource, seed: int, index: int) -> np.ndarray:
    rng = np.random.default_rng([seed, index])
    removed = source.remove_outside(picture.astype(np.float32) / 255.0, ~mask, rng)
    return np.clip(np.rint(removed * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- the training run's prior


ACCURACY_TOLERANCE = 0.02  # a weight is acceptable while its validation accuracy is within 2 points of the grid's best


@dataclass
class PriorRun:
    """What training needs of the prior: the training rows, the penalty (None: outside-lungs augmentation alone)
    and its weight, the augmentation's probability, and where the masks came from."""

    rows: np.ndarray | DiskArray
    penalty: str | None
    weight: float | None
    outside_probability: float
    summary: dict

    @property
    def penalised(self) -> bool:
        return self.penalty is not None and bool(self.weight)


def choose_weight(fit: Callable[[float], Any], judge: Callable[[Any], tuple[float, float, float]],
                  grid: Sequence[float] = WEIGHT_GRID) -> tuple[float, Any, list[dict]]:
    """Train with each weight of ``grid`` (``fit(weight) -> trained``) and keep the one whose validation outside-lungs
    CAM share (``judge(trained) -> (val loss, val share, val accuracy)``) is lowest among those whose validation
    accuracy is within :data:`ACCURACY_TOLERANCE` of the grid's best: the strongest prior the validation split says
    costs at most 2 points of accuracy (the issue's budget). Accuracy, not loss: near-perfect models have validation
    losses of a few hundredths, whose relative differences say nothing about what a prior costs. Returns (weight, its
    trained result, every weight's numbers)."""
    results = []
    for weight in grid:
        trained = fit(weight)
        val_loss, val_share, val_accuracy = judge(trained)
        results.append({"weight": weight, "val_loss": val_loss, "val_outside_share": val_share, "val_accuracy": val_accuracy,
                        "trained": trained})
    best = max(row["val_accuracy"] for row in results)
    acceptable = [row for row in results if row["val_accuracy"] >= best - ACCURACY_TOLERANCE - 1e-12]
    chosen = min(acceptable, key=lambda row: (row["val_outside_share"], row["val_loss"]))
    table = [{key: value for key, value in row.items() if key != "trained"} for row in results]
    return chosen["weight"], chosen["trained"], table


def validation_accuracy(probabilities: np.ndarray, targets: np.ndarray, head: str) -> float:
    """Share of validation images (or, multi-label, of known findings) decided right."""
    predicted = predicted_classes(probabilities, head)
    targets = np.asarray(targets)
    if predicted.ndim == 1:  # one class per image
        truth = targets.argmax(axis=1) if targets.ndim == 2 and targets.shape[1] > 1 else (targets.reshape(len(targets), -1)[:, 0] >= 0.5)
        return float((predicted == truth).mean())
    known = targets >= 0
    return float((predicted == (targets >= 0.5))[known].mean())


def prior_record(prior: PriorRun) -> dict:
    """The prior as the model's metadata records it (``info.training["attention_prior"]``)."""
    return {"penalty": prior.penalty, "weight": prior.weight, "outside_lungs_augment": prior.outside_probability,
            **prior.summary}


def fresh_copy(model, seed: int):
    """A copy of the untrained ``model`` with its weights (another weight of the grid starts alike), seeds reset."""
    import keras

    keras.utils.set_random_seed(seed)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def validation_judge(info: ModelInfo, loss: object, images: np.ndarray | DiskArray, targets: np.ndarray,
                     masks: MaskSource | None, samples: Sequence[Sample], *, batch_size: int, seed: int,
                     to_disk: Path | None = None):
    """``judge(trained) -> (validation loss, outside-lungs CAM share, accuracy)`` for :func:`choose_weight`. The
    validation rows with their masks are made once (in a file at ``to_disk`` when given) and read a batch at a time."""
    import keras

    if not len(images) or masks is None:
        raise HmtError("choosing the weight of $attention_prior needs a validation split; give the weight (lungs:WEIGHT)",
                       parameters=("attention_prior",))
    rows = prior_rows(samples, images, masks, impute=False, seed=seed, to_disk=to_disk)
    loss_function = keras.losses.get(loss)

    def judge(trained: tuple) -> tuple[float, float, float]:
        model = trained[0]
        probabilities = predict_probabilities(model, info, images, batch_size=batch_size)
        val_loss = float(keras.ops.mean(loss_function(targets.astype(np.float32), probabilities.astype(np.float32))))
        batches = prior_pipeline(rows, targets, info, batch_size, seed=seed, augment=False, outside_probability=0.0,
                                 with_masks=True)
        share = penalty_on(model, "cam", str(info.head), info.cam_layer, batches)
        return val_loss, share, validation_accuracy(probabilities, targets, str(info.head))

    return judge
