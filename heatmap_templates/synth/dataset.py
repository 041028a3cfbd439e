"""Writing a phantom data set to disk: class folders, a manifest, and the ground truth beside them.

Layout (also written as ``ground_truth/README.md``): ``<class>/<class>_NNNN.png`` images,
``manifest.csv``, and ``ground_truth/`` with lesion masks, poses, canonical lesion-probability
maps, the canonical lung mask and chest, and ``synth.json`` (the arguments, and the mark that
lets a later ``hmt synth`` replace the folder). Every image has its own seed, so the files are
identical for any number of worker processes.
"""
from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from heatmap_templates.errors import HmtError
from heatmap_templates.files import atomic_folder, ensure_folder, write_bytes, write_text
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.synth.anatomy import canonical_lung_mask, check_size
from heatmap_templates.synth.lesions import CLASSES, LESIONS
from heatmap_templates.synth.render import (
    DEFAULT_POSE_SPREAD,
    DEFAULT_PROBABILITY_SAMPLES,
    LESION_THRESHOLD,
    Pose,
    canonical_lesion_probability,
    check_pose_spread,
    phantom_seed,
    render_phantom,
)
from heatmap_templates.synth.shortcuts import DEFAULT_SHORTCUT_STYLE, SHORTCUTS, carries_shortcut

DEFAULT_N_PER_CLASS = 200
DEFAULT_SIZE = 256
GROUND_TRUTH_DIR = "ground_truth"
MULTI_LABEL_FOLDER = "images"  # where a multi-label phantom set keeps its images
DEFAULT_PREVALENCE = 0.4  # chance of each lesion type in a multi-label phantom
_MULTI_LABEL_NAME = "img"  # images are img_NNNN.png
_FINDINGS_STREAM = 2
MARKER_FILE = "synth.json"
SHORTCUTS_FILE = "shortcuts.csv"  # path,shortcut (0/1) for every image
BOXES_FILE = "boxes.csv"  # path,label,x,y,width,height: each lesion component's bounding box (annotations as boxes)
MIN_BOX_PIXELS = 4  # lesion components smaller than this are not boxed
SHORTCUT_MASKS_DIR = "shortcut_masks"  # <class>/<image>.png for the images that carry a planted shortcut
BODY_MASKS_DIR = "body"  # <class>/<image>.png: each image's body (a mask folder: `--body-masks`)
LUNG_MASKS_DIR = "lungs"  # <class>/<image>.png: each image's true lung fields
CANONICAL_CHEST_FILE = "canonical_chest.png"
CANONICAL_LUNGS_FILE = "canonical_lungs.png"
_POSE_COLUMNS = ("dx", "dy", "angle_deg", "scale", "a00", "a01", "a02", "a10", "a11", "a12")


@dataclass(frozen=True)
class SynthSummary:
    """What `synthesize_dataset` wrote."""

    out_dir: Path
    classes: tuple[str, ...]
    n_per_class: int
    size: int
    seed: int
    counts: dict[str, int]
    lesion_pixel_fraction: dict[str, float]  # mean fraction of image pixels inside the lesion mask
    seconds: float
    shortcuts: dict[str, int] = field(default_factory=dict)  # per class, the images carrying its planted shortcut

    def to_json(self) -> dict:
        return {
            "shortcuts": dict(self.shortcuts),
            "out_dir": str(self.out_dir),
            "classes": list(self.classes),
            "n_per_class": self.n_per_class,
            "size": self.size,
            "seed": self.seed,
            "counts": self.counts,
            "lesion_pixel_fraction": self.lesion_pixel_fraction,
            "seconds": round(self.seconds, 3),
        }


def _validate(n_per_class: int, size: int, seed: int, classes: Sequence[str], pose_spread: float) -> tuple[str, ...]:
    if n_per_class < 1:
        raise HmtError(f"n_per_class must be at least 1, got {n_per_class}")
    check_size(size)
    check_pose_spread(pose_spread)
    if seed < 0:
        raise HmtError(f"seed must be a non-negative integer, got {seed}")
    chosen = tuple(classes)
    if not chosen:
        raise HmtError("no phantom classes chosen")
    for label in chosen:
        LESIONS.check(label)
    if len(set(chosen)) != len(chosen):
        raise HmtError(f"phantom classes repeat: {', '.join(chosen)}")
    return chosen


def _synth_files(classes: Sequence[str], multi_label: bool) -> re.Pattern[str]:
    """The paths (relative to its folder) a synth run of ``classes`` writes, exactly: anything else there is the user's."""
    labels = "|".join(map(re.escape, classes))
    number = r"_\d{4,}\.png"
    tables: tuple[str, ...]
    if multi_label:
        images = rf"{MULTI_LABEL_FOLDER}/{_MULTI_LABEL_NAME}{number}|{GROUND_TRUTH_DIR}/masks/(?:{labels})/{_MULTI_LABEL_NAME}{number}"
        tables = ("poses.csv",)
    else:
        images = (rf"(?P<label>{labels})/(?P=label){number}"
                  rf"|{GROUND_TRUTH_DIR}/(?:masks|{SHORTCUT_MASKS_DIR}|{BODY_MASKS_DIR}|{LUNG_MASKS_DIR})/(?P<masked>{labels})/(?P=masked){number}")
        tables = ("README.md", "poses.csv", SHORTCUTS_FILE, BOXES_FILE)
    truth = [*tables, MARKER_FILE, CANONICAL_CHEST_FILE, CANONICAL_LUNGS_FILE, *(f"lesion_probability_{c}.npy" for c in classes)]
    return re.compile("|".join([r"manifest\.csv", images, *(re.escape(f"{GROUND_TRUTH_DIR}/{name}") for name in truth)]))


def _check_out_dir(out_dir: Path) -> list[str]:
    """Refuse, before anything is drawn, an ``out_dir`` that is neither new, nor empty, nor a previous synth output
    holding only what synth wrote (the exact names, of the classes its ``synth.json`` records); else the files of that
    earlier set, which the new one replaces (:func:`atomic_folder`: a stale larger set does not survive a smaller one, a
    full disk leaves the previous set as it was, and nothing else may go with it)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise HmtError(f"{out_dir}: exists and is not a folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return []
    marker = out_dir / GROUND_TRUTH_DIR / MARKER_FILE
    if not marker.is_file():
        raise HmtError(f"{out_dir}: folder is not empty and is not a previous `hmt synth` output; choose a new or empty folder")
    try:
        record = json.loads(marker.read_text())
        classes = record["classes"]
        if not isinstance(classes, list) or not all(isinstance(name, str) and name for name in classes):
            raise TypeError(f"classes {classes!r} is not a list of names")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise HmtError(f"{marker}: cannot read the previous synth record ({error}); remove the folder by hand") from error
    ours = _synth_files(classes, record.get("multi_label") is True)
    files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if not p.is_dir())
    foreign = [name for name in files if not ours.fullmatch(name)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise HmtError(f"{out_dir}: holds files that `hmt synth` did not write ({shown}); the new set replaces the whole "
                       "folder, so move them or choose a new folder")
    return files


def _write_png(path: Path, image: np.ndarray) -> None:
    """One PNG, written atomically (not fsynced: a data set can be written again)."""
    encoded, data = cv2.imencode(".png", image)
    if not encoded:
        raise HmtError(f"{path}: could not encode the PNG file")
    write_bytes(path, data.tobytes(), durable=False)


def _write_csv(path: Path, header: list[str], rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


_README = """# Phantom ground truth

Written by `hmt synth` (heatmap_templates.synth): {n} images per class, {size} x {size} px, seed {seed},
classes {classes}, pose spread {pose_spread:g} (1 = shifts up to 3 % of the side, rotations up to 8 degrees,
scales 0.9 to 1.1; the spread multiplies the shift and rotation ranges and the exponent of the scale).
Re-running with the same arguments reproduces every file bit for bit.

- `../<class>/<class>_NNNN.png`: the 8-bit grayscale images (x-ray polarity: bone and tissue bright, air dark).
- `../manifest.csv`: `path,label,patient_id` for every image (each image is its own patient), and with planted
  shortcuts a `shortcut` column (1 where the image carries one), so that commands can select the tagged images.
- `masks/<class>/<class>_NNNN.png`: each image's lesion mask in the image frame (255 = lesion; all 0 for `normal`).
- `body/<class>/<class>_NNNN.png`: each image's body (torso, shoulders, neck) in the image frame (255 = body): the exact
  body mask of the deletion test's baselines (`hmt evaluate-templates --faithfulness --body-masks`).
- `lungs/<class>/<class>_NNNN.png`: each image's true lung fields in the image frame (255 = lung): the truth for lung
  segmentation.
- `poses.csv`: `path,label,dx,dy,angle_deg,scale,a00,a01,a02,a10,a11,a12,patient_id`. The image is the canonical
  drawing warped by `cv2.warpAffine(canonical, [[a00, a01, a02], [a10, a11, a12]], (size, size))`: rotation by
  `angle_deg` (counter-clockwise on screen) and `scale` about the image centre ((size - 1) / 2), then a shift of
  (`dx`, `dy`) pixels (x right, y down). Invert the matrix (`cv2.invertAffineTransform`) to map an image back.
- `lesion_probability_<class>.npy`: float32 (size, size) in [0, 1], the probability that a canonical-frame pixel is
  lesion, a Monte Carlo estimate over {samples} draws of the class's lesion process (all zeros for `normal`).
- `canonical_lungs.png`: the lung fields of the mean anatomy in the canonical frame (255 = lung).
- `canonical_chest.png`: 8-bit mean of all images in the canonical frame, i.e. before the pose warp (with each
  image's exposure, without detector blur and noise). The natural registration reference for templates that are
  compared with `lesion_probability_<class>.npy`: registered to it, heatmaps land in the canonical frame.
- `boxes.csv`: `path,label,x,y,width,height`, the bounding box of each lesion component of at least {min_box} pixels
  (paths relative to this folder): the lesion truth as box annotations (`hmt evaluate-templates --annotations`);
  `masks/` is the same truth as a mask folder.
- `shortcuts.csv`: `path,shortcut` for every image: 1 where the image carries its class's planted shortcut
  (`hmt synth --shortcut CLASS:FRACTION`, style `--shortcut-style`), else 0. With `--shortcut-lesions S` below 1 the
  lesions of those images are scaled by S (faint; 0: none) and their masks follow the scaled lesions.
- `shortcut_masks/<class>/<class>_NNNN.png`: where the shortcut is, in the image frame (255), for the images that carry it.
- `synth.json`: the arguments of the run; it also marks the folder as a synth output that `hmt synth` may replace.

Lesions: `covid` bilateral peripheral lower-zone ground-glass opacities; `bacteria` one dense lobar consolidation
(random lobe, air bronchograms); `virus` bilateral perihilar streaky interstitial opacities; `normal` none.
A pixel is lesion where the added lesion intensity is at least {threshold} (on the [0, 1] image scale).
"""


@dataclass(frozen=True)
class _Written:
    """What one worker wrote for one image: its poses.csv row and lesion pixel count, and (on the
    first image of a chunk only) the sum of the chunk's canonical-frame images."""

    label: str
    index: int
    pose_row: list[str]
    mask_pixels: int
    canonical_sum: np.ndarray | None = None
    shortcut: bool = False
    boxes: tuple[tuple[int, int, int, int], ...] = ()  # (x, y, width, height) of each lesion component


def _render_and_write(out: Path, label: str, indices: Sequence[int], seed: int, size: int,
                      pose_spread: float = DEFAULT_POSE_SPREAD, shortcut_fraction: float = 0.0,
                      shortcut_style: str = DEFAULT_SHORTCUT_STYLE, shortcut_lesions: float = 1.0) -> list[_Written]:
    """Render images ``indices`` of class ``label`` and write each image and its lesion mask (and, for the
    images that carry the class's planted shortcut, its mask)."""
    written = []
    canonical_sum = np.zeros((size, size), np.float64)
    for index in indices:
        name = f"{label}_{index:04d}.png"
        carries = shortcut_fraction > 0 and carries_shortcut(seed, label, index, shortcut_fraction)
        phantom = render_phantom(phantom_seed(seed, label, index), label, size, pose_spread=pose_spread,
                                 shortcut=shortcut_style if carries else None, lesion_scale=shortcut_lesions if carries else 1.0)
        canonical_sum += phantom.canonical_image
        _write_png(out / label / name, _to_uint8(phantom.image))
        _write_png(out / GROUND_TRUTH_DIR / "masks" / label / name, phantom.lesion_mask.astype(np.uint8) * 255)
        assert phantom.body_mask is not None  # every rendered phantom has its body
        _write_png(out / GROUND_TRUTH_DIR / BODY_MASKS_DIR / label / name, phantom.body_mask.astype(np.uint8) * 255)
        _write_png(out / GROUND_TRUTH_DIR / LUNG_MASKS_DIR / label / name, phantom.lung_mask.astype(np.uint8) * 255)
        if carries:
            assert phantom.shortcut_mask is not None  # a phantom rendered with a shortcut has its mask
            _write_png(out / GROUND_TRUTH_DIR / SHORTCUT_MASKS_DIR / label / name, phantom.shortcut_mask.astype(np.uint8) * 255)
        pose = phantom.pose
        row = [f"{label}/{name}", label, *(repr(float(value)) for value in (pose.dx, pose.dy, pose.angle_deg, pose.scale)),
               *(repr(float(value)) for value in pose.matrix.ravel()), f"{label}_{index:04d}"]
        written.append(_Written(label, index, row, int(phantom.lesion_mask.sum()), shortcut=carries,
                                boxes=lesion_boxes(phantom.lesion_mask)))
    if written:
        first = written[0]
        written[0] = _Written(first.label, first.index, first.pose_row, first.mask_pixels, canonical_sum, first.shortcut, first.boxes)
    return written


def lesion_boxes(mask: np.ndarray) -> tuple[tuple[int, int, int, int], ...]:
    """(x, y, width, height) of each connected lesion component of at least MIN_BOX_PIXELS pixels."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask, np.uint8), connectivity=8)
    return tuple((int(stats[i, cv2.CC_STAT_LEFT]), int(stats[i, cv2.CC_STAT_TOP]), int(stats[i, cv2.CC_STAT_WIDTH]),
                  int(stats[i, cv2.CC_STAT_HEIGHT])) for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= MIN_BOX_PIXELS)


def _write_probability(path: Path, label: str, size: int, samples: int, seed: int) -> None:
    buffer = io.BytesIO()
    np.save(buffer, canonical_lesion_probability(label, size, samples, seed))
    write_bytes(path, buffer.getvalue())


def _default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def synthesize_dataset(out_dir: str | Path, *, n_per_class: int = DEFAULT_N_PER_CLASS, size: int = DEFAULT_SIZE, seed: int = 0,
                       classes: Sequence[str] = CLASSES, progress: Progress | None = None,
                       probability_samples: int = DEFAULT_PROBABILITY_SAMPLES, workers: int | None = None,
                       pose_spread: float = DEFAULT_POSE_SPREAD, shortcuts: Mapping[str, float] | None = None,
                       shortcut_style: str = DEFAULT_SHORTCUT_STYLE, shortcut_lesions: float = 1.0) -> SynthSummary:
    """Write a class-per-folder phantom data set with its ground truth (layout in ground_truth/README.md).

    ``out_dir`` must be new, empty, or a previous synth output holding nothing else (the new set is written beside it
    and replaces it whole, or, for a mount point or a symbolic link, is moved into it file by file; a failed run leaves
    it as it was: :func:`~heatmap_templates.files.atomic_folder`). ``workers``
    processes share the work (default: the CPU count, at most 8); every image has its own seed,
    so the files are identical for any number of workers. ``pose_spread`` (0 to 4) multiplies
    the random pose's shift and rotation ranges and its log-scale range: 1.0 is the default pose
    distribution, larger values give registration more to correct, 0 puts every chest in the
    canonical frame. ``shortcuts`` maps a class to the fraction of its images that carry a planted
    shortcut of ``shortcut_style`` (:mod:`heatmap_templates.synth.shortcuts`); which images carry it
    is in ``ground_truth/shortcuts.csv`` and where it is in ``ground_truth/shortcut_masks/``. ``shortcut_lesions``
    (0 to 1) scales the lesions of the images that carry a shortcut: below 1 their lesions are faint (0: none), so the
    shortcut is the easiest (or the only) sign of their class, as when one source's images are both marked and milder.
    """
    started = time.perf_counter()
    chosen = _validate(n_per_class, size, seed, classes, pose_spread)
    shortcuts = dict(shortcuts or {})
    _check_shortcuts(shortcuts, chosen, shortcut_style, shortcut_lesions)
    if probability_samples < 1:
        raise HmtError(f"probability_samples must be at least 1, got {probability_samples}")
    workers = _default_workers() if workers is None else workers
    if workers < 1:
        raise HmtError(f"workers must be at least 1, got {workers}")
    out = Path(out_dir)
    earlier = _check_out_dir(out)
    with atomic_folder(out, earlier=earlier) as folder:  # written whole, then swapped in (or moved into a mount point)
        _make_folders(folder, chosen, shortcuts)
        truth = folder / GROUND_TRUTH_DIR
        written = _render_all(folder, chosen, n_per_class=n_per_class, size=size, seed=seed, pose_spread=pose_spread,
                              shortcuts=shortcuts, shortcut_style=shortcut_style, shortcut_lesions=shortcut_lesions,
                              probability_samples=probability_samples, workers=workers, progress=progress or NullProgress())
        order = {label: position for position, label in enumerate(chosen)}
        written.sort(key=lambda item: (order[item.label], item.index))
        _write_tables(folder, written, tagged=bool(shortcuts))
        _write_canonical_frame(truth, written, size)
        write_text(truth / "README.md", _README.format(n=n_per_class, size=size, seed=seed, classes=", ".join(chosen),
                                                        samples=probability_samples, threshold=LESION_THRESHOLD,
                                                        pose_spread=pose_spread, min_box=MIN_BOX_PIXELS))
        record = {"generator": "hmt synth", "n_per_class": n_per_class, "size": size, "seed": seed, "classes": list(chosen),
                  "probability_samples": probability_samples, "lesion_threshold": LESION_THRESHOLD, "pose_spread": pose_spread,
                  "shortcuts": shortcuts, "shortcut_style": shortcut_style, "shortcut_lesions": shortcut_lesions}
        write_text(truth / MARKER_FILE, json.dumps(record, indent=2) + "\n")
    lesion_fraction = {label: sum(item.mask_pixels for item in written if item.label == label) / (n_per_class * size * size)
                       for label in chosen}
    carried = {label: sum(1 for item in written if item.label == label and item.shortcut) for label in shortcuts}
    return SynthSummary(out, chosen, n_per_class, size, seed, {label: n_per_class for label in chosen}, lesion_fraction,
                        time.perf_counter() - started, carried)


def _check_shortcuts(shortcuts: dict[str, float], chosen: Sequence[str], style: str, lesions: float) -> None:
    """Stop before anything is written when a planted shortcut names a class not made or a share out of range."""
    SHORTCUTS.check(style)
    for label, fraction in shortcuts.items():
        if label not in chosen:
            raise HmtError(f"$shortcuts: class {label!r} is not one of the classes made ({', '.join(chosen)})",
                           parameters=("shortcuts",))
        if not 0.0 < fraction <= 1.0:
            raise HmtError(f"$shortcuts: the fraction of {label}'s images must be in (0, 1], got {fraction}", parameters=("shortcuts",))
    if not 0.0 <= lesions <= 1.0:
        raise HmtError(f"$shortcut_lesions must be between 0 and 1, got {lesions}", parameters=("shortcut_lesions",))


def _make_folders(out: Path, chosen: Sequence[str], shortcuts: dict[str, float]) -> None:
    """Make every class's image, mask and shortcut-mask folder in the new set's folder, so workers only write files."""
    truth = out / GROUND_TRUTH_DIR
    for label in chosen:
        ensure_folder(out / label, out)
        for kind in ("masks", BODY_MASKS_DIR, LUNG_MASKS_DIR):
            ensure_folder(truth / kind / label, out)
    for label in shortcuts:
        ensure_folder(truth / SHORTCUT_MASKS_DIR / label, out)


def _render_all(out: Path, chosen: Sequence[str], *, n_per_class: int, size: int, seed: int, pose_spread: float,
                shortcuts: dict[str, float], shortcut_style: str, shortcut_lesions: float, probability_samples: int,
                workers: int, progress: Progress) -> list[_Written]:
    """Render and write every image (in chunks of 16, in ``workers`` processes) and each class's lesion-probability map;
    what was written, in completion order (the caller sorts it)."""
    progress.start(len(chosen) * n_per_class, "synthesising phantoms")
    chunk = 16
    image_jobs = [(label, range(first, min(first + chunk, n_per_class))) for label in chosen for first in range(0, n_per_class, chunk)]
    probability_jobs = [(out / GROUND_TRUTH_DIR / f"lesion_probability_{label}.npy", label) for label in chosen]
    written: list[_Written] = []
    if workers == 1:
        for label, indices in image_jobs:
            written += _render_and_write(out, label, indices, seed, size, pose_spread, shortcuts.get(label, 0.0), shortcut_style,
                                         shortcut_lesions)
            progress.advance(len(indices))
        for path, label in probability_jobs:
            _write_probability(path, label, size, probability_samples, seed)
    else:
        # Spawned (not forked) workers: the caller may hold threads, e.g. TensorFlow's.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            probability_futures = [pool.submit(_write_probability, path, label, size, probability_samples, seed)
                                   for path, label in probability_jobs]
            image_futures = [pool.submit(_render_and_write, out, label, indices, seed, size, pose_spread,
                                         shortcuts.get(label, 0.0), shortcut_style, shortcut_lesions)
                             for label, indices in image_jobs]
            for future in as_completed(image_futures):
                batch = future.result()
                written += batch
                progress.advance(len(batch))
            for pending in probability_futures:
                pending.result()
    progress.finish()
    return written


def _write_tables(out: Path, written: Sequence[_Written], *, tagged: bool = False) -> None:
    """The manifest beside the images (with ``tagged``, a ``shortcut`` column) and the ground-truth tables (poses,
    shortcuts, lesion boxes), one row per image."""
    truth = out / GROUND_TRUTH_DIR
    _write_csv(out / "manifest.csv", ["path", "label", "patient_id", *(["shortcut"] if tagged else [])],
               ([item.pose_row[0], item.label, item.pose_row[-1], *(["1" if item.shortcut else "0"] if tagged else [])]
                for item in written))
    _write_csv(truth / "poses.csv", ["path", "label", *_POSE_COLUMNS, "patient_id"], (item.pose_row for item in written))
    _write_csv(truth / SHORTCUTS_FILE, ["path", "shortcut"], ([item.pose_row[0], "1" if item.shortcut else "0"] for item in written))
    _write_csv(truth / BOXES_FILE, ["path", "label", "x", "y", "width", "height"],
               ([f"../{item.pose_row[0]}", item.label, *map(str, box)] for item in written for box in item.boxes))


def _write_canonical_frame(truth: Path, written: Sequence[_Written], size: int) -> None:
    """The canonical lung mask and mean chest: the registration reference that puts templates in the truth's frame."""
    _write_png(truth / CANONICAL_LUNGS_FILE, canonical_lung_mask(size).astype(np.uint8) * 255)
    # Summed in a fixed order (class, then index), so the mean is the same for any number of workers.
    canonical_total = np.zeros((size, size), np.float64)
    for item in written:
        if item.canonical_sum is not None:
            canonical_total += item.canonical_sum
    _write_png(truth / CANONICAL_CHEST_FILE, _to_uint8(canonical_total / len(written)))


def finding_presence(seed: int, index: int, findings: Sequence[str], prevalence: float) -> list[str]:
    """The lesion types image ``index`` of a multi-label phantom set carries: each with chance ``prevalence``."""
    rng = np.random.default_rng([seed, _FINDINGS_STREAM, index])
    draws = rng.random(len(findings))
    return [name for name, draw in zip(findings, draws, strict=True) if draw < prevalence]


def _render_and_write_multi_label(out: Path, indices: Sequence[int], seed: int, size: int, findings: Sequence[str],
                                  prevalence: float, pose_spread: float) -> list[_Written]:
    """Render multi-label images ``indices``: every finding drawn independently; each finding's mask written."""
    written = []
    canonical_sum = np.zeros((size, size), np.float64)
    for index in indices:
        name = f"{_MULTI_LABEL_NAME}_{index:04d}.png"
        present = finding_presence(seed, index, findings, prevalence)
        phantom = render_phantom(phantom_seed(seed, _MULTI_LABEL_NAME, index), "normal", size, pose_spread=pose_spread,
                                 findings=present)
        canonical_sum += phantom.canonical_image
        _write_png(out / MULTI_LABEL_FOLDER / name, _to_uint8(phantom.image))
        assert phantom.finding_masks is not None  # rendered with findings
        for finding in present:
            _write_png(out / GROUND_TRUTH_DIR / "masks" / finding / name, phantom.finding_masks[finding].astype(np.uint8) * 255)
        pose = phantom.pose
        row = [f"{MULTI_LABEL_FOLDER}/{name}", *("1" if finding in present else "0" for finding in findings),
               *(repr(float(value)) for value in (pose.dx, pose.dy, pose.angle_deg, pose.scale)),
               *(repr(float(value)) for value in pose.matrix.ravel()), f"{_MULTI_LABEL_NAME}_{index:04d}"]
        written.append(_Written(";".join(present), index, row, int(phantom.lesion_mask.sum())))
    if written:
        written[0] = _Written(written[0].label, written[0].index, written[0].pose_row, written[0].mask_pixels, canonical_sum)
    return written


def synthesize_multi_label(out_dir: str | Path, *, n_images: int, size: int = DEFAULT_SIZE, seed: int = 0,
                           findings: Sequence[str] = ("bacteria", "covid", "virus"), prevalence: float = DEFAULT_PREVALENCE,
                           probability_samples: int = DEFAULT_PROBABILITY_SAMPLES, pose_spread: float = DEFAULT_POSE_SPREAD,
                           progress: Progress | None = None) -> SynthSummary:
    """Write a multi-label phantom set: ``images/img_NNNN.png``, each carrying every lesion type of ``findings``
    independently with chance ``prevalence``, and ``manifest.csv`` with one 0/1 column per finding (read it with
    ``load_dataset(..., labels=findings)``). Ground truth as for the class-folder set: each finding's masks under ``ground_truth/masks/<finding>/``
    (written for the images that carry it), its canonical lesion-probability map, poses, lungs and chest.
    """
    started = time.perf_counter()
    chosen = _validate(n_images, size, seed, findings, pose_spread)
    if any(LESIONS[name] is None for name in chosen):
        raise HmtError(f"a multi-label phantom carries lesion types; {', '.join(n for n in chosen if LESIONS[n] is None)} has none")
    if not 0.0 < prevalence < 1.0:
        raise HmtError(f"the prevalence of each finding must lie between 0 and 1, got {prevalence}")
    out = Path(out_dir)
    earlier = _check_out_dir(out)
    with atomic_folder(out, earlier=earlier) as folder:  # written whole, then swapped in (or moved into a mount point)
        written = _write_multi_label(folder, n_images, size, seed, chosen, prevalence, probability_samples, pose_spread,
                                     progress or NullProgress())
    counts = {name: sum(1 for item in written if name in item.label.split(";")) for name in chosen}
    return SynthSummary(out, chosen, n_images, size, seed, counts, {}, time.perf_counter() - started)


def _write_multi_label(out: Path, n_images: int, size: int, seed: int, chosen: Sequence[str], prevalence: float,
                       probability_samples: int, pose_spread: float, progress: Progress) -> list[_Written]:
    """Every file of a multi-label phantom set, into ``out`` (the new set's folder); what was written, in order."""
    truth = out / GROUND_TRUTH_DIR
    ensure_folder(out / MULTI_LABEL_FOLDER, out)
    for name in chosen:
        ensure_folder(truth / "masks" / name, out)
    progress.start(n_images, "synthesising multi-label phantoms")
    written: list[_Written] = []
    for first in range(0, n_images, 16):
        indices = range(first, min(first + 16, n_images))
        written += _render_and_write_multi_label(out, indices, seed, size, chosen, prevalence, pose_spread)
        progress.advance(len(indices))
    for name in chosen:
        _write_probability(truth / f"lesion_probability_{name}.npy", name, size, probability_samples, seed)
    progress.finish()
    _write_csv(out / "manifest.csv", ["path", *chosen, "patient_id"],
               ([item.pose_row[0], *item.pose_row[1:1 + len(chosen)], item.pose_row[-1]] for item in written))
    _write_csv(truth / "poses.csv", ["path", *chosen, *_POSE_COLUMNS, "patient_id"], (item.pose_row for item in written))
    _write_png(truth / CANONICAL_LUNGS_FILE, canonical_lung_mask(size).astype(np.uint8) * 255)
    canonical_total = sum((item.canonical_sum for item in written if item.canonical_sum is not None), np.zeros((size, size)))
    _write_png(truth / CANONICAL_CHEST_FILE, _to_uint8(canonical_total / len(written)))
    record = {"generator": "hmt synth", "multi_label": True, "n_images": n_images, "size": size, "seed": seed,
              "classes": list(chosen), "prevalence": prevalence, "probability_samples": probability_samples,
              "lesion_threshold": LESION_THRESHOLD, "pose_spread": pose_spread}
    write_text(truth / MARKER_FILE, json.dumps(record, indent=2) + "\n")
    return written


def read_poses(out_dir: str | Path) -> dict[str, Pose]:
    """Poses of a synth output keyed by relative image path (``<class>/<class>_NNNN.png``)."""
    path = Path(out_dir) / GROUND_TRUTH_DIR / "poses.csv"
    if not path.is_file():
        raise HmtError(f"{path}: missing; not a `hmt synth` output")
    poses = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            matrix = np.array([float(row[key]) for key in _POSE_COLUMNS[4:]]).reshape(2, 3)
            poses[row["path"]] = Pose(float(row["dx"]), float(row["dy"]), float(row["angle_deg"]), float(row["scale"]), matrix)
    return poses
