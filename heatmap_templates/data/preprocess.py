"""Image -> model input: the one path every command feeds a model through.

Training, evaluation, heatmap extraction and comparison all do the same three steps:

1. decode the file (:func:`heatmap_templates.data.decode.decode_image`: float32 gray in [0, 1]);
2. resize to the model's input size and quantise once to uint8 (:func:`load_model_image`): the
   image the heatmap store keeps and registration later works on;
3. uint8 -> [0, 1] (:func:`unit_pixels`) and the model's preprocessing mode (:data:`PREPROCESSING`), an
   affine map of the [0, 1] pixel value per channel (:func:`input_from_unit`). Both functions are written once
   for numpy arrays and TensorFlow tensors alike: :func:`to_model_input` calls them in numpy, the training
   pipeline inside its tf.data graph (training may augment the [0, 1] images in between).

So a model sees exactly the same numbers for an image whichever command feeds it (a test feeds one file
through both paths).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from heatmap_templates.data.decode import DEFAULT_INTENSITY, DEFAULT_MAX_PIXELS, decode_image
from heatmap_templates.data.disk_arrays import DiskArray
from heatmap_templates.errors import BadImageError, HmtError, SkipLog
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.registry import Registry

# Keras applications' "caffe" mode subtracts these BGR means from 0-255 pixels (VGG, ResNet50).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
_TORCH_STD_RGB = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputMode:
    """A preprocessing mode: model input = (pixel in [0, 1] * multiplier - mean) / std, per channel.

    A gray (1-channel) model gets the mean of the three channels' mean and std.
    """

    multiplier: float
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def affine(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset) float32 arrays of length ``channels`` with input = pixel * scale + offset."""
        mean, std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        if channels == 1:
            mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
        return (self.multiplier / std).astype(np.float32), (-mean / std).astype(np.float32)


PREPROCESSING: Registry[InputMode] = Registry("preprocessing mode", parameter="preprocessing")
PREPROCESSING.add("unit", InputMode(1.0), help="[0, 1] pixels, hmt's small CNN")
PREPROCESSING.add("tf", InputMode(2.0, (1.0, 1.0, 1.0)), help="[-1, 1], Xception")
PREPROCESSING.add("caffe", InputMode(255.0, _CAFFE_MEAN_BGR), help="0-255 BGR minus the ImageNet mean, VGG and ResNet50")
PREPROCESSING.add("torch", InputMode(1.0, _TORCH_MEAN_RGB, _TORCH_STD_RGB), help="ImageNet mean/std normalisation")
PREPROCESSING.add("pixels", InputMode(255.0), help="0-255 pixels as they are, for a model that rescales inside (a Rescaling layer)")


def resize_gray(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (H, W) float image to ``size`` = (height, width); area filter when shrinking."""
    height, width = size
    if image.shape == (height, width):
        return image.astype(np.float32, copy=False)
    shrinking = image.shape[0] > height or image.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image.astype(np.float32, copy=False), (width, height), interpolation=interpolation)


def quantise(gray: np.ndarray) -> np.ndarray:
    """[0, 1] float gray -> uint8 (rounded): the one quantisation of every model input."""
    return np.clip(np.rint(np.asarray(gray, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def load_model_image(path: str | os.PathLike | bytes, input_size: tuple[int, int], *,
                     max_pixels: int = DEFAULT_MAX_PIXELS, intensity: str = DEFAULT_INTENSITY) -> np.ndarray:
    """Decode (with the model's intensity mode), resize and quantise one file: the (H, W) uint8 image a
    model sees (raises BadImageError)."""
    return quantise(resize_gray(decode_image(path, max_pixels=max_pixels, intensity=intensity).pixels, input_size))


def affine_preprocessing(channels: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, offset) of a mode: model input = pixel in [0, 1] * scale + offset."""
    if channels not in (1, 3):
        raise HmtError(f"models must take 1 or 3 input channels, this one takes {channels}")
    return PREPROCESSING[mode].affine(channels)


def unit_pixels(values: Any) -> Any:
    """uint8 pixels (0-255) -> float32 in [0, 1]: the one conversion, for a numpy array or a TensorFlow tensor."""
    if isinstance(values, np.ndarray | np.generic | list | tuple):
        return np.asarray(values).astype(np.float32) / np.float32(255.0)
    import tensorflow as tf

    return tf.cast(values, tf.float32) / 255.0


def input_from_unit(unit: Any, channels: int, mode: str) -> Any:
    """(N, H, W) gray pixels in [0, 1] -> (N, H, W, channels) model input = pixel * scale + offset per channel,
    for a numpy array or a TensorFlow tensor alike (the gray value broadcasts to every channel)."""
    scale, offset = affine_preprocessing(channels, mode)
    return unit[..., None] * scale + offset


def to_model_input(batch: np.ndarray, channels: int, mode: str) -> np.ndarray:
    """Map a (N, H, W) batch of uint8 images (or [0, 1] floats) to (N, H, W, channels) float32 model input.

    Modes follow ``keras.applications`` (see :data:`PREPROCESSING`).
    """
    values = np.asarray(batch)
    unit = unit_pixels(values) if values.dtype == np.uint8 else values.astype(np.float32)
    return input_from_unit(unit, channels, mode)


def prepare_batch(images: Sequence[np.ndarray], input_size: tuple[int, int], channels: int, mode: str) -> np.ndarray:
    """Resize and quantise each [0, 1] gray image, then convert the stack to model input."""
    if not images:
        return to_model_input(np.zeros((0, *input_size), np.uint8), channels, mode)
    return to_model_input(np.stack([quantise(resize_gray(image, input_size)) for image in images]), channels, mode)


def load_images(samples: Sequence, input_size: tuple[int, int], skip_log: SkipLog, *, intensity: str = DEFAULT_INTENSITY,
                progress: Progress | None = None, description: str = "decoding images",
                to_disk: os.PathLike | str | None = None) -> tuple[np.ndarray | DiskArray, list]:
    """Load samples (anything with a ``path``) into one (N, H, W) uint8 array; bad files go to ``skip_log``.

    uint8 at input size is the form every command feeds the model; decoding runs on a few threads
    (OpenCV releases the GIL). With ``to_disk`` (a file path) the images go, as they are decoded, into a
    :class:`~heatmap_templates.data.disk_arrays.DiskArray` there instead of memory (a data set larger than the
    memory budget).
    """
    progress = progress or NullProgress()
    progress.start(len(samples), description)

    def load(sample) -> np.ndarray | BadImageError:
        try:
            return load_model_image(sample.path, input_size, intensity=intensity)
        except BadImageError as error:
            return error

    disk = DiskArray(to_disk, input_size, np.uint8) if to_disk is not None else None
    images: list[np.ndarray] = []
    kept: list = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            for sample, result in zip(samples, pool.map(load, samples), strict=True):
                progress.advance(1)
                if isinstance(result, BadImageError):
                    skip_log.add_error(result)
                    continue
                if disk is not None:
                    disk.append(result[None])
                else:
                    images.append(result)
                kept.append(sample)
    finally:
        progress.finish()
    if disk is not None:
        return disk, kept
    return (np.stack(images) if images else np.zeros((0, *input_size), dtype=np.uint8)), kept
