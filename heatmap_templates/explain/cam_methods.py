"""CAM methods: how activations and gradients (or forward-pass weights) combine into a map.

A method is only the small part that differs between the CAM family's members; the engine
(:mod:`heatmap_templates.explain.cam`) does the forward pass, the layer capture and the gradients. Maps
are (N, h, w) before the engine's ReLU; every reduction runs over one image's spatial axes, never
over the batch. Adding a method is registering one entry here (and, for a gradient-free method,
saying so with ``uses_gradients=False``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from heatmap_templates.registry import Registry

if TYPE_CHECKING:
    import tensorflow as tf

DEFAULT_METHOD = "gradcam"
_SPATIAL = (1, 2)


@dataclass(frozen=True)
class CamMethod:
    """How one CAM method turns activations into a map.

    A gradient-based method's ``combine(activations, gradients)`` gets the gradient of the
    explained score; a forward-based one (``uses_gradients=False``, Score-CAM) gets per-image
    channel weights (N, C) that the engine computes from forward passes of masked inputs.
    """

    combine: Callable  # (activations (N, h, w, C), gradients or channel weights) -> (N, h, w) tf.Tensor
    uses_gradients: bool = True


METHODS: Registry[CamMethod] = Registry("CAM method", parameter="method")


def _weighted_sum(activations: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Sum over channels of per-image channel weights (N, C) times activations."""
    import tensorflow as tf

    return tf.einsum("nhwc,nc->nhw", activations, weights)


def _gradcam(activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """Grad-CAM (Selvaraju et al.): channel weight = spatial mean of the gradient."""
    import tensorflow as tf

    return _weighted_sum(activations, tf.reduce_mean(gradients, axis=_SPATIAL))


def _gradcampp(activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """Grad-CAM++ (Chattopadhyay et al.), the closed form used by pytorch-grad-cam."""
    import tensorflow as tf

    grads_2 = tf.square(gradients)
    grads_3 = grads_2 * gradients
    activation_sums = tf.reduce_sum(activations, axis=_SPATIAL, keepdims=True)
    alphas = tf.math.divide_no_nan(grads_2, 2.0 * grads_2 + activation_sums * grads_3 + 1e-6)
    alphas = tf.where(gradients != 0.0, alphas, tf.zeros_like(alphas))
    weights = tf.reduce_sum(tf.nn.relu(gradients) * alphas, axis=_SPATIAL)
    return _weighted_sum(activations, weights)


def _hirescam(activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """HiResCAM (Draelos & Carin): elementwise gradient x activation, summed over channels."""
    import tensorflow as tf

    return tf.reduce_sum(gradients * activations, axis=-1)


def _xgradcam(activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """XGrad-CAM (Fu et al.): weight = sum(g * A) / (sum(A) + eps) over space."""
    import tensorflow as tf

    numerator = tf.reduce_sum(gradients * activations, axis=_SPATIAL)
    denominator = tf.reduce_sum(activations, axis=_SPATIAL) + 1e-7
    return _weighted_sum(activations, tf.math.divide_no_nan(numerator, denominator))


def _layercam(activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """LayerCAM (Jiang et al.): elementwise positive gradient x activation."""
    import tensorflow as tf

    return tf.reduce_sum(tf.nn.relu(gradients) * activations, axis=-1)


METHODS.add("gradcam", CamMethod(_gradcam), help="Grad-CAM, the papers' method")
METHODS.add("gradcampp", CamMethod(_gradcampp), help="Grad-CAM++")
METHODS.add("hirescam", CamMethod(_hirescam), help="HiResCAM, gradient x activation")
METHODS.add("xgradcam", CamMethod(_xgradcam), help="XGrad-CAM")
METHODS.add("layercam", CamMethod(_layercam), help="LayerCAM")
# Score-CAM weights channels by the target's probability on inputs masked by each channel (forward passes).
METHODS.add("scorecam", CamMethod(_weighted_sum, uses_gradients=False), help="Score-CAM, forward passes, no gradient")
