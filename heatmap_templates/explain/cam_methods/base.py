"""What a CAM method is: the inputs it declares, the method registry, and the shared weighted sum.

A method declares one kind of :class:`Inputs`, and the engine (:mod:`heatmap_templates.explain.cam`) gives it
exactly that and nothing more: the gradient of the explained score, a way to score masked inputs, or the
activations alone. Maps come back before the engine's ReLU; every reduction runs over one image's spatial
axes, never over the batch, so a batched result equals the per-image result.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from heatmap_templates.registry import Registry

if TYPE_CHECKING:
    import tensorflow as tf

DEFAULT_METHOD = "gradcam"
SPATIAL = (1, 2)


class Inputs(enum.Enum):
    """What a method needs from the engine besides the layer's activations ``A`` (N, h, w, C), float32.

    The signature of :attr:`CamMethod.compute` follows from it:

    - ``GRADIENTS``: ``compute(A, dS/dA) -> (N, h, w)``, with the gradient of the explained score; the engine
      runs one backward pass (down to the layer) per explained class.
    - ``MASKED_SCORES``: ``compute(A, masked: MaskedScores) -> (N, K, h, w)``, every class's map at once: the
      method builds its masked inputs and runs the model on them through ``masked``; no gradient.
    - ``ACTIVATIONS``: ``compute(A) -> (N, h, w)``, one class-agnostic map, the same for every class; no
      gradient and no forward pass beyond the one every method shares.
    """

    GRADIENTS = "gradients"
    MASKED_SCORES = "masked scores"
    ACTIVATIONS = "activations"


@dataclass(frozen=True)
class MaskedScores:
    """What a ``MASKED_SCORES`` method is handed to score its own masked inputs (inside the engine's graph).

    ``probabilities(masked)`` runs the model on masked images (M, H, W, C) float32 and returns its class
    probabilities (M, K) float32, read through the head kind (the probability, whatever the engine's explained
    score: Score-CAM's definition). ``chunk`` is the number of masked images per forward pass that the caller
    asked for (``CamEngine(scorecam_chunk=...)``), or None for the method's own default.
    """

    images: tf.Tensor  # (N, H, W, C) float32: the batch being explained
    probabilities: Callable[[tf.Tensor], tf.Tensor]
    num_classes: int
    chunk: int | None = None


@dataclass(frozen=True)
class CamMethod:
    """One CAM method: the inputs it declares and how it turns them into maps (see :class:`Inputs`)."""

    compute: Callable[..., tf.Tensor]
    inputs: Inputs = Inputs.GRADIENTS

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, Inputs):
            raise TypeError(f"a CAM method declares its inputs as one of {[kind.name for kind in Inputs]}, "
                            f"got {self.inputs!r}")


METHODS: Registry[CamMethod] = Registry("CAM method", parameter="method")


def weighted_sum(activations: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Sum over channels of per-image channel weights (N, C) times activations (N, h, w, C): (N, h, w)."""
    import tensorflow as tf

    return tf.einsum("nhwc,nc->nhw", activations, weights)
