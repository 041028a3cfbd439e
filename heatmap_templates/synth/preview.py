"""A preview grid of a phantom data set: one row per class, examples with their lesion contour, then the probability map."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from heatmap_templates.errors import HmtError, display_path
from heatmap_templates.present.figures.style import save_figure
from heatmap_templates.synth.dataset import CANONICAL_LUNGS_FILE, GROUND_TRUTH_DIR, MARKER_FILE

DEFAULT_PREVIEW_EXAMPLES = 4


def write_preview_grid(out_dir: str | Path, path: str | Path, n_examples: int = DEFAULT_PREVIEW_EXAMPLES) -> Path:
    """Grid PNG of a synth output: one row per class, examples with their lesion contour, then the probability map."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    marker = out / GROUND_TRUTH_DIR / MARKER_FILE
    if not marker.is_file():
        raise HmtError(f"{out}: not a `hmt synth` output (no {GROUND_TRUTH_DIR}/{MARKER_FILE})")
    record = json.loads(marker.read_text())
    classes = record["classes"]
    shown = max(1, min(n_examples, record["n_per_class"]))
    lungs = _read_gray(out / GROUND_TRUTH_DIR / CANONICAL_LUNGS_FILE)

    figure = Figure(figsize=(2.0 * (shown + 1), 2.1 * len(classes)), dpi=90)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(classes), shown + 1, squeeze=False)
    for row, label in enumerate(classes):
        for column in range(shown):
            name = f"{label}_{column:04d}.png"
            image = _read_gray(out / label / name)
            mask = _read_gray(out / GROUND_TRUTH_DIR / "masks" / label / name)
            axis = axes[row, column]
            axis.imshow(image, cmap="gray", vmin=0, vmax=255)
            if mask.any():
                axis.contour(mask > 127, levels=[0.5], colors="#ff3b30", linewidths=0.8)
            axis.set_title(name, fontsize=7)
        probability = np.load(out / GROUND_TRUTH_DIR / f"lesion_probability_{label}.npy")
        axis = axes[row, shown]
        axis.imshow(probability, cmap="magma", vmin=0, vmax=max(float(probability.max()), 1e-6))
        axis.contour(lungs > 127, levels=[0.5], colors="#4fc3f7", linewidths=0.6)
        axis.set_title(f"P(lesion) canonical, max {probability.max():.2f}", fontsize=7)
        axes[row, 0].set_ylabel(label, fontsize=10)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"hmt synth phantoms: {record['size']} px, seed {record['seed']} (red: lesion mask)", fontsize=9)
    figure.tight_layout()
    target = Path(path)
    save_figure(figure, target, dpi=90, tight=False)
    return target


def _read_gray(path: Path) -> np.ndarray:
    """A PNG the phantom has just written, as 8-bit gray."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise HmtError(f"{display_path(path)}: cannot read the phantom's own image")
    return image
