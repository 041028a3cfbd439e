"""EigenCAM (``Inputs.ACTIVATIONS``): the activations' first principal component, one map for every class.

No gradient and no forward pass beyond the engine's one: EigenCAM runs at the speed of a forward pass
(plus one small SVD per image).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from heatmap_templates.explain.cam_methods.base import METHODS, CamMethod, Inputs

if TYPE_CHECKING:
    import tensorflow as tf


def eigencam(activations: tf.Tensor) -> tf.Tensor:
    """EigenCAM: per image, the projection of the (h*w, C) activation matrix on its first principal component.

    Like pytorch-grad-cam's ``get_2d_projection``, the activations are centred before the SVD (each channel's
    mean over the h*w positions is subtracted), and the map is the centred matrix times its first right
    singular vector. A principal component's sign is arbitrary; it is chosen so that the map correlates
    positively with the channel-summed activation (a zero correlation keeps the SVD's sign). The map does not
    depend on the class: every class gets the same map. Returns (N, h, w) before the engine's ReLU.

    Reference: Muhammad & Yeasin 2020, "Eigen-CAM: Class Activation Map using Principal Components",
    https://arxiv.org/abs/2008.00299
    """
    import tensorflow as tf

    shape = tf.shape(activations)
    flat = tf.reshape(activations, tf.stack([shape[0], shape[1] * shape[2], shape[3]]))  # (N, h*w, C)
    centred = flat - tf.reduce_mean(flat, axis=1, keepdims=True)
    _, _, right = tf.linalg.svd(centred, full_matrices=False)  # right: (N, C, min(h*w, C))
    projection = tf.einsum("npc,nc->np", centred, right[:, :, 0])
    # Its covariance with the channel sum (projection has zero mean, so the centred sum gives the same sign).
    alignment = tf.reduce_sum(projection * tf.reduce_sum(centred, axis=2), axis=1, keepdims=True)
    projection = tf.where(alignment < 0.0, -projection, projection)
    return tf.reshape(projection, shape[:3])


METHODS.add(
    "eigencam", CamMethod(eigencam, Inputs.ACTIVATIONS),
    help="EigenCAM, the activations' first principal component, no gradient, class-agnostic: "
         "the same map for every class",
)
