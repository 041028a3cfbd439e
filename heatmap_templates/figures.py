"""Every matplotlib figure hmt draws. Object-oriented matplotlib only (no pyplot state), so any backend works.

Each function takes plain data, writes one file and returns its path.

Publication figures (`comparison_figure`, ...) are drawn inside `publication_style()`:
TrueType fonts embedded in PDF (Type 42, never Type 3), text as paths in SVG, 7-9 pt text sized
for single- (3.5 in) and double-column (7.2 in) widths, and byte-identical files for identical
input (no creation dates, no software stamps, a fixed SVG hash salt).
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import MaxNLocator

from heatmap_templates.errors import HmtError
from heatmap_templates.preprocess import resize_gray

_PHASE_STYLES = {"head": "-", "train": "-", "fine-tune": "--"}


def _save(figure: Figure, path: str | os.PathLike, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None} if path.suffix == ".png" else None)
    return path


def training_curves(history: Sequence[dict], path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Loss and accuracy per epoch (training solid, validation dashed-dotted), phases one after another.

    ``history`` rows have ``phase``, ``loss``, ``accuracy`` and optionally ``val_loss``, ``val_accuracy``
    (as :func:`heatmap_templates.classifier.train` records them).
    """
    if not history:
        raise HmtError("no training history to plot")
    epochs = np.arange(1, len(history) + 1)
    figure = Figure(figsize=(8, 3.2))
    for axis, key, label in zip(figure.subplots(1, 2), ("loss", "accuracy"), ("loss (cross-entropy)", "accuracy")):
        train = np.array([row.get(key) if row.get(key) is not None else np.nan for row in history], dtype=float)
        val = np.array([row.get(f"val_{key}") if row.get(f"val_{key}") is not None else np.nan for row in history], dtype=float)
        axis.plot(epochs, train, marker="o", markersize=3, label="training")
        if np.isfinite(val).any():
            axis.plot(epochs, val, marker="s", markersize=3, linestyle="-.", label="validation")
        phases = [row.get("phase", "") for row in history]
        for index in range(1, len(phases)):
            if phases[index] != phases[index - 1]:
                axis.axvline(index + 0.5, color="grey", linewidth=0.8, linestyle=":")
                axis.text(index + 0.6, 0.98, phases[index], va="top", fontsize=8, color="grey", transform=axis.get_xaxis_transform())
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path, dpi)


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike, *,
                            title: str | None = None, dpi: int = 150) -> Path:
    """Confusion matrix (rows true, columns predicted): cells coloured by row share, annotated with counts and %."""
    counts = np.asarray(matrix, dtype=np.int64)
    if counts.shape != (len(class_names), len(class_names)):
        raise HmtError(f"confusion matrix of shape {counts.shape} does not fit {len(class_names)} classes")
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    side = 1.2 + 0.9 * len(class_names)
    figure = Figure(figsize=(side + 1.0, side))
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(counts.shape[0]):
        for column in range(counts.shape[1]):
            colour = "white" if shares[row, column] > 0.6 else "black"
            axis.text(column, row, f"{counts[row, column]}\n{100 * shares[row, column]:.0f}%", ha="center", va="center",
                      color=colour, fontsize=9)
    axis.set_xticks(range(len(class_names)), labels=list(class_names), rotation=30, ha="right")
    axis.set_yticks(range(len(class_names)), labels=list(class_names))
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if title:
        axis.set_title(title)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of true class")
    figure.tight_layout()
    return _save(figure, path, dpi)


# --------------------------------------------------------------------------- publication figures

COLUMN_WIDTHS = {"single": 3.5, "double": 7.2}  # inches: one journal column, full page width
FIGURE_FORMATS = ("pdf", "svg", "png")
DEFAULT_CMAP = "cividis"  # perceptually uniform and readable with colour-vision deficiency
DIVERGING_CMAP = "RdBu_r"  # ColorBrewer diverging map, colour-blind safe, centred at 0 by symmetric limits
OVERLAY_ALPHA = 0.55

_PUBLICATION_RC = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "path",
    "svg.hashsalt": "hmt-figures",
    "svg.id": "hmt-figure",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.0,
    "lines.markersize": 3,
}
_DETERMINISTIC_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {"Software": None}}


@contextlib.contextmanager
def publication_style() -> Iterator[None]:
    """Fonts, sizes and embedding settings for paper figures; draw *and* save inside it (restored on exit)."""
    with matplotlib.rc_context(_PUBLICATION_RC):
        yield


def check_cmap(name: str) -> str:
    """The name of a registered matplotlib colour map, else HmtError."""
    if name not in matplotlib.colormaps:
        raise HmtError(f"unknown colour map {name!r}; try cividis, viridis, magma, inferno or jet")
    return name


def figure_format(path: str | os.PathLike) -> str:
    """The output format a file name asks for (its suffix), else HmtError."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FIGURE_FORMATS:
        raise HmtError(f"{path}: unknown figure format {suffix!r}; use one of {', '.join(FIGURE_FORMATS)}")
    return suffix


def save_deterministic(figure: Figure, path: str | os.PathLike, dpi: int) -> Path:
    """Write `figure` as PDF, SVG or PNG (by suffix) with no timestamps, so equal input gives equal bytes."""
    path = Path(path)
    kind = figure_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format=kind, dpi=dpi, metadata=_DETERMINISTIC_METADATA[kind])
    return path


def _finite(values: np.ndarray) -> np.ndarray:
    """float64 copy with NaN/inf replaced by 0, so no NaN reaches a colour scale."""
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _value_range(*arrays: np.ndarray) -> tuple[float, float]:
    """One (vmin, vmax) covering every array; a constant input gets a unit-wide range."""
    low = min(float(array.min()) for array in arrays)
    high = max(float(array.max()) for array in arrays)
    return (low, high) if high > low else (low, low + 1.0)


def _symmetric_limit(*arrays: np.ndarray) -> float:
    """Largest magnitude over the arrays, for a diverging scale centred at 0."""
    limit = max(float(np.abs(array).max()) for array in arrays)
    return limit if limit > 0 else 1.0


def _grayscale(axis: Axes, image: np.ndarray, extent: tuple[float, float, float, float]) -> None:
    """Chest image in gray with a 1-99 percentile window (robust to a few extreme pixels)."""
    low, high = np.percentile(image, [1, 99])
    axis.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1.0, extent=extent, interpolation="antialiased")


def _overlay(axis: Axes, values: np.ndarray, background: np.ndarray | None, *, cmap: str, vmin: float, vmax: float) -> AxesImage:
    """`values` drawn over a grayscale `background` (aligned by extent at any resolution), or alone if None."""
    height, width = values.shape
    extent = (0.0, float(width), float(height), 0.0)
    if background is not None:
        _grayscale(axis, _finite(background), extent)
    image = axis.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, extent=extent, interpolation="antialiased",
                        alpha=OVERLAY_ALPHA if background is not None else None)
    axis.set_axis_off()
    return image


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
    image, heatmap, template = _finite(image), _finite(heatmap), _finite(template)
    for name, array in (("image", image), ("heatmap", heatmap), ("template", template)):
        if array.ndim != 2 or array.size == 0:
            raise HmtError(f"comparison figure: {name} must be a non-empty 2-D array, got shape {array.shape}")
    difference = resize_gray(heatmap, template.shape).astype(np.float64) - template
    vmin, vmax = _value_range(heatmap, template)
    limit = _symmetric_limit(difference)
    score = f"{similarity:.3f}" if math.isfinite(similarity) else "n/a"
    with publication_style():
        figure = Figure(figsize=(COLUMN_WIDTHS["double"], 2.2), layout="constrained")
        axes = figure.subplots(1, 4)
        _grayscale(axes[0], image, (0.0, float(image.shape[1]), float(image.shape[0]), 0.0))
        axes[0].set_axis_off()
        axes[0].set_title("image")
        # The heatmap is drawn on the image's extent so it lies over the image at any resolution.
        heat = _overlay(axes[1], resize_gray(heatmap, image.shape), image, cmap=cmap, vmin=vmin, vmax=vmax)
        axes[1].set_title("heatmap")
        _overlay(axes[2], template, reference_image, cmap=cmap, vmin=vmin, vmax=vmax)
        axes[2].set_title(f"template: {class_name}")
        shown = axes[3].imshow(difference, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, interpolation="antialiased")
        axes[3].set_axis_off()
        axes[3].set_title("heatmap \u2212 template")
        figure.colorbar(heat, ax=list(axes[1:3]), shrink=0.8, label="normalised value")
        figure.colorbar(shown, ax=axes[3], shrink=0.8, label="difference")
        figure.suptitle(f"{title}  \u2014  similarity to {class_name}: r = {score}")
        path = save_deterministic(figure, out, dpi)
    return path
