"""The data files `hmt train` leaves beside a trained model: the history CSV and the test split's evaluation JSON.

The companion figures (curves, confusion matrix) are drawn by the caller with
:func:`heatmap_templates.present.figures.training_figures`: training sits below the figures.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from heatmap_templates.files import write_text
from heatmap_templates.model.model_file import companion_path, json_ready

if TYPE_CHECKING:
    from heatmap_templates.model.training import TrainResult


def write_history_csv(history: list[dict], path: str | os.PathLike) -> Path:
    """One row per epoch: phase, epoch, loss, accuracy, val_loss, val_accuracy, seconds."""
    columns = ["phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in columns})
    return write_text(path, buffer.getvalue())


def save_training_outputs(result: TrainResult, model_path: str | os.PathLike) -> dict[str, Path]:
    """Write the data files `hmt train` leaves beside the model: the history CSV and, when there is a test split,
    its evaluation JSON. Returns the paths by kind. The companion figures (curves, confusion matrix) are drawn by
    the caller with :func:`heatmap_templates.present.figures.training_figures`: training sits below the figures."""
    written = {"history": write_history_csv(result.history, companion_path(model_path, "history.csv"))}
    if result.test_report is not None:
        evaluation = {"split": "test", "requested_split": "test", "notes": [], **result.test_report}
        written["evaluation"] = write_text(companion_path(model_path, "evaluation.json"),
                                           json.dumps(json_ready(evaluation), indent=2) + "\n")
    return written
