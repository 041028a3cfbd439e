"""The paper figures of a templates file (`hmt figures`): templates, spreads, eigen-heatmaps, similarity, consistency."""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from heatmap_templates.analysis.strategy_search import typical_members
from heatmap_templates.errors import BadFileError, HmtError
from heatmap_templates.files import atomic_folder
from heatmap_templates.present.figures.checks import contrast_figure, deletion_figure, sanity_figure, zones_figure
from heatmap_templates.present.figures.classifier import draw_confusion, draw_training_curves
from heatmap_templates.present.figures.ground_truth import ground_truth_figure, shown_classes
from heatmap_templates.present.figures.strategies import THUMBNAILS, strategies_figure
from heatmap_templates.present.figures.style import (
    COLOUR_BAR_INCHES,
    COLUMN_WIDTHS,
    DEFAULT_CMAP,
    DIVERGING_CMAP,
    FIGURE_FORMATS,
    MATRIX_WIDTH,
    check_cmap,
    finite,
    hide_frame,
    lung_outline,
    overlay,
    panel_figure,
    panel_grid,
    parse_formats,
    publication_style,
    save_deterministic,
    symmetric_limit,
    value_range,
)
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.store.records import ClassStrategies
from heatmap_templates.templates.templates_file import (
    TemplateFile,
    contrast_key,
    read_checks,
    read_contrasts,
    read_strategies,
    read_templates,
    read_zones,
)

DEFAULT_EIGEN_COMPONENTS = 3
DEFAULT_DPI = 300
DEFAULT_WIDTH = "double"


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


# The figures `template_figures` draws (strategies_<class> one per class), each as <name>.<format>.
FIGURE_NAMES = ("template_means", "template_std", "eigen_heatmaps", "similarity", "loo_correlations", "confusion_matrix",
                "training_curves", "sanity", "deletion", "zones", "ground_truth")


def check_figures_folder(out_dir: Path, classes: Sequence[str], contrasts: Sequence[str] = ()) -> list[str]:
    """Refuse, before anything is drawn, a folder that holds anything but the figures `template_figures` draws for
    ``classes`` (each name in each format; strategies_<class> of those classes only): the new figures replace them,
    and what they would replace must be nothing the user still needs. Else the names of the earlier figures there."""
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise BadFileError(out_dir, "exists and is not a folder")
    names = (*FIGURE_NAMES, *(f"strategies_{name}" for name in classes), *(f"contrast_{contrast_key(n)}" for n in contrasts))
    ours = {f"{name}.{kind}" for name in names for kind in FIGURE_FORMATS}
    entries = sorted(out_dir.iterdir())
    foreign = [p.name for p in entries if not (p.name in ours and p.is_file())]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise BadFileError(out_dir, f"holds files that are not hmt figures ({shown}); the figures replace the whole folder, "
                                    "so give a new or empty folder")
    return [p.name for p in entries]


def _carry_over(out_dir: Path, earlier: Sequence[str], formats: Sequence[str], folder: Path, notes: list[str]) -> None:
    """Copy the earlier figures of the formats not drawn this time into the new folder, so they stay (with a note)."""
    kept = [name for name in earlier if name.rsplit(".", 1)[-1] not in formats]
    for name in kept:
        shutil.copyfile(out_dir / name, folder / name)
    if kept:
        notes.append(f"kept {len(kept)} earlier figure files in the formats not drawn this time "
                     f"({', '.join(sorted({name.rsplit('.', 1)[-1] for name in kept}))}); they may be from earlier input")


def _pairwise_text(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _draw_class_maps(figure: Figure, axes: np.ndarray, maps: dict[str, np.ndarray], titles: dict[str, str], *,
                     background: np.ndarray | None, lung_mask: np.ndarray | None, cmap: str, label: str) -> dict[str, tuple[float, float]]:
    """One panel per class on ONE shared colour scale and colour bar; returns each panel's drawn limits."""
    vmin, vmax = value_range(*maps.values())
    drawn: dict[str, tuple[float, float]] = {}
    image = None
    flat = axes.ravel()
    for axis, (name, values) in zip(flat, maps.items(), strict=False):  # the grid may hold spare axes
        image = overlay(axis, values, background, cmap=cmap, vmin=vmin, vmax=vmax)
        if background is None:
            lung_outline(axis, lung_mask, values.shape)
        axis.set_title(titles[name])
        low, high = axis.images[-1].get_clim()  # the limits the map was really drawn with
        drawn[name] = (float(low), float(high))
    for axis in flat[len(maps):]:
        axis.set_axis_off()
    assert image is not None  # at least one class is drawn
    colour_bar = figure.colorbar(image, ax=list(flat), shrink=0.85, aspect=25)
    colour_bar.set_label(label)
    return drawn


def _template_means(file: TemplateFile, width: str, cmap: str) -> tuple[Figure, dict[str, tuple[float, float]]]:
    names = list(file.templates)
    maps = {name: finite(file.templates[name].mean) for name in names}
    titles = {name: f"{name} (n = {t.count})\nconsistency {_pairwise_text(t.mean_pairwise_correlation)}"
              for name, t in file.templates.items()}
    rows, columns = panel_grid(len(names), width)
    shape = next(iter(maps.values())).shape
    figure, axes = panel_figure(rows, columns, COLUMN_WIDTHS[width], shape[0] / shape[1])
    normalisation = file.settings.normalisation
    drawn = _draw_class_maps(figure, axes, maps, titles, background=file.reference_image, lung_mask=file.lung_mask,
                             cmap=cmap, label=f"mean heatmap ({normalisation})")
    return figure, drawn


def _template_std(file: TemplateFile, width: str, cmap: str) -> tuple[Figure, dict[str, tuple[float, float]]]:
    names = list(file.templates)
    maps = {name: finite(file.templates[name].std) for name in names}
    titles = {name: f"{name}\nn = {t.count}" for name, t in file.templates.items()}
    rows, columns = panel_grid(len(names), width)
    shape = next(iter(maps.values())).shape
    figure, axes = panel_figure(rows, columns, COLUMN_WIDTHS[width], shape[0] / shape[1])
    drawn = _draw_class_maps(figure, axes, maps, titles, background=None, lung_mask=file.lung_mask, cmap=cmap,
                             label="standard deviation")
    return figure, drawn


def _eigen_heatmaps(file: TemplateFile, width: str, components: int) -> tuple[Figure, dict[str, tuple[float, float]]]:
    """The top components of each class on one symmetric diverging scale centred at 0.

    One column wide, classes are rows (components across); a page wide, classes run across so
    the figure uses the width instead of growing tall.
    """
    shown = {name: finite(t.components[:components]) for name, t in file.templates.items() if len(t.components)}
    depth = max(len(stack) for stack in shown.values())
    classes_across = width == "double" and len(shown) >= depth
    rows, columns = (depth, len(shown)) if classes_across else (len(shown), depth)
    shape = next(iter(shown.values())).shape[1:]
    # "PC1 (42.4%)" needs about an inch at 8 pt; narrower panels put the share on a second line.
    narrow = (COLUMN_WIDTHS[width] - COLOUR_BAR_INCHES) / columns < 1.0
    figure, axes = panel_figure(rows, columns, COLUMN_WIDTHS[width], shape[0] / shape[1], title_inches=0.36 if narrow else 0.2,
                                 extra_height=0.16 if classes_across else 0.0)
    limit = symmetric_limit(*shown.values())
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
            lung_outline(axis, file.lung_mask, stack[component].shape)
            hide_frame(axis)
            share = float(ratios[component]) if component < len(ratios) and math.isfinite(float(ratios[component])) else 0.0
            title = f"PC{component + 1}{separator}({100 * share:.1f}%)"
            axis.set_title(f"{name}\n{title}" if classes_across and component == 0 else title)
            if not classes_across and component == 0:
                axis.set_ylabel(name)
            low, high = axis.images[-1].get_clim()
            drawn[f"{name}/PC{component + 1}"] = (float(low), float(high))
    assert image is not None  # at least one component is drawn
    figure.colorbar(image, ax=list(axes.ravel()), shrink=0.85, aspect=25, label="component loading")
    return figure, drawn


def _matrix_height(names: Sequence[str]) -> float:
    """Figure height for a K x K matrix one column wide: near-square cells plus title and rotated labels."""
    longest = max(len(name) for name in names)
    return min(MATRIX_WIDTH - 1.5, 0.5 * len(names)) + 0.55 + 0.04 * longest


def similarity_scale(values: np.ndarray) -> tuple[float, float]:
    """The similarity figure's colour limits: the lowest and highest correlation between two different templates
    (the diagonal's 1 would squeeze them into a sliver of a fixed -1..1 scale), widened to at least 0.05."""
    off_diagonal = values[~np.eye(len(values), dtype=bool)]
    low, high = (float(off_diagonal.min()), float(off_diagonal.max())) if off_diagonal.size else (0.0, 1.0)
    if high - low < 0.05:
        middle = (low + high) / 2
        low, high = middle - 0.025, middle + 0.025
    return low, high


def _similarity(file: TemplateFile, cmap: str) -> tuple[Figure, dict[str, tuple[float, float]]]:
    """Pearson correlation between class templates, annotated, on the colour scale of the off-diagonal values (the
    range stated in the title; the diagonal's 1 drawn in gray), so that their differences show."""
    names = list(file.similarity_classes)
    values = finite(file.similarity)
    low, high = similarity_scale(values)
    figure = Figure(figsize=(MATRIX_WIDTH, _matrix_height(names) + 0.15), layout="constrained")
    axis = figure.subplots()
    shown = np.ma.masked_array(values, mask=np.eye(len(names), dtype=bool))
    colours = colormaps[cmap].with_extremes(bad="0.85")
    image = axis.imshow(shown, cmap=colours, vmin=low, vmax=high, aspect="auto")
    for row in range(len(names)):
        for column in range(len(names)):
            dark = row != column and (values[row, column] - low) < 0.5 * (high - low)  # the dark end of cividis
            axis.text(column, row, f"{values[row, column]:.2f}", ha="center", va="center", color="white" if dark else "black")
    axis.set_xticks(range(len(names)), labels=names, rotation=30, ha="right")
    axis.set_yticks(range(len(names)), labels=names)
    axis.set_title(f"template similarity\n(colour scale {low:.2f} to {high:.2f}: the range between templates)")
    figure.colorbar(image, ax=axis, shrink=0.9, label="Pearson r")
    return figure, {"matrix": (low, high)}


def _loo_correlations(file: TemplateFile) -> Figure:
    """Violin + points of each class's leave-one-out correlations (member vs template without it)."""
    values = {name: finite(t.loo_correlations) for name, t in file.templates.items() if len(t.loo_correlations)}
    figure = Figure(figsize=(MATRIX_WIDTH, 2.4), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(1, len(values) + 1)
    violin_data = [(position, data) for position, data in zip(positions, values.values(), strict=True) if len(data) > 1 and np.ptp(data) > 0]
    if violin_data:
        parts = axis.violinplot([data for _, data in violin_data], positions=[p for p, _ in violin_data], widths=0.8,
                                showextrema=False)
        for body in list(parts["bodies"]):  # type: ignore[call-overload]  # a list of PolyCollections, typed as one
            body.set_facecolor("0.75")
            body.set_edgecolor("0.4")
            body.set_alpha(1.0)
    spread = np.random.default_rng(0)  # fixed jitter: same input, same picture
    for position, data in zip(positions, values.values(), strict=True):
        axis.scatter(position + spread.uniform(-0.12, 0.12, len(data)), data, s=4, color="black", linewidths=0, zorder=3)
        axis.plot([position - 0.25, position + 0.25], [np.median(data)] * 2, color="tab:orange", linewidth=1.2, zorder=4)
    axis.set_xticks(positions, labels=[f"{name}\n(n = {len(data)})" for name, data in values.items()])
    axis.set_ylabel("leave-one-out r")
    axis.set_title("member vs template without it")
    axis.grid(axis="y", alpha=0.3)
    return figure


def model_record(file: TemplateFile, notes: list[str]) -> tuple[list[dict] | None, dict | None]:
    """Training history and test evaluation stored beside the model the templates were built with (None when absent)."""
    recorded = file.settings.model_path
    if not recorded:
        notes.append("the templates file records no model path: training curves and confusion matrix skipped")
        return None, None
    model_path = Path(recorded)
    history_path = model_path.with_name(f"{model_path.stem}.history.csv")
    evaluation_path = model_path.with_name(f"{model_path.stem}.evaluation.json")
    history = recorded_history(model_path)  # the model file's own record first, else its CSV companion
    if history is None and history_path.is_file():
        history = _read_history(history_path) or None
        if history is None:
            notes.append(f"{history_path} has no epochs: training curves skipped")
    elif history is None:
        notes.append(f"no training history in the model file or beside it ({history_path}): training curves skipped")
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


def recorded_history(model_path: Path) -> list[dict] | None:
    """The per-epoch history the model file records (``info.training["history"]``: loss, accuracy, val_*), read
    without loading the model; None when the file is absent, is not hmt's, or records no epochs."""
    from heatmap_templates.model.model_file import read_model_info

    if not model_path.is_file():
        return None
    try:
        info = read_model_info(model_path)
    except HmtError:
        return None
    history = (info.training or {}).get("history") if info is not None else None
    if not isinstance(history, list) or not history:
        return None
    return [{"phase": row.get("phase", ""), **{key: _finite(row.get(key)) for key in ("loss", "accuracy", "val_loss", "val_accuracy")}}
            for row in history if isinstance(row, dict)] or None


def _finite(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


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


def _check_drawing_options(cmap: str, width: str, components: int, dpi: int) -> None:
    """Stop before the templates file is read when a drawing option is out of range (a user error, exit 2)."""
    check_cmap(cmap)
    if width not in COLUMN_WIDTHS:
        raise HmtError(f"unknown figure width {width!r}; use single (3.5 in) or double (7.2 in)")
    if components < 1:
        raise HmtError(f"$components must be at least 1, got {components}", parameters=("components",))
    if dpi < 10:
        raise HmtError(f"$dpi must be at least 10, got {dpi}", parameters=("dpi",))


def template_figures(templates: str | os.PathLike | TemplateFile, out_dir: str | os.PathLike, *,
                     formats: Sequence[str] = FIGURE_FORMATS, dpi: int = DEFAULT_DPI, cmap: str = DEFAULT_CMAP,
                     width: str = DEFAULT_WIDTH, components: int = DEFAULT_EIGEN_COMPONENTS,
                     progress: Progress | None = None) -> FiguresSummary:
    """The paper figures of a templates file, each written once per format into `out_dir`.

    template_means (templates over the reference chest, one shared colour scale), template_std,
    eigen_heatmaps (top `components` per class, explained variance in the titles), similarity,
    loo_correlations, and, when the model's record beside it has them, confusion_matrix and
    training_curves (a note in the summary says what was skipped and why); strategies_<class> for
    each class whose strategies the file holds (with typical members when its heatmap store is at hand); sanity
    and deletion when `hmt sanity` and `hmt evaluate-templates --faithfulness` stored their results; contrast_<key> for
    each stored `hmt contrast`. `width` is `single`
    (3.5 in) or `double` (7.2 in) for the panel grids and curves; the matrices and the LOO plot
    are one column wide. Identical input gives byte-identical files. The figures are drawn into a new folder that
    then replaces `out_dir` whole (:func:`heatmap_templates.files.atomic_folder`), so `out_dir` must be new, empty or
    hold only figures (of this file's classes); earlier figures in the formats not drawn this time are kept (a note says so).
    """
    formats = parse_formats(formats)
    _check_drawing_options(cmap, width, components, dpi)
    file = templates if isinstance(templates, TemplateFile) else read_templates(templates)
    if not file.templates:
        raise BadFileError(file.path, "holds no class templates to draw")
    out_dir = Path(out_dir)
    earlier = check_figures_folder(out_dir, list(file.templates), list(read_contrasts(file.path)))
    summary = FiguresSummary(out_dir=out_dir)
    history, evaluation = model_record(file, summary.notes)
    progress = progress or NullProgress()
    progress.start(7, "drawing figures")

    def write(name: str, draw: Callable[[], Figure | tuple[Figure, dict[str, tuple[float, float]]]]) -> None:
        """Draw one figure in the publication style and save it in every format (limits recorded if returned)."""
        with publication_style():
            result = draw()
            figure, drawn = result if isinstance(result, tuple) else (result, None)
            paths = [out_dir / save_deterministic(figure, folder / f"{name}.{kind}", dpi).name for kind in formats]
        summary.figures[name] = paths
        summary.files.extend(paths)
        if drawn is not None:
            summary.colour_scales[name] = drawn
        progress.advance()

    try:
        with atomic_folder(out_dir, earlier=earlier) as folder:  # `write` draws into it
            _carry_over(out_dir, earlier, formats, folder, summary.notes)
            write("template_means", lambda: _template_means(file, width, cmap))
            write("template_std", lambda: _template_std(file, width, cmap))
            if any(len(t.components) for t in file.templates.values()):
                write("eigen_heatmaps", lambda: _eigen_heatmaps(file, width, components))
            else:
                summary.notes.append("no class has eigen-heatmaps (too few members): eigen-heatmaps skipped")
                progress.advance()
            if len(file.similarity_classes) > 1:
                write("similarity", lambda: _similarity(file, cmap))
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
            for name, result in read_strategies(file.path).items():
                write(f"strategies_{name}", functools.partial(_strategies, file, result, width, cmap, summary.notes))
            _stored_results(file, write, width, cmap)
    finally:
        progress.finish()
    return summary


def _stored_results(file: TemplateFile, write: Callable, width: str, cmap: str) -> None:
    """The figures of the checks and contrasts stored in the file."""
    checks = read_checks(file.path)
    if "ground_truth" in checks and shown_classes(checks["ground_truth"], file):
        write("ground_truth", lambda: ground_truth_figure(checks["ground_truth"], file, width, cmap))
    if "sanity" in checks:
        write("sanity", lambda: sanity_figure(checks["sanity"], width))
    if "faithfulness" in checks:
        write("deletion", lambda: deletion_figure(checks["faithfulness"], width))
    for contrast_name, record in read_contrasts(file.path).items():
        write(f"contrast_{contrast_key(contrast_name)}", functools.partial(_contrast, file, record, width))
    zones = read_zones(file.path)
    if zones is not None:
        write("zones", lambda: zones_figure(zones, file.reference_image, width))


def _contrast(file: TemplateFile, record: dict, width: str) -> Figure:
    """A contrast over the reference chest area-averaged to the contrast grid's resolution (the frame it was run in)."""
    from heatmap_templates.numeric.resample import downsample

    shape = np.shape(record["maps"]["t"])
    reference = None if file.reference_image is None else downsample(file.reference_image, (shape[0] * 8, shape[1] * 8))
    return contrast_figure(record, reference, width)


def _strategies(file: TemplateFile, result: ClassStrategies, width: str, cmap: str, notes: list[str]) -> Figure:
    """One class's strategies figure with its members' thumbnails (drawn when ``write`` calls it)."""
    return strategies_figure(file, result, width, cmap, _thumbnails(file, result, notes))


def _thumbnails(file: TemplateFile, result, notes: list[str]) -> dict | None:
    """Typical members of each strategy, or None (with a note) when the heatmap store is not at hand."""
    try:
        return typical_members(file.path, result, THUMBNAILS)
    except (HmtError, OSError) as error:
        notes.append(f"strategies of {result.class_name}: member thumbnails skipped ({error})")
        return None


def _confusion(evaluation: dict) -> Figure:
    names = [str(name) for name in evaluation["class_names"]]
    figure = Figure(figsize=(MATRIX_WIDTH, _matrix_height(names) + 0.2), layout="constrained")
    split = evaluation.get("split", "test")
    count = evaluation.get("n")
    draw_confusion(figure, evaluation["confusion_matrix"], names, fontsize=7,
                    title=f"{split} split" + (f" ({count} images)" if count is not None else ""))
    # Square cells fight the constrained layout (the row labels get clipped); the figure height keeps them near square.
    figure.axes[0].set_aspect("auto")
    return figure


def _training(history: list[dict], width: str) -> Figure:
    """Loss and accuracy side by side with one legend above them (a legend inside a small panel hides curves)."""
    figure = Figure(figsize=(COLUMN_WIDTHS[width], 2.2 if width == "double" else 2.0), layout="constrained")
    draw_training_curves(figure, history, fontsize=7)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    for axis in figure.axes:
        legend = axis.get_legend()
        if legend is not None:
            legend.remove()
        for line in axis.lines:
            line.set_markersize(3 if len(history) <= 15 else 1.5)
    figure.legend(handles, labels, loc="outside upper center", ncols=len(labels), frameon=False)
    return figure
