"""Turn decoded grayscale images into model input tensors.

Decoding (data.py) gives float32 grayscale in [0, 1]. Every model hmt trains or loads records a
``preprocessing`` mode and an input shape; this module is the single place that maps one to the
other, so training, heatmap extraction and comparison feed a model identically.
"""
from __future__ import annotations

import cv2
import numpy as np

from heatmap_templates.errors import HmtError

# Keras applications' "caffe" mode subtracts these BGR means from 0-255 pixels (VGG, ResNet50).
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_TORCH_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)

PREPROCESSING_MODES = ("unit", "tf", "caffe", "torch")


def resize_gray(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (H, W) float image to ``size`` = (height, width); area filter when shrinking."""
    height, width = size
    if image.shape == (height, width):
        return image.astype(np.float32, copy=False)
    shrinking = image.shape[0] > height or image.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image.astype(np.float32, copy=False), (width, height), interpolation=interpolation)


def to_model_input(batch: np.ndarray, channels: int, mode: str) -> np.ndarray:
    """Map a (N, H, W) batch of [0, 1] grayscale images to (N, H, W, channels) model input.

    Modes follow ``keras.applications``: ``unit`` keeps [0, 1] (hmt's ``small`` CNN), ``tf`` scales
    to [-1, 1] (Xception), ``caffe`` is 0-255 BGR minus the ImageNet mean (VGG16/19, ResNet50),
    ``torch`` is ImageNet mean/std normalisation.
    """
    if mode not in PREPROCESSING_MODES:
        raise HmtError(f"unknown preprocessing mode {mode!r}; expected one of {', '.join(PREPROCESSING_MODES)}")
    if channels not in (1, 3):
        raise HmtError(f"models must take 1 or 3 input channels, this one takes {channels}")
    x = np.asarray(batch, dtype=np.float32)[..., None]
    if channels == 3:
        x = np.repeat(x, 3, axis=-1)
    if mode == "tf":
        return x * 2.0 - 1.0
    if mode == "caffe":
        mean = _CAFFE_MEAN_BGR if channels == 3 else _CAFFE_MEAN_BGR.mean(keepdims=True)
        return x * 255.0 - mean
    if mode == "torch":
        mean = _TORCH_MEAN_RGB if channels == 3 else _TORCH_MEAN_RGB.mean(keepdims=True)
        std = _TORCH_STD_RGB if channels == 3 else _TORCH_STD_RGB.mean(keepdims=True)
        return (x - mean) / std
    return x


def prepare_batch(images: list[np.ndarray], input_size: tuple[int, int], channels: int, mode: str) -> np.ndarray:
    """Resize each [0, 1] grayscale image to ``input_size`` and convert the stack to model input."""
    resized = np.stack([resize_gray(image, input_size) for image in images]) if images else np.zeros((0, *input_size), np.float32)
    return to_model_input(resized, channels, mode)
