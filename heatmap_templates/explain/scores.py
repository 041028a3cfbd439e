"""Scores: what a class activation map explains, as small functions of the model's output.

A score maps one forward pass (the output layer's logits and the model's outputs, both
(N, units)) and the model's head kind (:mod:`heatmap_templates.model.heads`) to one number per image
and class, (N, K); the CAM engine differentiates it. A score may not make sense for every head
kind (``refuses_multi_label``): the engine refuses the pair when it is made, in one line. Adding a score is
registering one :class:`Score` here. The score is recorded in every heatmap store and templates
file; a resume or merge with another score is refused.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from heatmap_templates.errors import HmtError
from heatmap_templates.model.heads import HEADS
from heatmap_templates.registry import Registry

DEFAULT_SCORE = "logit"


@dataclass(frozen=True)
class Score:
    """``function(logits, outputs, head) -> (N, K)`` tensors; ``refuses_multi_label``: the reason this score does not
    apply to a multi-label head (None: it applies to every head)."""

    function: Callable
    refuses_multi_label: str | None = None

    def __call__(self, logits, outputs, head: str):
        return self.function(logits, outputs, head)

    def check(self, head: str) -> None:
        """HmtError when this score does not apply to models with this head kind."""
        if self.refuses_multi_label is not None and HEADS[head].multi_label:
            raise HmtError(self.refuses_multi_label)


SCORES: Registry[Score] = Registry("score", parameter="score")


def _logit(logits, outputs, head: str):
    return HEADS[head].class_logits(logits)


def _probability(logits, outputs, head: str):
    return HEADS[head].probabilities(outputs)


def _class_vs_rest(logits, outputs, head: str):
    """z_k - log sum_{j != k} exp(z_j): the evidence for class k against all the others (the log-odds of k under
    softmax). A one-output model's logit already is the positive class's evidence against the negative one."""
    import tensorflow as tf

    class_logits = HEADS[head].class_logits(logits)
    if HEADS[head].single_output:
        return class_logits
    classes = tf.shape(class_logits)[-1]
    others = tf.where(tf.eye(classes, dtype=tf.bool)[None], tf.constant(-float("inf"), class_logits.dtype),
                      class_logits[:, None, :])  # (N, K, K): row k holds every logit but z_k
    return class_logits - tf.reduce_logsumexp(others, axis=-1)


SCORES.add("logit", Score(_logit), help="the class's logit, before softmax or sigmoid")
SCORES.add("probability", Score(_probability), help="the class's probability")
SCORES.add("class-vs-rest", Score(_class_vs_rest, refuses_multi_label="score 'class-vs-rest' needs exclusive classes; a "
                                                   "multi-label (independent sigmoids) model's findings are not each "
                                                   "other's rest: use logit or probability"),
           help="the class's logit minus the log-sum-exp of the others: evidence for it against all the rest")
