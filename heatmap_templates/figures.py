"""Every matplotlib figure hmt draws. Object-oriented matplotlib only (no pyplot state), so any backend works.

Each function takes plain data, writes one file and returns its path (`template_figures` writes a set).

- `training_curves(history, path)`, `confusion_matrix_figure(matrix, class_names, path)`: the
  classifier's record (`hmt train`, `hmt evaluate`).
- `comparison_figure(image, heatmap, template, *, title, out, class_name, similarity, ...)`: one
  image against a class template (`hmt compare --figure`).
- `template_figures(templates, out_dir, *, formats, dpi, cmap, width, components) -> FiguresSummary`:
  the paper figures of a templates file (`hmt figures`); the summary lists the files, the colour
  limits every panel was drawn with (class panels share one scale) and what was skipped and why.

Publication figures are drawn inside `publication_style()`: TrueType fonts embedded in PDF
(Type 42, never Type 3), text as paths in SVG, 7-9 pt text sized for single- (3.5 in) and
double-column (7.2 in) widths, and byte-identical files for identical input
(`save_deterministic`: no creation dates, no software stamps, a fixed SVG hash salt).
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from heatmap_templates.errors import BadFileError, HmtError
from heatmap_templates.preprocess import resize_gray
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.store import TemplateFile, read_templates

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
    figure = Figure(figsize=(8, 3.2))
    _draw_training_curves(figure, history, fontsize=8)
    figure.tight_layout()
    return _save(figure, path, dpi)


def _draw_training_curves(figure: Figure, history: Sequence[dict], *, fontsize: float) -> None:
    """The two panels of `training_curves` (loss, accuracy) on `figure`."""
    epochs = np.arange(1, len(history) + 1)
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
    _draw_confusion(figure, matrix, class_names, title=title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path, dpi)


def _draw_confusion(figure: Figure, matrix: Sequence[Sequence[int]], class_names: Sequence[str], *,
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


# --------------------------------------------------------------------------- publication figures

COLUMN_WIDTHS = {"single": 3.5, "double": 7.2}  # inches: one journal column, full page width
FIGURE_FORMATS = ("pdf", "svg", "png")
DEFAULT_CMAP = "cividis"  # perceptually uniform and readable with colour-vision deficiency
DIVERGING_CMAP = "RdBu_r"  # ColorBrewer diverging map, colour-blind safe, centred at 0 by symmetric limits
OVERLAY_ALPHA = (0.15, 0.8)  # opacity of the lowest and highest heatmap value over the chest image

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


def _grayscale(axis: Axes, image: np.ndarray, extent: tuple[float, float, float, float], *, dim: bool = False) -> None:
    """Chest image in gray with a 1-99 percentile window (robust to a few extreme pixels).

    `dim` darkens the brightest tissue to about 75 % gray, so a heatmap drawn over it keeps its contrast.
    """
    low, high = np.percentile(image, [1, 99])
    spread = high - low if high > low else 1.0
    axis.imshow(image, cmap="gray", vmin=low, vmax=low + spread * (1.35 if dim else 1.0), extent=extent, interpolation="bilinear")


def _overlay(axis: Axes, values: np.ndarray, background: np.ndarray | None, *, cmap: str, vmin: float, vmax: float) -> ScalarMappable:
    """`values` drawn over a grayscale `background` (aligned by extent at any resolution), or alone if None.

    Over a chest image the opacity rises with the value, so low values leave the anatomy visible
    and hot spots stand out. Returns an opaque mappable of the same scale for the colour bar.
    """
    height, width = values.shape
    extent = (0.0, float(width), float(height), 0.0)
    alpha = None
    if background is not None:
        _grayscale(axis, _finite(background), extent, dim=True)
        share = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
        alpha = OVERLAY_ALPHA[0] + (OVERLAY_ALPHA[1] - OVERLAY_ALPHA[0]) * share
    axis.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, extent=extent, interpolation="bilinear", alpha=alpha)
    axis.set_axis_off()
    return ScalarMappable(Normalize(vmin, vmax), cmap)


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
        shown = axes[3].imshow(difference, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, interpolation="bilinear")
        axes[3].set_axis_off()
        axes[3].set_title("heatmap \u2212 template")
        figure.colorbar(heat, ax=list(axes[1:3]), shrink=0.8, label="normalised value")
        figure.colorbar(shown, ax=axes[3], shrink=0.8, label="difference")
        figure.suptitle(f"{title}  \u2014  similarity to {class_name}: r = {score}")
        path = save_deterministic(figure, out, dpi)
    return path


# --------------------------------------------------------------------------- the paper figure set of a templates file

DEFAULT_EIGEN_COMPONENTS = 3
_MATRIX_WIDTH = COLUMN_WIDTHS["single"]  # small matrices and the LOO plot fit one column at either width
_COLOUR_BAR_INCHES = 0.75
_TITLE_INCHES = 0.36  # two title lines at 8 pt
_LARGEST_PANEL_INCHES = 2.4  # a figure of few panels is narrower than the column rather than blown up
_TALLEST_FIGURE_INCHES = 8.5  # fits a journal page with its caption


@dataclass
class FiguresSummary:
    """What `template_figures` wrote: files per figure, the colour limits each panel was drawn with, notes."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    figures: dict[str, list[Path]] = field(default_factory=dict)
    colour_scales: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form (paths as strings, limits as [vmin, vmax])."""
        return {
            "out_dir": str(self.out_dir),
            "files": [str(path) for path in self.files],
            "figures": {name: [str(path) for path in paths] for name, paths in self.figures.items()},
            "colour_scales": {name: {panel: [vmin, vmax] for panel, (vmin, vmax) in panels.items()}
                              for name, panels in self.colour_scales.items()},
            "notes": list(self.notes),
        }


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """'pdf,svg,png' (or a sequence) as a tuple of known formats in the order given; HmtError otherwise."""
    items = text.split(",") if isinstance(text, str) else list(text)
    formats = tuple(dict.fromkeys(item.strip().lower().lstrip(".") for item in items if item.strip()))
    unknown = [item for item in formats if item not in FIGURE_FORMATS]
    if unknown or not formats:
        raise HmtError(f"unknown figure format {', '.join(unknown) or '(none given)'}; use any of {', '.join(FIGURE_FORMATS)}")
    return formats


def _grid(count: int, width: str) -> tuple[int, int]:
    """(rows, columns) for `count` class panels: 2 columns in one journal column, up to 4 across a page."""
    columns = min(count, 2 if width == "single" else 4)
    return math.ceil(count / columns), columns


def _panel_figure(rows: int, columns: int, width_inches: float, aspect: float, *, title_inches: float = _TITLE_INCHES,
                  extra_height: float = 0.0) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of rows x columns image panels plus room for one colour bar on the right.

    Panels fill the column width, but are never wider than _LARGEST_PANEL_INCHES nor so tall that
    the figure exceeds a page; the figure is then narrower than the column.
    """
    panel = min((width_inches - _COLOUR_BAR_INCHES) / columns, _LARGEST_PANEL_INCHES,
                ((_TALLEST_FIGURE_INCHES - 0.1) / rows - title_inches) / aspect)
    height = rows * (panel * aspect + title_inches) + 0.1 + extra_height
    figure = Figure(figsize=(columns * panel + _COLOUR_BAR_INCHES, height), layout="constrained")
    figure.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
    return figure, np.atleast_2d(figure.subplots(rows, columns, squeeze=False))


def _lung_outline(axis: Axes, lung_mask: np.ndarray | None, shape: tuple[int, int]) -> None:
    """Thin outline of the reference lung fields, for orientation on maps drawn without the chest image."""
    if lung_mask is None or not np.any(lung_mask):
        return
    mask = np.asarray(lung_mask, dtype=np.float64)
    rows, columns = mask.shape
    # Contour coordinates are scaled onto the map's extent, so masks of any resolution line up.
    axis.contour(np.linspace(0, shape[1], columns), np.linspace(0, shape[0], rows), mask, levels=[0.5],
                 colors="0.25", linewidths=0.5)


def _hide_frame(axis: Axes) -> None:
    """No ticks or spines, but keep the axis so it can carry a y-label (row name)."""
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_visible(False)


def _pairwise_text(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _draw_class_maps(figure: Figure, axes: np.ndarray, maps: dict[str, np.ndarray], titles: dict[str, str], *,
                     background: np.ndarray | None, lung_mask: np.ndarray | None, cmap: str, label: str) -> dict[str, tuple[float, float]]:
    """One panel per class on ONE shared colour scale and colour bar; returns each panel's drawn limits."""
    vmin, vmax = _value_range(*maps.values())
    drawn: dict[str, tuple[float, float]] = {}
    image = None
    flat = axes.ravel()
    for axis, (name, values) in zip(flat, maps.items()):
        image = _overlay(axis, values, background, cmap=cmap, vmin=vmin, vmax=vmax)
        if background is None:
            _lung_outline(axis, lung_mask, values.shape)
        axis.set_title(titles[name])
        low, high = axis.images[-1].get_clim()  # the limits the map was really drawn with
        drawn[name] = (float(low), float(high))
    for axis in flat[len(maps):]:
        axis.set_axis_off()
    colour_bar = figure.colorbar(image, ax=list(flat), shrink=0.85, aspect=25)
    colour_bar.set_label(label)
    return drawn


def _template_means(file: TemplateFile, width: str, cmap: str) -> tuple[Figure, dict[str, tuple[float, float]]]:
    names = list(file.templates)
    maps = {name: _finite(file.templates[name].mean) for name in names}
    titles = {name: f"{name}\nn = {t.count}, $\\bar{{r}}$ = {_pairwise_text(t.mean_pairwise_correlation)}"
              for name, t in file.templates.items()}
    rows, columns = _grid(len(names), width)
    shape = next(iter(maps.values())).shape
    figure, axes = _panel_figure(rows, columns, COLUMN_WIDTHS[width], shape[0] / shape[1])
    normalisation = file.settings.get("normalisation") or next(iter(file.templates.values())).normalisation
    drawn = _draw_class_maps(figure, axes, maps, titles, background=file.reference_image, lung_mask=file.lung_mask,
                             cmap=cmap, label=f"mean heatmap ({normalisation})")
    return figure, drawn


def _template_std(file: TemplateFile, width: str, cmap: str) -> tuple[Figure, dict[str, tuple[float, float]]]:
    names = list(file.templates)
    maps = {name: _finite(file.templates[name].std) for name in names}
    titles = {name: f"{name}\nn = {t.count}" for name, t in file.templates.items()}
    rows, columns = _grid(len(names), width)
    shape = next(iter(maps.values())).shape
    figure, axes = _panel_figure(rows, columns, COLUMN_WIDTHS[width], shape[0] / shape[1])
    drawn = _draw_class_maps(figure, axes, maps, titles, background=None, lung_mask=file.lung_mask, cmap=cmap,
                             label="standard deviation")
    return figure, drawn


def _eigen_heatmaps(file: TemplateFile, width: str, components: int) -> tuple[Figure, dict[str, tuple[float, float]]]:
    """The top components of each class on one symmetric diverging scale centred at 0.

    One column wide, classes are rows (components across); a page wide, classes run across so
    the figure uses the width instead of growing tall.
    """
    shown = {name: _finite(t.components[:components]) for name, t in file.templates.items() if len(t.components)}
    depth = max(len(stack) for stack in shown.values())
    classes_across = width == "double" and len(shown) >= depth
    rows, columns = (depth, len(shown)) if classes_across else (len(shown), depth)
    shape = next(iter(shown.values())).shape[1:]
    # "PC1 (42.4%)" needs about an inch at 8 pt; narrower panels put the share on a second line.
    narrow = (COLUMN_WIDTHS[width] - _COLOUR_BAR_INCHES) / columns < 1.0
    figure, axes = _panel_figure(rows, columns, COLUMN_WIDTHS[width], shape[0] / shape[1], title_inches=0.36 if narrow else 0.2,
                                 extra_height=0.16 if classes_across else 0.0)
    limit = _symmetric_limit(*shown.values())
    separator = "\n" if narrow else " "
    drawn: dict[str, tuple[float, float]] = {}
    image = None
    for class_index, (name, stack) in enumerate(shown.items()):
        ratios = file.templates[name].explained_variance_ratio
        for component in range(depth):
            axis = axes[component, class_index] if classes_across else axes[class_index, component]
            if component >= len(stack):
                axis.set_axis_off()
                continue
            image = axis.imshow(stack[component], cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, interpolation="bilinear")
            _lung_outline(axis, file.lung_mask, stack[component].shape)
            _hide_frame(axis)
            share = float(ratios[component]) if component < len(ratios) and math.isfinite(float(ratios[component])) else 0.0
            title = f"PC{component + 1}{separator}({100 * share:.1f}%)"
            axis.set_title(f"{name}\n{title}" if classes_across and component == 0 else title)
            if not classes_across and component == 0:
                axis.set_ylabel(name)
            drawn[f"{name}/PC{component + 1}"] = tuple(float(v) for v in axis.images[-1].get_clim())
    figure.colorbar(image, ax=list(axes.ravel()), shrink=0.85, aspect=25, label="component loading")
    return figure, drawn


def _matrix_height(names: Sequence[str]) -> float:
    """Figure height for a K x K matrix one column wide: near-square cells plus title and rotated labels."""
    longest = max(len(name) for name in names)
    return min(_MATRIX_WIDTH - 1.5, 0.5 * len(names)) + 0.55 + 0.04 * longest


def _matrix_text_colour(value: float, limit: float) -> str:
    return "white" if abs(value) > 0.6 * limit else "black"


def _similarity(file: TemplateFile) -> Figure:
    """Pearson correlation between class templates, annotated, on a fixed -1..1 diverging scale."""
    names = list(file.similarity_classes)
    values = _finite(file.similarity)
    figure = Figure(figsize=(_MATRIX_WIDTH, _matrix_height(names)), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(values, cmap=DIVERGING_CMAP, vmin=-1.0, vmax=1.0, aspect="auto")
    for row in range(len(names)):
        for column in range(len(names)):
            axis.text(column, row, f"{values[row, column]:.2f}", ha="center", va="center",
                      color=_matrix_text_colour(values[row, column], 1.0))
    axis.set_xticks(range(len(names)), labels=names, rotation=30, ha="right")
    axis.set_yticks(range(len(names)), labels=names)
    axis.set_title("template similarity")
    figure.colorbar(image, ax=axis, shrink=0.9, label="Pearson r")
    return figure


def _loo_correlations(file: TemplateFile) -> Figure:
    """Violin + points of each class's leave-one-out correlations (member vs template without it)."""
    values = {name: _finite(t.loo_correlations) for name, t in file.templates.items() if len(t.loo_correlations)}
    figure = Figure(figsize=(_MATRIX_WIDTH, 2.4), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(1, len(values) + 1)
    violin_data = [(position, data) for position, data in zip(positions, values.values()) if len(data) > 1 and np.ptp(data) > 0]
    if violin_data:
        parts = axis.violinplot([data for _, data in violin_data], positions=[p for p, _ in violin_data], widths=0.8,
                                showextrema=False)
        for body in parts["bodies"]:
            body.set_facecolor("0.75")
            body.set_edgecolor("0.4")
            body.set_alpha(1.0)
    spread = np.random.default_rng(0)  # fixed jitter: same input, same picture
    for position, data in zip(positions, values.values()):
        axis.scatter(position + spread.uniform(-0.12, 0.12, len(data)), data, s=4, color="black", linewidths=0, zorder=3)
        axis.plot([position - 0.25, position + 0.25], [np.median(data)] * 2, color="tab:orange", linewidth=1.2, zorder=4)
    axis.set_xticks(positions, labels=[f"{name}\n(n = {len(data)})" for name, data in values.items()])
    axis.set_ylabel("leave-one-out r")
    axis.set_title("member vs template without it")
    axis.grid(axis="y", alpha=0.3)
    return figure


def _model_record(file: TemplateFile, notes: list[str]) -> tuple[list[dict] | None, dict | None]:
    """Training history and test evaluation stored beside the model the templates were built with (None when absent)."""
    model_path = file.settings.get("model_path")
    if not model_path:
        notes.append("the templates file records no model path: training curves and confusion matrix skipped")
        return None, None
    model_path = Path(model_path)
    history_path = model_path.with_name(f"{model_path.stem}.history.csv")
    evaluation_path = model_path.with_name(f"{model_path.stem}.evaluation.json")
    history = None
    if history_path.is_file():
        history = _read_history(history_path)
        if not history:
            notes.append(f"{history_path} has no epochs: training curves skipped")
            history = None
    else:
        notes.append(f"no training history beside the model ({history_path}): training curves skipped")
    evaluation = None
    if evaluation_path.is_file():
        try:
            evaluation = json.loads(evaluation_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            notes.append(f"{evaluation_path} cannot be read ({error.__class__.__name__}): confusion matrix skipped")
        else:
            if not isinstance(evaluation, dict) or "confusion_matrix" not in evaluation or "class_names" not in evaluation:
                notes.append(f"{evaluation_path} has no confusion matrix: confusion matrix skipped")
                evaluation = None
    else:
        notes.append(f"no evaluation beside the model ({evaluation_path}): confusion matrix skipped")
    return history, evaluation


def _read_history(path: Path) -> list[dict]:
    """Rows of a `<model>.history.csv` with numbers as floats and empty cells as None."""
    rows: list[dict] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed: dict = {"phase": row.get("phase", "")}
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                text = (row.get(key) or "").strip()
                try:
                    number = float(text) if text else None
                except ValueError:
                    number = None
                parsed[key] = number if number is not None and math.isfinite(number) else None
            rows.append(parsed)
    return rows


def template_figures(templates: str | os.PathLike | TemplateFile, out_dir: str | os.PathLike, *,
                     formats: Sequence[str] = FIGURE_FORMATS, dpi: int = 300, cmap: str = DEFAULT_CMAP,
                     width: str = "double", components: int = DEFAULT_EIGEN_COMPONENTS,
                     progress: Progress | None = None) -> FiguresSummary:
    """The paper figures of a templates file, each written once per format into `out_dir`.

    template_means (templates over the reference chest, one shared colour scale), template_std,
    eigen_heatmaps (top `components` per class, explained variance in the titles), similarity,
    loo_correlations, and, when the model's record beside it has them, confusion_matrix and
    training_curves (a note in the summary says what was skipped and why). `width` is `single`
    (3.5 in) or `double` (7.2 in) for the panel grids and curves; the matrices and the LOO plot
    are one column wide. Identical input gives byte-identical files.
    """
    formats = parse_formats(formats)
    check_cmap(cmap)
    if width not in COLUMN_WIDTHS:
        raise HmtError(f"unknown figure width {width!r}; use single (3.5 in) or double (7.2 in)")
    if components < 1:
        raise HmtError(f"--components must be at least 1, got {components}")
    if dpi < 10:
        raise HmtError(f"--dpi must be at least 10, got {dpi}")
    file = templates if isinstance(templates, TemplateFile) else read_templates(templates)
    if not file.templates:
        raise BadFileError(file.path, "holds no class templates to draw")
    out_dir = Path(out_dir)
    summary = FiguresSummary(out_dir=out_dir)
    history, evaluation = _model_record(file, summary.notes)
    progress = progress or NullProgress()
    progress.start(7, "drawing figures")

    def write(name: str, draw: Callable[[], Figure | tuple[Figure, dict[str, tuple[float, float]]]]) -> None:
        """Draw one figure in the publication style and save it in every format (limits recorded if returned)."""
        with publication_style():
            result = draw()
            figure, drawn = result if isinstance(result, tuple) else (result, None)
            paths = [save_deterministic(figure, out_dir / f"{name}.{kind}", dpi) for kind in formats]
        summary.figures[name] = paths
        summary.files.extend(paths)
        if drawn is not None:
            summary.colour_scales[name] = drawn
        progress.advance()

    try:
        write("template_means", lambda: _template_means(file, width, cmap))
        write("template_std", lambda: _template_std(file, width, cmap))
        if any(len(t.components) for t in file.templates.values()):
            write("eigen_heatmaps", lambda: _eigen_heatmaps(file, width, components))
        else:
            summary.notes.append("no class has eigen-heatmaps (too few members): eigen-heatmaps skipped")
            progress.advance()
        if len(file.similarity_classes) > 1:
            write("similarity", lambda: _similarity(file))
        else:
            summary.notes.append("one class only: similarity matrix skipped")
            progress.advance()
        if any(len(t.loo_correlations) for t in file.templates.values()):
            write("loo_correlations", lambda: _loo_correlations(file))
        else:
            summary.notes.append("no leave-one-out correlations stored: their distribution plot skipped")
            progress.advance()
        if evaluation is not None:
            write("confusion_matrix", lambda: _confusion(evaluation))
        else:
            progress.advance()
        if history is not None:
            write("training_curves", lambda: _training(history, width))
        else:
            progress.advance()
    finally:
        progress.finish()
    return summary


def _confusion(evaluation: dict) -> Figure:
    names = [str(name) for name in evaluation["class_names"]]
    figure = Figure(figsize=(_MATRIX_WIDTH, _matrix_height(names) + 0.2), layout="constrained")
    split = evaluation.get("split", "test")
    count = evaluation.get("n")
    _draw_confusion(figure, evaluation["confusion_matrix"], names, fontsize=7,
                    title=f"{split} split" + (f" ({count} images)" if count is not None else ""))
    # Square cells fight the constrained layout (the row labels get clipped); the figure height keeps them near square.
    figure.axes[0].set_aspect("auto")
    return figure


def _training(history: list[dict], width: str) -> Figure:
    """Loss and accuracy side by side with one legend above them (a legend inside a small panel hides curves)."""
    figure = Figure(figsize=(COLUMN_WIDTHS[width], 2.2 if width == "double" else 2.0), layout="constrained")
    _draw_training_curves(figure, history, fontsize=7)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    for axis in figure.axes:
        axis.get_legend().remove()
        for line in axis.lines:
            line.set_markersize(3 if len(history) <= 15 else 1.5)
    figure.legend(handles, labels, loc="outside upper center", ncols=len(labels), frameon=False)
    return figure
