"""Saliency: the CAM engine, the CAM methods, what a CAM explains (scores), and extraction into the heatmap store.
Below it: :mod:`heatmap_templates.model` and :mod:`heatmap_templates.data`.
"""
