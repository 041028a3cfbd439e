"""Model stage: backbones, transfer learning, cached-feature head training, the `.keras` file and its metadata.

The models hmt builds have one shape that later stages rely on::

    image input -> base (a nested Functional model, e.g. ``vgg19``) -> avg_pool -> head_dense
                -> head_dropout -> predictions (Dense, softmax; its input is the logits' input)

so the default CAM layer is reachable by a nested name such as ``vgg19/block5_conv4``. The ``small``
backbone is one flat Functional model (``block1_conv`` ... ``block4_relu`` then the same head).

With a frozen base, training computes the base's pooled features once and fits the head on them:
global average pooling has no weights, so the head sees exactly what it would see through the
full model, and an epoch costs a head pass instead of a VGG pass. Augmentation and fine-tuning
need the full model and train through it.

The metadata later stages need (:class:`ModelInfo`) travels inside the ``.keras`` zip archive as
``hmt_info.json``; Keras ignores the extra member, so the file stays an ordinary Keras model.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from heatmap_templates import __version__
from heatmap_templates.data import Dataset, Problem, Sample, SkipLog, decode_image, display_path, file_sha256, split_dataset
from heatmap_templates.errors import BadFileError, BadImageError, HmtError, one_line
from heatmap_templates.metrics import classification_report
from heatmap_templates.preprocess import PREPROCESSING_MODES, resize_gray, to_model_input
from heatmap_templates.progress import NullProgress, Progress

INFO_MEMBER = "hmt_info.json"
HEAD_LAYER_NAMES = ("avg_pool", "head_dense", "head_dropout", "predictions")
SPLITS = ("train", "val", "test")
_DEFAULT_USER_INPUT_SIDE = 224


@dataclass(frozen=True)
class BackboneSpec:
    """What hmt needs to know about one backbone."""

    name: str
    application: str | None  # attribute of keras.applications; None for hmt's own `small` CNN
    preprocessing: str
    default_input_side: int
    min_input_side: int
    channels: int


BACKBONES: dict[str, BackboneSpec] = {
    "vgg19": BackboneSpec("vgg19", "VGG19", "caffe", 224, 32, 3),
    "vgg16": BackboneSpec("vgg16", "VGG16", "caffe", 224, 32, 3),
    "resnet50": BackboneSpec("resnet50", "ResNet50", "caffe", 224, 32, 3),
    "xception": BackboneSpec("xception", "Xception", "tf", 299, 71, 3),
    "small": BackboneSpec("small", None, "unit", 128, 16, 1),
}
SMALL_FILTERS = (16, 32, 64, 128)


# --------------------------------------------------------------------------- metadata


@dataclass
class ModelInfo:
    """Everything later stages need to use a model; stored as ``hmt_info.json`` inside the ``.keras`` file.

    ``split`` maps ``train``/``val``/``test`` to image paths relative to the training data set's
    root; ``dataset_fingerprint`` identifies that data set (see :func:`dataset_fingerprint`).
    ``cam_layer`` is None only for a user model without any 4-D layer.
    """

    class_names: list[str]
    backbone: str
    input_size: tuple[int, int]
    channels: int
    preprocessing: str
    cam_layer: str | None
    training: dict = field(default_factory=dict)
    dataset_fingerprint: str | None = None
    split: dict[str, list[str]] = field(default_factory=dict)
    hmt_version: str = __version__

    def to_dict(self) -> dict:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str | Path = INFO_MEMBER) -> "ModelInfo":
        """Parse and validate stored metadata; a malformed record is a :class:`BadFileError` naming ``source``."""
        required = ("class_names", "backbone", "input_size", "channels", "preprocessing", "cam_layer")
        if not isinstance(data, dict):
            raise BadFileError(source, f"{INFO_MEMBER} is not a JSON object")
        missing = [key for key in required if key not in data]
        if missing:
            raise BadFileError(source, f"{INFO_MEMBER} lacks {', '.join(missing)}")
        try:
            info = cls(
                class_names=[str(name) for name in data["class_names"]],
                backbone=str(data["backbone"]),
                input_size=(int(data["input_size"][0]), int(data["input_size"][1])),
                channels=int(data["channels"]),
                preprocessing=str(data["preprocessing"]),
                cam_layer=None if data["cam_layer"] is None else str(data["cam_layer"]),
                training=dict(data.get("training") or {}),
                dataset_fingerprint=data.get("dataset_fingerprint"),
                split={str(k): [str(p) for p in v] for k, v in (data.get("split") or {}).items()},
                hmt_version=str(data.get("hmt_version", "unknown")),
            )
        except (TypeError, ValueError, IndexError, AttributeError) as error:
            raise BadFileError(source, f"{INFO_MEMBER} is malformed ({error})") from None
        if info.preprocessing not in PREPROCESSING_MODES or info.channels not in (1, 3) or len(info.class_names) < 2:
            raise BadFileError(source, f"{INFO_MEMBER} has invalid values (preprocessing, channels or classes)")
        return info


@dataclass
class TrainConfig:
    """Training settings; defaults follow the first paper (Adam, lr 1e-3, categorical cross-entropy, frozen base)."""

    backbone: str = "vgg19"
    weights: str = "auto"  # auto | imagenet | none | path to a weights file; auto = imagenet, or none for `small`
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    input_size: int | None = None  # square side in pixels; None = the backbone's default
    seed: int = 0
    augment: bool = False
    fine_tune_blocks: int = 0
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 1e-5
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    patience: int = 8
    dense_units: int = 256
    dropout: float = 0.5
    cache_features: bool = True
    deterministic: bool = True
    patient_regex: str | None = None
    strict: bool = False

    def validate(self) -> None:
        """Raise :class:`HmtError` for settings that cannot work."""
        spec = backbone_spec(self.backbone)
        if self.epochs < 1 or self.batch_size < 1:
            raise HmtError("epochs and batch size must be at least 1")
        if not (self.learning_rate > 0 and self.fine_tune_learning_rate > 0):
            raise HmtError("learning rates must be positive")
        if self.input_size is not None and self.input_size < spec.min_input_side:
            raise HmtError(f"{self.backbone} needs an input size of at least {spec.min_input_side} px, got {self.input_size}")
        if self.fine_tune_blocks < 0 or self.fine_tune_epochs < 0:
            raise HmtError("--fine-tune-blocks and fine-tune epochs must not be negative")
        if self.fine_tune_blocks and spec.application is None:
            raise HmtError("`small` trains every layer from scratch; --fine-tune-blocks applies to pretrained backbones only")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise HmtError("validation and test fractions must be in [0, 1) and leave images for training")
        weights = resolve_weights(self.backbone, self.weights)
        if weights not in ("imagenet", "none") and not Path(weights).is_file():
            raise BadFileError(weights, "weights file not found (use --weights imagenet, none, or the path of a weights file)")
        if not 0 <= self.dropout < 1 or self.dense_units < 1:
            raise HmtError("dropout must be in [0, 1) and dense units at least 1")


@dataclass(frozen=True)
class EpochLog:
    """One finished epoch, for per-epoch progress lines."""

    phase: str  # "head" (cached features), "train" (full model) or "fine-tune"
    epoch: int  # 1-based within the phase
    epochs: int
    loss: float
    accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float


@dataclass
class TrainResult:
    """A trained model with its metadata, history, test-split report and skipped files."""

    model: object  # keras.Model
    info: ModelInfo
    history: list[dict]
    test_report: dict | None
    problems: list[Problem]
    split_counts: dict[str, dict[str, int]]
    seconds: float


@dataclass
class EvaluationResult:
    """The metrics of one evaluation run and what it ran on."""

    report: dict
    split: str  # the split actually evaluated (``all`` when DATA is not the training set)
    requested_split: str
    problems: list[Problem]
    notes: list[str]

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "requested_split": self.requested_split,
            "notes": list(self.notes),
            "skipped": [{"path": p.path, "reason": p.reason} for p in self.problems],
            **self.report,
        }


# --------------------------------------------------------------------------- building


def backbone_spec(backbone: str) -> BackboneSpec:
    """The spec of a backbone name, or a clear error listing the choices."""
    try:
        return BACKBONES[backbone]
    except KeyError:
        raise HmtError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}") from None


def resolve_weights(backbone: str, weights: str | None) -> str:
    """``auto`` becomes ``imagenet`` for keras.applications backbones and ``none`` for ``small``."""
    spec = backbone_spec(backbone)
    choice = "none" if weights is None else str(weights)
    if choice.lower() == "auto":
        return "none" if spec.application is None else "imagenet"
    if choice.lower() in ("imagenet", "none"):
        choice = choice.lower()
    if choice == "imagenet" and spec.application is None:
        raise HmtError("`small` has no ImageNet weights; use --weights none or a weights file")
    return choice


def _as_size(input_size: int | Sequence[int]) -> tuple[int, int]:
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
):
    """Build an untrained classifier: frozen base (nested) + new head, or the flat ``small`` CNN.

    ``weights``: ``imagenet`` (Keras' own download and cache), ``none`` (random), ``auto``, or the
    path of a local weights file for the base (e.g. Keras' ``*_notop.h5``); for ``small`` a path
    loads the whole model's weights. The last layer is ``predictions`` (Dense with softmax).
    """
    import keras

    spec = backbone_spec(backbone)
    if num_classes < 2:
        raise HmtError(f"a classifier needs at least 2 classes, got {num_classes}")
    size = _as_size(input_size or spec.default_input_side)
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
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
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

    constructor = getattr(keras.applications, spec.application)
    if weights == "imagenet":
        try:
            return constructor(include_top=False, weights="imagenet", input_shape=input_shape, name=spec.name)
        except Exception as error:  # noqa: BLE001 (Keras wraps every download failure in a bare Exception)
            raise HmtError(
                f"could not download the ImageNet weights for {spec.name} (no network?): {one_line(error, 200)}; "
                f"pass --weights PATH to a local {spec.name}_weights_tf_dim_ordering_tf_kernels_notop.h5 file, or --weights none"
            ) from None
    base = constructor(include_top=False, weights=None, input_shape=input_shape, name=spec.name)
    if weights != "none":
        _load_weights_file(base, weights)
    return base


def _load_weights_file(model, path: str) -> None:
    """Load a local weights file into ``model``; a missing or mismatched file is a :class:`BadFileError`."""
    if not Path(path).is_file():
        raise BadFileError(path, "weights file not found (use --weights imagenet, none, or the path of a weights file)")
    try:
        model.load_weights(path)
    except Exception as error:  # noqa: BLE001 (Keras raises ValueError, OSError, KeyError... for a wrong file)
        raise BadFileError(path, f"cannot load these weights into {model.name}: {one_line(error, 200)}") from None


def _iter_layers(model, prefix: str = ""):
    """(path, layer) for every layer, descending into nested models; nested names joined by '/'."""
    import keras

    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer, prefix=f"{path}/")
        else:
            yield path, layer


def default_cam_layer(model) -> str | None:
    """The last layer with a 4-D output that is not pooling, dropout or input (e.g. ``vgg19/block5_conv4``).

    This is the usual Grad-CAM target: the last convolutional feature maps before they are pooled.
    """
    import keras

    skipped = (keras.layers.InputLayer, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.Dropout,
               keras.layers.SpatialDropout2D, keras.layers.ZeroPadding2D)
    found = None
    for path, layer in _iter_layers(model):
        if isinstance(layer, skipped):
            continue
        try:
            rank = len(layer.output.shape)
        except (AttributeError, ValueError):
            continue
        if rank == 4:
            found = path
    return found


def find_base(model):
    """The nested base model of a transfer-learning classifier, or None for flat models."""
    import keras

    bases = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return bases[0] if len(bases) == 1 else None


def conv_blocks(base) -> list[list]:
    """The base's layers grouped into blocks by name (``block5_*``, ``conv5_block3_*``), in order."""
    pattern = re.compile(r"^(conv\d+_block\d+|block\d+)_")
    blocks: dict[str, list] = {}
    for layer in base.layers:
        match = pattern.match(layer.name)
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


# --------------------------------------------------------------------------- images


def relative_path(sample: Sample, root: Path) -> str:
    """A sample's path relative to its data set's root (POSIX form), or its absolute path if outside it."""
    try:
        return Path(sample.path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(sample.path).resolve().as_posix()


def dataset_fingerprint(dataset: Dataset) -> str:
    """SHA-256 over (relative path, label, file hash) of every sample: identifies a data set wherever it lies."""
    digest = hashlib.sha256()
    rows = sorted((relative_path(sample, dataset.root), sample.label, str(sample.path)) for sample in dataset.samples)
    for rel, label, path in rows:
        try:
            content = file_sha256(path)
        except OSError:
            content = "unreadable"
        digest.update(f"{rel}\t{label}\t{content}\n".encode("utf-8", "backslashreplace"))
    return digest.hexdigest()


def load_images(
    samples: Sequence[Sample],
    input_size: tuple[int, int],
    skip_log: SkipLog,
    *,
    progress: Progress | None = None,
    description: str = "decoding images",
) -> tuple[np.ndarray, list[Sample]]:
    """Decode and resize samples into one float16 (N, h, w) array in [0, 1]; bad files go to ``skip_log``.

    The data sets hmt trains on are small, so keeping them in memory (float16 halves it) is the
    simplest way to feed every epoch without decoding again.
    """
    progress = progress or NullProgress()
    progress.start(len(samples), description)

    def decode(sample: Sample) -> np.ndarray | BadImageError:
        try:
            return resize_gray(decode_image(sample.path).pixels, input_size).astype(np.float16)
        except BadImageError as error:
            return error

    images: list[np.ndarray] = []
    kept: list[Sample] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            for sample, result in zip(samples, pool.map(decode, samples)):
                progress.advance(1)
                if isinstance(result, BadImageError):
                    skip_log.add_error(result)
                    continue
                images.append(result)
                kept.append(sample)
    finally:
        progress.finish()
    array = np.stack(images) if images else np.zeros((0, *input_size), dtype=np.float16)
    return array, kept


def _affine_preprocessing(channels: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, offset) with to_model_input(x) == x * scale + offset, derived from preprocess.py.

    Every preprocessing mode is affine in the pixel value, so the tf.data pipeline can apply it in
    the graph while preprocess.py stays the single definition.
    """
    probe = np.stack([np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32)])
    mapped = to_model_input(probe, channels, mode)
    offset = mapped[0, 0, 0]
    return (mapped[1, 0, 0] - offset).astype(np.float32), offset.astype(np.float32)


def model_input(images: np.ndarray, info: ModelInfo) -> np.ndarray:
    """(N, h, w) [0, 1] images at the model's input size -> float32 model input."""
    return to_model_input(np.asarray(images, dtype=np.float32), info.channels, info.preprocessing)


def _predict_in_batches(model, images: np.ndarray, info: ModelInfo, batch_size: int, progress: Progress | None,
                        description: str) -> list[np.ndarray]:
    """``model.predict_on_batch`` over in-memory images, batch by batch, with progress."""
    progress = progress or NullProgress()
    progress.start(len(images), description)
    outputs = []
    try:
        for start in range(0, len(images), batch_size):
            batch = model_input(images[start:start + batch_size], info)
            outputs.append(np.asarray(model.predict_on_batch(batch)))
            progress.advance(len(batch))
    finally:
        progress.finish()
    return outputs


def predict_probabilities(model, info: ModelInfo, images: np.ndarray, *, batch_size: int = 32,
                          progress: Progress | None = None) -> np.ndarray:
    """Class probabilities (N, K) for in-memory images; a model that outputs logits gets a softmax."""
    outputs = _predict_in_batches(model, images, info, batch_size, progress, "classifying")
    if not outputs:
        return np.zeros((0, len(info.class_names)))
    probabilities = np.concatenate(outputs).astype(np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(info.class_names):
        raise HmtError(f"the model outputs shape {probabilities.shape[1:]}, expected ({len(info.class_names)},) class scores")
    if not np.all(np.isfinite(probabilities)):
        raise HmtError("the model produced non-finite outputs (NaN or infinity)")
    if probabilities.min() < 0 or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3):
        shifted = np.exp(probabilities - probabilities.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    return probabilities


# --------------------------------------------------------------------------- training


def image_pipeline(images: np.ndarray, onehot: np.ndarray, info: ModelInfo, batch_size: int, *,
                    shuffle_seed: int | None = None, augment_seed: int | None = None):
    """tf.data over in-memory images: shuffle, batch, augment (optional, training only), preprocess."""
    import tensorflow as tf

    scale, offset = _affine_preprocessing(info.channels, info.preprocessing)
    dataset = tf.data.Dataset.from_tensor_slices((images, onehot.astype(np.float32)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if augment_seed is not None:
        @tf.autograph.experimental.do_not_convert  # plain tensor code: nothing for AutoGraph to convert
        def augment_batch(batch, random):
            return _augment(tf.cast(batch[0], tf.float32), tf.stack([random, augment_seed])), batch[1]

        randoms = tf.data.Dataset.random(seed=augment_seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip((dataset, randoms)).map(augment_batch, num_parallel_calls=tf.data.AUTOTUNE)

    @tf.autograph.experimental.do_not_convert
    def to_input(x, y):
        x = tf.cast(x, tf.float32)[..., None]
        if info.channels == 3:
            x = tf.repeat(x, 3, axis=-1)
        return x * scale + offset, y

    return dataset.map(to_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


AUGMENT_MAX_ROTATION_DEG = 7.0
AUGMENT_MAX_SHIFT = 0.05  # fraction of the image side
AUGMENT_MAX_ZOOM = 0.08  # scale in [1 - z, 1 + z]
AUGMENT_MAX_BRIGHTNESS = 0.08  # added to [0, 1] pixels


def _augment(batch, seed):
    """Random small rotation, shift, zoom and brightness for a (B, h, w) batch in [0, 1].

    Stateless random ops keyed by ``seed`` (one per batch, drawn from a seeded stream), so the
    augmentation is reproducible; one affine map per image, edges replicated.
    """
    import tensorflow as tf

    size = tf.shape(batch)[0]
    height = tf.cast(tf.shape(batch)[1], tf.float32)
    width = tf.cast(tf.shape(batch)[2], tf.float32)
    params = tf.random.stateless_uniform((size, 5), seed=seed, minval=-1.0, maxval=1.0)
    angle = params[:, 0] * (AUGMENT_MAX_ROTATION_DEG * math.pi / 180.0)
    shift_x = params[:, 1] * AUGMENT_MAX_SHIFT * width
    shift_y = params[:, 2] * AUGMENT_MAX_SHIFT * height
    inverse_zoom = 1.0 / (1.0 + params[:, 3] * AUGMENT_MAX_ZOOM)
    brightness = params[:, 4] * AUGMENT_MAX_BRIGHTNESS
    center_x, center_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    cos, sin = tf.cos(angle) * inverse_zoom, tf.sin(angle) * inverse_zoom
    # Output pixel (x, y) samples input center + R(-angle) / zoom * ((x, y) - center - shift).
    source_x, source_y = center_x + shift_x, center_y + shift_y
    transforms = tf.stack(
        [cos, sin, center_x - cos * source_x - sin * source_y,
         -sin, cos, center_y + sin * source_x - cos * source_y,
         tf.zeros_like(cos), tf.zeros_like(cos)],
        axis=1,
    )
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=batch[..., None], transforms=transforms, output_shape=tf.shape(batch)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST",
    )[..., 0]
    return tf.clip_by_value(warped + brightness[:, None, None], 0.0, 1.0)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """n / (K * n_k) for each class present (scikit-learn's 'balanced'), so rare classes weigh more."""
    counts = np.bincount(labels, minlength=num_classes)
    present = counts > 0
    return {int(k): float(labels.size / (present.sum() * counts[k])) for k in range(num_classes) if present[k]}


def _epoch_callback(phase: str, epochs: int, history: list[dict], on_epoch: Callable[[EpochLog], None] | None):
    import keras

    class _Recorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            entry = EpochLog(
                phase=phase, epoch=epoch + 1, epochs=epochs,
                loss=float(logs.get("loss", math.nan)), accuracy=float(logs.get("accuracy", math.nan)),
                val_loss=float(logs["val_loss"]) if "val_loss" in logs else None,
                val_accuracy=float(logs["val_accuracy"]) if "val_accuracy" in logs else None,
                seconds=time.perf_counter() - self._started,
            )
            history.append(asdict(entry))
            if on_epoch is not None:
                on_epoch(entry)

    return _Recorder()


def _fit(model, train_data, val_data, *, epochs: int, learning_rate: float, patience: int, class_weight: dict,
         phase: str, history: list[dict], on_epoch) -> dict:
    """Compile and fit with Adam + categorical cross-entropy, early stopping on validation loss (best weights restored)."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="categorical_crossentropy", metrics=["accuracy"])
    callbacks = [_epoch_callback(phase, epochs, history, on_epoch)]
    stopper = None
    if val_data is not None:
        stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        callbacks.append(stopper)
    model.fit(train_data, validation_data=val_data, epochs=epochs, class_weight=class_weight or None,
              callbacks=callbacks, shuffle=False, verbose=0)
    return {
        "phase": phase,
        "epochs_run": sum(1 for row in history if row["phase"] == phase),
        "best_epoch": (stopper.best_epoch + 1) if stopper is not None else epochs,
        "stopped_early": bool(stopper is not None and stopper.stopped_epoch > 0),
    }


def pooled_features(model, images: np.ndarray, info: ModelInfo, *, batch_size: int = 32,
                    progress: Progress | None = None) -> np.ndarray:
    """The frozen base's globally pooled features (N, D) for in-memory images: the head's exact input."""
    import keras

    extractor = keras.Model(model.inputs, model.get_layer("avg_pool").output)
    chunks = _predict_in_batches(extractor, images, info, batch_size, progress, "computing base features")
    width = extractor.output_shape[-1]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, width), np.float32)


def head_model(model):
    """A model from pooled features to class probabilities that shares the head layers (and weights) of ``model``."""
    import keras

    dense = model.get_layer("head_dense")
    features = keras.Input(shape=(dense.kernel.shape[0],), name="pooled_features")
    x = dense(features)
    x = model.get_layer("head_dropout")(x)
    return keras.Model(features, model.get_layer("predictions")(x), name="hmt_head")


def fit_head_on_features(model, train_features: np.ndarray, train_onehot: np.ndarray,
                         val_features: np.ndarray | None, val_onehot: np.ndarray | None, *, epochs: int,
                         learning_rate: float, batch_size: int, seed: int, patience: int = 8,
                         class_weight: dict | None = None, history: list[dict] | None = None,
                         on_epoch: Callable[[EpochLog], None] | None = None) -> dict:
    """Train ``model``'s head on cached pooled features; the full model's head weights change with it."""
    import tensorflow as tf

    history = [] if history is None else history
    train_data = (tf.data.Dataset.from_tensor_slices((train_features, train_onehot.astype(np.float32)))
                  .shuffle(len(train_features), seed=seed, reshuffle_each_iteration=True).batch(batch_size))
    val_data = None
    if val_features is not None and len(val_features):
        val_data = tf.data.Dataset.from_tensor_slices((val_features, val_onehot.astype(np.float32))).batch(batch_size)
    return _fit(head_model(model), train_data, val_data, epochs=epochs, learning_rate=learning_rate, patience=patience,
                class_weight=class_weight or {}, phase="head", history=history, on_epoch=on_epoch)


def _onehot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]


@contextmanager
def seeded(seed: int, deterministic: bool = True) -> Iterator[None]:
    """Seed Python, NumPy, TensorFlow and Keras; with ``deterministic``, use deterministic TF kernels inside the block.

    TensorFlow's op determinism is a process-wide switch, so the previous state is restored on exit
    (through TensorFlow's own config module, which the public API only exposes half of).
    """
    import keras
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    keras.utils.set_random_seed(seed)
    was_enabled = tf_config.is_op_determinism_enabled()
    if deterministic and not was_enabled:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if deterministic and not was_enabled:
            tf_config.disable_op_determinism()


def train(dataset: Dataset, config: TrainConfig | None = None, *, progress: Progress | None = None,
          on_epoch: Callable[[EpochLog], None] | None = None) -> TrainResult:
    """Split ``dataset`` by patient, train a classifier as ``config`` says, and evaluate it on the test split.

    Steps: seeded patient-grouped split; decode into memory (bad files skipped and reported);
    build the model; with a frozen base and no augmentation, cache pooled base features and fit
    the head on them, otherwise fit the full model through tf.data; optional fine-tuning of the
    last base blocks at a smaller learning rate; finally the test-split report. ``on_epoch``
    receives each finished epoch (the CLI prints it); ``progress`` sees decoding and feature passes.
    """
    config = config or TrainConfig()
    config.validate()
    started = time.perf_counter()
    spec = backbone_spec(config.backbone)
    weights = resolve_weights(config.backbone, config.weights)
    class_names = list(dataset.class_names)
    if len(class_names) < 2:
        raise HmtError(f"{display_path(dataset.root)}: need at least 2 classes to train, found {len(class_names)}")
    empty = [name for name, count in dataset.counts().items() if count == 0]
    if empty:
        raise HmtError(f"{display_path(dataset.root)}: class {', '.join(empty)} has no images")
    size = _as_size(config.input_size or spec.default_input_side)
    with seeded(config.seed, config.deterministic):
        return _train_seeded(dataset, config, spec, weights, class_names, size, progress, on_epoch, started)


def _train_seeded(dataset: Dataset, config: TrainConfig, spec: BackboneSpec, weights: str, class_names: list[str],
                  size: tuple[int, int], progress: Progress | None, on_epoch: Callable[[EpochLog], None] | None,
                  started: float) -> TrainResult:
    """The body of :func:`train`, run with seeds set; the model is built first, so a weights problem stops it early."""
    model = build_model(config.backbone, len(class_names), size, weights, dense_units=config.dense_units,
                        dropout=config.dropout)
    fractions = (1.0 - config.val_fraction - config.test_fraction, config.val_fraction, config.test_fraction)
    splits = split_dataset(dataset, fractions=fractions, seed=config.seed)
    skip_log = SkipLog(config.strict)
    for problem in dataset.problems:
        skip_log.add(problem.path, problem.reason)
    index = {name: k for k, name in enumerate(class_names)}
    images: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    kept: dict[str, list[Sample]] = {}
    for name in SPLITS:
        images[name], kept[name] = load_images(splits[name], size, skip_log, progress=progress,
                                               description=f"decoding {name} images")
        labels[name] = np.array([index[s.label] for s in kept[name]], dtype=np.int64)
    missing = [name for name in class_names if not np.any(labels["train"] == index[name])]
    if missing:
        raise HmtError(f"{display_path(dataset.root)}: no usable training images for class {', '.join(missing)}")

    info = ModelInfo(
        class_names=class_names, backbone=config.backbone, input_size=size, channels=spec.channels,
        preprocessing=spec.preprocessing, cam_layer=default_cam_layer(model),
        dataset_fingerprint=dataset_fingerprint(dataset),
        split={name: [relative_path(s, dataset.root) for s in kept[name]] for name in SPLITS},
    )
    class_weight = balanced_class_weights(labels["train"], len(class_names))
    onehot = {name: _onehot(labels[name], len(class_names)) for name in SPLITS}
    has_val = len(images["val"]) > 0
    history: list[dict] = []
    phases = []
    cached = config.cache_features and spec.application is not None and not config.augment
    if cached:
        features = {name: pooled_features(model, images[name], info, batch_size=config.batch_size, progress=progress)
                    for name in ("train", "val")}
        phases.append(fit_head_on_features(
            model, features["train"], onehot["train"], features["val"] if has_val else None, onehot["val"],
            epochs=config.epochs, learning_rate=config.learning_rate, batch_size=config.batch_size, seed=config.seed,
            patience=config.patience, class_weight=class_weight, history=history, on_epoch=on_epoch))
    else:
        phases.append(_fit_full(model, info, images, onehot, config, config.epochs, config.learning_rate,
                                "head" if spec.application else "train", class_weight, history, on_epoch))
    if config.fine_tune_blocks and config.fine_tune_epochs:
        unfreeze_last_blocks(model, config.fine_tune_blocks)
        phases.append(_fit_full(model, info, images, onehot, config, config.fine_tune_epochs,
                                config.fine_tune_learning_rate, "fine-tune", class_weight, history, on_epoch))
        find_base(model).trainable = False  # saved models come back frozen; the weights keep the fine-tuning

    test_report = None
    if len(images["test"]):
        probabilities = predict_probabilities(model, info, images["test"], batch_size=config.batch_size, progress=progress)
        test_report = classification_report(probabilities, labels["test"], class_names)
    seconds = time.perf_counter() - started
    split_counts = {name: {c: int(np.sum(labels[name] == k)) for k, c in enumerate(class_names)} for name in SPLITS}
    info.training = {
        "config": asdict(config),
        "weights": weights,
        "cached_features": cached,
        "class_weights": {class_names[k]: w for k, w in class_weight.items()},
        "phases": phases,
        "history": history,
        "split_counts": split_counts,
        "skipped": len(skip_log),
        "test_report": test_report,
        "seconds": round(seconds, 2),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": display_path(dataset.root),
    }
    return TrainResult(model=model, info=info, history=history, test_report=test_report, problems=skip_log.problems,
                       split_counts=split_counts, seconds=seconds)


def _fit_full(model, info: ModelInfo, images: dict, onehot: dict, config: TrainConfig, epochs: int,
              learning_rate: float, phase: str, class_weight: dict, history: list[dict], on_epoch) -> dict:
    """Fit the whole model on images through tf.data (augmenting the training batches when asked)."""
    train_data = image_pipeline(images["train"], onehot["train"], info, config.batch_size, shuffle_seed=config.seed,
                                 augment_seed=config.seed if config.augment else None)
    val_data = None
    if len(images["val"]):
        val_data = image_pipeline(images["val"], onehot["val"], info, config.batch_size)
    return _fit(model, train_data, val_data, epochs=epochs, learning_rate=learning_rate, patience=config.patience,
                class_weight=class_weight, phase=phase, history=history, on_epoch=on_epoch)


# --------------------------------------------------------------------------- evaluation


def evaluate(model, info: ModelInfo, dataset: Dataset, *, split: str = "test", batch_size: int = 32,
             strict: bool = False, progress: Progress | None = None) -> EvaluationResult:
    """Classification report of ``model`` on ``dataset``.

    ``split`` (test, val, train) selects the images of that split recorded in the model's metadata,
    but only when ``dataset`` is the data set the model was trained on (same fingerprint);
    otherwise, and for ``all``, every image is evaluated and a note says so.
    """
    if split not in (*SPLITS, "all"):
        raise HmtError(f"unknown split {split!r}; choose test, val, train or all")
    unknown = sorted({s.label for s in dataset.samples} - set(info.class_names))
    if unknown:
        raise HmtError(f"{display_path(dataset.root)}: class {', '.join(unknown)} is not one of the model's classes "
                       f"({', '.join(info.class_names)})")
    notes: list[str] = []
    samples = list(dataset.samples)
    used = "all"
    if split != "all":
        if info.split.get(split) is not None and info.dataset_fingerprint == dataset_fingerprint(dataset):
            wanted = set(info.split[split])
            samples = [s for s in samples if relative_path(s, dataset.root) in wanted]
            used = split
        else:
            notes.append(f"DATA is not the data set this model was trained on (or the model records no split): "
                         f"evaluating all {len(samples)} images instead of the {split} split")
    if not samples:
        raise HmtError(f"{display_path(dataset.root)}: the {split} split has no images")
    skip_log = SkipLog(strict)
    for problem in dataset.problems:
        skip_log.add(problem.path, problem.reason)
    images, kept = load_images(samples, info.input_size, skip_log, progress=progress)
    if not kept:
        raise HmtError(f"{display_path(dataset.root)}: none of the {len(samples)} images could be decoded")
    index = {name: k for k, name in enumerate(info.class_names)}
    labels = np.array([index[s.label] for s in kept], dtype=np.int64)
    probabilities = predict_probabilities(model, info, images, batch_size=batch_size, progress=progress)
    report = classification_report(probabilities, labels, info.class_names)
    return EvaluationResult(report=report, split=used, requested_split=split, problems=skip_log.problems, notes=notes)


# --------------------------------------------------------------------------- files


def save_model(model, info: ModelInfo, path: str | os.PathLike) -> Path:
    """Write ``model`` with ``info`` as ``hmt_info.json`` inside the ``.keras`` archive, atomically (temp file + rename)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise HmtError(f"{display_path(path)}: model files must end in .keras")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(temporary)
        with zipfile.ZipFile(temporary, "a", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(INFO_MEMBER, json.dumps(_finite_or_none(info.to_dict()), indent=1, allow_nan=False))
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _finite_or_none(value):
    """A JSON-ready copy with NaN and infinities replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def read_model_info(path: str | os.PathLike) -> ModelInfo | None:
    """The metadata stored in a ``.keras`` file without loading the model; None if it has none."""
    path = Path(path)
    if not path.is_file():
        raise BadFileError(path, "no such model file")
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            if INFO_MEMBER not in archive.namelist():
                return None
            data = json.loads(archive.read(INFO_MEMBER).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadFileError(path, f"cannot read {INFO_MEMBER}: {one_line(error, 200)}") from None
    return ModelInfo.from_dict(data, source=path)


def load_model(path: str | os.PathLike, *, unsafe: bool = False, classes: Sequence[str] | None = None,
               preprocessing: str | None = None):
    """Load a model and its :class:`ModelInfo`: ``(keras.Model, ModelInfo)``.

    Keras safe mode is on unless ``unsafe`` (no code from Lambda layers runs). A model without hmt
    metadata (a user's own classifier) needs ``classes`` (names in output order); its input size
    and channels come from ``model.input_shape``, its preprocessing is ``preprocessing`` or
    ``unit``, and its CAM layer is the last 4-D layer.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise BadFileError(path, "no such model file")
    is_zip = zipfile.is_zipfile(path)
    if not (is_zip and path.suffix == ".keras") and path.suffix.lower() not in (".h5", ".hdf5"):
        raise BadFileError(path, "not a Keras model file (expected a .keras archive or a legacy .h5 model)")
    info = read_model_info(path) if is_zip else None
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as error:  # noqa: BLE001 (Keras raises many types for a bad file)
        text = str(error)
        if "safe_mode" in text or "unsafe" in text.lower():
            reason = "contains code (a Lambda layer or custom object) that safe mode will not run; pass --unsafe-load only if you trust the file"
        else:
            reason = f"cannot load the model: {one_line(error, 200)}"
        raise BadFileError(path, reason) from None
    if not isinstance(model, keras.Model):
        raise BadFileError(path, "the file does not hold a Keras model")
    if classes is not None:
        classes = [name.strip() for name in classes if name.strip()]
    if info is None:
        if not classes:
            raise HmtError(f"{display_path(path)} has no hmt metadata; give its class names in output order with --classes a,b,c")
        info = _info_for_user_model(model, path, classes, preprocessing or "unit")
    else:
        if classes and list(classes) != info.class_names:
            raise HmtError(f"--classes {','.join(classes)} does not match the model's recorded classes {','.join(info.class_names)}")
        if preprocessing:
            info.preprocessing = preprocessing
    outputs = model.output_shape
    if not isinstance(outputs, tuple) or outputs[-1] != len(info.class_names):
        raise BadFileError(path, f"the model's output {outputs} does not match its {len(info.class_names)} class names")
    return model, info


def _info_for_user_model(model, path: Path, classes: list[str], preprocessing: str) -> ModelInfo:
    """ModelInfo for a Keras classifier hmt did not train, inferred from its input shape."""
    if preprocessing not in PREPROCESSING_MODES:
        raise HmtError(f"unknown preprocessing mode {preprocessing!r}; expected one of {', '.join(PREPROCESSING_MODES)}")
    if len(classes) < 2:
        raise HmtError(f"--classes needs at least 2 class names, got {len(classes)}")
    if len(set(classes)) != len(classes):
        raise HmtError(f"--classes lists a class twice: {','.join(classes)}")
    shape = model.input_shape
    if not (isinstance(shape, tuple) and len(shape) == 4):
        raise BadFileError(path, f"expected one image input (N, H, W, C), the model takes {shape}")
    channels = shape[3]
    if channels not in (1, 3):
        raise BadFileError(path, f"the model takes {channels} input channels; hmt feeds 1 or 3")
    size = (shape[1] or _DEFAULT_USER_INPUT_SIDE, shape[2] or _DEFAULT_USER_INPUT_SIDE)
    return ModelInfo(class_names=list(classes), backbone="user", input_size=size, channels=channels,
                     preprocessing=preprocessing, cam_layer=default_cam_layer(model))


def write_history_csv(history: list[dict], path: str | os.PathLike) -> Path:
    """One row per epoch: phase, epoch, loss, accuracy, val_loss, val_accuracy, seconds."""
    path = Path(path)
    columns = ["phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in columns})
    return path


def save_training_outputs(result: TrainResult, model_path: str | os.PathLike) -> dict[str, Path]:
    """Write what `hmt train` leaves beside the model: history CSV, curves figure and, when there is a
    test split, its evaluation JSON and confusion-matrix figure. Returns the paths by kind."""
    from heatmap_templates import figures

    written = {
        "history": write_history_csv(result.history, companion_path(model_path, "history.csv")),
        "curves": figures.training_curves(result.history, companion_path(model_path, "curves.png")),
    }
    if result.test_report is not None:
        evaluation = {"split": "test", "requested_split": "test", "notes": [], **result.test_report}
        evaluation_path = companion_path(model_path, "evaluation.json")
        evaluation_path.write_text(json.dumps(_finite_or_none(evaluation), indent=2) + "\n", encoding="utf-8")
        written["evaluation"] = evaluation_path
        written["confusion"] = figures.confusion_matrix_figure(
            result.test_report["confusion_matrix"], result.info.class_names, companion_path(model_path, "confusion.png"),
            title=f"{result.info.backbone}, test split ({result.test_report['n']} images)")
    return written


def companion_path(model_path: str | os.PathLike, suffix: str) -> Path:
    """A file beside the model: ``model.keras`` -> ``model.<suffix>`` (history.csv, curves.png, evaluation.json)."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}.{suffix}")
