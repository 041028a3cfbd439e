"""What people read: every figure (:mod:`.figures`) and the browsable report (:mod:`.report`). The top of the
pipeline; only :mod:`heatmap_templates.synth`'s preview, the demo and the CLI sit above it.
"""
