"""The classifier: backbones, head kinds, objectives, the model file, layer search, training recipe, training and
evaluation. Below it: :mod:`heatmap_templates.data`. Nothing here draws figures (callers do, from the results).
"""
