"""Scores: what a class activation map explains, as small functions of the model's output.

A score maps one forward pass (the output layer's logits and the model's outputs, both
(N, units)) and the model's head kind (:mod:`heatmap_templates.heads`) to one number per image
and class, (N, K); the CAM engine differentiates it. Adding a score is registering one function
here. The score is recorded in every heatmap store and templates file; a resume or merge with
another score is refused.
"""
from __future__ import annotations

from collections.abc import Callable

from heatmap_templates.heads import HEADS
from heatmap_templates.registry import Registry

ScoreFunction = Callable  # (logits, outputs, head name) -> (N, K) tf.Tensor

SCORES: Registry[ScoreFunction] = Registry("score", parameter="score")
DEFAULT_SCORE = "logit"


@SCORES.register("logit", help="the class's logit, before softmax or sigmoid")
def _logit(logits, outputs, head: str):  # noqa: ANN001, ANN202 (tf.Tensor)
    return HEADS[head].class_logits(logits)


@SCORES.register("probability", help="the class's probability")
def _probability(logits, outputs, head: str):  # noqa: ANN001, ANN202
    return HEADS[head].probabilities(outputs)
