"""The CAM family as one batched engine.

One ``tf.function`` runs the model's forward pass once per batch, records the target layer's
output ``A`` and hands it to a *method* (:mod:`heatmap_templates.explain.cam_methods`) with exactly
the inputs that the method declares (:class:`~heatmap_templates.explain.cam_methods.Inputs`): the
gradient ``dS/dA`` of each image's target score ``S`` (``GRADIENTS``; only then is a gradient tape
opened), a function that scores masked inputs (``MASKED_SCORES``: the method builds its masks and
runs its own forward passes), or nothing more (``ACTIVATIONS``: one class-agnostic map). The engine
knows no method by name; it dispatches on the declared kind. Every reduction runs over the spatial
axes of one image, never over the batch, so a batched result equals the per-image result.

The inner layer is captured by wrapping its ``call`` while the function is traced (the trick
xplique uses) instead of building a sub-model, so Sequential, Functional and Functional models
with a nested base (a VGG19 used as a layer) all work, with nested names such as
``vgg19/block5_conv4``. Nothing is recorded globally: the wrappers live only during tracing.

Example::

    engine = CamEngine(model, method="gradcam", score="logit")
    result = engine(batch, "predicted")      # or an int array of class indices
    result.raw.shape, result.upsampled.shape  # (N, h, w), (N, H, W)

``CamEngine(model, mixed_precision=True)`` runs the engine on :func:`mixed_precision_copy` of the
model: float16 compute with float32 weights, which speeds up GPUs with tensor cores.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from heatmap_templates.errors import HmtError
from heatmap_templates.explain.cam_methods import DEFAULT_METHOD, METHODS, Inputs, MaskedScores
from heatmap_templates.explain.scores import DEFAULT_SCORE, SCORES
from heatmap_templates.model.heads import DEFAULT_THRESHOLD, HEADS, check_threshold, detect_head, reads_logits
from heatmap_templates.model.layers import default_cam_layer, output_layer, output_rank, resolve_layer, wrapped_call

PREDICTED = "predicted"


@dataclass(frozen=True)
class CamResult:
    """One batch of maps: ``raw`` is unnormalised at the layer's resolution (after ReLU),
    ``upsampled`` is ``raw`` resized bilinearly to the input size; ``targets`` are the
    class indices explained (useful when they were ``"predicted"``)."""

    probabilities: np.ndarray  # (N, K) float32
    raw: np.ndarray  # (N, h, w) float32; (N, K, h, w) from all_classes
    upsampled: np.ndarray  # (N, H, W) float32; (N, K, H, W) from all_classes
    targets: np.ndarray  # (N,) int32


@contextmanager
def _linear_activation(layer: keras.layers.Layer) -> Iterator[Callable]:
    """Temporarily make a layer's activation linear; yields the real activation."""
    activation = layer.activation
    layer.activation = keras.activations.linear
    try:
        yield activation
    finally:
        layer.activation = activation


MIXED_POLICY = "mixed_float16"


def mixed_precision_copy(model: keras.Model) -> keras.Model:
    """A copy of ``model`` that computes in float16 and keeps its weights in float32 (Keras ``mixed_float16``).

    A model loaded from a ``.keras`` file keeps each layer's stored float32 policy, so setting the
    global policy before loading changes nothing; instead every float32 layer is rebuilt with the
    mixed policy, recursing into nested Sequential/Functional models (a VGG19 base keeps its layer
    names, so ``vgg19/block5_conv4`` still resolves). The layer producing the model's output stays
    float32, so the softmax and the logits it returns keep full precision. Weights are copied over.
    """
    if getattr(model, "outputs", None) is None:
        raise HmtError(f"model '{model.name}' is subclassed; mixed precision needs a Sequential or Functional model")
    head = output_layer(model)

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if layer is not head and layer.dtype_policy.name == "float32":
            config["dtype"] = MIXED_POLICY
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
        copy.set_weights(model.get_weights())
    except (ValueError, TypeError, NotImplementedError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HmtError(f"model '{model.name}' cannot be rebuilt for mixed precision ({reason})") from error
    return copy


class CamEngine:
    """Batched class activation maps for one model, layer, method and score.

    ``engine(x, targets)`` takes x as (N, H, W, C) float32 (numpy or tf) and targets as an int
    array of class indices, a single int, or ``"predicted"`` (the head's decision at ``threshold`` in the
    same forward pass; the most probable finding of a multi-label head);
    it returns a :class:`CamResult`. The explained score is an entry of
    :data:`~heatmap_templates.explain.scores.SCORES` (``logit``: the class logit taken from the final
    layer's pre-activation; ``probability``), applied through the model's head kind
    (:mod:`heatmap_templates.model.heads`, read from its output layer unless ``head`` is given).
    A method that declares masked scores (Score-CAM) runs ``scorecam_chunk`` masked images per
    forward pass (None: the method's own default, 32 for Score-CAM); other methods ignore it.
    ``mixed_precision=True`` runs on :func:`mixed_precision_copy` of the model (``self.model``);
    activations and gradients are combined in float32, so only the network runs in float16.
    """

    def __init__(
        self,
        model: keras.Model,
        layer: str | None = None,
        method: str = DEFAULT_METHOD,
        score: str = DEFAULT_SCORE,
        *,
        head: str | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        scorecam_chunk: int | None = None,
        mixed_precision: bool = False,
    ) -> None:
        self._method = METHODS[method]
        self._score = SCORES[score]
        if scorecam_chunk is not None and scorecam_chunk < 1:
            raise HmtError(f"scorecam_chunk must be at least 1, got {scorecam_chunk}")
        if mixed_precision:
            model = mixed_precision_copy(model)
        self.mixed_precision = mixed_precision
        self.model = model
        self.method = method
        self.score = score
        self.head = detect_head(model, HEADS.check(head) if head is not None else None)
        self.threshold = check_threshold(threshold)
        self._score.check(self.head)
        if layer is None:
            layer = default_cam_layer(model)
            if layer is None:
                raise HmtError("model has no convolutional layer with a 4-D output; pass $layer", parameters=("layer",))
        self.layer, self._layer = resolve_layer(model, layer)
        if output_rank(self._layer) != 4:
            raise HmtError(f"layer '{self.layer}' does not have a 4-D (N, h, w, C) output; pick a convolutional layer")
        self._output_layer = output_layer(model)
        # A linear output read as sigmoid(s) (a named head): its outputs are the logits, activated here.
        self._activates_outputs = reads_logits(model, self.head)
        self._captures_logits = not HEADS[self.head].outputs_are_logits and not self._activates_outputs
        self.num_classes = HEADS[self.head].class_count(int(model.outputs[0].shape[-1]))
        self._masked_chunk = scorecam_chunk  # handed to a MASKED_SCORES method, which owns its default
        self.trace_count = 0
        input_shape = tuple(model.inputs[0].shape)
        if len(input_shape) != 4:
            raise HmtError(f"model '{model.name}' input must be (N, H, W, C), got {input_shape}")
        image_spec = tf.TensorSpec((None, *input_shape[1:]), tf.float32)
        self._cam_fn = tf.function(
            self._cam_graph, input_signature=[image_spec, tf.TensorSpec((None,), tf.int32)]
        )
        self._all_classes_fn = tf.function(self._all_classes_graph, input_signature=[image_spec])
        self._predict_fn = tf.function(self._predict_graph, input_signature=[image_spec])

    # --- public API ---

    def __call__(self, x: np.ndarray | tf.Tensor, targets: Any = PREDICTED) -> CamResult:
        images = tf.convert_to_tensor(x, dtype=tf.float32)
        if images.shape.rank != 4:
            raise HmtError(f"CAM input must be a (N, H, W, C) batch, got shape {tuple(images.shape)}")
        target_tensor = self._target_tensor(targets, int(images.shape[0]))
        probabilities, raw, upsampled, used_targets = self._cam_fn(images, target_tensor)
        return CamResult(probabilities.numpy(), raw.numpy(), upsampled.numpy(), used_targets.numpy())

    def all_classes(self, x: np.ndarray | tf.Tensor) -> CamResult:
        """Maps of every class from one forward pass: ``raw`` (N, K, h, w), ``upsampled`` (N, K, H, W).

        What the heatmap store keeps, so that templates (any ``include`` rule) and comparisons
        can use any class's map without recomputation. ``targets`` holds the predicted classes.
        """
        images = tf.convert_to_tensor(x, dtype=tf.float32)
        if images.shape.rank != 4:
            raise HmtError(f"CAM input must be a (N, H, W, C) batch, got shape {tuple(images.shape)}")
        probabilities, raw, upsampled = self._all_classes_fn(images)
        probabilities = probabilities.numpy()
        return CamResult(probabilities, raw.numpy(), upsampled.numpy(), self._predicted(probabilities).numpy())

    def predict(self, x: np.ndarray | tf.Tensor) -> np.ndarray:
        """Class probabilities (N, K) from one forward pass, without CAM work."""
        return self._predict_fn(tf.convert_to_tensor(x, dtype=tf.float32)).numpy()

    # --- helpers ---

    def _target_tensor(self, targets: Any, batch_size: int) -> tf.Tensor:
        """Validate targets on the host; -1 marks 'use the predicted class' for the graph."""
        if isinstance(targets, str):
            if targets != PREDICTED:
                raise HmtError(f"unknown target '{targets}'; use class indices or '{PREDICTED}'")
            return tf.fill((batch_size,), -1)
        values = np.asarray(targets.numpy() if isinstance(targets, tf.Tensor) else targets)
        if values.ndim == 0:
            values = np.full(batch_size, values)
        if values.shape != (batch_size,) or not np.issubdtype(values.dtype, np.integer):
            raise HmtError(
                f"targets must be {batch_size} integer class indices, got shape {values.shape} of {values.dtype}"
            )
        bad = values[(values < 0) | (values >= self.num_classes)]
        if bad.size:
            raise HmtError(
                f"target class index {int(bad[0])} is out of range for a model with {self.num_classes} classes"
            )
        return tf.constant(values, dtype=tf.int32)

    def _probabilities(self, outputs: tf.Tensor) -> tf.Tensor:
        """Model outputs as class probabilities (N, K), as the head kind says."""
        return HEADS[self.head].probabilities(self._activated(tf.cast(outputs, tf.float32)))

    def _activated(self, outputs: tf.Tensor) -> tf.Tensor:
        """The head's outputs: the model's, or, for logits read through a named head, that head's activation of them."""
        return HEADS[self.head].activate(outputs) if self._activates_outputs else outputs

    def _predicted(self, probabilities: tf.Tensor) -> tf.Tensor:
        """The predicted class of each image (N,) int32: the head's decision at the threshold; for a multi-label
        head, whose decision is per finding, the most probable finding."""
        head = HEADS[self.head]
        if head.multi_label:
            return tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return tf.cast(head.decide(probabilities, self.threshold), tf.int32)

    def _predict_graph(self, images: tf.Tensor) -> tf.Tensor:
        return self._probabilities(self.model(images, training=False))

    @contextmanager
    def _capture(self, tape: tf.GradientTape | None, record: dict[str, list[tf.Tensor]]) -> Iterator[None]:
        """While tracing, record the CAM layer's output (watched by ``tape``, if any) and the head's logits."""

        def capture_activations(original: Callable) -> Callable:
            def call(*args: Any, **kwargs: Any) -> tf.Tensor:
                output = original(*args, **kwargs)
                if tape is not None:
                    tape.watch(output)
                record["activations"].append(output)
                return output

            return call

        def capture_logits(original: Callable) -> Callable:
            def call(inputs: Any, *args: Any, **kwargs: Any) -> tf.Tensor:
                if isinstance(self._output_layer, (keras.layers.Activation, keras.layers.Softmax)):
                    record["logits"].append(inputs)
                    return original(inputs, *args, **kwargs)
                with _linear_activation(self._output_layer) as activation:
                    logits = original(inputs, *args, **kwargs)
                record["logits"].append(logits)
                return activation(logits)

            return call

        with wrapped_call(self._layer, capture_activations):
            if self._captures_logits:
                with wrapped_call(self._output_layer, capture_logits):
                    yield
            else:
                yield

    def _forward(self, images: tf.Tensor, tape: tf.GradientTape | None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One recorded forward pass: (layer activations A, probabilities (N, K), explained scores (N, K));
        ``tape`` (gradient methods only) watches A."""
        record: dict[str, list[tf.Tensor]] = {"activations": [], "logits": []}
        with self._capture(tape, record):
            outputs = self.model(images, training=False)
        if len(record["activations"]) != 1:
            runs = len(record["activations"])
            raise HmtError(f"layer '{self.layer}' ran {runs} times in one forward pass; pick a layer used once")
        outputs = tf.cast(outputs, tf.float32)
        logits = tf.cast(record["logits"][0], tf.float32) if record["logits"] else outputs  # no capture: outputs are logits
        chosen = self._score(logits, self._activated(outputs), self.head)
        return record["activations"][0], self._probabilities(outputs), chosen

    def _gradient_cam(self, tape: tf.GradientTape, score: tf.Tensor, activations: tf.Tensor) -> tf.Tensor:
        """The method's map (before ReLU) from the gradient of a summed score; images are independent,
        so d(sum)/dA_i = dS_i/dA_i."""
        gradients = tape.gradient(score, activations, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return self._method.compute(tf.cast(activations, tf.float32), tf.cast(gradients, tf.float32))

    def _gradient_free_cams(self, images: tf.Tensor, activations: tf.Tensor) -> tf.Tensor:
        """Every class's map (N, K, h, w), before ReLU, from a method that declares no gradient: the
        activations alone (one map, the same for every class), or masked scores (the method builds its
        masked inputs and runs them through ``MaskedScores.probabilities``)."""
        activations = tf.cast(activations, tf.float32)
        if self._method.inputs is Inputs.ACTIVATIONS:
            cam = self._method.compute(activations)
            return tf.repeat(cam[:, tf.newaxis], self.num_classes, axis=1)
        masked = MaskedScores(images, self._predict_graph, self.num_classes, self._masked_chunk)
        return self._method.compute(activations, masked)

    def _upsample(self, raw: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
        """Bilinear resize of (..., h, w) maps to the input's (H, W), on the device."""
        flat = tf.reshape(raw, tf.concat([[-1], tf.shape(raw)[-2:]], axis=0))
        resized = tf.image.resize(flat[..., tf.newaxis], tf.shape(images)[1:3], method="bilinear")[..., 0]
        return tf.reshape(resized, tf.concat([tf.shape(raw)[:-2], tf.shape(images)[1:3]], axis=0))

    def _cam_graph(self, images: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, ...]:
        self.trace_count += 1  # Python side effect: runs once per trace, never per batch
        if self._method.inputs is Inputs.GRADIENTS:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                activations, probabilities, chosen = self._forward(images, tape)
                targets = tf.where(targets < 0, self._predicted(probabilities), targets)
                total_score = tf.reduce_sum(tf.gather(chosen, targets, axis=1, batch_dims=1))
            cam = self._gradient_cam(tape, total_score, activations)
        else:
            activations, probabilities, _ = self._forward(images, None)
            targets = tf.where(targets < 0, self._predicted(probabilities), targets)
            cam = tf.gather(self._gradient_free_cams(images, activations), targets, axis=1, batch_dims=1)
        raw = tf.nn.relu(cam)
        return probabilities, raw, self._upsample(raw, images), targets

    def _all_classes_graph(self, images: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """Maps of every class from ONE forward pass: for a gradient method one backward pass per class
        (only from the score down to the CAM layer); otherwise the method's maps of every class at once
        (Score-CAM's masked forwards serve all classes; EigenCAM's one map is every class's)."""
        self.trace_count += 1
        if self._method.inputs is Inputs.GRADIENTS:
            with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
                activations, probabilities, chosen = self._forward(images, tape)
                class_scores = [tf.reduce_sum(chosen[:, k]) for k in range(self.num_classes)]
            cams = tf.stack([self._gradient_cam(tape, score, activations) for score in class_scores], axis=1)
            del tape
        else:
            activations, probabilities, _ = self._forward(images, None)
            cams = self._gradient_free_cams(images, activations)
        raw = tf.nn.relu(cams)
        return probabilities, raw, self._upsample(raw, images)

