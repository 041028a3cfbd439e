"""Backbones: the catalogue of classifier architectures hmt trains, and how each is built.

The models hmt builds have one shape that later stages rely on::

    image input -> base (a nested Functional model, e.g. ``vgg19``) -> avg_pool -> head_dense
                -> head_dropout -> predictions (Dense, softmax; its input is the logits' input)

so the default CAM layer is reachable by a nested name such as ``vgg19/block5_conv4``. The ``small``
backbone is one flat Functional model (``block1_conv`` ... ``block4_relu`` then the same head).
Adding a backbone is adding one :data:`BACKBONES` entry (a ``keras.applications`` constructor name).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heatmap_templates.errors import BadFileError, HmtError, one_line
from heatmap_templates.model.heads import EXCLUSIVE_HEAD, HEADS
from heatmap_templates.registry import Registry


@dataclass(frozen=True)
class BackboneSpec:
    """What hmt needs to know about one backbone."""

    name: str
    application: str | None  # attribute of keras.applications; None for hmt's own `small` CNN
    preprocessing: str  # a heatmap_templates.data.preprocess.PREPROCESSING mode
    default_input_side: int
    min_input_side: int
    channels: int


BACKBONES: Registry[BackboneSpec] = Registry("backbone", parameter="backbone")
BACKBONES.add("vgg19", BackboneSpec("vgg19", "VGG19", "caffe", 224, 32, 3), help="the papers' backbone")
BACKBONES.add("vgg16", BackboneSpec("vgg16", "VGG16", "caffe", 224, 32, 3), help="")
BACKBONES.add("resnet50", BackboneSpec("resnet50", "ResNet50", "caffe", 224, 32, 3), help="")
BACKBONES.add("xception", BackboneSpec("xception", "Xception", "tf", 299, 71, 3), help="")
BACKBONES.add("small", BackboneSpec("small", None, "unit", 128, 16, 1), help="compact CNN from scratch, CPU-friendly")
SMALL_FILTERS = (16, 32, 64, 128)
DEFAULT_BACKBONE = "vgg19"
DEFAULT_WEIGHTS = "auto"  # imagenet, or none for backbones without ImageNet weights


def resolve_weights(backbone: str, weights: str | None) -> str:
    """``auto`` becomes ``imagenet`` for keras.applications backbones and ``none`` for ``small``."""
    spec = BACKBONES[backbone]
    choice = "none" if weights is None else str(weights)
    if choice.lower() == "auto":
        return "none" if spec.application is None else "imagenet"
    if choice.lower() in ("imagenet", "none"):
        choice = choice.lower()
    if choice == "imagenet" and spec.application is None:
        raise HmtError(f"`{backbone}` has no ImageNet weights; set $weights to none or to a weights file", parameters=("weights",))
    return choice


def as_size(input_size: int | Sequence[int]) -> tuple[int, int]:
    """A square side or (height, width) as (height, width)."""
    if isinstance(input_size, (int, np.integer)):
        return int(input_size), int(input_size)
    height, width = (int(v) for v in input_size)
    return height, width


def build_model(
    backbone: str,
    num_classes: int,
    input_size: int | Sequence[int] | None = None,
    weights: str | None = "none",
    *,
    dense_units: int = 256,
    dropout: float = 0.5,
    head: str = EXCLUSIVE_HEAD,
):
    """Build an untrained classifier: frozen base (nested) + new head, or the flat ``small`` CNN.

    ``weights``: ``imagenet`` (Keras' own download and cache), ``none`` (random), ``auto``, or the
    path of a local weights file for the base (e.g. Keras' ``*_notop.h5``); for ``small`` a path
    loads the whole model's weights. The last layer is ``predictions``: a Dense layer with softmax
    over the classes (``head="softmax"``), one sigmoid unit for two classes (``"sigmoid"``), or one
    sigmoid per finding (``"sigmoids"``, multi-label).
    """
    import keras

    spec = BACKBONES[backbone]
    if num_classes < 2:
        raise HmtError(f"a classifier needs at least 2 classes, got {num_classes}")
    size = as_size(input_size or spec.default_input_side)
    if min(size) < spec.min_input_side:
        raise HmtError(f"{backbone} needs an input size of at least {spec.min_input_side} px, got {size[0]}x{size[1]}")
    weights = resolve_weights(backbone, weights)
    inputs = keras.Input(shape=(*size, spec.channels), name="image")
    if spec.application is None:
        features = _small_features(inputs)
    else:
        base = _application_base(spec, (*size, spec.channels), weights)
        base.trainable = False
        features = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    x = keras.layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    kind = HEADS[head]
    if not kind.trainable:
        raise HmtError(f"hmt does not build a {head!r} head (it reads one); build one of "
                       f"{', '.join(name for name, h in HEADS.items() if h.trainable)}")
    units, activation = kind.output_layer(num_classes)
    outputs = keras.layers.Dense(units, activation=activation, name="predictions")(x)
    model = keras.Model(inputs, outputs, name=f"hmt_{backbone}")
    if spec.application is None and weights != "none":
        _load_weights_file(model, weights)
    return model


def _small_features(inputs):
    """hmt's compact CNN: 4 blocks (16-32-64-128 filters) of conv-BN-ReLU, two convolutions in blocks 2-4.

    Max-pooling follows the first three blocks, so the CAM layer ``block4_relu`` has 16 x 16 maps
    at 128 px and a receptive field of 66 px: enough context to tell a faint lower-zone opacity
    from normal lung. BatchNorm momentum 0.9: moving statistics keep up in short trainings.
    """
    import keras

    x = inputs
    for index, filters in enumerate(SMALL_FILTERS, start=1):
        names = ["1", ""] if index > 1 else [""]
        for suffix in names:
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{index}_conv{suffix}")(x)
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{index}_bn{suffix}")(x)
            x = keras.layers.ReLU(name=f"block{index}_relu{suffix}")(x)
        if index < len(SMALL_FILTERS):
            x = keras.layers.MaxPooling2D(2, name=f"block{index}_pool")(x)
    return x


def _application_base(spec: BackboneSpec, input_shape: tuple[int, int, int], weights: str):
    """A keras.applications base without its top, with ImageNet, local or random weights."""
    import keras

    assert spec.application is not None, spec.name  # the small CNN has no keras.applications base
    constructor = getattr(keras.applications, spec.application)
    if weights == "imagenet":
        try:
            return constructor(include_top=False, weights="imagenet", input_shape=input_shape, name=spec.name)
        except Exception as error:
            raise HmtError(
                f"could not download the ImageNet weights for {spec.name} (no network?): {one_line(error, 200)}; "
                f"set $weights to the path of a local {spec.name}_weights_tf_dim_ordering_tf_kernels_notop.h5 file, or to none",
                parameters=("weights",),
            ) from None
    base = constructor(include_top=False, weights=None, input_shape=input_shape, name=spec.name)
    if weights != "none":
        _load_weights_file(base, weights)
    return base


def _load_weights_file(model, path: str) -> None:
    """Load a local weights file into ``model``; a missing or mismatched file is a :class:`BadFileError`."""
    if not Path(path).is_file():
        raise BadFileError(path, "weights file not found ($weights takes imagenet, none, or the path of a weights file)",
                           parameters=("weights",))
    try:
        model.load_weights(path)
    except Exception as error:
        raise BadFileError(path, f"cannot load these weights into {model.name}: {one_line(error, 200)}") from None
