"""Score-CAM (``Inputs.MASKED_SCORES``): channels weighted by the model's probabilities on masked inputs.

Everything that is Score-CAM's own lives here: each channel's activation upsampled to the input size and
min-max scaled into a mask, the masked images, and their forward passes in chunks of ``chunk`` masked
images (``CamEngine(scorecam_chunk=...)``, default :data:`DEFAULT_CHUNK`). The engine only hands over
:class:`~heatmap_templates.explain.cam_methods.base.MaskedScores`: the batch and a function that runs the
model on masked images; it computes no gradient for this method.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from heatmap_templates.explain.cam_methods.base import METHODS, CamMethod, Inputs, MaskedScores, weighted_sum

if TYPE_CHECKING:
    import tensorflow as tf

DEFAULT_CHUNK = 32  # masked images per forward pass when the caller does not say


def scorecam_weights(activations: tf.Tensor, masked: MaskedScores) -> tf.Tensor:
    """Score-CAM channel weights for every class (N, C, K): the class probabilities of the input masked by
    each channel's upsampled, min-max scaled activation; the N x C masked images run ``chunk`` at a time."""
    import tensorflow as tf

    images = masked.images
    batch = tf.shape(activations)[0]
    channels = tf.shape(activations)[3]
    chunk = DEFAULT_CHUNK if masked.chunk is None else masked.chunk
    total = batch * channels
    num_chunks = (total + chunk - 1) // chunk
    channel_maps = tf.transpose(activations, (0, 3, 1, 2))  # (N, C, h, w)

    def chunk_scores(chunk_index: tf.Tensor) -> tf.Tensor:
        flat = tf.minimum(chunk_index * chunk + tf.range(chunk), total - 1)
        image_index, channel_index = flat // channels, flat % channels
        maps = tf.gather_nd(channel_maps, tf.stack([image_index, channel_index], axis=1))
        masks = tf.image.resize(maps[..., tf.newaxis], tf.shape(images)[1:3], method="bilinear")
        low = tf.reduce_min(masks, axis=(1, 2, 3), keepdims=True)
        high = tf.reduce_max(masks, axis=(1, 2, 3), keepdims=True)
        masks = tf.math.divide_no_nan(masks - low, high - low)
        return masked.probabilities(tf.gather(images, image_index) * masks)

    scores = tf.map_fn(
        chunk_scores, tf.range(num_chunks),
        fn_output_signature=tf.TensorSpec((chunk, masked.num_classes), tf.float32),
    )
    return tf.reshape(tf.reshape(scores, (-1, masked.num_classes))[:total], (batch, channels, masked.num_classes))


def scorecam(activations: tf.Tensor, masked: MaskedScores) -> tf.Tensor:
    """Score-CAM: every class's map (N, K, h, w), channels weighted by the class's probability on the input
    masked by that channel (the paper's definition); one set of masked forward passes serves every class.

    Reference: Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks", https://arxiv.org/abs/1910.01279
    """
    import tensorflow as tf

    weights = scorecam_weights(activations, masked)
    return tf.stack([weighted_sum(activations, weights[:, :, k]) for k in range(masked.num_classes)], axis=1)


METHODS.add("scorecam", CamMethod(scorecam, Inputs.MASKED_SCORES), help="Score-CAM, forward passes, no gradient")
