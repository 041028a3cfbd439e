"""hmt: heatmap-template biomarker analysis for chest X-rays.

Pipeline stages, one module each: data (input), synth (phantom), preprocess, classifier,
cam (saliency), heatmaps (extraction), registration, templates, store (HDF5), compare,
metrics, figures. See docs/architecture.md.
"""
from heatmap_templates.errors import BadFileError, BadImageError, HmtError

__version__ = "0.1.0"

__all__ = ["__version__", "HmtError", "BadImageError", "BadFileError"]
