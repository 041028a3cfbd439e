"""Planted shortcuts: things burned into some images of a class that a model can use instead of the lesions.

Real chest X-ray sets carry such cues: radiographers' side markers and "PORTABLE" labels, burned-in
text, collimation borders that differ between hospitals. A phantom class can carry one in a chosen
fraction of its images (``hmt synth --shortcut covid:0.5``), so that what a template or a strategy
finds can be checked against the truth: which images carry it and where it is.

Each style (registry :data:`SHORTCUTS`) draws, in the image frame (on the detector, not on the
anatomy, so it does not move with the pose), an intensity and its mask from the image's own random
stream; its position varies a little from image to image.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from heatmap_templates.registry import Registry

_SHORTCUT_STREAM = 3  # a stream of its own: the images themselves do not change when a shortcut is planted


@dataclass(frozen=True)
class Shortcut:
    """``draw(rng, size) -> (value, mask)``: pixels where ``mask`` is set become ``value`` (an (H, W) float32 image)."""

    draw: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def _marker(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A side-marker tag near the upper left corner: a bright box with a dark letter L, shifted a little."""
    width, height = round(0.14 * size), round(0.09 * size)
    left = int(round((0.08 + rng.uniform(-0.025, 0.025)) * size))
    top = int(round((0.06 + rng.uniform(-0.02, 0.02)) * size))
    value = np.zeros((size, size), np.float32)
    mask = np.zeros((size, size), bool)
    mask[top:top + height, left:left + width] = True
    value[mask] = 0.95
    stroke = max(1, round(0.18 * height))
    letter_left, letter_top = left + round(0.35 * width), top + round(0.2 * height)
    letter_bottom = top + round(0.8 * height)
    value[letter_top:letter_bottom, letter_left:letter_left + stroke] = 0.25  # the L's upright
    value[letter_bottom - stroke:letter_bottom, letter_left:letter_left + round(0.35 * width)] = 0.25  # its foot
    return value, mask


def _border(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright collimation band along the left edge, a little wider or narrower from image to image."""
    band = max(2, int(round((0.05 + rng.uniform(-0.012, 0.012)) * size)))
    mask = np.zeros((size, size), bool)
    mask[:, :band] = True
    value = np.zeros((size, size), np.float32)
    value[mask] = 0.9
    return value, mask


SHORTCUTS: Registry[Shortcut] = Registry("shortcut style", parameter="shortcut_style")
SHORTCUTS.add("marker", Shortcut(_marker), help="a bright side-marker tag with a letter near the upper left corner")
SHORTCUTS.add("border", Shortcut(_border), help="a bright collimation band along the left edge")
DEFAULT_SHORTCUT_STYLE = "marker"


def carries_shortcut(seed: int, label: str, index: int, fraction: float) -> bool:
    """Whether image ``index`` of class ``label`` carries the class's shortcut (each image with chance ``fraction``)."""
    rng = np.random.default_rng([seed, zlib.crc32(label.encode()), _SHORTCUT_STREAM, index])
    return bool(rng.random() < fraction)


def burn_in(image: np.ndarray, style: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (H, W) float32 with the shortcut drawn in (softened by a one-pixel blur, as an imaged object is),
    and its mask."""
    value, mask = SHORTCUTS[style].draw(rng, image.shape[0])
    weight = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.7)
    return (image * (1.0 - weight) + cv2.GaussianBlur(value, (0, 0), 0.7)).astype(np.float32), mask
