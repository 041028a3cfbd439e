"""The classifier's record: training curves and the confusion matrix (`hmt train`, `hmt evaluate`, `hmt figures`)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from heatmap_templates.errors import HmtError
from heatmap_templates.model.model_file import companion_path
from heatmap_templates.present.figures.style import save_figure

if TYPE_CHECKING:
    from heatmap_templates.model.training import TrainResult


def training_curves(history: Sequence[dict], path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Loss and accuracy per epoch (training solid, validation dashed-dotted), phases one after another.

    ``history`` rows have ``phase``, ``loss``, ``accuracy`` and optionally ``val_loss``, ``val_accuracy``
    (as :func:`heatmap_templates.model.training.train` records them).
    """
    if not history:
        raise HmtError("no training history to plot")
    figure = Figure(figsize=(8, 3.2))
    draw_training_curves(figure, history, fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path, dpi)


def draw_training_curves(figure: Figure, history: Sequence[dict], *, fontsize: float) -> None:
    """The two panels of `training_curves` (loss, accuracy) on `figure`."""
    epochs = np.arange(1, len(history) + 1)
    for axis, key, label in zip(figure.subplots(1, 2), ("loss", "accuracy"), ("loss (cross-entropy)", "accuracy"), strict=True):
        train = np.array([row.get(key) if row.get(key) is not None else np.nan for row in history], dtype=float)
        val = np.array([row.get(f"val_{key}") if row.get(f"val_{key}") is not None else np.nan for row in history], dtype=float)
        axis.plot(epochs, train, marker="o", markersize=3, label="training")
        if np.isfinite(val).any():
            axis.plot(epochs, val, marker="s", markersize=3, linestyle="-.", label="validation")
        phases = [row.get("phase", "") for row in history]
        for index in range(1, len(phases)):
            if phases[index] != phases[index - 1]:
                axis.axvline(index + 0.5, color="grey", linewidth=0.8, linestyle=":")
                axis.text(index + 0.6, 0.98, phases[index], va="top", fontsize=fontsize, color="grey", transform=axis.get_xaxis_transform())
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=fontsize)


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike, *,
                            title: str | None = None, dpi: int = 150) -> Path:
    """Confusion matrix (rows true, columns predicted): cells coloured by row share, annotated with counts and %."""
    side = 1.2 + 0.9 * len(class_names)
    figure = Figure(figsize=(side + 1.0, side))
    draw_confusion(figure, matrix, class_names, title=title, fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path, dpi)


def draw_confusion(figure: Figure, matrix: Sequence[Sequence[int]], class_names: Sequence[str], *,
                    title: str | None, fontsize: float) -> None:
    """The annotated matrix and colour bar of `confusion_matrix_figure` on `figure`."""
    counts = np.asarray(matrix, dtype=np.int64)
    if counts.shape != (len(class_names), len(class_names)):
        raise HmtError(f"confusion matrix of shape {counts.shape} does not fit {len(class_names)} classes")
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(counts.shape[0]):
        for column in range(counts.shape[1]):
            colour = "white" if shares[row, column] > 0.6 else "black"
            axis.text(column, row, f"{counts[row, column]}\n{100 * shares[row, column]:.0f}%", ha="center", va="center",
                      color=colour, fontsize=fontsize)
    axis.set_xticks(range(len(class_names)), labels=list(class_names), rotation=30, ha="right")
    axis.set_yticks(range(len(class_names)), labels=list(class_names))
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if title:
        axis.set_title(title)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of true class")


def training_figures(result: TrainResult, model_path: str | os.PathLike) -> dict[str, Path]:
    """The companion figures `hmt train` leaves beside the model: training curves and, when a test split was
    scored with a single-label head, its confusion matrix. Returns the paths by kind ("curves", "confusion")."""
    written = {"curves": training_curves(result.history, companion_path(model_path, "curves.png"))}
    report = result.test_report
    if report is not None and "confusion_matrix" in report:  # a multi-label report has per-finding metrics instead
        written["confusion"] = confusion_matrix_figure(
            report["confusion_matrix"], result.info.class_names, companion_path(model_path, "confusion.png"),
            title=f"{result.info.backbone}, test split ({report['n']} images)")
    return written
