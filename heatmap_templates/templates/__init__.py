"""From heatmaps to class templates: geometry, lungs, registration, normalisation, map preparation, streaming
statistics, the class accumulator, members, the build and its chunks, and the templates file (the store's high
part, which knows the accumulators). Below it: :mod:`heatmap_templates.explain` and everything under that.
"""
