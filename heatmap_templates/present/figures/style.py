"""How hmt draws: publication style, deterministic saving, colour maps, overlays and panel layout.

Publication figures are drawn inside :func:`publication_style`: TrueType fonts embedded in PDF
(Type 42, never Type 3), text as paths in SVG, 7-9 pt text sized for single- (3.5 in) and
double-column (7.2 in) widths, and byte-identical files for identical input
(:func:`save_deterministic`: no creation dates, no software stamps, a fixed SVG hash salt).
Every file is written atomically (:func:`heatmap_templates.files.atomic_path`).
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from heatmap_templates.errors import HmtError
from heatmap_templates.files import atomic_path


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int, *, tight: bool = True) -> Path:
    """Write a plain (non-publication) figure, format by suffix, cropped to its content unless not ``tight``, atomically."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as temporary:
        figure.savefig(temporary, dpi=dpi, bbox_inches="tight" if tight else None,
                       metadata={"Software": None} if path.suffix == ".png" else None)
    return path


COLUMN_WIDTHS = {"single": 3.5, "double": 7.2}  # inches: one journal column, full page width
FIGURE_FORMATS = ("pdf", "svg", "png")
DEFAULT_CMAP = "cividis"  # perceptually uniform and readable with colour-vision deficiency
DIVERGING_CMAP = "RdBu_r"  # ColorBrewer diverging map, colour-blind safe, centred at 0 by symmetric limits
OVERLAY_ALPHA = (0.15, 0.8)  # opacity of the lowest and highest heatmap value over the chest image
# Okabe-Ito: distinguishable with every common colour-vision deficiency; the colours of strategies (figures and report)
CATEGORICAL_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")

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
    with matplotlib.rc_context(_PUBLICATION_RC):  # type: ignore[arg-type]  # matplotlib types rc keys as Literals
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
    with atomic_path(path, suffix=path.suffix) as temporary:
        figure.savefig(temporary, format=kind, dpi=dpi, metadata=_DETERMINISTIC_METADATA[kind])
    return path


def finite(values: np.ndarray) -> np.ndarray:
    """float64 copy with NaN/inf replaced by 0, so no NaN reaches a colour scale."""
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def value_range(*arrays: np.ndarray) -> tuple[float, float]:
    """One (vmin, vmax) covering every array; a constant input gets a unit-wide range."""
    low = min(float(array.min()) for array in arrays)
    high = max(float(array.max()) for array in arrays)
    return (low, high) if high > low else (low, low + 1.0)


def symmetric_limit(*arrays: np.ndarray) -> float:
    """Largest magnitude over the arrays, for a diverging scale centred at 0."""
    limit = max(float(np.abs(array).max()) for array in arrays)
    return limit if limit > 0 else 1.0


def grayscale(axis: Axes, image: np.ndarray, extent: tuple[float, float, float, float], *, dim: bool = False) -> None:
    """Chest image in gray with a 1-99 percentile window (robust to a few extreme pixels).

    `dim` darkens the brightest tissue to about 75 % gray, so a heatmap drawn over it keeps its contrast.
    """
    low, high = np.percentile(image, [1, 99])
    spread = high - low if high > low else 1.0
    axis.imshow(image, cmap="gray", vmin=low, vmax=low + spread * (1.35 if dim else 1.0), extent=extent, interpolation="bilinear")


def overlay(axis: Axes, values: np.ndarray, background: np.ndarray | None, *, cmap: str, vmin: float, vmax: float) -> ScalarMappable:
    """`values` drawn over a grayscale `background` (aligned by extent at any resolution), or alone if None.

    Over a chest image the opacity rises with the value, so low values leave the anatomy visible
    and hot spots stand out. Returns an opaque mappable of the same scale for the colour bar.
    """
    height, width = values.shape
    extent = (0.0, float(width), float(height), 0.0)
    alpha = None
    if background is not None:
        grayscale(axis, finite(background), extent, dim=True)
        share = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
        alpha = OVERLAY_ALPHA[0] + (OVERLAY_ALPHA[1] - OVERLAY_ALPHA[0]) * share
    axis.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, extent=extent, interpolation="bilinear", alpha=alpha)
    axis.set_axis_off()
    return ScalarMappable(Normalize(vmin, vmax), cmap)


MATRIX_WIDTH = COLUMN_WIDTHS["single"]  # small matrices and the LOO plot fit one column at either width
COLOUR_BAR_INCHES = 0.75
TITLE_INCHES = 0.36  # two title lines at 8 pt
LARGEST_PANEL_INCHES = 2.4  # a figure of few panels is narrower than the column rather than blown up
TALLEST_FIGURE_INCHES = 8.5  # fits a journal page with its caption



def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """'pdf,svg,png' (or a sequence) as a tuple of known formats in the order given; HmtError otherwise."""
    items = text.split(",") if isinstance(text, str) else list(text)
    formats = tuple(dict.fromkeys(item.strip().lower().lstrip(".") for item in items if item.strip()))
    unknown = [item for item in formats if item not in FIGURE_FORMATS]
    if unknown or not formats:
        raise HmtError(f"unknown figure format {', '.join(unknown) or '(none given)'}; use any of {', '.join(FIGURE_FORMATS)}")
    return formats


def panel_grid(count: int, width: str) -> tuple[int, int]:
    """(rows, columns) for `count` class panels: 2 columns in one journal column, up to 4 across a page."""
    columns = min(count, 2 if width == "single" else 4)
    return math.ceil(count / columns), columns


def panel_figure(rows: int, columns: int, width_inches: float, aspect: float, *, title_inches: float = TITLE_INCHES,
                  extra_height: float = 0.0) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of rows x columns image panels plus room for one colour bar on the right.

    Panels fill the column width, but are never wider than LARGEST_PANEL_INCHES nor so tall that
    the figure exceeds a page; the figure is then narrower than the column.
    """
    panel = min((width_inches - COLOUR_BAR_INCHES) / columns, LARGEST_PANEL_INCHES,
                ((TALLEST_FIGURE_INCHES - 0.1) / rows - title_inches) / aspect)
    height = rows * (panel * aspect + title_inches) + 0.1 + extra_height
    figure = Figure(figsize=(columns * panel + COLOUR_BAR_INCHES, height), layout="constrained")
    engine = figure.get_layout_engine()
    assert isinstance(engine, ConstrainedLayoutEngine)
    engine.set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
    return figure, np.atleast_2d(figure.subplots(rows, columns, squeeze=False))


def lung_outline(axis: Axes, lung_mask: np.ndarray | None, shape: tuple[int, int]) -> None:
    """Thin outline of the reference lung fields, for orientation on maps drawn without the chest image."""
    if lung_mask is None or not np.any(lung_mask):
        return
    mask = np.asarray(lung_mask, dtype=np.float64)
    rows, columns = mask.shape
    # Contour coordinates are scaled onto the map's extent, so masks of any resolution line up.
    axis.contour(np.linspace(0, shape[1], columns), np.linspace(0, shape[0], rows), mask, levels=[0.5],
                 colors="0.25", linewidths=0.5)


def hide_frame(axis: Axes) -> None:
    """No ticks or spines, but keep the axis so it can carry a y-label (row name)."""
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_visible(False)
