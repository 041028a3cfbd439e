"""What templates are used for: similarity measures, scoring and comparing new images, strategies (SpRAy),
sanity (randomisation), faithfulness (deletion), annotations. Below it: :mod:`heatmap_templates.templates`.
"""
