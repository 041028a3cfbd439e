"""hmt: heatmap-template biomarker analysis for chest X-rays.

One module per idea, data flowing forward: decode and data (input), synth (phantom), preprocess
(image -> model input), backbones, model_file, training, evaluation, heads and scores, cam and
cam_methods (saliency), heatmaps (extraction), registration and lungs (geometry), prepare,
normalisation, statistics and templates, members and build, store (HDF5), similarity and compare
(scoring), metrics, figures, demo. Every option that grows is a registry (registry.py).
See docs/architecture.md.
"""
from heatmap_templates.errors import BadFileError, BadImageError, HmtError

__version__ = "0.1.0"

__all__ = ["__version__", "HmtError", "BadImageError", "BadFileError"]
