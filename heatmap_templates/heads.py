"""Head kinds: how a classifier's output layer turns into class probabilities and class logits.

The kind is read from the model's output layer when the model is loaded (:func:`detect_head`),
recorded in its metadata (``ModelInfo.head``), and every caller asks it; nothing guesses from
output values. A head maps the model's *outputs* (after its activation) to class probabilities
(N, K), and the *logits* (the output layer's pre-activation) to one logit per class (N, K), the
numbers a CAM's ``logit`` score explains.

=========  ==========================  =====================  ==========================
kind       output layer                probabilities          class logits
=========  ==========================  =====================  ==========================
softmax    K units, softmax            the outputs            the logits
linear     K units, no activation      softmax(outputs)       the outputs
sigmoid    1 unit, sigmoid (binary)    (1 - p, p)             (-z, z)
sigmoids   L units, sigmoid each       the outputs            the logits (independent)
=========  ==========================  =====================  ==========================

A one-output sigmoid model has two classes (negative, positive); independent sigmoids are a
multi-label model whose "classes" are findings that can be present together.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from heatmap_templates.errors import HmtError
from heatmap_templates.registry import Registry


@dataclass(frozen=True)
class Head:
    """One head kind (see the module docstring); functions take and return TensorFlow tensors."""

    activation: str  # the output layer's activation that identifies it
    single_output: bool | None  # True: exactly one unit; False: more than one; None: any width >= 2
    multi_label: bool  # classes are independent findings rather than exclusive classes
    probabilities: Callable  # outputs (N, units) -> (N, K)
    class_logits: Callable  # logits (N, units) -> (N, K)

    def class_count(self, units: int) -> int:
        """Number of classes of an output with ``units`` units."""
        return 2 if self.single_output else units

    def matches(self, activation: str, units: int) -> bool:
        if activation != self.activation:
            return False
        if self.single_output is None:
            return units >= 2
        return (units == 1) == self.single_output


def _identity(values):  # noqa: ANN001, ANN202 (tf.Tensor)
    return values


def _softmax(values):  # noqa: ANN001, ANN202
    import tensorflow as tf

    return tf.nn.softmax(values)


def _pair(values):  # noqa: ANN001, ANN202
    """(N, 1) p -> (N, 2) (1 - p, p)."""
    import tensorflow as tf

    return tf.concat([1.0 - values, values], axis=-1)


def _signed_pair(values):  # noqa: ANN001, ANN202
    """(N, 1) z -> (N, 2) (-z, z): the negative class's logit is the positive one's negation."""
    import tensorflow as tf

    return tf.concat([-values, values], axis=-1)


HEADS: Registry[Head] = Registry("head kind", parameter="head")
HEADS.add("softmax", Head("softmax", None, False, _identity, _identity), help="K exclusive classes, softmax output")
HEADS.add("linear", Head("linear", None, False, _softmax, _identity), help="K exclusive classes, logits output")
HEADS.add("sigmoid", Head("sigmoid", True, False, _pair, _signed_pair), help="one sigmoid output, two classes")
HEADS.add("sigmoids", Head("sigmoid", False, True, _identity, _identity), help="one sigmoid per finding, multi-label")


def activation_name(layer: object) -> str:
    """The activation of an output layer by name: softmax, sigmoid, linear, ... (a Softmax layer is softmax)."""
    import keras

    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    name = getattr(activation, "__name__", str(activation))
    return "linear" if name in ("linear", "identity") else name


def head_kind(activation: str, units: int) -> str:
    """The registered head kind of an output with this activation and width; HmtError when none fits."""
    for name, head in HEADS.items():
        if head.matches(activation, units):
            return name
    raise HmtError(f"unsupported classifier output: {units} unit(s) with {activation} activation "
                   f"(hmt reads {', '.join(HEADS.names())} heads)")


def detect_head(model) -> str:  # noqa: ANN001 (keras.Model)
    """The head kind of a Keras classifier, from its output layer and output width."""
    from heatmap_templates.model_layers import output_layer

    units = model.outputs[0].shape[-1]
    return head_kind(activation_name(output_layer(model)), int(units))


def probabilities_of(outputs: np.ndarray, head: str) -> np.ndarray:
    """Class probabilities (N, K) float64 of model outputs (N, units) computed outside a graph."""
    import tensorflow as tf

    values = tf.convert_to_tensor(np.asarray(outputs, dtype=np.float32))
    return np.asarray(HEADS[head].probabilities(values), dtype=np.float64)
