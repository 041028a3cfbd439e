"""Which CAM an engine computes, chosen by one rule for every command that builds one.

The CAM layer, method, score and decision threshold are each taken, in this order, from

1. the value **given** (an explicit argument: a command-line flag),
2. the value **recorded** in the settings of the heatmap store or templates file the engine serves
   (:class:`~heatmap_templates.store.settings.HeatmapSettings`; a templates file's
   :class:`~heatmap_templates.templates.template_settings.TemplateSettings` are those too),
3. the **default**: the model's CAM layer (``ModelInfo.cam_layer``; failing that the engine takes the last
   layer with a 4-D output), :data:`~heatmap_templates.explain.cam_methods.DEFAULT_METHOD`,
   :data:`~heatmap_templates.explain.scores.DEFAULT_SCORE`, :data:`~heatmap_templates.model.heads.DEFAULT_THRESHOLD`.

Extraction (nothing recorded yet), comparing and the sanity check all build their engine with :func:`engine_for`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heatmap_templates.explain.cam_methods import DEFAULT_METHOD
from heatmap_templates.explain.scores import DEFAULT_SCORE
from heatmap_templates.model.heads import DEFAULT_THRESHOLD
from heatmap_templates.model.model_file import ModelInfo
from heatmap_templates.store.settings import HeatmapSettings


@dataclass(frozen=True)
class CamChoice:
    """The CAM an engine computes; ``layer`` None: the model's last layer with a 4-D output."""

    layer: str | None
    method: str
    score: str
    threshold: float


def _first(*values: Any) -> Any:
    """The first value that is not None (a given 0.0 threshold is a value)."""
    return next((value for value in values if value is not None), None)


def choose_cam(settings: HeatmapSettings | None, info: ModelInfo | None = None, *, layer: str | None = None,
               method: str | None = None, score: str | None = None, threshold: float | None = None) -> CamChoice:
    """Each of layer, method, score and threshold: given > recorded in ``settings`` > default (``info``: the model's
    metadata, whose ``cam_layer`` is the default layer)."""
    recorded = settings
    return CamChoice(
        layer=_first(layer, recorded.layer if recorded else None, info.cam_layer if info else None),
        method=_first(method, recorded.cam_method if recorded else None, DEFAULT_METHOD),
        score=_first(score, recorded.score if recorded else None, DEFAULT_SCORE),
        threshold=float(_first(threshold, recorded.threshold if recorded else None, DEFAULT_THRESHOLD)),
    )


def engine_for(settings: HeatmapSettings | None, model: Any, info: ModelInfo | None = None, *, layer: str | None = None,
               method: str | None = None, score: str | None = None, threshold: float | None = None,
               mixed_precision: bool = False):
    """A :class:`~heatmap_templates.explain.cam.CamEngine` over ``model`` with the CAM :func:`choose_cam` picks and the
    head kind of ``info`` (read from the model's output layer when ``info`` records none)."""
    from heatmap_templates.explain.cam import CamEngine

    choice = choose_cam(settings, info, layer=layer, method=method, score=score, threshold=threshold)
    return CamEngine(model, layer=choice.layer, method=choice.method, score=choice.score, head=info.head if info else None,
                     threshold=choice.threshold, mixed_precision=mixed_precision)
