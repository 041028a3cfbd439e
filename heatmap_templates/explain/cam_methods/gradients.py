"""The gradient CAM methods (``Inputs.GRADIENTS``): activations and the explained score's gradient make the map.

Each ``compute(activations, gradients)`` takes (N, h, w, C) float32 tensors and returns (N, h, w) before the
engine's ReLU; the engine runs one backward pass, from the score down to the layer, per explained class.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from heatmap_templates.explain.cam_methods.base import METHODS, SPATIAL, CamMethod, Inputs, weighted_sum

if TYPE_CHECKING:
    import tensorflow as tf


def gradcam(activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """Grad-CAM: channel weight = spatial mean of the gradient.

    Reference: Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", https://arxiv.org/abs/1610.02391
    """
    import tensorflow as tf

    return weighted_sum(activations, tf.reduce_mean(gradients, axis=SPATIAL))


def gradcampp(activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """Grad-CAM++, the closed form used by pytorch-grad-cam.

    Reference: Chattopadhyay et al. 2018, "Grad-CAM++: Improved Visual Explanations for Deep Convolutional
    Networks", https://arxiv.org/abs/1710.11063
    """
    import tensorflow as tf

    grads_2 = tf.square(gradients)
    grads_3 = grads_2 * gradients
    activation_sums = tf.reduce_sum(activations, axis=SPATIAL, keepdims=True)
    alphas = tf.math.divide_no_nan(grads_2, 2.0 * grads_2 + activation_sums * grads_3 + 1e-6)
    alphas = tf.where(gradients != 0.0, alphas, tf.zeros_like(alphas))
    weights = tf.reduce_sum(tf.nn.relu(gradients) * alphas, axis=SPATIAL)
    return weighted_sum(activations, weights)


def hirescam(activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """HiResCAM: elementwise gradient x activation, summed over channels.

    Reference: Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", https://arxiv.org/abs/2011.08891
    """
    import tensorflow as tf

    return tf.reduce_sum(gradients * activations, axis=-1)


def xgradcam(activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """XGrad-CAM: weight = sum(g * A) / (sum(A) + eps) over space.

    Reference: Fu et al. 2020, "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
    https://arxiv.org/abs/2008.02312
    """
    import tensorflow as tf

    numerator = tf.reduce_sum(gradients * activations, axis=SPATIAL)
    denominator = tf.reduce_sum(activations, axis=SPATIAL) + 1e-7
    return weighted_sum(activations, tf.math.divide_no_nan(numerator, denominator))


def layercam(activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """LayerCAM: elementwise positive gradient x activation.

    Reference: Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
    IEEE Transactions on Image Processing 30, https://ieeexplore.ieee.org/document/9462463
    """
    import tensorflow as tf

    return tf.reduce_sum(tf.nn.relu(gradients) * activations, axis=-1)


METHODS.add("gradcam", CamMethod(gradcam, Inputs.GRADIENTS), help="Grad-CAM, the papers' method")
METHODS.add("gradcampp", CamMethod(gradcampp, Inputs.GRADIENTS), help="Grad-CAM++")
METHODS.add("hirescam", CamMethod(hirescam, Inputs.GRADIENTS), help="HiResCAM, gradient x activation")
METHODS.add("xgradcam", CamMethod(xgradcam, Inputs.GRADIENTS), help="XGrad-CAM")
METHODS.add("layercam", CamMethod(layercam, Inputs.GRADIENTS), help="LayerCAM")
