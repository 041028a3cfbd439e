"""Reading a phantom data set's ground truth, and scoring templates against it.

The phantom's lesion-probability maps and canonical lungs live in the canonical frame; templates
built with ``ground_truth/canonical_chest.png`` as their registration reference lie in the same
frame, so each class template can be scored as a pixel classifier of its class's lesion map
(:func:`heatmap_templates.numeric.metrics.localisation_auc`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from heatmap_templates.errors import HmtError, display_path
from heatmap_templates.numeric.metrics import localisation_auc
from heatmap_templates.synth.dataset import (
    BODY_MASKS_DIR,
    CANONICAL_LUNGS_FILE,
    GROUND_TRUTH_DIR,
    SHORTCUT_MASKS_DIR,
    SHORTCUTS_FILE,
)

_PROBABILITY_PREFIX = "lesion_probability_"


@dataclass
class LesionTruth:
    """A phantom set's canonical-frame truth: per class the lesion probability (H, W), and the lung mask."""

    probabilities: dict[str, np.ndarray]
    lungs: np.ndarray
    folder: Path

    def resized(self, shape: tuple[int, int]) -> LesionTruth:
        """The truth at another size of the same proportions (INTER_AREA); other proportions are refused."""
        if self.lungs.shape == tuple(shape):
            return self
        if self.lungs.shape[0] * shape[1] != self.lungs.shape[1] * shape[0]:
            raise HmtError(f"{self.folder}: ground truth of shape {self.lungs.shape} cannot be resized to the templates' "
                           f"{tuple(shape)} (other aspect ratio); build templates of the phantoms' proportions")
        size = (shape[1], shape[0])
        probabilities = {name: cv2.resize(values, size, interpolation=cv2.INTER_AREA) for name, values in self.probabilities.items()}
        lungs = cv2.resize(self.lungs.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
        return LesionTruth(probabilities, lungs, self.folder)


def phantom_body_masks(data: str | os.PathLike) -> Path | None:
    """The folder of each image's exact body mask of a `hmt synth` set (its folder or its manifest), else None."""
    folder = Path(data) if Path(data).is_dir() else Path(data).parent
    masks = folder / GROUND_TRUTH_DIR / BODY_MASKS_DIR
    return masks if masks.is_dir() else None


def canonical_anatomy(data_dir: str | os.PathLike, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The exact lungs and body of a `hmt synth` set's canonical frame (the mean anatomy), at ``shape`` (H, W): what a
    zone atlas of templates built in that frame is made from (the phantom's truth instead of segmentation)."""
    from heatmap_templates.synth.anatomy import canonical_body_mask

    truth = read_lesion_truth(data_dir)
    size = truth.lungs.shape[0]
    body = canonical_body_mask(size)
    if truth.lungs.shape[0] * shape[1] != truth.lungs.shape[1] * shape[0]:
        raise HmtError(f"{truth.folder}: the phantom's canonical frame {truth.lungs.shape} has other proportions than "
                       f"the templates' frame {tuple(shape)}")
    resize = [cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA) >= 0.5
              for mask in (truth.lungs, body)]
    return resize[0], resize[1]


def read_lesion_truth(data_dir: str | os.PathLike) -> LesionTruth:
    """The lesion-probability maps and canonical lungs of an `hmt synth` output (HmtError for another folder)."""
    folder = Path(data_dir) / GROUND_TRUTH_DIR
    paths = {path.name[len(_PROBABILITY_PREFIX):-len(".npy")]: path for path in sorted(folder.glob(f"{_PROBABILITY_PREFIX}*.npy"))}
    lungs_path = folder / CANONICAL_LUNGS_FILE
    lungs = cv2.imread(str(lungs_path), cv2.IMREAD_GRAYSCALE) if lungs_path.is_file() else None
    if not paths or lungs is None:
        raise HmtError(f"{folder}: no {_PROBABILITY_PREFIX}<class>.npy or {CANONICAL_LUNGS_FILE}; not a `hmt synth` output")
    probabilities = {}
    for name, path in paths.items():
        try:
            probabilities[name] = np.load(path).astype(np.float32)
        except (OSError, ValueError) as error:
            raise HmtError(f"{path}: cannot read the lesion probability map ({error})") from error
    return LesionTruth(probabilities, lungs >= 128, folder)


def ground_truth_localisation(templates_path: str | os.PathLike, data_dir: str | os.PathLike, *,
                              threshold_fraction: float = 0.25) -> dict[str, dict]:
    """Do a templates file's class templates find the phantom lesions? Pixel ROC AUC per class.

    Per class of the phantom set: ``members`` (0 without a template), ``auc_frame`` and
    ``auc_lungs`` (see :func:`heatmap_templates.numeric.metrics.localisation_auc`). AUCs are None for a
    class without a template or without lesion pixels (normal). Assumes the templates were built
    with ``ground_truth/canonical_chest.png`` as registration reference; other references give
    meaningless numbers. A truth map of another size is resized to the template's.
    """
    from heatmap_templates.templates.templates_file import read_templates

    if not 0.0 < threshold_fraction <= 1.0:
        raise HmtError(f"threshold_fraction must be in (0, 1], got {threshold_fraction}")
    truth = read_lesion_truth(data_dir)
    built = read_templates(templates_path)
    results: dict[str, dict] = {}
    for name in truth.probabilities:
        template = built.templates.get(name)
        if template is None:
            results[name] = {"members": 0, "auc_frame": None, "auc_lungs": None}
            continue
        here = truth.resized(np.shape(template.mean))
        scores = localisation_auc(template.mean, here.probabilities[name], here.lungs, threshold_fraction=threshold_fraction)
        results[name] = {"members": template.count, **scores}
    return results




def ground_truth_check(templates_path: str | os.PathLike, data_dir: str | os.PathLike, *,
                       threshold_fraction: float = 0.25) -> tuple[dict, dict[str, np.ndarray]]:
    """The ground-truth check as the templates file stores it (:func:`~heatmap_templates.templates.templates_file.save_check`)
    for the report to show without reading the phantom: the record (per class :func:`ground_truth_localisation`'s
    numbers, with ``auc_frame_ci`` and ``auc_lungs_ci``, the 2.5th and 97.5th percentiles over the template's bootstrap
    replicates where the file keeps them) and the maps: each class's planted lesion probability at the template's
    size (``lesion_<class>``) and the lungs they were scored in (``lungs``)."""
    from heatmap_templates.templates.templates_file import read_templates, replicate_interval

    scores = ground_truth_localisation(templates_path, data_dir, threshold_fraction=threshold_fraction)
    truth = read_lesion_truth(data_dir)
    built = read_templates(templates_path)
    maps: dict[str, np.ndarray] = {}
    for name, entry in scores.items():
        template = built.templates.get(name)
        if template is None:
            continue
        here = truth.resized(np.shape(template.mean))
        maps[f"lesion_{name}"] = here.probabilities[name]
        maps.setdefault("lungs", here.lungs.astype(np.float32))
        for key in ("auc_frame", "auc_lungs"):
            if entry.get(key) is None:
                continue

            def measure(means: np.ndarray, key: str = key, lesion: np.ndarray = maps[f"lesion_{name}"],
                        lungs: np.ndarray = here.lungs) -> list[float | None]:
                return [localisation_auc(m, lesion, lungs, threshold_fraction=threshold_fraction)[key] for m in means]

            entry[f"{key}_ci"], entry["replicates"] = replicate_interval(built.path, name, measure)
    record = {"classes": scores, "threshold_fraction": threshold_fraction}
    return record, maps


def read_shortcuts(data_dir: str | os.PathLike) -> dict[str, bool]:
    """Which images of an `hmt synth` output carry a planted shortcut: relative path -> bool (all False for a set
    made without shortcuts or before they existed)."""
    import csv

    path = Path(data_dir) / GROUND_TRUTH_DIR / SHORTCUTS_FILE
    if not path.is_file():
        if not (Path(data_dir) / GROUND_TRUTH_DIR).is_dir():
            raise HmtError(f"{data_dir}: no {GROUND_TRUTH_DIR}/ folder; not a `hmt synth` output")
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["path"]: row["shortcut"] == "1" for row in csv.DictReader(handle)}


def shortcut_mask(data_dir: str | os.PathLike, relative_path: str) -> np.ndarray | None:
    """The planted shortcut's mask (image frame, bool) of one image, or None when it carries none."""
    path = Path(data_dir) / GROUND_TRUTH_DIR / SHORTCUT_MASKS_DIR / relative_path
    if not path.is_file():
        return None
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise HmtError(f"{display_path(path)}: cannot read the phantom's shortcut mask")
    return mask >= 128


def shortcut_region(data_dir: str | os.PathLike, members: Sequence, registrar, image_shape: tuple[int, int],
                    dilation: int) -> np.ndarray:
    """Where a planted shortcut lies in a template's reference frame: each member's shortcut mask (image frame),
    dilated by ``dilation`` px (one CAM cell: a map cannot be sharper), moved with the member's registration, and
    kept where at least half of the members that carry one agree. ``members`` are template members with their
    registration matrices (templates schema 3). All False when no member carries a shortcut."""
    from heatmap_templates.templates.prepare import member_alignment

    root = Path(data_dir).resolve()
    total = np.zeros(registrar.reference.shape, np.float64)
    carrying = 0
    kernel = np.ones((2 * dilation + 1, 2 * dilation + 1), np.uint8)
    for member in members:
        try:
            relative = Path(member.path).resolve().relative_to(root).as_posix()
        except ValueError:
            continue
        mask = shortcut_mask(root, relative)
        alignment = member_alignment(member, image_shape)
        if mask is None or alignment is None:
            continue
        resized = cv2.resize(mask.astype(np.uint8), (image_shape[1], image_shape[0]), interpolation=cv2.INTER_NEAREST)
        total += registrar.warp(cv2.dilate(resized, kernel).astype(np.float32), alignment)
        carrying += 1
    return total >= 0.5 * carrying if carrying else np.zeros(registrar.reference.shape, bool)


def mass_share(values: np.ndarray, region: np.ndarray) -> float:
    """Share of a map's positive mass inside ``region`` (0 for a map without positive mass)."""
    positive = np.clip(np.nan_to_num(np.asarray(values, np.float64)), 0.0, None)
    total = positive.sum()
    return float(positive[region].sum() / total) if total > 0 else 0.0
