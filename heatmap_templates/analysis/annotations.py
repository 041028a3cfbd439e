"""Annotations of where findings are, and scoring heatmaps and templates against them.

Two forms (``evaluate_templates(..., annotations=PATH)``; the CLI's ``--annotations``):

- a **folder of masks**: for an image at ``<data>/<relative path>``, its mask is
  ``<folder>/<relative path>`` with the extension ``.png`` (non-zero = annotated), in the image's own
  pixels; a mask shows the image's class (or, for a multi-label set, every finding it carries);
- a **CSV of boxes**: ``path,label,x,y,width,height`` in the original image's pixels (x right, y down,
  from the top-left corner), ``label`` the class or finding the box shows, several rows per image allowed;
  ``path`` absolute or relative to the CSV's folder.

Annotations are brought to the model's input size (the frame of the maps in a heatmap store). For a
template, each annotated member's annotation is moved into the template's frame by the registration
the build kept and averaged into an annotation-probability map, as the phantom's canonical lesion map
is; the template is then scored against it (pixel AUC, pointing game, energy, IoU:
:func:`heatmap_templates.numeric.metrics.localisation_scores`).
"""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from heatmap_templates.data.decode import image_size
from heatmap_templates.errors import BadFileError, HmtError, display_path
from heatmap_templates.numeric.metrics import localisation_scores

ANNOTATION_THRESHOLD = 0.25  # share of the annotation-probability map's peak above which a template pixel counts as annotated


@dataclass
class Annotations:
    """Annotation masks by image (resolved path) and label, at the size they were read at."""

    source: Path
    masks: dict[str, dict[str, np.ndarray]]  # resolved image path -> label -> (H, W) bool

    def for_image(self, path: str | os.PathLike, label: str) -> np.ndarray | None:
        return self.masks.get(str(Path(path).resolve()), {}).get(label)

    def __len__(self) -> int:
        return len(self.masks)


def read_annotations(source: str | os.PathLike, images: Sequence[tuple[str, str, Path]], size: tuple[int, int]) -> Annotations:
    """Annotations of ``images`` ((path, label, data root) each) at ``size`` = (H, W) from a mask folder or a box CSV."""
    source = Path(source)
    if source.is_dir():
        return _read_mask_folder(source, images, size)
    if source.is_file() and source.suffix.lower() == ".csv":
        return _read_box_csv(source, images, size)
    raise BadFileError(source, "annotations must be a folder of masks or a CSV of boxes (path,label,x,y,width,height)")


def _read_mask_folder(folder: Path, images: Sequence[tuple[str, str, Path]], size: tuple[int, int]) -> Annotations:
    masks: dict[str, dict[str, np.ndarray]] = {}
    for path, label, root in images:
        try:
            relative = Path(path).resolve().relative_to(Path(root).resolve())
        except ValueError:
            continue
        mask_path = folder / relative.with_suffix(".png")
        if not mask_path.is_file():
            continue
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise BadFileError(mask_path, "cannot read the annotation mask (not a PNG)")
        resized = cv2.resize((mask > 0).astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA) >= 0.5
        masks.setdefault(str(Path(path).resolve()), {})[label] = resized
    return Annotations(folder, masks)


def _read_box_csv(path: Path, images: Sequence[tuple[str, str, Path]], size: tuple[int, int]) -> Annotations:
    wanted = {str(Path(image).resolve()) for image, _, _ in images}
    masks: dict[str, dict[str, np.ndarray]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"path", "label", "x", "y", "width", "height"} - set(reader.fieldnames or [])
            if missing:
                raise BadFileError(path, f"missing column(s) {', '.join(sorted(missing))} (expected path,label,x,y,width,height)")
            for number, row in enumerate(reader, start=2):
                image = Path(row["path"]) if Path(row["path"]).is_absolute() else path.parent / row["path"]
                key = str(image.resolve())
                if key not in wanted:
                    continue
                try:
                    x, y, width, height = (float(row[name]) for name in ("x", "y", "width", "height"))
                except ValueError:
                    raise BadFileError(path, f"line {number}: x, y, width and height must be numbers") from None
                if width <= 0 or height <= 0:
                    raise BadFileError(path, f"line {number}: a box needs a positive width and height")
                if key not in sizes:
                    sizes[key] = image_size(image)
                original_height, original_width = sizes[key]
                scale_x, scale_y = size[1] / original_width, size[0] / original_height
                mask = masks.setdefault(key, {}).setdefault(row["label"].strip(), np.zeros(size, bool))
                left, top = int(np.floor(x * scale_x)), int(np.floor(y * scale_y))
                right, bottom = int(np.ceil((x + width) * scale_x)), int(np.ceil((y + height) * scale_y))
                mask[max(0, top):max(0, bottom), max(0, left):max(0, right)] = True
    except OSError as error:
        raise BadFileError(path, f"cannot read ({error.strerror})") from None
    return Annotations(path, masks)


def summarise(scores: Sequence[dict]) -> dict:
    """Mean of every measure over images (a pointing game as its hit rate), with the number of images each covers."""
    summary: dict = {"n": len(scores)}
    for key in (scores[0] if scores else {}):
        values = [float(s[key]) for s in scores if s[key] is not None]
        summary[key] = {"mean": float(np.mean(values)) if values else None, "n": len(values)}
    return summary


def template_localisation(template, annotations: Annotations, registrar, image_shape: tuple[int, int]) -> dict:
    """A template against the annotation-probability map of its annotated members (moved into the template's frame by
    the registration kept in the file); scores and the number of members it averages."""
    from heatmap_templates.templates.prepare import member_alignment

    total = np.zeros(registrar.reference.shape, np.float64)
    count = 0
    for member in template.members:
        mask = annotations.for_image(member.path, template.class_name)
        alignment = member_alignment(member, image_shape)
        if mask is None or alignment is None:
            continue
        total += registrar.warp(mask.astype(np.float32), alignment)
        count += 1
    if not count:
        return {"annotated_members": 0}
    probability = total / count
    positive = probability >= ANNOTATION_THRESHOLD * probability.max() if probability.max() > 0 else probability > 0
    return {"annotated_members": count, **localisation_scores(template.mean, positive)}


def check_annotated(annotations: Annotations, what: str) -> None:
    if not len(annotations):
        raise HmtError(f"{display_path(annotations.source)}: no annotation matches any image of {what}")
