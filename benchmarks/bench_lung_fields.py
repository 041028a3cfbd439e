"""Which lung mask holds the lesions? hmt's segmentation, the reference's lungs moved back, and their union (the lung
fields of `templates.lungs.lung_fields`, which the attention prior and the deletion test use), against the phantom's
true lung fields and lesion masks.

One command, one run (results in benchmarks/RESULTS.md). Phantoms of the four classes (``--size`` 96 px,
``--n-per-class`` 60); the reference is the attention prior's own (`LungMasks.prepare`: affine, from an even
sample of at most 256 of the images); each image's masks at its own size. Per class and mask: Dice with the true lung fields, the share of
the mask outside them, and the share of lesion pixels outside the mask (what a penalty on "outside the lungs" would
punish the model for looking at).

    .venv/bin/python benchmarks/bench_lung_fields.py [--size 96 --n-per-class 60] [--out lung_fields.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2
import numpy as np
from phantom_model import machine

from heatmap_templates.analysis.prior_masks import LungMasks
from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.synth import synthesize_dataset
from heatmap_templates.templates.geometry import RegistrationError
from heatmap_templates.templates.lungs import lung_fields, segment_lungs
from heatmap_templates.templates.registration import Registrar

MASKS = ("segmentation", "reference moved back", "lung fields (union)")


def measure(root: Path) -> dict:
    dataset = load_dataset(root)
    pictures = {s.path: cv2.imread(str(s.path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0 for s in dataset.samples}
    masks = LungMasks(root)  # the prior's own reference: an even sample of the images
    masks.prepare(np.stack([np.rint(picture * 255).astype(np.uint8) for picture in pictures.values()]))
    reference = masks.reference
    assert reference is not None
    registrar = Registrar("affine", reference)
    rows: dict = {}
    for sample in dataset.samples:
        image = pictures[sample.path]
        relative = Path(sample.path).relative_to(root)
        truth = cv2.imread(str(root / "ground_truth" / "lungs" / relative), cv2.IMREAD_GRAYSCALE) > 0
        lesion = cv2.imread(str(root / "ground_truth" / "masks" / relative), cv2.IMREAD_GRAYSCALE) > 0
        alignment = registrar.estimate(image, quality=False)
        moved = registrar.unwarp(reference.lung_mask.astype(np.float32), alignment) >= 0.5
        try:
            segmented = segment_lungs(image)
        except RegistrationError:
            segmented = None
        union, _ = lung_fields(image, moved, aligned=alignment.method != "none")
        entry = rows.setdefault(sample.label, {name: {"dice": [], "outside_truth": [], "lesion_outside": []} for name in MASKS})
        entry.setdefault("declined", 0)
        entry["declined"] += segmented is None
        for name, mask in zip(MASKS, (segmented, moved, union), strict=True):
            if mask is None:
                continue
            entry[name]["dice"].append(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
            entry[name]["outside_truth"].append((mask & ~truth).sum() / max(1, mask.sum()))
            if lesion.any():
                entry[name]["lesion_outside"].append((lesion & ~mask).sum() / lesion.sum())
    return {label: {"images": sum(1 for s in dataset.samples if s.label == label), "segmentation_declined": entry["declined"],
                    **{name: {key: None if not values else round(float(np.mean(values)), 4) for key, values in entry[name].items()}
                       for name in MASKS}}
            for label, entry in sorted(rows.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--n-per-class", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("lung_fields.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "data"
        synthesize_dataset(root, n_per_class=args.n_per_class, size=args.size, seed=args.seed)
        record = {"machine": machine(), "settings": vars(args) | {"out": str(args.out)}, "classes": measure(root)}
    record["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(record, indent=2))
    for label, entry in record["classes"].items():
        for name in MASKS:
            print(f"{label:9s} {name:22s} " + "  ".join(f"{key} {value}" for key, value in entry[name].items()))


if __name__ == "__main__":
    main()
