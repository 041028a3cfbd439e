"""One new image against one class template (`hmt compare --figure`)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from heatmap_templates.data.preprocess import resize_gray
from heatmap_templates.errors import HmtError
from heatmap_templates.present.figures.style import (
    COLUMN_WIDTHS,
    DEFAULT_CMAP,
    DIVERGING_CMAP,
    check_cmap,
    figure_format,
    finite,
    grayscale,
    overlay,
    publication_style,
    save_deterministic,
    symmetric_limit,
    value_range,
)


def comparison_figure(image: np.ndarray, heatmap: np.ndarray, template: np.ndarray, *, title: str, out: str | os.PathLike,
                      class_name: str, similarity: float, reference_image: np.ndarray | None = None,
                      cmap: str = DEFAULT_CMAP, dpi: int = 150) -> Path:
    """One new image against one class template, in four panels (double-column width; format from `out`'s suffix).

    image | its heatmap over it | the class template over the reference image | heatmap - template
    (diverging map centred at 0). Heatmap and template share one colour scale. Pass the image and its
    heatmap registered to the template's frame and normalised like the template (what compare scores),
    so the difference is pixel for pixel; a heatmap of another shape is resized to the image's grid
    for the overlay and to the template's grid for the difference. Returns the path written.
    """
    out = Path(out)
    figure_format(out)
    check_cmap(cmap)
    image, heatmap, template = finite(image), finite(heatmap), finite(template)
    for name, array in (("image", image), ("heatmap", heatmap), ("template", template)):
        if array.ndim != 2 or array.size == 0:
            raise HmtError(f"comparison figure: {name} must be a non-empty 2-D array, got shape {array.shape}")
    difference = resize_gray(heatmap, template.shape).astype(np.float64) - template
    vmin, vmax = value_range(heatmap, template)
    limit = symmetric_limit(difference)
    score = f"{similarity:.3f}" if math.isfinite(similarity) else "n/a"
    with publication_style():
        figure = Figure(figsize=(COLUMN_WIDTHS["double"], 2.2), layout="constrained")
        axes = figure.subplots(1, 4)
        grayscale(axes[0], image, (0.0, float(image.shape[1]), float(image.shape[0]), 0.0))
        axes[0].set_axis_off()
        axes[0].set_title("image")
        # The heatmap is drawn on the image's extent so it lies over the image at any resolution.
        heat = overlay(axes[1], resize_gray(heatmap, image.shape), image, cmap=cmap, vmin=vmin, vmax=vmax)
        axes[1].set_title("heatmap")
        overlay(axes[2], template, reference_image, cmap=cmap, vmin=vmin, vmax=vmax)
        axes[2].set_title(f"template: {class_name}")
        shown = axes[3].imshow(difference, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, interpolation="bilinear")
        axes[3].set_axis_off()
        axes[3].set_title("heatmap \u2212 template")
        figure.colorbar(heat, ax=list(axes[1:3]), shrink=0.8, label="normalised value")
        figure.colorbar(shown, ax=axes[3], shrink=0.8, label="difference")
        figure.suptitle(f"{title}  \u2014  similarity to {class_name}: r = {score}")
        path = save_deterministic(figure, out, dpi)
    return path
