"""CAM methods: registry ``METHODS``; each method declares the inputs it needs and gets exactly those.

A method is only the small part that differs between the CAM family's members; the engine
(:mod:`heatmap_templates.explain.cam`) does the forward pass, the layer capture and, for the methods that
declare them, the gradients. What a method declares (:class:`~.base.Inputs`):

- ``GRADIENTS``: the explained score's gradient (``gradients.py``: Grad-CAM, Grad-CAM++, HiResCAM,
  XGrad-CAM, LayerCAM);
- ``MASKED_SCORES``: a function that runs the model on masked inputs the method builds
  (``scorecam.py``: Score-CAM, with its masks and its chunked forward passes);
- ``ACTIVATIONS``: the activations only (``eigencam.py``: EigenCAM, one class-agnostic map).

Adding a method is one module here: a ``compute`` function of the declared inputs and
``METHODS.add(name, CamMethod(compute, Inputs.X), help=...)``, and its name in the import below (whose
order is the registry's, so the CLI's list of choices).
"""
from __future__ import annotations

from heatmap_templates.explain.cam_methods.base import DEFAULT_METHOD, METHODS, CamMethod, Inputs, MaskedScores

# Each module registers its methods when imported, in this order: the registry's order, not the alphabet's.
# isort: off
from heatmap_templates.explain.cam_methods import gradients, scorecam, eigencam  # noqa: F401
# isort: on

__all__ = ["DEFAULT_METHOD", "METHODS", "CamMethod", "Inputs", "MaskedScores"]
