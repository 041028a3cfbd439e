"""Finding layers inside (nested) Keras models: one recursive walk, every rule a predicate.

Transfer-learning classifiers nest their base (``vgg19`` inside ``hmt_vgg19``), so layers are
named by paths joined with '/' (``vgg19/block5_conv4``). :func:`walk_layers` is the only walk;
:func:`find_layers` filters it with a predicate (as pytorch-grad-cam's ``find_layer_predicate_
recursive``), and the rules "the default CAM layer", "the output layer", "the nested base" and
"the base's blocks" are predicates or small functions over it.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from heatmap_templates.errors import HmtError

LayerPredicate = Callable[[object], bool]
_BLOCK_NAME = re.compile(r"^(conv\d+_block\d+|block\d+)_")


def _is_model(layer: object) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def walk_layers(model, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, layer) for every layer in model order; a nested model is yielded, then its own layers."""
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        yield path, layer
        if _is_model(layer):
            yield from walk_layers(layer, prefix=f"{path}/")


def find_layers(model, predicate: LayerPredicate) -> list[str]:
    """Paths of the layers (nested ones included) for which ``predicate(layer)`` holds, in model order."""
    return [path for path, layer in walk_layers(model) if predicate(layer)]


def output_rank(layer: object) -> int | None:
    """The rank of a layer's (single) output, or None when it has none or several."""
    try:
        return len(layer.output.shape)  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return None


def is_cam_candidate(layer: object) -> bool:
    """A layer a CAM can explain: a 4-D (N, h, w, C) output that is not input, pooling, dropout or padding.

    The usual Grad-CAM target is the last such layer: the last convolutional feature maps before
    they are pooled.
    """
    import keras

    skipped = (keras.layers.InputLayer, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
               keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Dropout,
               keras.layers.SpatialDropout2D, keras.layers.ZeroPadding2D)
    return not _is_model(layer) and not isinstance(layer, skipped) and output_rank(layer) == 4


def default_cam_layer(model) -> str | None:
    """The last CAM candidate (e.g. ``vgg19/block5_conv4``), or None for a model without one."""
    candidates = find_layers(model, is_cam_candidate)
    return candidates[-1] if candidates else None


def resolve_layer(model, name: str) -> tuple[str, object]:
    """Find a layer by path ('vgg19/block5_conv4') or by a unique plain name inside nested models."""
    paths = [path for path, _ in walk_layers(model)]
    if name not in paths:
        matches = [path for path in paths if path.rsplit("/", 1)[-1] == name]
        if len(matches) != 1:
            candidates = find_layers(model, is_cam_candidate)[-5:] or paths[-5:]
            reason = "is ambiguous" if matches else "not found"
            raise HmtError(f"layer '{name}' {reason} in model '{model.name}'; candidates: {', '.join(candidates)}")
        name = matches[0]
    layer = model
    for part in name.split("/"):
        layer = layer.get_layer(part)
    return name, layer


def output_layer(model) -> object:
    """The layer that produces the model's (single) output, looking inside nested models."""
    outputs = model.outputs
    if outputs is None or len(outputs) != 1:
        raise HmtError(f"model '{model.name}' must have exactly one output (a class-score vector)")
    layer = outputs[0]._keras_history[0]
    return output_layer(layer) if _is_model(layer) else layer


def find_base(model) -> Any:
    """The nested base model of a transfer-learning classifier, or None for flat models."""
    bases = [layer for layer in model.layers if _is_model(layer)]
    return bases[0] if len(bases) == 1 else None


def conv_blocks(base) -> list[list]:
    """The base's layers grouped into blocks by name (``block5_*``, ``conv5_block3_*``), in order."""
    blocks: dict[str, list] = {}
    for layer in base.layers:
        match = _BLOCK_NAME.match(layer.name)
        if match:
            blocks.setdefault(match.group(1), []).append(layer)
    return list(blocks.values())


def unfreeze_last_blocks(model, n_blocks: int) -> list[str]:
    """Make the last ``n_blocks`` blocks of the nested base trainable (BatchNorm stays frozen); returns their layer names."""
    import keras

    base = find_base(model)
    if base is None:
        raise HmtError("fine-tuning needs a model with a nested base (vgg16, vgg19, resnet50, xception)")
    blocks = conv_blocks(base)
    if n_blocks > len(blocks):
        raise HmtError(f"{base.name} has {len(blocks)} blocks; cannot fine-tune {n_blocks}")
    base.trainable = True
    chosen = {id(layer) for block in blocks[len(blocks) - n_blocks:] for layer in block}
    names = []
    for layer in base.layers:
        layer.trainable = id(layer) in chosen and not isinstance(layer, keras.layers.BatchNormalization)
        if layer.trainable and layer.weights:
            names.append(layer.name)
    return names


@contextmanager
def wrapped_call(layer: Any, wrapper_factory: Callable[[Callable], Callable]) -> Iterator[None]:
    """Temporarily replace ``layer.call`` by ``wrapper_factory(original_call)``; always restore it (the CAM engine and
    the attention prior read a layer's activations this way during one forward pass)."""
    had_instance_call = "call" in layer.__dict__
    original = layer.call
    layer.call = wrapper_factory(original)
    try:
        yield
    finally:
        if had_instance_call:
            layer.call = original
        else:
            del layer.call
