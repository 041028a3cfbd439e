"""The ground-truth check's figure: each class template beside the lesion map planted in its class (the demo's phantom).

The check arrives as the templates file stores it (record and maps, :func:`heatmap_templates.templates.templates_file.read_checks`):
this module never reads the phantom, so the figures wing stays below the one that makes it.
"""
from __future__ import annotations

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from heatmap_templates.present.figures.style import (
    COLUMN_WIDTHS,
    finite,
    lung_outline,
    overlay,
    panel_figure,
    value_range,
)
from heatmap_templates.templates.templates_file import TemplateFile


def auc_text(value: float | None, ci: list | None) -> str:
    """A pixel AUC as the figure and the page print it: ``0.83 [0.80, 0.86]`` (the interval where there is one)."""
    if value is None:
        return "n/a"
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and ci[0] is not None else "")


def shown_classes(check: dict, file: TemplateFile) -> list[str]:
    """The classes the panel shows: a template, a planted lesion map and an AUC (normal plants none)."""
    maps = check.get("maps") or {}
    return [name for name, entry in (check.get("classes") or {}).items()
            if name in file.templates and f"lesion_{name}" in maps and entry.get("auc_frame") is not None]


def ground_truth_figure(check: dict, file: TemplateFile, width: str, cmap: str) -> Figure:
    """One row per class with lesions: its template over the reference chest and the planted lesion probability in
    the same frame (lung outline), each on its own scale from its lowest to its highest value; the template's pixel
    AUC against the lesion map (frame) in its title."""
    names = shown_classes(check, file)
    if not names:
        raise ValueError("the ground-truth check holds no class with a template and a lesion map")
    lungs = check["maps"].get("lungs")
    lung_mask = None if lungs is None else np.asarray(lungs) >= 0.5
    shape = np.shape(file.templates[names[0]].mean)
    figure, axes = panel_figure(len(names), 2, min(COLUMN_WIDTHS[width], 4.6), shape[0] / shape[1])
    for row, name in enumerate(names):
        entry = check["classes"][name]
        template = finite(file.templates[name].mean)
        lesion = finite(check["maps"][f"lesion_{name}"])
        low, high = value_range(template)
        overlay(axes[row, 0], template, file.reference_image, cmap=cmap, vmin=low, vmax=high)
        axes[row, 0].set_title(f"{name} template\npixel AUC {auc_text(entry.get('auc_frame'), entry.get('auc_frame_ci'))}")
        overlay(axes[row, 1], lesion, None, cmap=cmap, vmin=0.0, vmax=max(float(lesion.max()), 1e-6))
        lung_outline(axes[row, 1], lung_mask if lung_mask is None or lung_mask.shape == lesion.shape else None, lesion.shape)
        axes[row, 1].set_title(f"{name}: planted lesion\nprobability (0 to {float(lesion.max()):.2f})")
    bar = figure.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap), ax=list(axes.ravel()), shrink=0.85, aspect=25, ticks=[0.0, 1.0])
    bar.ax.set_yticklabels(["low", "high"])
    bar.set_label("each panel: its own lowest to highest value")
    return figure
