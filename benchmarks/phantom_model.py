"""What several benchmarks share: a phantom set, the `small` CNN trained on it with the default recipe, its heatmaps
and every class's templates in the canonical frame (where the planted lesions' truth lies); and the machine line."""
from __future__ import annotations

import os
import platform
from pathlib import Path

from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.explain.heatmaps import extract_heatmaps
from heatmap_templates.model.model_file import save_model
from heatmap_templates.model.training import TrainConfig, train
from heatmap_templates.synth import synthesize_dataset
from heatmap_templates.templates.build import BuildConfig, build_templates


def phantom_files(root: Path, *, size: int, n_per_class: int, seed: int) -> dict:
    """Phantoms under ``root/data``, the model, store and templates beside them; their paths and the test accuracy."""
    data = root / "data"
    synthesize_dataset(data, n_per_class=n_per_class, size=size, seed=seed)
    dataset = load_dataset(data)
    result = train(dataset, TrainConfig(backbone="small", input_size=size, batch_size=16, seed=seed))
    model = save_model(result.model, result.info, root / "model.keras")
    store, templates = root / "heatmaps.h5", root / "templates.h5"
    extract_heatmaps(model, dataset, store, batch_size=32)
    build_templates(store, None, templates, config=BuildConfig(reference=str(data / "ground_truth" / "canonical_chest.png")))
    return {"data": data, "store": store, "templates": templates, "test_accuracy": result.test_report["accuracy"]}


def machine() -> str:
    """The machine a benchmark ran on, for RESULTS.md."""
    import numpy as np
    import tensorflow as tf

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"TF {tf.__version__}, numpy {np.__version__}")
