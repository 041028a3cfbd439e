"""The strategies figure of a class (`strategies_<class>.pdf/png`): prototypes, embedding, typical members."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from heatmap_templates.analysis.strategies import ClassStrategies
from heatmap_templates.present.figures.style import (
    CATEGORICAL_COLOURS,
    COLUMN_WIDTHS,
    finite,
    hide_frame,
    overlay,
    value_range,
)
from heatmap_templates.templates.templates_file import TemplateFile

CLUSTER_COLOURS = CATEGORICAL_COLOURS  # the strategies are at most a few; the report's embedding uses the same colours
THUMBNAILS = 4  # typical members shown per strategy


def strategy_colour(number: int) -> str:
    return CLUSTER_COLOURS[number % len(CLUSTER_COLOURS)]


def strategies_figure(file: TemplateFile, result: ClassStrategies, width: str, cmap: str,
                      thumbnails: dict[int, list[tuple[np.ndarray, np.ndarray]]] | None = None) -> Figure:
    """Row 1: each strategy's prototype over the reference chest (one colour scale; size and consistency in the
    title) and the members' 2-D spectral embedding coloured by strategy. Then one row per strategy: its most
    typical members (registered image and map), when ``thumbnails`` ({strategy: [(image, map)]}) are given.
    Every map shares one colour scale."""
    k = result.k
    shown = thumbnails or {}
    rows = 1 + (k if shown else 0)
    columns = max(k + 1, THUMBNAILS if shown else 0)
    total = COLUMN_WIDTHS[width]
    panel = min(total / columns, 1.8)
    figure = Figure(figsize=(panel * columns + 0.4, panel * rows * 1.08 + 0.5), layout="constrained")
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False))
    for axis in axes.ravel():
        axis.set_axis_off()
    maps = [finite(strategy.mean) for strategy in result.strategies]
    vmin, vmax = value_range(*maps, *(finite(values) for pairs in shown.values() for _, values in pairs))
    image = None
    for number, (strategy, values) in enumerate(zip(result.strategies, maps, strict=True)):
        axis = axes[0, number]
        image = overlay(axis, values, file.reference_image, cmap=cmap, vmin=vmin, vmax=vmax)
        consistency = "n/a" if strategy.consistency is None else f"{strategy.consistency:.2f}"
        axis.set_title(f"strategy {number + 1} (n = {strategy.size})\nconsistency {consistency}", color=strategy_colour(number))
    if image is not None:  # one scale for prototypes and members, one bar for the whole figure
        figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, aspect=30).set_label("normalised heatmap")
    scatter = axes[0, k]
    scatter.set_axis_on()
    points = np.asarray(result.embedding, dtype=np.float64)
    for number in range(k):
        chosen = (result.labels == number) & np.isfinite(points).all(axis=1)
        scatter.scatter(points[chosen, 0], points[chosen, 1] if points.shape[1] > 1 else np.zeros(chosen.sum()),
                        s=8, color=strategy_colour(number), label=str(number + 1), linewidths=0)
    scatter.set_title("spectral embedding")
    scatter.set_xticks([])
    scatter.set_yticks([])
    scatter.set_box_aspect(1)
    for number in range(k):
        for position, (background, values) in enumerate(shown.get(number, [])[:columns]):
            axis = axes[1 + number, position]
            overlay(axis, finite(values), background, cmap=cmap, vmin=vmin, vmax=vmax)
            if position == 0:
                axis.set_axis_on()
                hide_frame(axis)
                axis.set_ylabel(f"strategy {number + 1}", color=strategy_colour(number))
    stability = result.stability.get("mean_ari")
    spread = result.stability.get("ari_ci")
    stable = "" if stability is None else f"; stability (ARI over resamples) {stability:.2f}" + \
        (f" [{spread[0]:.2f}, {spread[1]:.2f}]" if spread else "")
    figure.suptitle(f"{result.class_name}: {k} strateg{'y' if k == 1 else 'ies'} ({result.chosen_by}){stable}")
    return figure
