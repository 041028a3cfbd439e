"""Every matplotlib figure hmt draws. Object-oriented matplotlib only (no pyplot state), so any backend works.

Each function takes plain data, writes its file(s) atomically and returns the path(s):

- :mod:`.classifier`: ``training_curves(history, path)``, ``confusion_matrix_figure(matrix, class_names, path)``,
  ``training_figures(result, model_path)`` (the companions `hmt train` leaves beside a model);
- :mod:`.comparison`: ``comparison_figure(image, heatmap, template, *, title, out, class_name, similarity, ...)``;
- :mod:`.templates`: ``template_figures(templates, out_dir, *, formats, dpi, cmap, width, components) -> FiguresSummary``,
  the paper figures of a templates file (class panels share one colour scale; the summary lists files,
  drawn colour limits and what was skipped and why);
- :mod:`.style`: publication style, deterministic saving, colour maps and panel layout, shared by all.
"""
from heatmap_templates.present.figures.classifier import confusion_matrix_figure, training_curves, training_figures
from heatmap_templates.present.figures.comparison import comparison_figure
from heatmap_templates.present.figures.style import (
    COLUMN_WIDTHS,
    DEFAULT_CMAP,
    DIVERGING_CMAP,
    FIGURE_FORMATS,
    check_cmap,
    figure_format,
    parse_formats,
    publication_style,
    save_deterministic,
)
from heatmap_templates.present.figures.templates import (
    DEFAULT_DPI,
    DEFAULT_EIGEN_COMPONENTS,
    DEFAULT_WIDTH,
    FiguresSummary,
    template_figures,
)

__all__ = [
    "confusion_matrix_figure", "training_curves", "training_figures", "comparison_figure", "COLUMN_WIDTHS", "DEFAULT_CMAP", "DIVERGING_CMAP",
    "FIGURE_FORMATS", "check_cmap", "figure_format", "parse_formats", "publication_style", "save_deterministic",
    "DEFAULT_DPI", "DEFAULT_EIGEN_COMPONENTS", "DEFAULT_WIDTH", "FiguresSummary", "template_figures",
]
