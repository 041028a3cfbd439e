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

The predicted class is the most probable one for exclusive classes, ``p >= threshold`` for a
one-output sigmoid (default 0.5, recorded in the heatmap store), and for independent sigmoids every
finding with ``p >= threshold`` (an (N, L) boolean array instead of (N,) class indices).

A model whose output layer has no activation gives logits; many brought multi-label models are such,
meant as independent sigmoids. The head kind may then be *named* instead of read (:func:`head_kind`'s
``wanted``, ``--head``): a linear output read as ``sigmoid`` or ``sigmoids`` keeps its outputs as the class
logits and takes its probabilities through that kind's activation (:meth:`Head.activate`; :func:`reads_logits`
says when a model's outputs need it), so the ``logit`` score explains z and the probabilities are sigmoid(z).
Read as ``softmax``, a linear output is the ``linear`` kind.
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
    decide: Callable  # (probabilities (N, K), threshold) -> predicted classes (N,), or (N, K) bool for multi-label
    activate: Callable  # logits (N, units) -> outputs (N, units): this kind's activation (identity for a logits head)

    @property
    def outputs_are_logits(self) -> bool:
        """The output layer has no activation: its outputs already are the logits (nothing to capture before it)."""
        return self.activation == "linear"

    @property
    def trainable(self) -> bool:
        """hmt builds and trains this head (its losses take probabilities); a logits head is only read."""
        return not self.outputs_are_logits

    def output_layer(self, classes: int) -> tuple[int, str]:
        """(units, activation) of the output layer that gives ``classes`` classes with this head."""
        return (1 if self.single_output else classes), self.activation

    def class_count(self, units: int) -> int:
        """Number of classes of an output with ``units`` units."""
        return 2 if self.single_output else units

    def matches(self, activation: str, units: int) -> bool:
        if activation != self.activation:
            return False
        if self.single_output is None:
            return units >= 2
        return (units == 1) == self.single_output


def _identity(values):
    return values


def _most_probable(probabilities, threshold: float):
    import keras

    return keras.ops.cast(keras.ops.argmax(probabilities, axis=-1), "int32")


def _positive_above(probabilities, threshold: float):
    import keras

    return keras.ops.cast(probabilities[:, 1] >= threshold, "int32")


def _each_above(probabilities, threshold: float):
    return probabilities >= threshold


def _softmax(values):
    import tensorflow as tf

    return tf.nn.softmax(values)


def _sigmoid(values):
    import tensorflow as tf

    return tf.sigmoid(values)


def _pair(values):
    """(N, 1) p -> (N, 2) (1 - p, p)."""
    import tensorflow as tf

    return tf.concat([1.0 - values, values], axis=-1)


def _signed_pair(values):
    """(N, 1) z -> (N, 2) (-z, z): the negative class's logit is the positive one's negation."""
    import tensorflow as tf

    return tf.concat([-values, values], axis=-1)


HEADS: Registry[Head] = Registry("head kind", parameter="head")
HEADS.add("softmax", Head("softmax", None, False, _identity, _identity, _most_probable, _softmax),
          help="K exclusive classes, softmax output")
HEADS.add("linear", Head("linear", None, False, _softmax, _identity, _most_probable, _identity),
          help="K exclusive classes, logits output")
HEADS.add("sigmoid", Head("sigmoid", True, False, _pair, _signed_pair, _positive_above, _sigmoid),
          help="one sigmoid output, two classes (a linear output: its logit)")
HEADS.add("sigmoids", Head("sigmoid", False, True, _identity, _identity, _each_above, _sigmoid),
          help="one sigmoid per finding, multi-label (a linear output: their logits)")
DEFAULT_THRESHOLD = 0.5
EXCLUSIVE_HEAD = "softmax"  # the head hmt trains for exclusive classes
BINARY_HEAD = "sigmoid"  # ... for one class against the rest
MULTI_LABEL_HEAD = "sigmoids"  # ... for independent findings


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


def head_kind(activation: str, units: int, wanted: str | None = None) -> str:
    """The registered head kind of an output with this activation and width; HmtError when none fits.

    ``wanted`` names the kind instead (an override): it must fit the width, and an output layer with an activation of
    its own must be that kind's; a linear output (logits) may be read as any kind (see the module docstring), and is
    the registered logits kind where one reads them the same way (``softmax`` over logits is ``linear``).
    """
    if wanted is None:
        for name, head in HEADS.items():
            if head.matches(activation, units):
                return name
        unsupported = f"unsupported classifier output: {units} unit(s) with {activation} activation"
        if activation == "linear":
            raise HmtError(f"{unsupported}; a linear output (logits) is read as the head kind $head names", parameters=("head",))
        raise HmtError(f"{unsupported} (hmt reads {', '.join(HEADS.names())} heads)")
    head = HEADS[wanted]
    if not head.matches(head.activation, units):
        width = "one output unit" if head.single_output else "two or more output units"
        raise HmtError(f"$head {wanted} reads {width}; the model has {units}", parameters=("head",))
    if head.activation == activation:
        return wanted
    if activation != "linear":
        raise HmtError(f"$head {wanted}: the model's output layer applies {activation} itself; only a linear output "
                       "(logits) can be read as another head kind", parameters=("head",))
    same = [name for name, entry in HEADS.items() if entry.outputs_are_logits
            and (entry.single_output, entry.multi_label) == (head.single_output, head.multi_label)]
    return same[0] if same else wanted


def detect_head(model, wanted: str | None = None) -> str:
    """The head kind of a Keras classifier, from its output layer and output width (``wanted``: named, see
    :func:`head_kind`)."""
    from heatmap_templates.model.layers import output_layer

    units = model.outputs[0].shape[-1]
    return head_kind(activation_name(output_layer(model)), int(units), wanted)


def reads_logits(model, head: str) -> bool:
    """Whether ``head`` reads ``model``'s outputs as logits through its own activation (:meth:`Head.activate`): a linear
    output layer read as a kind whose outputs are not logits (sigmoid, sigmoids)."""
    from heatmap_templates.model.layers import output_layer

    return activation_name(output_layer(model)) == "linear" and not HEADS[head].outputs_are_logits


def is_multi_label(head: str | None) -> bool:
    """Whether a recorded head kind has independent findings (None: a file written before heads were recorded, whose
    models had exclusive classes)."""
    return head is not None and HEADS[head].multi_label


def check_threshold(threshold: float) -> float:
    """A decision threshold, which must lie strictly between 0 and 1."""
    if not 0.0 < float(threshold) < 1.0:
        raise HmtError(f"the decision threshold must lie between 0 and 1, got {threshold}")
    return float(threshold)


def predicted_classes(probabilities: np.ndarray, head: str, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """The predicted class of each image (N,) int, or for a multi-label head each finding's decision (N, L) bool."""
    values = np.asarray(probabilities, dtype=np.float32)
    if not len(values):
        return np.zeros((0, values.shape[1]) if HEADS[head].multi_label else 0, dtype=bool if HEADS[head].multi_label else np.int32)
    return np.asarray(HEADS[head].decide(values, check_threshold(threshold)))


def probabilities_of(outputs: np.ndarray, head: str, *, from_logits: bool = False) -> np.ndarray:
    """Class probabilities (N, K) float64 of model outputs (N, units) computed outside a graph; ``from_logits``: the
    outputs are logits that the head reads through its activation (:func:`reads_logits`)."""
    import tensorflow as tf

    values = tf.convert_to_tensor(np.asarray(outputs, dtype=np.float32))
    if from_logits:
        values = HEADS[head].activate(values)
    return np.asarray(HEADS[head].probabilities(values), dtype=np.float64)
