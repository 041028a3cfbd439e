"""Report thumbnails: a heatmap over its registered image, as a small deterministic JPEG.

The overlay uses the figures' colour-blind-safe map (cividis by default) through a 256-entry lookup table,
and blends it in proportion to the map's value, so that the chest stays visible where the map is low.
The map is scaled between its 1st and 99th percentiles, so one hot pixel does not wash out the rest.
"""
from __future__ import annotations

import base64

import cv2
import numpy as np

from heatmap_templates.present.figures.style import DEFAULT_CMAP, check_cmap

THUMBNAIL_SIDE = 192  # pixels: shown at 96 CSS px in galleries (sharp on high-density screens) and larger when opened
JPEG_QUALITY = 85
OVERLAY_OPACITY = 0.65  # opacity of the colour at the map's top value
OVERLAY_GRAY = 0.5  # the gray level of the chest under the colour bar's blend (mid-gray lung tissue)
SCALE_NOTE = ("Each thumbnail's map is scaled on its own, from its 1st percentile (low) to its 99th (high), and blended "
              "over the registered image, more opaque as the value rises (up to {opacity:.0%}): the colour bar shows that "
              "scale over mid-gray. A thumbnail shows where its own map is high, not how high it is against another's.")


def colour_table(cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """(256, 3) uint8 RGB lookup table of a matplotlib colour map."""
    from matplotlib import colormaps

    values = colormaps[check_cmap(cmap)](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(values * 255).astype(np.uint8)


def scaled(values: np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] between its 1st and 99th percentiles (zeros for a flat or non-finite map)."""
    finite = np.nan_to_num(np.asarray(values, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = np.percentile(finite, [1.0, 99.0])
    if high <= low:
        return np.zeros(finite.shape, np.float32)
    return np.clip((finite - low) / (high - low), 0.0, 1.0).astype(np.float32)


def blend(gray: np.ndarray, weight: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(..., 3) float RGB in [0, 1]: the colour of ``weight`` (scaled map values in [0, 1]) over ``gray``, opaque in
    proportion to the weight (up to ``OVERLAY_OPACITY``); what a thumbnail shows, and what its colour bar shows."""
    colour = table[np.round(np.asarray(weight) * 255).astype(np.uint8)].astype(np.float32) / 255.0
    alpha = (OVERLAY_OPACITY * np.asarray(weight, np.float32))[..., None]
    blended: np.ndarray = (1.0 - alpha) * np.asarray(gray, np.float32)[..., None] + alpha * colour
    return blended


def overlay_rgb(image: np.ndarray, heatmap: np.ndarray, table: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """(side', side'', 3) uint8 RGB: ``heatmap`` (H, W) over the gray ``image`` (H, W) in [0, 1], longest side ``side``."""
    blended = blend(np.clip(np.asarray(image, np.float32), 0.0, 1.0), scaled(heatmap), table)
    height, width = blended.shape[:2]
    factor = side / max(height, width)
    if factor != 1.0:
        size = (max(1, int(round(width * factor))), max(1, int(round(height * factor))))
        blended = cv2.resize(blended, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    return np.round(np.clip(blended, 0.0, 1.0) * 255).astype(np.uint8)


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    """JPEG-encoded bytes of an RGB image (the same pixels give the same bytes)."""
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("OpenCV could not encode a thumbnail")
    return encoded.tobytes()


def data_uri(content: bytes, mime: str) -> str:
    """An inline ``data:`` URI, for single-file reports."""
    return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"


def enlarged_name(key: str) -> str:
    """The file name (without ``.jpg``) of a gallery image's larger overlay, written when the stored image is larger
    than a thumbnail."""
    return f"{key}-large"


def plain_name(row: int) -> str:
    """The file name (without ``.jpg``) of an image without its map, for the enlarged view's "plain image"."""
    return f"{row}-plain"


def enlarged_views(key: str, row: int, image: np.ndarray, heatmap: np.ndarray, table: np.ndarray) -> dict[str, bytes]:
    """The enlarged view's images of gallery image ``key`` (row ``row``): the overlay at the stored image's own size
    when that is larger than a thumbnail (never an upsampled thumbnail), and the image without the map at its own
    size."""
    side = max(np.shape(image)[:2])
    views = {plain_name(row): jpeg_bytes(overlay_rgb(image, np.zeros_like(heatmap), table, side=side))}
    if side > THUMBNAIL_SIDE:
        views[enlarged_name(key)] = jpeg_bytes(overlay_rgb(image, heatmap, table, side=side))
    return views


def gradient_css(table: np.ndarray, stops: int = 11, over: float | None = OVERLAY_GRAY) -> str:
    """A CSS ``linear-gradient`` of a colour table, low values on the left: as the overlays show it over a chest of
    gray level ``over`` (:func:`blend`: the colour more opaque as the value rises), or the bare colour map (None)."""
    positions = np.linspace(0.0, 1.0, stops)
    if over is None:
        colours = [table[int(round(p * (len(table) - 1)))] for p in positions]
    else:
        colours = list(np.round(np.clip(blend(np.full(stops, over), positions, table), 0.0, 1.0) * 255).astype(np.uint8))
    return "linear-gradient(to right, " + ", ".join(f"rgb({r}, {g}, {b})" for r, g, b in colours) + ")"
