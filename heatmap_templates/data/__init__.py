"""Input: decoding image files, data sets (class folders, CSV manifests, patient-grouped splits), image -> model
input (one definition), and arrays kept on disk beyond the memory budget.

Imports nothing of hmt above the core (errors, registry, files, progress), :mod:`heatmap_templates.numeric` and the store.
"""
