"""Plain records that the files hold and several stages read: no logic beyond their own fields.

They live with the store, below every stage, so that the templates file can read and write them
without importing the analysis that computes them (:mod:`heatmap_templates.analysis.strategies`
finds strategies; this module only says what one is).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Strategy:
    """One cluster of a class's members."""

    size: int
    members: list[str]  # image paths
    mean: np.ndarray  # (H, W) prototype: the mean of its members' prepared maps
    std: np.ndarray
    consistency: float | None  # mean pairwise correlation of its members' maps (None with one member)


@dataclass
class ClassStrategies:
    """The strategies of one class: cluster of each member (in the template's member order) and per cluster
    its prototype; the eigenvalues behind the choice of K; a 2-D spectral embedding of the members."""

    class_name: str
    k: int
    chosen_by: str  # "eigengap" or "given"
    eigenvalues: np.ndarray
    labels: np.ndarray
    embedding: np.ndarray
    stability: dict
    strategies: list[Strategy]
    settings: dict = field(default_factory=dict)
    typicality: np.ndarray = field(default_factory=lambda: np.zeros(0))  # each member's similarity to its strategy's centre

    def to_dict(self) -> dict:
        """What ``hmt strategies --json`` prints for the class."""
        return {
            "k": self.k, "chosen_by": self.chosen_by, "eigenvalues": [round(float(v), 6) for v in self.eigenvalues],
            "stability": self.stability,
            "clusters": [{"size": s.size, "members": list(s.members), "consistency": s.consistency} for s in self.strategies],
        }
